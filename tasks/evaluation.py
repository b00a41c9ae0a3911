"""ROCCurveTask, WorkingPointTask and CompareTrainingsTask on InferenceTask outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import ConfigTask, DatasetDependency, setting
from tasks.dataset import DatasetConstructorTask
from tasks.inference import InferenceTask, TestDatasetDependency
from utils.attacks import ATTACKS, MULTI_STEP
from utils.evaluation.report import file_tag
from utils.settings import EvaluationSettings, SettingsError, options

# the attack options besides the attack and its magnitude
ATTACK_KNOBS = ("attack_iterations", "attack_individual_factors", "attack_reduce",
                "attack_restrict_impact", "attack_overshoot", "attack_uncertainty")

SUMMARY = "summary.json"


def _listed_outputs(task: ConfigTask, listing: str, key: str) -> law.TargetCollection | None:
    """Targets named in a finished task's JSON listing (for --print-status/--remove-output)."""
    path = task.local_path(listing)
    if not path.exists():
        return None
    names = json.loads(path.read_text()).get(key, [])
    return law.TargetCollection([task.local_target(n) for n in names]) if names else None


def _with_figures(task: ConfigTask, outputs: dict[str, Any]) -> dict[str, Any]:
    """``outputs`` plus the figures listed in the task's ``files.json`` (once it exists)."""
    listed = _listed_outputs(task, "files.json", "files")
    if listed is not None:
        outputs["figures"] = listed
    return outputs


class FromPredictions:
    """An evaluation made from its inferences' predictions (see ``BaseTask.made_from``):
    refused once an inference has been made again."""

    def made_from(self) -> list[Path]:
        inputs = self.input()  # type: ignore[attr-defined]
        return [Path(i["prediction"].path)
                for i in (inputs if isinstance(inputs, list) else [inputs])]


class ROCCurveTask(FromPredictions, TestDatasetDependency):
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
        return _with_figures(self, {"summary": self.local_target(SUMMARY),
                                    "files": self.local_target("files.json"),
                                    "parameters": self.parameters_target()})

    def run(self) -> None:
        self.record_sources()  # digests of what it is made from, before reading
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
            attack = self.settings.attack_settings("test_")
            under = f" under {attack.describe()}" if attack.active else ""
            console.print(summary_table(_flat(summary), title=f"ROC summary: {self.model_name} "
                                        f"({self.training_version}) on "
                                        f"{self.test_dataset_version}{under}", width=140))
        console.print(f"  ROC curves and summary.json in {self.local_path()}")


