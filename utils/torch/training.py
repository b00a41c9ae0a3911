"""The training loop: epochs, validation, checkpoints, resume, metrics and plots.

One place, :meth:`Trainer.training_step`, turns a batch into a loss; its first action applies
the training attack (:mod:`utils.attacks`, ``--attack``) to the batch, if there is one
(adversarial training; validation stays nominal).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.attacks.methods import Attack, attack_mode
from utils.errors import BHiveError
from utils.io import save_npz, write_bytes
from utils.progress import console, progress_bar
from utils.settings import TrainSettings
from utils.torch.checkpoint import (
    BEST,
    CheckpointError,
    check_classes,
    checkpoint_path,
    completed_epochs,
    load_checkpoint,
    pick_device,
    save_checkpoint,
)
from utils.torch.data import ChunkDataset, DataError, training_batches
from utils.torch.inference import predict
from utils.torch.optim import make_loss, make_optimizer, make_scheduler

METRICS = ("loss", "accuracy", "jets", "seconds", "jets_per_second", "learning_rate",
           "load_seconds")


class TrainingError(BHiveError, FloatingPointError):
    """The training diverged (non-finite loss)."""


@dataclass
class History:
    """Per-epoch metrics of training and validation."""

    train: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in METRICS})
    validation: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in METRICS})

    def truncate(self, n: int) -> None:
        for part in (self.train, self.validation):
            for key in part:
                del part[key][n:]

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {"train": self.train, "validation": self.validation}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, list[float]]]) -> History:
        history = cls()
        for part, values in (("train", history.train), ("validation", history.validation)):
            for key, series in data.get(part, {}).items():
                values[key] = [float(v) for v in series]
        return history


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of a (torch.distributed) training; world 1: single process."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all ranks."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def everyone(self, flag: bool) -> bool:
        """True if ``flag`` is true on every rank (keeps the ranks in lock-step)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        tensor = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class Trainer:
    """Train ``model`` on ``train_data``, validate on ``val_data``, write into ``out_dir``."""

    def __init__(self, model: nn.Module, train_data: ChunkDataset, val_data: ChunkDataset,
                 out_dir: Path, settings: TrainSettings, device: torch.device | None = None,
                 attack: Attack | None = None, metadata: Mapping[str, Any] | None = None,
                 epoch_callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
                 dist: DistContext | None = None, verbose: bool = False) -> None:
        dist = dist or DistContext()
        self.model = model
        self.train_data, self.val_data = train_data, val_data
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.device = device or pick_device()
        self.attack = attack if attack is not None and attack.active else None
        self.metadata = dict(metadata or {})
        self.epoch_callback = epoch_callback
        self.dist = dist
        self.verbose = verbose
        torch.manual_seed(settings.seed)
        self.model.to(self.device)
        self.optimizer = make_optimizer(settings.optimizer, model.parameters(),
                                        settings.learning_rate, settings.beta_pair, settings.eps,
                                        settings.weight_decay)
        # fixed steps per epoch (the same on every rank), so schedules end where they say
        self.batches_per_epoch = train_data.expected_batches()
        self.scheduler, self.per_batch = make_scheduler(
            settings.lr_scheduler, self.optimizer, settings.epochs, self.batches_per_epoch,
            settings.lr_decay_factor)
        self.criterion = make_loss(settings.loss_function)
        self.forward = model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # a rank's batch may leave parameters unused (DeepJet skips a group without
            # candidates, e.g. no secondary vertex in a few jets): DDP must look for them,
            # else the ranks' gradient reductions fall out of step
            self.forward = DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        if settings.use_torch_compile:
            self.forward = torch.compile(self.forward, mode=settings.torch_compile_mode)
        amp = settings.mixed_precision
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp and
                                           self.amp_dtype == torch.float16)
        self.history = History()
        self.best_loss = float("inf")
        self.epoch = 0  # number of completed epochs
        self.total_epochs = settings.epochs  # epochs to train (fit's, with --extend-training)

    # -- one batch ----------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                         torch.Tensor]:
        inputs = {k: v.to(self.device, non_blocking=True).float()
                  for k, v in batch["inputs"].items()}
        return (inputs, batch["target"].to(self.device, non_blocking=True),
                batch["weight"].to(self.device, non_blocking=True))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.settings.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def attack_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for the training attack: of the bare model (not the DDP/compiled wrapper:
        attacks need no gradient synchronisation), under bfloat16 autocast with mixed
        precision on CPU, but in float32 under float16 mixed precision (CUDA), where the
        input gradients of confidently classified jets underflow to zero."""
        context = self._autocast() if self.amp_dtype == torch.bfloat16 else \
            contextlib.nullcontext()
        with context:
            return self.model(inputs).float()

    def compute_loss(self, inputs: dict[str, torch.Tensor], target: torch.Tensor,
                     weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            logits = self.forward(inputs)
        loss = self.model.loss(logits.float(), target, weight, self.criterion)
        return loss, logits

    def training_step(self, batch: dict[str, Any]) -> tuple[float, int, int]:
        """One optimisation step; returns (loss, correct, jets)."""
        inputs, target, weight = self._to_device(batch)
        weight = weight if self.settings.loss_weighting else None
        if self.attack is not None:
            with attack_mode(self.model):
                inputs = self.attack(self.attack_logits, inputs, target, self.criterion)
        loss, logits = self.compute_loss(inputs, target, weight)
        if not torch.isfinite(loss):
            raise TrainingError(f"training loss is {loss.item()} at epoch {self.epoch + 1}; "
                                     "lower --learning-rate or check the inputs for extreme "
                                     "values")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip > 0:  # on the true gradients (unscaled under AMP)
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.per_batch:
            self.scheduler.step()
        correct = int((logits.argmax(dim=1) == target).sum())
        return float(loss.detach()), correct, len(target)

    # -- epochs -----------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.train_data.set_epoch(self.epoch)
        torch.manual_seed(epoch_seed(self.settings.seed, self.epoch))
        loader = training_batches(self.train_data, self.settings.n_threads,
                                  self.batches_per_epoch)
        total_loss = correct = jets = 0.0
        waiting = 0.0
        lr_start = self.lr
        start = time.perf_counter()
        description = f"Epoch {self.epoch + 1}/{self.total_epochs} training"
        error: DataError | None = None
        try:
            with progress_bar(description, total=self.batches_per_epoch, unit="batches",
                              extra="loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} "
                                    "{task.fields[rate]:,.0f} jets/s",
                              loss=float("nan"), lr=self.lr, rate=0.0,
                              disable=not self.dist.main) as bar:
                while True:
                    tick = time.perf_counter()
                    try:
                        batch = next(loader, None)
                    except DataError as exc:  # raised on every rank below, not one alone
                        batch, error = None, exc
                    waiting += time.perf_counter() - tick
                    # all ranks take the same number of steps: stop when any runs out
                    if not self.dist.everyone(batch is not None):
                        break
                    loss, n_correct, n = self.training_step(batch)
                    total_loss += loss * n
                    correct += n_correct
                    jets += n
                    bar.advance()
                    bar.update(loss=total_loss / jets, lr=self.lr,
                               rate=jets * self.dist.world / (time.perf_counter() - start))
        finally:
            loader.close()  # stop the loader threads of an unfinished epoch
        if not self.dist.everyone(error is None):
            raise error or DataError("another distributed process ran out of training data")
        total_loss, correct, jets = self.dist.sum([total_loss, correct, jets])
        seconds = time.perf_counter() - start
        if not self.per_batch:
            self.scheduler.step()
        return {"loss": total_loss / jets, "accuracy": correct / jets, "jets": jets,
                "seconds": seconds, "jets_per_second": jets / seconds,
                "learning_rate": lr_start, "load_seconds": waiting}

    def predict(self, data: ChunkDataset, description: str = "Predicting"
                ) -> dict[str, np.ndarray]:
        """Logits and batch fields for every jet of ``data`` (no sampling, file order)."""
        dtype = self.amp_dtype if self.settings.mixed_precision else None
        return predict(self.model, data, self.device, self.settings.n_threads,
                       description, dtype, quiet=not self.dist.main)

    def validate(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Weighted validation loss/accuracy over all validation jets (the reweighted
        distribution, without sampling noise)."""
        start = time.perf_counter()
        pred = self.predict(self.val_data, f"Epoch {self.epoch + 1}/{self.total_epochs} "
                                           "validation")
        logits = torch.from_numpy(pred.get("logits", np.zeros((0, 1), np.float32)))
        target = torch.from_numpy(pred.get("target", np.zeros(0, np.int64)))
        weight = torch.from_numpy(pred.get("weight", np.zeros(0, np.float32))).double()
        per_jet = self.criterion(logits, target).double() if len(target) else weight
        correct = (logits.argmax(1) == target).double() if len(target) else weight
        loss_sum, correct_sum, total, n = self.dist.sum([
            float((per_jet * weight).sum()), float((correct * weight).sum()),
            float(weight.sum()), float(len(target))])
        seconds = time.perf_counter() - start
        metrics = {"loss": loss_sum / max(total, 1e-12), "accuracy": correct_sum /
                   max(total, 1e-12), "jets": n, "seconds": seconds,
                   "jets_per_second": n / seconds, "learning_rate": self.lr,
                   "load_seconds": 0.0}
        return metrics, pred

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def fit(self, total_epochs: int | None = None) -> History:
        """Train until ``total_epochs`` epochs are complete (default: settings.epochs)."""
        total_epochs = total_epochs or self.settings.epochs
        self.total_epochs = total_epochs  # the progress bars' count (with --extend-training)
        while self.epoch < total_epochs:
            train = self.train_epoch()
            val, pred = self.validate()
            for key in METRICS:
                self.history.train[key].append(train[key])
                self.history.validation[key].append(val[key])
            self.epoch += 1
            improved = val["loss"] < self.best_loss
            self.best_loss = min(self.best_loss, val["loss"])
            tick = time.perf_counter()
            if self.dist.main:
                self.save_checkpoint(improved)
            saving = time.perf_counter() - tick
            self.dist.barrier()
            if not self.dist.main:
                continue
            console.print(
                f"Epoch {self.epoch}/{total_epochs}: train loss {train['loss']:.4f} acc "
                f"{100 * train['accuracy']:.1f}% | validation loss {val['loss']:.4f} acc "
                f"{100 * val['accuracy']:.1f}%{' (best)' if improved else ''} | lr "
                f"{train['learning_rate']:.2e} | {train['jets_per_second']:,.0f} jets/s | "
                f"{train['seconds'] + val['seconds']:.1f} s")
            if self.verbose:
                console.print(f"  time: training {train['seconds']:.1f} s (waiting for data "
                              f"{train['load_seconds']:.1f} s), validation {val['seconds']:.1f} "
                              f"s, checkpoint and plots {saving:.1f} s")
            if self.epoch_callback:
                self.epoch_callback(self.epoch, pred)
        return self.history

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_path(self, epoch: int) -> Path:
        """File of the state after ``epoch`` completed epochs (``model_<epoch-1>.pt``)."""
        return checkpoint_path(self.out_dir, epoch)

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "metrics": self.history.to_dict(),
            "best_loss": self.best_loss,
            "rng_state": torch.get_rng_state(),
            "seed": self.settings.seed,
            **self.metadata,
        }

    def save_checkpoint(self, best: bool) -> None:
        """Write the metrics, the plots, ``best_model.pt`` (if ``best``) and, last, the
        checkpoint ``model_<epoch-1>.pt``, each atomically: an epoch counts as done only
        when its checkpoint exists, and everything before it is rewritten if it is redone."""
        from utils.plotting.training import plot_history

        self.out_dir.mkdir(parents=True, exist_ok=True)
        for part in ("train", "validation"):
            values = getattr(self.history, part)
            name = "training_metrics.npz" if part == "train" else "validation_metrics.npz"
            save_npz(self.out_dir / name, **{k: np.asarray(v) for k, v in values.items()})
        plot_history(self.history, self.out_dir)
        checkpoint = self.checkpoint_path(self.epoch)
        save_checkpoint(self.state(), *((self.out_dir / BEST, checkpoint) if best else
                                         (checkpoint,)))

    def resume(self, completed: int | None = None) -> bool:
        """Load the latest checkpoint (or the one after ``completed`` epochs); False if none.

        A checkpoint made with other significant parameters or another label -> class
        mapping is refused (the error names both).
        """
        available = completed_epochs(self.out_dir)
        if completed is not None:
            if completed == 0:
                return False
            if completed not in available:
                raise CheckpointError(f"--resume-epoch: no checkpoint after epoch {completed} "
                                        f"({self.checkpoint_path(completed)}); "
                                        f"available: {available}")
            epoch = completed
        elif available:
            epoch = available[-1]
        else:
            return False
        path = self.checkpoint_path(epoch)
        state = load_checkpoint(path, self.device)
        stored, current = state.get("parameters", {}), self.metadata.get("parameters", {})
        diffs = [f"{k}: {stored[k]!r} -> {v!r}" for k, v in current.items()
                 if k in stored and stored[k] != v]
        if diffs:
            raise CheckpointError(f"{path} was written with other settings ({'; '.join(diffs)}); "
                             "remove the old checkpoints (--remove-output) or choose a new "
                             "--training-version")
        if "classes" in self.metadata:
            check_classes(state, self.metadata["classes"], path)
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.scaler.load_state_dict(state["scaler_state_dict"])
        torch.set_rng_state(state["rng_state"])
        self.history = History.from_dict(state["metrics"])
        self.history.truncate(epoch)
        self.epoch = epoch
        losses = self.history.validation["loss"]
        self.best_loss = min(losses) if losses else float("inf")
        best = self.out_dir / BEST
        if self.dist.main and losses and (not best.exists() or
                                          load_checkpoint(best)["epoch"] > epoch):
            best_epoch = int(np.argmin(losses)) + 1
            write_bytes(best, self.checkpoint_path(best_epoch).read_bytes())
        return True
