"""Set up and run a training from a config and an exported dataset (law-free)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.dataset.export import read_processed_files
from utils.models import BaseModel, InputSpec, get_model
from utils.progress import console
from utils.torch.data import (
    TRAIN,
    VALIDATION,
    ChunkDataset,
    dataset_shards,
    split_rows,
    split_shards,
)
from utils.torch.training import DistContext, Trainer, TrainSettings, pick_device


def model_classes(model_cls: type[BaseModel], config: Any) -> dict[str, tuple[str, ...]]:
    """The model's class grouping of truth labels (its own, else the config's)."""
    classes = dict(model_cls.classes) if model_cls.classes is not None else dict(config.classes)
    unknown = sorted({label for labels in classes.values() for label in labels}
                     - set(config.truth_labels))
    if unknown:
        raise ValueError(f"model {model_cls.name} groups truth labels {unknown} that config "
                         f"{config.name!r} does not define")
    return classes


def label_to_class(classes: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    return {label: i for i, labels in enumerate(classes.values()) for label in labels}


def build_model(config: Any, model_name: str) -> tuple[BaseModel, dict[str, tuple[str, ...]]]:
    """Instantiate ``model_name`` with input sizes from ``config``; return it and its classes."""
    model_cls = get_model(model_name)
    classes = model_classes(model_cls, config)
    return model_cls(InputSpec.from_config(config, tuple(classes))), classes


def run_training(config: Any, model_name: str, dataset_dir: Path, out_dir: Path,
                 settings: TrainSettings, train_val_split: float = 0.85,
                 n_train_files: int = -1, precision: str = "float32",
                 total_epochs: int | None = None, resume_epoch: int | None = None,
                 require_resume: bool = False, terminal_plot: bool = False,
                 device: torch.device | None = None, dist: DistContext | None = None,
                 parameters: dict[str, Any] | None = None) -> Trainer:
    """Train and write checkpoints, metrics and plots into ``out_dir``.

    With ``dist`` (torch.distributed initialised, see utils/torch/ddp.py) every rank trains on
    a disjoint share of the files with ``batch_size / world`` jets per step (the same global
    batch size); rank 0 prints and writes. ``parameters`` (the task's significant values) are
    stored in every checkpoint; a checkpoint made with other values is never resumed.
    """
    torch.manual_seed(settings.seed)
    dist = dist or DistContext()
    if settings.batch_size % dist.world:
        raise ValueError(f"--batch-size {settings.batch_size} must be divisible by the "
                         f"{dist.world} distributed processes")
    model, classes = build_model(config, model_name)
    shards = dataset_shards(dataset_dir, read_processed_files(dataset_dir))
    split = split_shards(shards, train_val_split, n_train_files if n_train_files > 0 else None)
    if split.warning and dist.main:
        console.print(f"[yellow]Warning: {split.warning}[/]")
    if dist.world > 1 and len(split.train) < 4 * dist.world:
        # too few files to give every rank a balanced share: share row ranges instead
        split.train = split_rows(split.train, dist.world)
    mapping = label_to_class(classes)
    groups = model.input_groups
    per_rank = settings.batch_size // dist.world
    train = ChunkDataset(split.train, groups, mapping, per_rank, TRAIN,
                         sampling=not settings.loss_weighting, seed=settings.seed,
                         precision=precision)
    val = ChunkDataset(split.validation, groups, mapping, per_rank, VALIDATION,
                       seed=settings.seed, precision=precision)
    train.set_rank(dist.rank, dist.world)
    val.set_rank(dist.rank, dist.world)
    device = device or pick_device()
    metadata = {"config_name": config.name, "model_name": model_name,
                "class_names": list(classes), "classes": {k: list(v) for k, v in
                                                          classes.items()},
                "parameters": dict(parameters or {})}
    trainer = Trainer(model, train, val, out_dir, settings, device, metadata=metadata,
                      epoch_callback=_terminal_roc(list(classes)) if terminal_plot else None,
                      dist=dist)
    resumed = trainer.resume(resume_epoch)
    if require_resume and not resumed:
        raise FileNotFoundError(f"--resume-training: no checkpoint in {out_dir}")
    if dist.main:
        _print_setup(split, settings, train, val, model_name, classes, model, precision, device,
                     dist)
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


def _print_setup(split: Any, settings: TrainSettings, train: ChunkDataset, val: ChunkDataset,
                 model_name: str, classes: dict[str, tuple[str, ...]], model: BaseModel,
                 precision: str, device: torch.device, dist: DistContext) -> None:
    console.print("[bold]Training[/]")
    console.print(f"  #Train files: {len(split.train)} ({sum(s.rows for s in split.train):,} "
                  f"jets)   #Val files: {len(split.validation)} "
                  f"({sum(s.rows for s in split.validation):,} jets)")
    if settings.loss_weighting:
        console.print("  Using loss weighting (per-jet pT-eta weights in the loss, no sampling)")
    else:
        console.print("  Using weighted sampling (rejection sampling with the pT-eta weights, "
                      "re-drawn every epoch)")
    console.print(f"  Estimated jets per epoch (after reweighting): "
                  f"{train.expected_jets() * dist.world:,.0f} training, "
                  f"{val.expected_jets() * dist.world:,.0f} validation (weighted)")
    console.print(f"  Model: {model_name} ({len(classes)} classes: {', '.join(classes)})   "
                  f"Optimizer: {settings.optimizer}   Scheduler: {settings.lr_scheduler}")
    console.print(f"  Total number of parameters: {model.n_parameters():,}")
    console.print(f"  Batch size {settings.batch_size}, learning rate "
                  f"{settings.learning_rate:g}, batches of {precision}"
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
            _, score, signal = evaluate(disc, softmax(pred["logits"]), pred["target"],
                                        class_names)
            fpr, tpr, _ = roc_curve(score, signal)
        except (EvaluationError, KeyError):
            return
        console.print(Text.from_ansi(terminal_roc({f"BvsL AUC {auc(fpr, tpr):.3f}": (tpr, fpr)},
                                                  f"Validation ROC after epoch {epoch}")))

    return callback
