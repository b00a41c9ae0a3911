"""ROCCurveTask, WorkingPointTask and CompareTrainingsTask on InferenceTask outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import ConfigTask, DatasetDependency
from tasks.dataset import DatasetConstructorTask
from tasks.inference import InferenceTask, TestDatasetDependency

SUMMARY = "summary.json"


def _listed_outputs(task: ConfigTask, listing: str, key: str) -> law.TargetCollection | None:
    """Targets named in a finished task's JSON listing (for --print-status/--remove-output)."""
    path = task.local_path(listing)
    if not path.exists():
        return None
    names = json.loads(path.read_text()).get(key, [])
    return law.TargetCollection([task.local_target(n) for n in names]) if names else None


class ROCCurveTask(TestDatasetDependency):
    """ROC curves of every discriminant the model provides, per process in its pT/eta window,
    with the config's reference taggers; efficiency and mis-id vs pT and eta at the L/M/T
    working points.

    Outputs: ``roc_<process>_<disc>.npz`` (fpr, tpr, thresholds, auc) and ``.pdf/.png``,
    ``eff_*``/``misid_*`` figures, ``summary.json`` (AUC and efficiency at 10 %, 1 %, 0.1 %
    mis-id), ``files.json`` (the list of files written) and ``parameters.json``.
    """

    quiet = luigi.BoolParameter(default=False, significant=False,
                                description="do not print the summary table (the presets "
                                "print their own)")

    def requires(self) -> InferenceTask:
        return InferenceTask.req(self)

    def output(self) -> dict[str, Any]:
        outputs: dict[str, Any] = {
            "summary": self.local_target(SUMMARY),
            "files": self.local_target("files.json"),
            "parameters": self.parameters_target(),
        }
        listed = _listed_outputs(self, "files.json", "files")
        if listed is not None:
            outputs["figures"] = listed
        return outputs

    def run(self) -> None:
        from utils.evaluation.report import Predictions, roc_report
        from utils.evaluation.summary import summary_table
        from utils.io import write_json
        from utils.progress import console

        config = self.load_config()
        pred = Predictions.load(Path(self.input()["prediction"].path).parent,
                                label=self.model_name, observers=config.observer_names)
        with self.publishing(SUMMARY) as work:
            summary = roc_report(config, [pred], work)
            write_json(work / "files.json", {"files": sorted(
                p.name for p in work.iterdir() if p.name not in (SUMMARY, "files.json"))})
            self.write_parameters(work)
        if not self.quiet:
            console.print(summary_table(_flat(summary), title=f"ROC summary: {self.model_name} "
                                        f"({self.training_version}) on "
                                        f"{self.test_dataset_version}"))
        console.print(f"  ROC curves and summary.json in {self.local_path()}")


