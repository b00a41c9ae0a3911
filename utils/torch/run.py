"""Set up and run a training from a config and an exported dataset (law-free)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.allocator import keep_freed_memory
from utils.config import label_to_class
from utils.dataset.directory import DatasetDirectory
from utils.dataset.reweighting import reweighting_table
from utils.errors import InterruptedRun
from utils.models import BaseModel, InputSpec, ModelInputError, get_model
from utils.progress import console
from utils.settings import SettingsError, TrainSettings
from utils.torch.checkpoint import CheckpointError, completed_epochs, pick_device
from utils.torch.data import (
    TRAIN,
    VALIDATION,
    ChunkDataset,
    dataset_shards,
    split_rows,
    split_shards,
)
from utils.torch.training import DistContext, Trainer


def model_classes(model_cls: type[BaseModel], config: Any) -> dict[str, tuple[str, ...]]:
    """The model's class grouping of truth labels (its own, else the config's)."""
    classes = dict(model_cls.classes) if model_cls.classes is not None else dict(config.classes)
    unknown = sorted({label for labels in classes.values() for label in labels}
                     - set(config.truth_labels))
    if unknown:
        raise ModelInputError(f"model {model_cls.name} groups truth labels {unknown} that config "
                         f"{config.name!r} does not define")
    return classes


def check_training(config: Any, model_name: str, settings: TrainSettings) -> None:
    """Everything of a training that can fail on its names, checked before anything runs:
    the model exists and finds its inputs in the config, the optimiser and loss exist.
    No tensor is created (see :func:`utils.torch.optim.check_names`)."""
    from utils.torch.optim import check_names

    model_cls = get_model(model_name)
    classes = model_classes(model_cls, config)
    model_cls.check_inputs(InputSpec.from_config(config, tuple(classes)))
    check_names(settings)


def build_model(config: Any, model_name: str) -> tuple[BaseModel, dict[str, tuple[str, ...]]]:
    """Instantiate ``model_name`` with input sizes from ``config``; return it and its classes."""
    model_cls = get_model(model_name)
    classes = model_classes(model_cls, config)
    return model_cls(InputSpec.from_config(config, tuple(classes))), classes


def interrupted_message(out_dir: Path) -> str:
    """What to tell a user whose training was stopped."""
    done = completed_epochs(out_dir)
    return (f"interrupted after epoch {done[-1] if done else 0}; run the same command again "
            "to resume")


@contextlib.contextmanager
def interruptible(out_dir: Path) -> Iterator[None]:
    """SIGTERM (batch systems, ``kill``) is treated like Ctrl-C; either ends the block with
    :class:`InterruptedRun` saying after which epoch it stopped. Completed epochs are kept
    (checkpoints are atomic), so running the same command again resumes."""
    main = threading.current_thread() is threading.main_thread()
    previous = None
    received = [signal.SIGINT]
    if main:
        def stop(signum: int, frame: Any) -> None:
            received[0] = signum
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except KeyboardInterrupt:
        error = InterruptedRun(interrupted_message(out_dir))
        error.signum = received[0]  # the exit code is 128 + signal number
        raise error from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def run_training(config: Any, model_name: str, dataset_dir: Path, out_dir: Path,
                 settings: TrainSettings, total_epochs: int | None = None,
                 resume_epoch: int | None = None, require_resume: bool = False,
                 terminal_plot: bool = False, device: torch.device | None = None,
                 dist: DistContext | None = None, parameters: dict[str, Any] | None = None,
                 on_start: Callable[[], None] | None = None, verbose: bool = False) -> Trainer:
    """Train and write checkpoints, metrics and plots into ``out_dir``.

    With ``dist`` (torch.distributed initialised, see utils/torch/ddp.py) every rank trains on
    a disjoint share of the files with ``batch_size / world`` jets per step (the same global
    batch size); rank 0 prints and writes. ``parameters`` (the task's significant values) are
    stored in every checkpoint; a checkpoint made with other values or another label ->
    class mapping is never resumed. ``on_start`` is called (on rank 0) once the model, the
    data and the checkpoint to resume from are found valid, right before training starts.
    SIGINT/SIGTERM end the training with :class:`InterruptedRun`.
    """
    with interruptible(out_dir):
        return _run(config, model_name, dataset_dir, out_dir, settings, total_epochs,
                    resume_epoch, require_resume, terminal_plot, device, dist, parameters,
                    on_start, verbose)


def _run(config: Any, model_name: str, dataset_dir: Path, out_dir: Path,
         settings: TrainSettings, total_epochs: int | None, resume_epoch: int | None,
         require_resume: bool, terminal_plot: bool, device: torch.device | None,
         dist: DistContext | None, parameters: dict[str, Any] | None,
         on_start: Callable[[], None] | None, verbose: bool) -> Trainer:
    from utils.plotting.style import set_figure_label

    set_figure_label(config.figure_text)
    keep_freed_memory()
    torch.manual_seed(settings.seed)
    dist = dist or DistContext()
    if settings.batch_size % dist.world:
        raise SettingsError(f"--batch-size {settings.batch_size} must be divisible by the "
                         f"{dist.world} distributed processes")
    model, classes = build_model(config, model_name)
    shards = dataset_shards(dataset_dir)
    n_train = settings.n_train_files if settings.n_train_files > 0 else None
    split = split_shards(shards, settings.train_val_split, n_train)
    if split.warning and dist.main:
        console.print(f"[yellow]Warning: {split.warning}[/]")
    if dist.world > 1 and len(split.train) < 4 * dist.world:
        # too few files to give every rank a balanced share: share row ranges instead
        split.train = split_rows(split.train, dist.world)
    mapping = label_to_class(classes)
    groups = model.input_groups
    per_rank = settings.batch_size // dist.world
    precision = settings.training_precision
    train = ChunkDataset(split.train, groups, mapping, per_rank, TRAIN,
                         sampling=not settings.loss_weighting, seed=settings.seed,
                         precision=precision)
    val = ChunkDataset(split.validation, groups, mapping, per_rank, VALIDATION,
                       seed=settings.seed, precision=precision)
    train.set_rank(dist.rank, dist.world)
    val.set_rank(dist.rank, dist.world)
    device = device or pick_device()
    metadata = {"config_name": config.name, "config_fingerprint": config.fingerprint(),
                "model_name": model_name, "class_names": list(classes),
                "classes": {k: list(v) for k, v in classes.items()},
                "parameters": dict(parameters or {})}
    attack, scales = None, DatasetDirectory(dataset_dir).feature_scales()
    attack_settings = settings.attack_settings()
    if attack_settings.active:
        from utils.attacks.methods import Attack
        from utils.dataset.scales import dataset_scales

        scales = {"groups": dataset_scales(dataset_dir, config)}
        attack = Attack.from_config(attack_settings, config, groups, scales["groups"])
    if scales is not None:  # the unit of test-attack magnitudes, kept with the model
        metadata["feature_scales"] = scales["groups"]
    trainer = Trainer(model, train, val, out_dir, settings, device, attack=attack,
                      metadata=metadata,
                      epoch_callback=_terminal_roc(list(classes)) if terminal_plot else None,
                      dist=dist, verbose=verbose)
    resumed = trainer.resume(resume_epoch)
    if require_resume and not resumed:
        raise CheckpointError(f"--resume-training: no checkpoint in {out_dir}")
    if dist.main:
        if on_start is not None:
            on_start()
        info = DatasetDirectory(dataset_dir).info()
        _print_setup(split, settings, train, val, model_name, classes, model, device, dist,
                     verbose, info.get("reweighting", {}))
        if resumed:
            console.print(f"  Resuming after epoch {trainer.epoch} from "
                          f"{trainer.checkpoint_path(trainer.epoch).name}")
            for stale in out_dir.glob("model_*.pt"):
                if int(stale.stem.split("_")[1]) >= trainer.epoch:
                    stale.unlink()
    dist.barrier()
    trainer.fit(total_epochs or settings.epochs)
    if dist.main:
        console.print(f"[bold green]Training finished[/]: best validation loss "
                      f"{trainer.best_loss:.4f}; outputs in {out_dir}")
    return trainer


def _class_counts(shards: Any, class_names: list[str], mapping: Mapping[str, int]) -> str:
    """Jets per class in the chunk files of ``shards`` (read from the chunks' truth
    columns, so it is exact for any split)."""
    from utils.dataset.chunk_format import read_chunk

    counts = np.zeros(len(class_names), dtype=np.int64)
    for shard in shards:
        rows, layout = read_chunk(shard.path)
        lookup = np.array([mapping.get(label, -1) for label in layout.truth_labels])
        classes = lookup[np.argmax(rows[shard.start:shard.stop, layout.slice("truth")], axis=1)]
        counts += np.bincount(classes[classes >= 0], minlength=len(class_names))
    return ", ".join(f"{name} {n:,}" for name, n in zip(class_names, counts, strict=True))


def _print_setup(split: Any, settings: TrainSettings, train: ChunkDataset, val: ChunkDataset,
                 model_name: str, classes: dict[str, tuple[str, ...]], model: BaseModel,
                 device: torch.device, dist: DistContext, verbose: bool,
                 reweighting: dict[str, Any]) -> None:
    console.print("[bold]Training[/]")
    console.print(f"  #Train files: {len(split.train)} ({sum(s.rows for s in split.train):,} "
                  f"jets)   #Val files: {len(split.validation)} "
                  f"({sum(s.rows for s in split.validation):,} jets)")
    if verbose:
        mapping = label_to_class(classes)
        console.print(f"  training jets per class: "
                      f"{_class_counts(split.train, list(classes), mapping)}")
        console.print(f"  validation jets per class: "
                      f"{_class_counts(split.validation, list(classes), mapping)}")
    if reweighting:
        console.print(reweighting_table(reweighting))
    if settings.loss_weighting:
        console.print("  Using loss weighting (per-jet pT-eta weights in the loss, no sampling)")
    else:
        console.print("  Using weighted sampling (rejection sampling with the pT-eta weights, "
                      "re-drawn every epoch)")
    steps = train.expected_batches()
    console.print(f"  Jets per epoch: {steps * settings.batch_size:,} training "
                  f"({steps:,} steps of {settings.batch_size}; "
                  f"{train.expected_jets() * dist.world:,.0f} expected after reweighting), "
                  f"{val.expected_jets() * dist.world:,.0f} validation (every jet, its loss "
                  "weighted by the pT-eta weights)")
    console.print(f"  Model: {model_name} ({len(classes)} classes: {', '.join(classes)})   "
                  f"Optimizer: {settings.optimizer}   Scheduler: {settings.lr_scheduler}")
    console.print(f"  Total number of parameters: {model.n_parameters():,}")
    console.print(f"  Training attack: {settings.attack_settings().describe()}")
    console.print(f"  Batch size {settings.batch_size}, learning rate "
                  f"{settings.learning_rate:g}, batches of {settings.training_precision}"
                  f"{', mixed precision' if settings.mixed_precision else ''}")
    where = f"{dist.world} processes (DistributedDataParallel) on {device.type}" \
        if dist.world > 1 else str(device)
    console.print(f"  Start training on {where}")


def _terminal_roc(class_names: list[str]) -> Any:
    from rich.text import Text

    from utils.evaluation.discriminants import by_name, evaluate, softmax
    from utils.evaluation.roc import EvaluationError, auc, roc_curve
    from utils.plotting.terminal import terminal_roc

    def callback(epoch: int, pred: dict[str, np.ndarray]) -> None:
        disc = by_name("BvsL")
        try:
            _, score, signal_ = evaluate(disc, softmax(pred["logits"]), pred["target"],
                                         class_names)
            fpr, tpr, _ = roc_curve(score, signal_)
        except (EvaluationError, KeyError):
            return
        console.print(Text.from_ansi(terminal_roc({f"BvsL AUC {auc(fpr, tpr):.3f}": (tpr, fpr)},
                                                  f"Validation ROC after epoch {epoch}")))

    return callback
