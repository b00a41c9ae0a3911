"""Workflow presets: one `law run` for a complete chain with fixed settings.

``DeepJetRun``, ``DeepJetRunHLT``, ``DeepJetRunHLTPhase2`` and ``ParticleNetRunHLT`` mirror
the original b-hive presets (``--version`` names the dataset and training, the test dataset
is ``testfiles_<version>``). ``DemoRun`` runs everything on the built-in Pythia8 samples
and ends with a summary table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import BaseTask, setting
from tasks.evaluation import ROCCurveTask, WorkingPointTask
from tasks.inference import InferenceTask
from utils.settings import TrainSettings


class PresetRun(law.WrapperTask):
    """A chain DatasetConstructorTask -> TrainingTask -> InferenceTask -> ROC (+ WPs)."""

    version = luigi.Parameter(default="v1", description="name of the dataset and training "
                              "versions; the test dataset is testfiles_<version>")
    filelist = luigi.Parameter(default="", significant=False,
                               description="file list of the training ROOT files")
    test_filelist = luigi.Parameter(default="", significant=False,
                                    description="file list of the test ROOT files")
    verbose = BaseTask.verbose

    preset: dict[str, Any] = {}
    working_points = True
    exclude_index = True

    def chain_kwargs(self) -> dict[str, Any]:
        return {"dataset_version": self.version, "training_version": self.version,
                "test_dataset_version": f"testfiles_{self.version}",
                "filelist": self.filelist, "test_filelist": self.test_filelist,
                "verbose": self.verbose, **self.preset}

    def requires(self) -> list[law.Task]:
        kwargs = self.chain_kwargs()
        tasks = [ROCCurveTask(**kwargs)]
        if self.working_points:
            tasks.append(WorkingPointTask(**kwargs))
        return tasks


class DeepJetRunHLT(PresetRun):
    """DeepJetHLT on hlt_run3, 20 epochs."""

    preset = {"config": "hlt_run3", "model_name": "DeepJetHLT", "epochs": 20}


class DeepJetRun(PresetRun):
    """DeepJet on offline_run3, 3 epochs."""

    preset = {"config": "offline_run3", "model_name": "DeepJet", "epochs": 3}


class DeepJetRunHLTPhase2(PresetRun):
    """DeepJetHLT on hlt_phase2, 300 epochs."""

    preset = {"config": "hlt_phase2", "model_name": "DeepJetHLT", "epochs": 300}


class ParticleNetRunHLT(PresetRun):
    """ParticleNet on the HLT inputs with candidate 4-vectors (hlt_run3_pnet), 3 epochs."""

    preset = {"config": "hlt_run3_pnet", "model_name": "ParticleNet", "epochs": 3}
    working_points = False


class DemoRun(BaseTask):
    """The one-command demo: generate Pythia8 ttbar + QCD samples (training and an
    independent test sample), export, train, infer, draw ROC curves and working points,
    and print a summary table with the plot paths.

    Output: ``DemoRun/<version>/summary.txt`` (+ ``summary.json``).
    """

    version = luigi.Parameter(default="demo_v1", description="version of every step; "
                              "default: demo_v1")
    config = luigi.Parameter(default="demo", description="config (demo or demo_part)")
    model_name = luigi.Parameter(default="DeepJet", description="model; default: DeepJet")
    epochs = luigi.IntParameter(default=15, description="training epochs; default: 15")
    batch_size = setting(TrainSettings, "batch_size")

    # the training's record holds the batch size actually used (checked there, as the
    # chain's); here a re-run without --batch-size must not differ from one with it
    exclude_from_consistency = frozenset({"batch_size"})
    version_hint = "--version"

    def store_parts(self) -> tuple[str, ...]:
        return super().store_parts() + (self.version, self.config, self.model_name,
                                        f"epochs_{self.epochs}")

    def chain_kwargs(self) -> dict[str, Any]:
        return {"config": self.config, "model_name": self.model_name, "epochs": self.epochs,
                "batch_size": self.batch_size, "dataset_version": self.version,
                "training_version": self.version, "test_dataset_version": f"test_{self.version}",
                "seed": self.seed, "verbose": self.verbose}

    def requires(self) -> dict[str, law.Task]:
        kwargs = self.chain_kwargs()
        return {"roc": ROCCurveTask(**kwargs, quiet=True), "wp": WorkingPointTask(**kwargs)}

    def output(self) -> dict[str, law.LocalFileTarget]:
        return {"summary": self.local_target("summary.txt"),
                "json": self.local_target("summary.json")}

    def made_from(self) -> list[Path]:
        """The ROC summary and working points the summary is made of."""
        return [Path(self.input()["roc"]["summary"].path),
                Path(self.input()["wp"]["working_points"].path)]

    def run(self) -> None:
        self.record_sources()  # digests of what it is made from, before reading
        from rich.text import Text

        from utils.evaluation.report import Predictions, headline
        from utils.io import write_json, write_text
        from utils.plotting.demo import demo_summary
        from utils.progress import console

        roc_dir = Path(self.input()["roc"]["summary"].path).parent
        wp_dir = Path(self.input()["wp"]["working_points"].path).parent
        summary = json.loads((roc_dir / "summary.json").read_text())
        pred = Predictions.load(InferenceTask(**self.chain_kwargs()).local_path())
        text, terminal = demo_summary(summary, pred, roc_dir, wp_dir, self.model_name)
        with self.publishing("summary.txt") as work:
            write_text(work / "summary.txt", text)
            write_json(work / "summary.json", {
                "BvsL": headline(summary, "BvsL"), "BvsAll": headline(summary, "BvsAll"),
                "roc_dir": str(roc_dir), "wp_dir": str(wp_dir)})
            self.write_parameters(work)
        console.print(Text.from_ansi(terminal))
        console.print(text)