def _flat(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{process: {"disc (label)": values}}`` for the text table."""
    return {process: {f"{disc} ({label})": values
                      for disc, entries in discs.items() for label, values in entries.items()
                      if "auc" in values}
            for process, discs in summary.items()}


class WorkingPointTask(TestDatasetDependency):
    """Thresholds at 10 %, 1 %, 0.1 %, 0.05 %, 0.01 % light mis-id (L, M, T, XT, XXT) for
    BvsAll and BvsL per process, from the sorted scores, with the b efficiency, c and light
    mis-id each gives; also for the config's reference taggers on the same jets.

    Outputs: ``wp_<process>_<disc>[__<tagger>].csv/.json``, ``wp_<process>_<disc>.pdf/png``,
    ``working_points.json`` (``{process: {disc: {label: [...]}}}``), ``parameters.json``.
    """

    def requires(self) -> InferenceTask:
        return InferenceTask.req(self)

    def output(self) -> dict[str, Any]:
        return {"working_points": self.local_target("working_points.json"),
                "parameters": self.parameters_target()}

    def run(self) -> None:
        from utils.evaluation.report import Predictions, working_point_report
        from utils.io import write_json
        from utils.progress import console

        config = self.load_config()
        pred = Predictions.load(Path(self.input()["prediction"].path).parent,
                                label=self.model_name, observers=config.observer_names)
        with self.publishing("working_points.json") as work:
            report = working_point_report(config, pred, work)
            write_json(work / "working_points.json", report)
            self.write_parameters(work)
        for process, discs in report.items():
            for disc, taggers in discs.items():
                for label, wps in taggers.items():
                    rows = ", ".join(f"{wp['name']}: {wp['threshold']:.4f} "
                                     f"(b {wp['b_efficiency']:.3f})" for wp in wps)
                    console.print(f"  {process} {disc} ({label}): {rows}")
        console.print(f"  working points in {self.local_path()}")


class ReferenceROCTask(DatasetDependency):
    """ROC curves and summary of the config's reference taggers (e.g. the CMS taggers stored
    in NanoAOD) on an exported sample: an evaluation without any training.

    Outputs: ``roc_<process>_<disc>.pdf/png`` with every reference tagger,
    ``roc_<process>_<disc>__<tagger>.npz``, ``summary.json``, ``files.json``.
    """

    def requires(self) -> DatasetConstructorTask:
        return DatasetConstructorTask.req(self)

    def output(self) -> dict[str, Any]:
        return ROCCurveTask.output(self)

    def run(self) -> None:
        from utils.dataset.directory import DatasetDirectory
        from utils.evaluation.report import Predictions, roc_report
        from utils.evaluation.summary import summary_table
        from utils.io import write_json
        from utils.progress import console

        config = self.load_config()
        if not config.reference_taggers:
            raise ValueError(f"config '{self.config}' defines no reference_taggers to evaluate")
        dataset_dir = Path(self.input()["processed_files"].path).parent
        jets = Predictions.from_dataset(config, DatasetDirectory(dataset_dir).files())
        with self.publishing(SUMMARY) as work:
            summary = roc_report(config, [jets], work, binned=False)
            write_json(work / "files.json", {"files": sorted(
                p.name for p in work.iterdir() if p.name not in (SUMMARY, "files.json"))})
            self.write_parameters(work)
        console.print(summary_table(_flat(summary), title=f"Reference taggers on "
                                    f"{self.dataset_version}", width=120))
        console.print(f"  plots in {self.local_path()}")


class CompareTrainingsTask(ConfigTask):
    """Overlay the ROC curves of several trainings on one test sample, with a table of AUC
    and efficiencies (what users otherwise write ad-hoc scripts for).

    ``--training-versions`` and ``--model-names`` are comma-separated lists of equal length
    (or one of them a single value, used for all entries).
    """

    dataset_version = luigi.Parameter(default="dataset_version_01",
                                      description="dataset the models were trained on")
    test_dataset_version = luigi.Parameter(default="test_dataset_version_01",
                                           description="test dataset to compare on")
    test_filelist = luigi.Parameter(default="", significant=False,
                                    description="file list of the test ROOT files")
    training_versions = luigi.Parameter(description="comma-separated training versions")
    model_names = luigi.Parameter(description="comma-separated model names")
    epochs = luigi.IntParameter(default=1, description="epochs of the trainings; default: 1")
    comparison = luigi.Parameter(default="", description="name of the comparison directory; "
                                 "default: built from the entries")

    def entries(self) -> list[tuple[str, str]]:
        versions = [v.strip() for v in self.training_versions.split(",") if v.strip()]
        models = [m.strip() for m in self.model_names.split(",") if m.strip()]
        if len(versions) == 1:
            versions *= len(models)
        if len(models) == 1:
            models *= len(versions)
        if len(versions) != len(models) or len(versions) < 2:
            raise ValueError("--training-versions and --model-names must list at least two "
                             "trainings (equal lengths, or one of them a single value); got "
                             f"{self.training_versions!r} and {self.model_names!r}")
        return list(zip(versions, models, strict=True))

    def store_parts(self) -> tuple[str, ...]:
        name = self.comparison or "__".join(f"{v}-{m}" for v, m in self.entries())
        return super().store_parts() + (self.dataset_version, self.test_dataset_version,
                                        name, f"epochs_{self.epochs}")

    def requires(self) -> list[InferenceTask]:
        return [InferenceTask.req(self, training_version=v, model_name=m)
                for v, m in self.entries()]

    def output(self) -> dict[str, Any]:
        return {"summary": self.local_target(SUMMARY), "table": self.local_target("table.txt"),
                "parameters": self.parameters_target()}

    def run(self) -> None:
        from utils.evaluation.report import Predictions, roc_report
        from utils.evaluation.summary import summary_table
        from utils.io import write_text
        from utils.progress import console

        config = self.load_config()
        labels = [f"{m} ({v})" for v, m in self.entries()]
        preds = [Predictions.load(Path(inp["prediction"].path).parent, label=label,
                                  observers=config.observer_names)
                 for inp, label in zip(self.input(), labels, strict=True)]
        with self.publishing(SUMMARY) as work:
            summary = roc_report(config, preds, work, binned=False)
            table = summary_table(_flat(summary), title="Comparison", width=140)
            write_text(work / "table.txt", table)
            self.write_parameters(work)
        console.print(table)
        console.print(f"  plots in {self.local_path()}")
