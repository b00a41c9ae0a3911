"""Factories for optimisers, learning-rate schedules and loss functions (by name)."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

from utils.errors import BHiveError
from utils.settings import SCHEDULERS, TrainSettings

DECAY_FRACTION = 0.3  # the decay schedules act on the last 30 % of the steps


class OptimConfigError(BHiveError, ValueError):
    """An optimiser, scheduler or loss name or value is invalid."""


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` optimiser called ``name``."""
    cls = getattr(torch.optim, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        valid = sorted(n for n, c in vars(torch.optim).items()
                       if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer)
                       and c is not torch.optim.Optimizer)
        raise OptimConfigError(f"--optimizer {name!r} is not a torch.optim optimiser; "
                               f"choose one of {valid}")
    return cls


def loss_class(name: str) -> type[nn.Module]:
    """The ``torch.nn`` loss called ``name``."""
    cls = getattr(nn, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.modules.loss._Loss)):
        raise OptimConfigError(f"--loss-function {name!r} is not a torch.nn loss "
                               "(e.g. CrossEntropyLoss, NLLLoss, MultiMarginLoss)")
    return cls


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                   betas: tuple[float, float] = (0.95, 0.999), eps: float = 1e-6,
                   weight_decay: float | None = None) -> torch.optim.Optimizer:
    """Any ``torch.optim`` optimiser by name; options it does not accept are left out.

    Where the optimiser has a fused implementation for the parameters' device (Adam, AdamW,
    SGD, Adagrad on CPU and CUDA), it is used: one kernel for all parameters instead of a few
    per tensor (DeepJet's AdamW step: 7.4 -> 1.6 ms on 2 CPU cores), same update rule.
    """
    cls = optimizer_class(name)
    if lr <= 0:
        raise OptimConfigError(f"--learning-rate must be > 0, got {lr}")
    params = list(params)
    accepted = inspect.signature(cls).parameters
    options: dict[str, object] = {"lr": lr}
    for key, value in (("betas", tuple(betas)), ("eps", eps), ("weight_decay", weight_decay)):
        if key in accepted and value is not None:
            options[key] = value
    if "fused" in accepted and params:
        try:
            return cls(params, fused=True, **options)
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # not for these parameters (device or dtype): the per-tensor implementation
    return cls(params, **options)


def schedule_factor(name: str, step: int, total: int, decay_factor: float,
                    warmup: int = 0) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``total`` steps.

    - ``none``: 1.
    - ``epoch_lin_decay`` / ``batch_lin_decay``: 1 for the first 70 % of the steps, then
      multiplied by a constant factor per step so that the last step reaches
      ``decay_factor`` (geometric despite its name, as in the original b-hive); with fewer
      than 4 steps there is no decay step (the original decayed even a 1-epoch training).
    - ``batch_cosine_warmup``: linear warm-up from ``decay_factor`` to 1 over ``warmup``
      steps, then a half cosine down to ``decay_factor`` at the last step.
    Steps beyond ``total`` (extended trainings) keep the final value.
    """
    if name == "none":
        return 1.0
    step = min(step, max(total - 1, 0))
    if name in ("epoch_lin_decay", "batch_lin_decay"):
        k = int(DECAY_FRACTION * total)
        first = total - k  # steps first .. total-1 decay
        if k == 0 or step < first:
            return 1.0
        return decay_factor ** ((step - first + 1) / k)
    if name == "batch_cosine_warmup":
        if warmup > 0 and step < warmup:
            return decay_factor + (1 - decay_factor) * step / warmup
        span = total - 1 - warmup
        progress = min(max(step - warmup, 0) / span, 1.0) if span > 0 else 1.0
        return decay_factor + (1 - decay_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise OptimConfigError(f"--lr-scheduler {name!r} is unknown; choose one of {SCHEDULERS}")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int,
                   batches_per_epoch: int, decay_factor: float
                   ) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """The scheduler and whether it steps per batch (True) or per epoch (False)."""
    if name not in SCHEDULERS:
        raise OptimConfigError(f"--lr-scheduler {name!r} is unknown; choose one of {SCHEDULERS}")
    if not 0 < decay_factor <= 1:
        raise OptimConfigError(f"--lr-decay-factor must be in (0, 1], got {decay_factor}")
    per_batch = name.startswith("batch")
    total = epochs * max(batches_per_epoch, 1) if per_batch else epochs
    # one epoch of warm-up, never more than half the run (the last step is never warm-up)
    warmup = min(max(batches_per_epoch, 1), (total - 1) // 2) \
        if name == "batch_cosine_warmup" else 0
    factor: Callable[[int], float] = lambda step: schedule_factor(  # noqa: E731
        name, step, total, decay_factor, warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), per_batch


def check_names(settings: TrainSettings) -> None:
    """The optimiser and loss of ``settings`` exist (no tensor is created: this runs in the
    scheduling process, which luigi forks, and torch's thread pools must not start there)."""
    optimizer_class(settings.optimizer)
    loss_class(settings.loss_function)


def check_settings(settings: TrainSettings) -> None:
    """Build the optimiser, schedule and loss of ``settings`` on a dummy parameter, so that
    a bad combination fails before anything is written."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = make_optimizer(settings.optimizer, params, settings.learning_rate,
                               settings.beta_pair, settings.eps, settings.weight_decay)
    make_scheduler(settings.lr_scheduler, optimizer, settings.epochs, 1,
                   settings.lr_decay_factor)
    make_loss(settings.loss_function)


def make_loss(name: str) -> nn.Module:
    """A ``torch.nn`` loss by name, returning one value per jet (``reduction='none'``)."""
    cls = loss_class(name)
    try:
        loss = cls(reduction="none")
        with warnings.catch_warnings():  # e.g. MSELoss warns about the shapes before failing
            warnings.simplefilter("ignore")
            loss(torch.zeros(2, 3), torch.tensor([0, 2]))
    except Exception as exc:  # the loss must take (logits, class index)
        raise OptimConfigError(f"--loss-function {name!r} cannot take (logits, class index) "
                               f"pairs: {exc}") from exc
    return loss
