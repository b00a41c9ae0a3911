"""TrainingTask: train a tagger (BaseModel subclass) on an exported dataset."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import TORCH_RESOURCES, DatasetDependency, setting
from tasks.dataset import DatasetConstructorTask
from utils.settings import TrainSettings


def _train(name: str, **kwargs: Any) -> luigi.Parameter:
    return setting(TrainSettings, name, **kwargs)


def has_checkpoints(directory: Path) -> bool:
    """True if ``directory`` holds a training checkpoint (by name: no torch needed)."""
    return directory.is_dir() and any(directory.glob("model_*.pt"))


class TrainingDependency(DatasetDependency):
    """Parameters that identify a training. Hyper-parameters default to the values stored
    for an existing ``--training-version`` (or the documented defaults for a new one)."""

    settings_class = TrainSettings

    training_version = luigi.Parameter(
        default="training_version_01",
        description="version tag of the training (a directory name); default: "
        "training_version_01",
    )
    model_name = luigi.Parameter(
        description="model to train, one of the registered BaseModel names (DeepJet, "
        "DeepJetHLT, DeepJetTransformer, ParticleNet, ParticleTransformer, MLP)",
    )
    epochs = _train("epochs")
    batch_size = _train("batch_size")
    learning_rate = _train("learning_rate")
    optimizer = _train("optimizer")
    betas = _train("betas")
    eps = _train("eps")
    weight_decay = _train("weight_decay")
    lr_scheduler = _train("lr_scheduler")
    lr_decay_factor = _train("lr_decay_factor")
    loss_function = _train("loss_function")
    loss_weighting = _train("loss_weighting")
    grad_clip = _train("grad_clip")
    mixed_precision = _train("mixed_precision")
    training_precision = _train("training_precision")
    train_val_split = _train("train_val_split")
    n_train_files = _train("n_train_files")
    seed = _train("seed")
    n_threads = _train("n_threads", significant=False)
    use_torch_compile = _train("use_torch_compile", significant=False)
    torch_compile_mode = _train("torch_compile_mode", significant=False)
    attack = _train("attack")
    attack_magnitude = _train("attack_magnitude")
    attack_iterations = _train("attack_iterations")
    attack_individual_factors = _train("attack_individual_factors")
    attack_reduce = _train("attack_reduce")
    attack_restrict_impact = _train("attack_restrict_impact")
    attack_overshoot = _train("attack_overshoot")
    attack_uncertainty = _train("attack_uncertainty")

    def complete(self) -> bool:
        """Also checks the model and optimiser names against the config (imports torch)
        where this task is still to run, here and in every task after the training: luigi
        asks the task that was run first, so a wrong name stops the chain before any task of
        it (e.g. the test dataset's export) writes a file. A finished task skips it (its
        result was made with these names; importing torch took seconds)."""
        if not self.holds_result():
            from utils.torch.run import check_training

            check_training(self.load_config(), self.model_name, self.settings)
        return super().complete()

    def attack_record(self, prefix: str = "") -> dict[str, Any]:
        """What the ``--<prefix>attack`` keeps nominal (config edits there change results
        without changing the exported data), for parameters.json; {} without an attack."""
        from utils.attacks import kept_nominal

        attack = self.settings.attack_settings(prefix)
        if not attack.active:
            return {}
        return {f"{prefix}attack_kept_nominal": kept_nominal(self.load_config(), attack.reduce)}

    def parameters_record(self) -> dict[str, Any]:
        return {**super().parameters_record(), **self.attack_record()}

    def training_parts(self) -> tuple[str, ...]:
        """``<training_version>/<model_name>/epochs_<N>/<attack>[/epsilon_<e>/...]``."""
        from utils.settings import make_attack_settings

        return (self.training_version, self.model_name, f"epochs_{self.epochs}",
                *make_attack_settings(self.param_kwargs).path_parts())

    def store_parts(self) -> tuple[str, ...]:
        return super().store_parts() + self.training_parts()


class TrainingTask(TrainingDependency):
    """Train ``--model-name`` on the dataset; checkpoints after every epoch.

    Outputs in ``TrainingTask/<config>[/debug]/<dataset_version>/<training_version>/
    <model_name>/epochs_<N>/<attack>[/epsilon_<e>/iterations_<i>...]/``: ``model_<epoch>.pt``
    (0-based), ``best_model.pt``, ``training_metrics.npz``, ``validation_metrics.npz``,
    ``loss``/``accuracy`` plots, ``parameters.json``. An interrupted training resumes from its
    last checkpoint; a version is locked to its parameters once it holds a checkpoint. A
    nominal training made before attacks existed (its files directly in ``epochs_<N>/``)
    keeps being found there.
    """

    resources = TORCH_RESOURCES

    def store_parts(self) -> tuple[str, ...]:
        parts = super().store_parts()
        if parts[-1] == "nominal":  # accept the layout of trainings made before attacks
            from tasks.base import data_path

            legacy = parts[:-1]
            if not has_checkpoints(data_path().joinpath(*parts)) and \
                    has_checkpoints(data_path().joinpath(*legacy)):
                return legacy
        return parts

    resume_training = luigi.BoolParameter(
        default=False, significant=False,
        description="require a checkpoint to resume from (resuming from the last checkpoint "
        "of an interrupted training happens anyway)")
    resume_epoch = luigi.OptionalIntParameter(
        default=None, significant=False,
        description="restart an unfinished (or, with --extend-training, a finished) training "
        "from the state after this many completed epochs (0: from scratch); later "
        "checkpoints are replaced")
    extend_training = luigi.IntParameter(
        default=0, significant=False,
        description="train this many epochs more than --epochs, continuing the schedule of "
        "the finished training in the same directory")
    terminal_plot = luigi.BoolParameter(
        default=False, significant=False,
        description="draw the validation b-vs-light ROC in the terminal after every epoch")
    ddp = luigi.IntParameter(
        default=1, significant=False,
        description="train with DistributedDataParallel on this many processes (torchrun; "
        "one per GPU, or gloo on CPU); --batch-size stays the global batch size; default: 1")

    def requires(self) -> DatasetConstructorTask:
        return DatasetConstructorTask.req(self)

    @property
    def total_epochs(self) -> int:
        return self.settings.epochs + self.extend_training

    def holds_result(self) -> bool:
        from utils.torch.checkpoint import completed_epochs

        return bool(completed_epochs(self.local_path()))

    def output(self) -> dict[str, Any]:
        outputs: dict[str, Any] = {
            "model": self.local_target(f"model_{self.total_epochs - 1}.pt"),
            "best_model": self.local_target("best_model.pt"),
            "training_metrics": self.local_target("training_metrics.npz"),
            "validation_metrics": self.local_target("validation_metrics.npz"),
            "parameters": self.parameters_target(),
        }
        # every existing checkpoint, so that --remove-output leaves nothing to resume from
        directory = self.local_path()
        checkpoints = sorted(directory.glob("model_*.pt")) if directory.exists() else []
        if checkpoints:
            outputs["checkpoints"] = law.TargetCollection(
                [self.local_target(p.name) for p in checkpoints])
        return outputs

    def validate_parameters(self) -> None:
        from utils.settings import SettingsError

        if self.extend_training < 0:
            raise SettingsError(f"--extend-training must be >= 0; got {self.extend_training}")
        if self.ddp < 1:
            raise SettingsError(f"--ddp must be >= 1; got {self.ddp}")
        if self.settings.batch_size % self.ddp:  # (checked again in each process)
            raise SettingsError(f"--batch-size {self.settings.batch_size} must be divisible by "
                                f"--ddp {self.ddp} (the distributed processes)")
        if self.resume_epoch is not None and self.resume_epoch < 0:
            raise SettingsError(f"--resume-epoch must be >= 0; got {self.resume_epoch}")

    def run(self) -> None:
        from utils.errors import InterruptedRun
        from utils.io import remove_stale
        from utils.progress import console
        from utils.torch.optim import check_settings
        from utils.torch.run import interrupted_message

        check_settings(self.settings)  # the full check, before anything is written
        out_dir = self.local_path()
        remove_stale(out_dir)  # temporaries of killed runs
        dataset_dir = Path(self.input()["processed_files"].path).parent

        def start() -> None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.write_parameters(out_dir)

        arguments = dict(
            model_name=self.model_name, dataset_dir=dataset_dir, out_dir=out_dir,
            total_epochs=self.total_epochs, resume_epoch=self.resume_epoch,
            require_resume=self.resume_training, terminal_plot=self.terminal_plot,
            parameters=self.parameters_record()["parameters"], verbose=self.verbose)
        try:
            if self.ddp > 1:
                from utils.torch.ddp import launch, training_spec
                from utils.torch.run import interruptible

                start()
                with interruptible(out_dir):
                    launch(training_spec(self.config, self.settings, **arguments), self.ddp,
                           out_dir)
            else:
                from utils.torch.run import run_training

                run_training(config=self.load_config(), settings=self.settings,
                             on_start=start, **arguments)
        except (InterruptedRun, KeyboardInterrupt) as exc:
            message = str(exc) if isinstance(exc, InterruptedRun) and str(exc) else \
                interrupted_message(out_dir)
            if multiprocessing.parent_process() is not None:
                # a luigi worker process (--workers > 1): the scheduler reports the failure
                raise InterruptedRun(message) from None
            # one line, no traceback, no luigi summary: the user asked to stop
            console.print(f"[bold yellow]{message}[/]")
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + getattr(exc, "signum", signal.SIGINT))
