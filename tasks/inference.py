"""InferenceTask: the best model of a training on a separate test dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import ConfigTask
from tasks.dataset import DatasetConstructorTask
from tasks.training import TrainingDependency, TrainingTask
from utils.settings import TrainSettings, stored_defaults

TEST_SAMPLE_VERSION = "test"


class TestDatasetDependency(TrainingDependency):
    """A training plus the test dataset it is evaluated on."""

    test_dataset_version = luigi.Parameter(
        default="test_dataset_version_01",
        description="version tag of the test dataset (exported by a second "
        "DatasetConstructorTask); default: test_dataset_version_01",
    )
    test_filelist = luigi.Parameter(
        default="",
        significant=False,
        description="file list of the test ROOT files; with a config that has built-in "
        "samples (demo) and no list, a test sample is generated with other seeds",
    )

    # the training's hyper-parameters are checked by TrainingTask, not recorded again here
    exclude_from_consistency = frozenset(stored_defaults(TrainSettings)) - {"seed"}

    def store_parts(self) -> tuple[str, ...]:
        return ConfigTask.store_parts(self) + (
            self.dataset_version, self.test_dataset_version, self.training_version,
            self.model_name, f"epochs_{self.epochs}")

    def test_dataset_task(self) -> DatasetConstructorTask:
        return DatasetConstructorTask.req(self, dataset_version=self.test_dataset_version,
                                          filelist=self.test_filelist,
                                          sample_version=TEST_SAMPLE_VERSION)


class InferenceTask(TestDatasetDependency):
    """Predict every jet of the test dataset with ``best_model.pt``.

    Outputs: ``prediction.npy`` (logits), ``truth.npy`` (class index), ``kinematics.npy``
    (pT, eta), ``process.npy``, ``output.root`` (tree ``tree``: jet_pt, jet_eta, process,
    prob_<class>, truth flags, observers) and ``inference_time.json``.
    """

    def requires(self) -> dict[str, Any]:
        return {"training": TrainingTask.req(self), "test_dataset": self.test_dataset_task()}

    def output(self) -> dict[str, law.LocalFileTarget]:
        from utils.torch.inference import PREDICTION_FILES

        outputs = {Path(name).stem: self.local_target(name) for name in PREDICTION_FILES}
        outputs["parameters"] = self.parameters_target()
        return outputs

    def run(self) -> None:
        from utils.torch.inference import run_inference
        from utils.torch.run import build_model

        config = self.load_config()
        model, classes = build_model(config, self.model_name)
        checkpoint = Path(self.input()["training"]["best_model"].path)
        test_dir = Path(self.input()["test_dataset"]["processed_files"].path).parent
        with self.publishing() as work:
            run_inference(config, model, classes, checkpoint, test_dir, work,
                          batch_size=self.settings.batch_size,
                          workers=self.settings.n_threads,
                          precision=self.settings.training_precision, verbose=self.verbose)
            self.write_parameters(work)
