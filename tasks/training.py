"""TrainingTask: train a tagger (BaseModel subclass) on an exported dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import DatasetDependency
from tasks.dataset import DatasetConstructorTask

SCHEDULERS = ("none", "epoch_lin_decay", "batch_lin_decay", "batch_cosine_warmup")
PRECISIONS = ("float32", "float16", "bfloat16")


class TrainingDependency(DatasetDependency):
    """Parameters that identify a training. Hyper-parameters default to the values stored
    for an existing ``--training-version`` (or the documented defaults for a new one)."""

    training_version = luigi.Parameter(
        default="training_version_01",
        description="version tag of the training (a directory name); default: "
        "training_version_01",
    )
    model_name = luigi.Parameter(
        description="model to train, one of the registered BaseModel names (DeepJet, "
        "DeepJetHLT, DeepJetTransformer, ParticleNet, ParticleTransformer, MLP)",
    )
    epochs = luigi.IntParameter(default=1, description="number of epochs; default: 1")
    batch_size = luigi.OptionalIntParameter(default=None, description="jets per batch; "
                                            "default: 1024")
    learning_rate = luigi.OptionalFloatParameter(default=None, description="initial learning "
                                                 "rate; default: 1e-3")
    optimizer = luigi.OptionalParameter(default=None, description="any torch.optim optimiser "
                                        "name (AdamW, Adam, RAdam, SGD, ...); default: AdamW")
    betas = luigi.OptionalParameter(default=None, description="Adam-type betas as 'b1,b2'; "
                                    "default: 0.95,0.999")
    eps = luigi.OptionalFloatParameter(default=None, description="optimiser epsilon; "
                                       "default: 1e-6")
    weight_decay = luigi.OptionalFloatParameter(default=None, description="weight decay; "
                                                "default: 0.01")
    lr_scheduler = luigi.OptionalChoiceParameter(
        default=None, choices=SCHEDULERS,
        description="learning-rate schedule: none; epoch_lin_decay / batch_lin_decay "
        "(constant, then decay over the last 30% of epochs / batches to lr*lr_decay_factor); "
        "batch_cosine_warmup (one-epoch warm-up, cosine decay); default: epoch_lin_decay")
    lr_decay_factor = luigi.OptionalFloatParameter(default=None, description="final learning "
                                                   "rate / initial; default: 0.01")
    loss_function = luigi.OptionalParameter(default=None, description="torch.nn loss on "
                                            "(logits, class); default: CrossEntropyLoss")
    loss_weighting = luigi.OptionalBoolParameter(
        default=None, description="use the per-jet pT-eta weights in the loss instead of "
        "rejection sampling; default: False")
    mixed_precision = luigi.OptionalBoolParameter(
        default=None, description="automatic mixed precision (float16 on GPU, bfloat16 on "
        "CPU); default: False")
    training_precision = luigi.OptionalChoiceParameter(
        default=None, choices=PRECISIONS,
        description="dtype of the batches handed to the device (float32, float16, bfloat16); "
        "default: float32")
    train_val_split = luigi.OptionalFloatParameter(
        default=None, description="fraction of the chunk files used for training, the rest "
        "validates (one file: split by rows); default: 0.85")
    n_train_files = luigi.OptionalIntParameter(default=None, description="use at most this "
                                               "many training files (-1 or 0: all); "
                                               "default: -1")
    n_threads = luigi.IntParameter(default=1, significant=False, description="loader threads, "
                                   "each reading its own files (0: load in the training "
                                   "thread); default: 1")
    use_torch_compile = luigi.BoolParameter(default=False, significant=False,
                                            description="compile the model with torch.compile")
    torch_compile_mode = luigi.Parameter(default="default", significant=False,
                                         description="torch.compile mode; default: default")

    stored_defaults = {
        **DatasetDependency.stored_defaults,
        "batch_size": 1024, "learning_rate": 1e-3, "optimizer": "AdamW", "betas": "0.95,0.999",
        "eps": 1e-6, "weight_decay": 0.01, "lr_scheduler": "epoch_lin_decay",
        "lr_decay_factor": 1e-2, "loss_function": "CrossEntropyLoss", "loss_weighting": False,
        "mixed_precision": False, "training_precision": "float32", "train_val_split": 0.85,
        "n_train_files": -1,
    }

    def store_parts(self) -> tuple[str, ...]:
        return super().store_parts() + (self.training_version, self.model_name,
                                        f"epochs_{self.epochs}")

    def settings(self) -> Any:
        """The resolved hyper-parameters as :class:`utils.torch.training.TrainSettings`."""
        from utils.torch.training import TrainSettings

        r = self.resolved
        try:
            betas = tuple(float(b) for b in str(r("betas")).split(","))
        except ValueError:
            betas = ()
        if len(betas) != 2:
            raise ValueError(f"--betas must be two comma-separated numbers, got {r('betas')!r}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        return TrainSettings(
            epochs=self.epochs, batch_size=r("batch_size"), learning_rate=r("learning_rate"),
            optimizer=r("optimizer"), betas=betas, eps=r("eps"),
            weight_decay=r("weight_decay"), lr_scheduler=r("lr_scheduler"),
            lr_decay_factor=r("lr_decay_factor"), loss_function=r("loss_function"),
            loss_weighting=r("loss_weighting"), mixed_precision=r("mixed_precision"),
            use_torch_compile=self.use_torch_compile,
            torch_compile_mode=self.torch_compile_mode, seed=r("seed"),
            loader_workers=self.n_threads)


class TrainingTask(TrainingDependency):
    """Train ``--model-name`` on the dataset; checkpoints after every epoch.

    Outputs in ``TrainingTask/<config>[/debug]/<dataset_version>/<training_version>/
    <model_name>/epochs_<N>/``: ``model_<epoch>.pt`` (0-based), ``best_model.pt``,
    ``training_metrics.npz``, ``validation_metrics.npz``, ``loss``/``accuracy`` plots,
    ``parameters.json``. An interrupted training resumes from its last checkpoint.
    """

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
        return self.epochs + self.extend_training

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

    def run(self) -> None:
        from utils.torch.ddp import launch, training_spec
        from utils.torch.run import run_training

        out_dir = self.local_path()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.write_parameters(out_dir)
        dataset_dir = Path(self.input()["processed_files"].path).parent
        arguments = dict(
            model_name=self.model_name, dataset_dir=dataset_dir, out_dir=out_dir,
            train_val_split=self.resolved("train_val_split"),
            n_train_files=self.resolved("n_train_files"),
            precision=self.resolved("training_precision"), total_epochs=self.total_epochs,
            resume_epoch=self.resume_epoch, require_resume=self.resume_training,
            terminal_plot=self.terminal_plot)
        arguments["parameters"] = self.parameters_record()["parameters"]
        if self.ddp > 1:
            launch(training_spec(self.config, self.settings(), **arguments), self.ddp, out_dir)
        else:
            run_training(config=self.load_config(), settings=self.settings(), **arguments)