def _flat(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{process: {"disc (label)": values}}`` for the text table."""
    return {process: {f"{disc} ({label})": values
                      for disc, entries in discs.items() for label, values in entries.items()
                      if "auc" in values}
            for process, discs in summary.items()}


class WorkingPointTask(FromPredictions, TestDatasetDependency):
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
        self.record_sources()  # digests of what it is made from, before reading
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


def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


class SeveralTrainings(ConfigTask):
    """Parameters of tasks that evaluate several trainings on one test sample; outputs in
    ``<Task>/<config>/<dataset_version>/<test_dataset_version>/<comparison>/epochs_<N>/``."""

    dataset_version = luigi.Parameter(default="dataset_version_01",
                                      description="dataset the models were trained on")
    test_dataset_version = luigi.Parameter(default="test_dataset_version_01",
                                           description="test dataset to evaluate on")
    test_filelist = luigi.Parameter(default="", significant=False,
                                    description="file list of the test ROOT files")
    test_legacy_dataset = luigi.Parameter(default="", significant=False,
                                          description="test dataset of the original b-hive "
                                          "to import (see --legacy-dataset)")
    training_versions = luigi.Parameter(description="comma-separated training versions")
    model_names = luigi.Parameter(description="comma-separated model names")
    epochs = luigi.IntParameter(default=1, description="epochs of the trainings; default: 1")
    comparison = luigi.Parameter(default="", description="name of the output directory; "
                                 "default: built from the trainings")

    def default_name(self) -> str:
        raise NotImplementedError

    def store_parts(self) -> tuple[str, ...]:
        return super().store_parts() + (self.dataset_version, self.test_dataset_version,
                                        self.comparison or self.default_name(),
                                        f"epochs_{self.epochs}")


class CompareTrainingsTask(FromPredictions, SeveralTrainings):
    """Overlay the ROC curves of several trainings on one test sample, with a table of AUC
    and efficiencies (what users otherwise write ad-hoc scripts for).

    ``--training-versions`` and ``--model-names`` are comma-separated lists of equal length
    (or one of them a single value, used for all entries).
    """

    def entries(self) -> list[tuple[str, str]]:
        versions = [v.strip() for v in self.training_versions.split(",") if v.strip()]
        models = [m.strip() for m in self.model_names.split(",") if m.strip()]
        if len(versions) == 1:
            versions *= len(models)
        if len(models) == 1:
            models *= len(versions)
        if len(versions) != len(models) or len(versions) < 2:
            raise SettingsError("--training-versions and --model-names must list at least two "
                             "trainings (equal lengths, or one of them a single value); got "
                             f"{self.training_versions!r} and {self.model_names!r}")
        return list(zip(versions, models, strict=True))

    def validate_parameters(self) -> None:
        self.entries()  # the lists, when the task is made

    def default_name(self) -> str:
        return "__".join(f"{v}-{m}" for v, m in self.entries())

    def requires(self) -> list[InferenceTask]:
        return [InferenceTask.req(self, training_version=v, model_name=m)
                for v, m in self.entries()]

    def output(self) -> dict[str, Any]:
        return {"summary": self.local_target(SUMMARY), "table": self.local_target("table.txt"),
                "parameters": self.parameters_target()}

    def run(self) -> None:
        self.record_sources()  # digests of what it is made from, before reading
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


class RobustnessTask(FromPredictions, SeveralTrainings):
    """Robustness of one or several trainings: each evaluated on the test jets nominally and
    under every ``--test-attacks`` attack at every ``--test-magnitudes`` magnitude (one
    InferenceTask each).

    The trainings are given like CompareTrainingsTask's, plus their training attacks:
    ``--training-versions``, ``--model-names``, ``--attacks``, ``--attack-magnitudes`` are
    comma-separated lists of equal length (or single values, used for all); the other
    ``--attack-*`` options apply to every attacked training, the ``--test-attack-*``
    options to every test attack (each only where it applies). Outputs in
    ``RobustnessTask/<config>/<dataset_version>/<test_dataset_version>/<comparison>/
    epochs_<N>/``: ``roc_<training>_<process>_<disc>_<attack>`` (nominal and every
    magnitude overlaid), ``robustness_<process>_<disc>`` (AUC and b-efficiency at 1 % light
    mis-id vs magnitude, every training and attack), ``robustness.json`` (the figures'
    numbers and the mean |change| per input group of every attack), ``table.txt``.
    """

    attacks = luigi.Parameter(default="nominal", description="comma-separated training "
                              "attacks of the trainings (e.g. nominal,fgsm); default: nominal")
    attack_magnitudes = luigi.Parameter(default="0", description="comma-separated training "
                                        "attack magnitudes (e.g. 0,0.01); default: 0")
    test_attacks = luigi.Parameter(default="fgsm,pgd", description="comma-separated test "
                                   "attacks; default: fgsm,pgd")
    test_magnitudes = luigi.Parameter(default="0.005,0.01,0.02,0.05", description="comma-"
                                      "separated test attack magnitudes (in units of each "
                                      "feature's spread); default: 0.005,0.01,0.02,0.05")
    attack_iterations = setting(EvaluationSettings, "attack_iterations")
    attack_individual_factors = setting(EvaluationSettings, "attack_individual_factors")
    attack_reduce = setting(EvaluationSettings, "attack_reduce")
    attack_restrict_impact = setting(EvaluationSettings, "attack_restrict_impact")
    attack_overshoot = setting(EvaluationSettings, "attack_overshoot")
    attack_uncertainty = setting(EvaluationSettings, "attack_uncertainty")
    test_attack_iterations = setting(EvaluationSettings, "test_attack_iterations")
    test_attack_individual_factors = setting(EvaluationSettings, "test_attack_individual_factors")
    test_attack_reduce = setting(EvaluationSettings, "test_attack_reduce")
    test_attack_restrict_impact = setting(EvaluationSettings, "test_attack_restrict_impact")
    test_attack_overshoot = setting(EvaluationSettings, "test_attack_overshoot")
    test_attack_uncertainty = setting(EvaluationSettings, "test_attack_uncertainty")

    def validate_parameters(self) -> None:
        entries = self.entries()
        labels = [self.entry_label(*entry) for entry in entries]
        if len(set(labels)) < len(labels):
            raise SettingsError(f"the trainings {labels} are not all different")
        for _, _, attack, magnitude in entries:
            if attack not in ATTACKS:
                raise SettingsError(f"--attacks: {attack!r} is not an attack; attacks are "
                                    f"{', '.join(ATTACKS)}")
            if (attack == "nominal") != (magnitude == 0):
                raise SettingsError(f"--attacks / --attack-magnitudes: {attack} with "
                                    f"magnitude {magnitude:g}; nominal takes 0, every other "
                                    "attack a magnitude > 0")
        for name in _split(self.test_attacks):
            if name not in ATTACKS or name == "nominal":
                raise SettingsError(f"--test-attacks: {name!r} is not an attack; attacks are "
                                    f"{', '.join(a for a in ATTACKS if a != 'nominal')}")
        if not _split(self.test_attacks):
            raise SettingsError("--test-attacks must name at least one attack")
        self.magnitudes()
        for *_, params in self.runs():  # the knobs fit every attack they are passed to
            EvaluationSettings(**{k: v for k, v in params.items() if k.startswith(
                ("attack", "test_attack"))})

    def magnitudes(self) -> list[float]:
        try:
            values = [float(m) for m in _split(self.test_magnitudes)]
        except ValueError:
            raise SettingsError(f"--test-magnitudes must be comma-separated numbers; got "
                                f"{self.test_magnitudes!r}") from None
        if not values or not all(0 < m < float("inf") for m in values):
            raise SettingsError(f"--test-magnitudes must be numbers > 0 (the nominal "
                                f"evaluation is always included); got {self.test_magnitudes!r}")
        return sorted(set(values))

    def entries(self) -> list[tuple[str, str, str, float]]:
        """``(training_version, model_name, attack, attack_magnitude)`` per training."""
        lists = [_split(self.training_versions), _split(self.model_names),
                 _split(self.attacks), _split(self.attack_magnitudes)]
        n = max(len(v) for v in lists)
        if any(len(v) not in (1, n) for v in lists) or not all(lists):
            raise SettingsError("--training-versions, --model-names, --attacks and "
                                "--attack-magnitudes must have equal lengths (or be single "
                                f"values); got {self.training_versions!r}, "
                                f"{self.model_names!r}, {self.attacks!r}, "
                                f"{self.attack_magnitudes!r}")
        lists = [v * n if len(v) == 1 else v for v in lists]
        try:
            magnitudes = [float(m) for m in lists[3]]
        except ValueError:
            raise SettingsError(f"--attack-magnitudes must be numbers; got "
                                f"{self.attack_magnitudes!r}") from None
        return list(zip(lists[0], lists[1], lists[2], magnitudes, strict=True))

    @staticmethod
    def entry_label(version: str, model: str, attack: str, magnitude: float) -> str:
        trained = "" if attack == "nominal" else f", {attack}-trained {magnitude:g}"
        return f"{model} ({version}{trained})"

    def default_name(self) -> str:
        return "__".join(file_tag(self.entry_label(*entry)) for entry in self.entries())

    def runs(self) -> list[tuple[str, str, float, dict[str, Any]]]:
        """``(entry label, test attack, magnitude, InferenceTask parameters)`` of every
        evaluation (the nominal one with attack ``nominal`` and magnitude 0)."""
        out = []
        points = [("nominal", 0.0)] + [(a, m) for a in _split(self.test_attacks)
                                       for m in self.magnitudes()]
        for version, model, attack, magnitude in self.entries():
            label = self.entry_label(version, model, attack, magnitude)
            for test_attack, test_magnitude in points:
                params = dict(training_version=version, model_name=model, attack=attack,
                              attack_magnitude=magnitude, test_attack=test_attack,
                              test_attack_magnitude=test_magnitude,
                              **self.knobs("", attack), **self.knobs("test_", test_attack))
                out.append((label, test_attack, test_magnitude, params))
        return out

    def knobs(self, prefix: str, attack: str) -> dict[str, Any]:
        """This task's ``--<prefix>attack-*`` options that apply to ``attack`` (the others
        at their defaults)."""
        used = {"iterations": attack in MULTI_STEP, "overshoot": attack == "jetfool",
                "uncertainty": attack == "minimizer"}
        values = {}
        for knob in ATTACK_KNOBS:
            name = f"{prefix}{knob}"
            applies = used.get(knob.removeprefix("attack_"), attack != "nominal")
            values[name] = getattr(self, name) if applies else \
                options(EvaluationSettings)[name][1]
        return values

    def requires(self) -> list[InferenceTask]:
        return [InferenceTask.req(self, **params) for *_, params in self.runs()]

    def output(self) -> dict[str, Any]:
        return _with_figures(self, {"report": self.local_target("robustness.json"),
                                    "files": self.local_target("files.json"),
                                    "table": self.local_target("table.txt"),
                                    "parameters": self.parameters_target()})

    def run(self) -> None:
        self.record_sources()  # digests of what it is made from, before reading
        from utils.evaluation.report import Predictions
        from utils.evaluation.robustness import AttackedRun, robustness_report, robustness_table
        from utils.io import write_json, write_text
        from utils.progress import console

        config = self.load_config()
        runs = []
        for (label, attack, magnitude, _), inputs in zip(self.runs(), self.input(),
                                                          strict=True):
            directory = Path(inputs["prediction"].path).parent
            changes = json.loads((directory / "attack.json").read_text()).get("changes", {})
            runs.append(AttackedRun(label, attack, magnitude,
                                    Predictions.load(directory, label=label), changes))
        with self.publishing("robustness.json") as work:
            report = robustness_report(config, runs, work)
            table = robustness_table(report, title=f"Robustness on {self.test_dataset_version}")
            write_text(work / "table.txt", table)
            write_json(work / "files.json", {"files": sorted(
                p.name for p in work.iterdir() if p.suffix in (".pdf", ".png"))})
            self.write_parameters(work)
        console.print(table)
        console.print(f"  robustness figures and robustness.json in {self.local_path()}")
