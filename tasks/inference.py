"""InferenceTask: the best model of a training on a separate test dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import TORCH_RESOURCES, ConfigTask, setting
from tasks.dataset import DatasetConstructorTask
from tasks.deploy import ExportONNXTask
from tasks.generation import TEST_SAMPLE_VERSION
from tasks.training import TrainingDependency, TrainingTask
from utils.deploy import BACKENDS, check_backend
from utils.settings import EvaluationSettings, TrainSettings, make_attack_settings, stored_defaults


def _test(name: str) -> luigi.Parameter:
    return setting(EvaluationSettings, name)


class TestDatasetDependency(TrainingDependency):
    """A training plus the test dataset it is evaluated on, optionally under an adversarial
    attack of the test jets (``--test-attack*``)."""

    settings_class = EvaluationSettings

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
    test_sample_version = luigi.OptionalParameter(
        default=None, significant=False,
        description="config with built-in samples and no --test-filelist: version of the "
        f"generated test sample (GenerateSamplesTask); default: {TEST_SAMPLE_VERSION} for a "
        "new test dataset, else the stored value",
    )
    test_legacy_dataset = luigi.Parameter(
        default="",
        significant=False,
        description="directory of a test dataset exported by the original b-hive, imported "
        "as the test dataset version (see DatasetConstructorTask --legacy-dataset)",
    )

    backend = luigi.ChoiceParameter(
        choices=BACKENDS, default="torch",
        description="what evaluates the model: torch (best_model.pt in PyTorch) or onnx "
        "(the graph of ExportONNXTask in onnxruntime, as CMSSW runs it; its outputs go to a "
        "backend_onnx subdirectory); default: torch")
    test_attack = _test("test_attack")
    test_attack_magnitude = _test("test_attack_magnitude")
    test_attack_iterations = _test("test_attack_iterations")
    test_attack_individual_factors = _test("test_attack_individual_factors")
    test_attack_reduce = _test("test_attack_reduce")
    test_attack_restrict_impact = _test("test_attack_restrict_impact")
    test_attack_overshoot = _test("test_attack_overshoot")
    test_attack_uncertainty = _test("test_attack_uncertainty")

    # the training's hyper-parameters are checked by TrainingTask, not recorded again here
    exclude_from_consistency = frozenset(stored_defaults(TrainSettings)) - {"seed"}

    def store_parts(self) -> tuple[str, ...]:
        """``.../<training parts>/test_attack_<t>[/test_epsilon_<e>/test_iterations_<i>]``."""
        return ConfigTask.store_parts(self) + (
            self.dataset_version, self.test_dataset_version, *self.training_parts(),
            *make_attack_settings(self.param_kwargs, "test_").path_parts("test_"),
            *(() if self.backend == "torch" else (f"backend_{self.backend}",)))

    def validate_parameters(self) -> None:
        check_backend(self.backend, self.settings.attack_settings("test_").active)

    def parameters_record(self) -> dict[str, Any]:
        return {**super().parameters_record(), **self.attack_record("test_")}

    def test_dataset_task(self) -> DatasetConstructorTask:
        """The test dataset: its sample version given, else stored, else the test default."""
        def task(sample_version: str | None) -> DatasetConstructorTask:
            return DatasetConstructorTask.req(self, dataset_version=self.test_dataset_version,
                                              filelist=self.test_filelist,
                                              legacy_dataset=self.test_legacy_dataset,
                                              sample_version=sample_version)

        dataset = task(self.test_sample_version)
        if self.test_sample_version is None and not dataset.holds_result():
            dataset = task(TEST_SAMPLE_VERSION)
        return dataset


class InferenceTask(TestDatasetDependency):
    """Predict every jet of the test dataset with ``best_model.pt``.

    Outputs: ``prediction.npy`` (logits), ``truth.npy`` (class index), ``kinematics.npy``
    (pT, eta), ``process.npy``, ``output.root`` (tree ``tree``: jet_pt, jet_eta, process,
    prob_<class>, truth flags, observers), ``inference_time.json`` and ``attack.json`` (the
    test attack and the input changes it made per group). With ``--backend onnx`` the
    exported graph (ExportONNXTask, best checkpoint, default opset) predicts in
    onnxruntime instead, into ``.../backend_onnx/``.
    """

    resources = TORCH_RESOURCES

    def requires(self) -> dict[str, Any]:
        required = {"training": TrainingTask.req(self), "test_dataset": self.test_dataset_task()}
        if self.backend == "onnx":
            required["onnx"] = ExportONNXTask.req(self)
        return required

    def made_from(self) -> list[Path]:
        """The checkpoint (and with --backend onnx the graph) the predictions come from."""
        inputs = self.input()
        return [Path(inputs["training"]["best_model"].path)] + (
            [Path(inputs["onnx"]["model"].path)] if self.backend == "onnx" else [])

    def output(self) -> dict[str, law.LocalFileTarget]:
        from utils.evaluation.report import PREDICTION_FILES

        outputs = {Path(name).stem: self.local_target(name) for name in PREDICTION_FILES}
        outputs["parameters"] = self.parameters_target()
        return outputs

    def run(self) -> None:
        self.record_sources()  # digests of what it is made from, before reading
        from utils.torch.inference import run_inference
        from utils.torch.run import build_model

        config = self.load_config()
        model, classes = build_model(config, self.model_name)
        checkpoint = Path(self.input()["training"]["best_model"].path)
        test_dir = Path(self.input()["test_dataset"]["processed_files"].path).parent
        dataset_dir = Path(self.requires()["training"].input()["processed_files"].path).parent
        onnx_model = Path(self.input()["onnx"]["model"].path) if self.backend == "onnx" else None
        with self.publishing() as work:
            run_inference(config, model, classes, checkpoint, test_dir, work,
                          onnx_model=onnx_model,
                          batch_size=self.settings.batch_size,
                          workers=self.settings.n_threads,
                          precision=self.settings.training_precision, verbose=self.verbose,
                          attack_settings=self.settings.attack_settings("test_"),
                          dataset_dir=dataset_dir, seed=self.settings.seed)
            self.write_parameters(work)
