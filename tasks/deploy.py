"""ExportONNXTask: a trained tagger as a validated ONNX graph with its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.training import TrainingDependency, TrainingTask
from utils.deploy import (
    CARD_FILE,
    CHECKPOINTS,
    MODEL_FILE,
    OPSET_DEFAULT,
    OPSET_RANGE,
    check_opset,
)
from utils.settings import TrainSettings, stored_defaults


class ExportONNXTask(TrainingDependency):
    """Export a training's ``best_model.pt`` (or last checkpoint) to ONNX for CMSSW.

    Outputs in ``ExportONNXTask/<config>/<dataset_version>/<training_version>/<model_name>/
    epochs_<N>/<attack...>[/opset_<n>][/checkpoint_last]/``: ``model.onnx`` (one float32
    input per feature group, raw zero-padded features; outputs ``probabilities`` and
    ``logits``), ``model_card.json`` (inputs with their branches, classes, discriminants,
    versions, validation) and ``parameters.json``. The graph is run with onnxruntime on the
    training's validation jets at batch sizes 1, 7 and 1024 and must agree with PyTorch to
    1e-5 in every probability, else nothing is written.
    """

    opset = luigi.IntParameter(
        default=OPSET_DEFAULT,
        description=f"ONNX opset of the graph ({OPSET_RANGE[0]}-{OPSET_RANGE[1]}); default: "
        f"{OPSET_DEFAULT}, which the ONNX Runtime of current CMSSW releases runs")
    checkpoint = luigi.ChoiceParameter(
        choices=CHECKPOINTS, default="best",
        description="checkpoint to export: best (lowest validation loss, best_model.pt) or "
        "last (the state after --epochs epochs); default: best")

    # the training's hyper-parameters are checked by TrainingTask, not recorded again here
    exclude_from_consistency = frozenset(stored_defaults(TrainSettings))

    def validate_parameters(self) -> None:
        check_opset(self.opset)

    def store_parts(self) -> tuple[str, ...]:
        extra = () if self.opset == OPSET_DEFAULT else (f"opset_{self.opset}",)
        extra += () if self.checkpoint == "best" else (f"checkpoint_{self.checkpoint}",)
        return super().store_parts() + extra

    def requires(self) -> TrainingTask:
        return TrainingTask.req(self)

    def output(self) -> dict[str, law.LocalFileTarget]:
        return {"model": self.local_target(MODEL_FILE), "card": self.local_target(CARD_FILE),
                "parameters": self.parameters_target()}

    def versions(self) -> dict[str, Any]:
        return {"dataset_version": self.dataset_version,
                "training_version": self.training_version, "model_name": self.model_name,
                "epochs": self.epochs, "training_path": "/".join(self.training_parts()),
                "checkpoint": self.checkpoint}

    def made_from(self) -> list[Path]:
        """The checkpoint the graph is exported from."""
        return [Path(self.input()["best_model" if self.checkpoint == "best" else "model"].path)]

    def run(self) -> None:
        self.record_sources()  # digests of what it is made from, before reading
        from utils.deploy.export import run_export

        (checkpoint,) = self.made_from()
        dataset_dir = Path(self.requires().input()["processed_files"].path).parent
        with self.publishing(CARD_FILE) as work:
            # the training's settings (its split gives the validation jets)
            run_export(self.load_config(), self.model_name, checkpoint, dataset_dir, work,
                       self.requires().settings, self.opset, self.versions())
            self.write_parameters(work)
        from utils.progress import console

        console.print(f"  {MODEL_FILE} and {CARD_FILE} in {self.local_path()}")
