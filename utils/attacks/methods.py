"""The attacks: one registry of functions that perturb a batch of model inputs.

Every attack is called as ``attack(model, inputs, truth, loss)`` (an :class:`Attack` built
from the :class:`~utils.settings.AttackSettings`, the config and the dataset's per-feature
scales): ``model(inputs) -> logits`` (any registered tagger, under autocast if the caller
trains with mixed precision), ``inputs`` ``{group: tensor}``, ``truth`` the class indices,
``loss(logits, truth)`` the per-jet loss. It returns new inputs; the given ones are not
changed. What may move (:class:`Budget`):

- only real entries: padded candidates (all features 0) stay padded;
- with ``reduce``: not the config's ``integer_features`` and not entries at their default
  value (0, or the group's ``default_values``); never the 4-vector features unless the
  config's ``attack_four_vector``;
- every change at most ``restrict_impact * |x|`` when that is > 0;
- fgsm, pgd, jetfool and minimizer stay in the box ``|change| <= magnitude * scale`` (the
  "epsilon ball"); noise and ngm are not bounded per entry (see README).

Attacks run the model in eval mode (:func:`attack_mode`): no dropout, batch-norm running
statistics, so every jet's perturbation depends on that jet alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from utils.attacks import ATTACKS
from utils.errors import BHiveError
from utils.settings import AttackSettings

Inputs = dict[str, torch.Tensor]
Model = Callable[[Inputs], torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AttackFunction = Callable[[Model, Inputs, torch.Tensor, Loss, "Budget"], Inputs]

_REGISTRY: dict[str, AttackFunction] = {}


class AttackError(BHiveError, ValueError):
    """An attack cannot be set up (unknown name, scales missing for a group, ...)."""


def register(name: str) -> Callable[[AttackFunction], AttackFunction]:
    """Add an attack function to the registry under ``name`` (one of ``ATTACKS``)."""
    if name not in ATTACKS:
        raise AttackError(f"attack {name!r} is not in utils.attacks.ATTACKS {ATTACKS}")

    def add(function: AttackFunction) -> AttackFunction:
        _REGISTRY[name] = function
        return function

    return add


def registered_attacks() -> dict[str, AttackFunction]:
    return dict(_REGISTRY)


def cross_entropy(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The default per-jet loss."""
    return nn.functional.cross_entropy(logits, truth, reduction="none")


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode while an attack runs (restored afterwards). cuDNN differentiates recurrent
    layers only in training mode: those without dropout stay in training mode (the same
    outputs); for others cuDNN is switched off during the attack."""
    was_training = model.training
    model.eval()
    needs_eval = False
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            if module.num_layers == 1 or module.dropout == 0:
                module.train()
            else:
                needs_eval = True
    try:
        with torch.backends.cudnn.flags(enabled=False) if needs_eval else \
                contextlib.nullcontext():
            yield
    finally:
        model.train(was_training)


@dataclass
class Budget:
    """What an attack may change in one batch: per group the ``allowed`` entries, the
    ``scale`` of every feature (the unit of the magnitude), the full ``step`` magnitude *
    scale and the bounds of the changes (``ball``: the epsilon box intersected with the
    impact bound, ``impact``: the impact bound alone, inf when off)."""

    settings: AttackSettings
    allowed: dict[str, torch.Tensor]
    scale: dict[str, torch.Tensor]
    step: dict[str, torch.Tensor]
    ball: dict[str, torch.Tensor]
    impact: dict[str, torch.Tensor]

    def project(self, nominal: Inputs, moved: Inputs, bounded: bool = True) -> Inputs:
        """``moved`` with every change clamped to its bound and the entries that may not
        move reset to their exact nominal values."""
        out = {}
        for group, x0 in nominal.items():
            bound = (self.ball if bounded else self.impact)[group]
            delta = torch.minimum(torch.maximum(moved[group] - x0, -bound), bound)
            out[group] = torch.where(self.allowed[group], x0 + delta, x0)
        return out

    def per_jet_sum(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum over every entry of every group, per jet."""
        return sum(v.flatten(1).sum(1) for v in values.values())


class Attack:
    """An attack ready to be applied: ``attack(model, inputs, truth, loss)``.

    ``groups``: ``{group: (features, frozen features, is_candidates, {feature: default})}``;
    ``scales``: ``{group: {feature: scale}}`` (needed with ``individual_factors``).
    """

    def __init__(self, settings: AttackSettings,
                 groups: Mapping[str, tuple[Sequence[str], Sequence[str], bool,
                                            Mapping[str, float]]],
                 scales: Mapping[str, Mapping[str, float]] | None = None) -> None:
        if settings.name not in _REGISTRY:
            raise AttackError(f"unknown attack {settings.name!r}; attacks are {sorted(_REGISTRY)}")
        self.settings = settings
        self.groups = {g: (tuple(f), tuple(frozen), candidates, dict(defaults))
                       for g, (f, frozen, candidates, defaults) in groups.items()}
        self.scales: dict[str, list[float]] = {}
        for group, (features, *_) in self.groups.items():
            if not settings.individual_factors:
                self.scales[group] = [1.0] * len(features)
                continue
            known = (scales or {}).get(group, {})
            missing = [f for f in features if f not in known]
            if missing:
                raise AttackError(f"no per-feature scales for {group} features {missing}; "
                                  "the dataset's feature_scales.json does not match the config "
                                  "(re-export, or use --attack-individual-factors False)")
            self.scales[group] = [float(known[f]) for f in features]
        self._tensors: dict[tuple[str, str], tuple[torch.Tensor, ...]] = {}

    @classmethod
    def from_config(cls, settings: AttackSettings, config: Any, group_names: Sequence[str],
                    scales: Mapping[str, Mapping[str, float]] | None = None) -> Attack:
        """The attack on the groups ``group_names`` (a model's inputs) of ``config``."""
        groups = {}
        for name in group_names:
            group = config.group(name)
            groups[name] = (group.features, group.frozen_features(settings.reduce),
                            group.is_candidates, group.default_values)
        return cls(settings, groups, scales)

    def record(self) -> dict[str, Any]:
        """What the attack keeps nominal (as :func:`utils.attacks.kept_nominal`)."""
        return {g: {"frozen": list(frozen), "defaults": defaults if self.settings.reduce
                    else {}} for g, (_, frozen, _, defaults) in self.groups.items()}

    @property
    def active(self) -> bool:
        return self.settings.active

    def feature_tensors(self, group: str, device: torch.device
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(scale, movable, default)`` per feature of ``group`` on ``device`` (default NaN
        where none is declared)."""
        key = (group, str(device))
        if key not in self._tensors:
            features, frozen, _, defaults = self.groups[group]
            scale = torch.tensor(self.scales[group], dtype=torch.float32, device=device)
            movable = torch.tensor([f not in frozen for f in features], device=device)
            default = torch.tensor([defaults.get(f, math.nan) for f in features],
                                   dtype=torch.float32, device=device)
            self._tensors[key] = (scale, movable & (scale > 0), default)
        return self._tensors[key]

    def budget(self, inputs: Inputs) -> Budget:
        """The :class:`Budget` of this batch."""
        s = self.settings
        allowed, scale, step, ball, impact = {}, {}, {}, {}, {}
        for group, x in inputs.items():
            unit, movable, default = self.feature_tensors(group, x.device)
            mask = movable.expand_as(x)
            if self.groups[group][2]:  # candidates: padded ones stay padded
                mask = mask & (x != 0).any(dim=-1, keepdim=True)
            if s.reduce:  # NaN (no declared default) differs from everything
                mask = mask & (x != 0) & (x != default)
            allowed[group] = mask
            scale[group] = unit.expand_as(x)
            step[group] = (s.magnitude * unit).expand_as(x)
            impact[group] = (s.restrict_impact * x.abs() if s.restrict_impact > 0 else
                             torch.full_like(x, math.inf))
            ball[group] = torch.minimum(step[group], impact[group])
        return Budget(s, allowed, scale, step, ball, impact)

    def __call__(self, model: Model, inputs: Inputs, truth: torch.Tensor,
                 loss: Loss = cross_entropy) -> Inputs:
        if not self.active:
            return inputs
        nominal = {g: x.detach() for g, x in inputs.items()}
        moved = _REGISTRY[self.settings.name](model, nominal, truth, loss,
                                              self.budget(nominal))
        return {g: x.detach() for g, x in moved.items()}


# -- building blocks -------------------------------------------------------------------------
def input_gradient(model: Model, inputs: Inputs, truth: torch.Tensor, loss: Loss) -> Inputs:
    """Gradient of the summed per-jet loss with respect to every input (zeros for groups
    the model does not use); each jet's gradient is that of its own loss."""
    x = {g: t.detach().requires_grad_(True) for g, t in inputs.items()}
    with torch.enable_grad():
        value = loss(model(x).float(), truth).sum()
        grads = torch.autograd.grad(value, list(x.values()), allow_unused=True)
    # a non-finite gradient (e.g. of an undefined angle of an empty jet) gives no direction
    return {g: torch.zeros_like(x[g]) if grad is None else
            torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            for g, grad in zip(x, grads, strict=True)}


def _shape(per_jet: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_jet.reshape(-1, *([1] * (like.ndim - 1)))


# -- the registry ---------------------------------------------------------------------------
@register("nominal")
def nominal(model: Model, inputs: Inputs, truth: torch.Tensor, loss: Loss,
            budget: Budget) -> Inputs:
    """No perturbation."""
    return inputs


@register("noise")
def noise(model: Model, inputs: Inputs, truth: torch.Tensor, loss: Loss,
          budget: Budget) -> Inputs:
    """Gaussian noise of width magnitude * scale on every allowed entry."""
    moved = {g: x + budget.step[g] * torch.randn_like(x) for g, x in inputs.items()}
    return budget.project(inputs, moved, bounded=False)


@register("fgsm")
def fgsm(model: Model, inputs: Inputs, truth: torch.Tensor, loss: Loss,
         budget: Budget) -> Inputs:
    """Fast gradient sign method: one step of magnitude * scale along the sign of the loss
    gradient."""
    grad = input_gradient(model, inputs, truth, loss)
    moved = {g: x + budget.step[g] * grad[g].sign() for g, x in inputs.items()}
    return budget.project(inputs, moved)


@register("ngm")
def ngm(model: Model, inputs: Inputs, truth: torch.Tensor, loss: Loss,
        budget: Budget) -> Inputs:
    """Normalised gradient method: one step along the loss gradient (in units of the
    feature scales) divided by its L2 norm over the jet's allowed entries, times
    magnitude * sqrt(allowed entries): the same Euclidean length as an FGSM step, spread
    over the entries by the gradient's size instead of its sign."""
    grad = input_gradient(model, inputs, truth, loss)
    scaled = {g: torch.where(budget.allowed[g], grad[g] * budget.scale[g], 0) for g in grad}
    norm = budget.per_jet_sum({g: v.square() for g, v in scaled.items()}).sqrt()
    count = budget.per_jet_sum({g: a.float() for g, a in budget.allowed.items()})
    factor = torch.where(norm > 0, budget.settings.magnitude * count.sqrt() /
                         norm.clamp_min(1e-30), 0)
    moved = {g: x + _shape(factor, x) * scaled[g] * budget.scale[g]
             for g, x in inputs.items()}
    return budget.project(inputs, moved, bounded=False)


@register("pgd")
def pgd(model: Model, inputs: Inputs, truth: torch.Tensor, loss: Loss,
        budget: Budget) -> Inputs:
    """Projected gradient descent: ``iterations`` sign-gradient steps of magnitude * scale /
    iterations, each projected back into the epsilon box (one iteration is FGSM)."""
    steps = budget.settings.iterations
    x = inputs
    for _ in range(steps):
        grad = input_gradient(model, x, truth, loss)
        x = budget.project(inputs, {g: x[g] + budget.step[g] / steps * grad[g].sign()
                                    for g in x})
    return x


@register("jetfool")
def jetfool(model: Model, inputs: Inputs, truth: torch.Tensor, loss: Loss,
            budget: Budget) -> Inputs:
    """DeepFool for jets: each step moves a jet to the linearised boundary of the class
    closest to its nominal prediction (distances measured in units of the feature scales),
    the summed step scaled by 1 + overshoot and kept in the epsilon box. A jet whose
    predicted class differs from its nominal one is left as it is from then on."""
    overshoot = 1 + budget.settings.overshoot
    total = {g: torch.zeros_like(x) for g, x in inputs.items()}
    x, start, active = inputs, None, None
    for _ in range(budget.settings.iterations):
        xs = {g: t.detach().requires_grad_(True) for g, t in x.items()}
        with torch.enable_grad():
            logits = model(xs).float()
            predicted = logits.argmax(1)
            if start is None:
                start = predicted
                active = torch.ones_like(predicted, dtype=torch.bool)
            active = active & (predicted == start)
            if not bool(active.any()):
                break
            per_class = [torch.autograd.grad(logits[:, c].sum(), list(xs.values()),
                                             retain_graph=c < logits.shape[1] - 1,
                                             allow_unused=True)
                         for c in range(logits.shape[1])]
        logits = logits.detach()
        gap = logits - logits.gather(1, start[:, None])  # (B, C), <= 0 where start leads
        directions, norm2 = {}, 0
        for i, (group, t) in enumerate(xs.items()):
            grads = torch.nan_to_num(torch.stack([
                torch.zeros_like(t) if g[i] is None else g[i] for g in per_class]),
                nan=0.0, posinf=0.0, neginf=0.0)  # (C, B, ...)
            own = grads.gather(0, start.reshape(1, -1, *[1] * (t.ndim - 1)).expand_as(
                grads[:1]))
            w = torch.where(budget.allowed[group], (grads - own) * budget.scale[group], 0)
            directions[group] = w
            norm2 = norm2 + w.square().flatten(2).sum(2)  # (C, B)
        distance = gap.abs().T / norm2.sqrt().clamp_min(1e-30)
        distance = distance.masked_fill(norm2 == 0, math.inf)
        distance[start, torch.arange(len(start), device=start.device)] = math.inf
        closest = distance.argmin(0)  # (B,)
        jets = torch.arange(len(closest), device=closest.device)
        size = norm2[closest, jets]
        coefficient = torch.where(active & (size > 0), (gap[jets, closest].abs() + 1e-4) /
                                  size.clamp_min(1e-30), 0)
        for group, w in directions.items():
            step = _shape(coefficient, w[0]) * w[closest, jets] * budget.scale[group]
            total[group] = total[group] + step
        x = budget.project(inputs, {g: inputs[g] + overshoot * total[g] for g in inputs})
    return x


@register("minimizer")
def minimizer(model: Model, inputs: Inputs, truth: torch.Tensor, loss: Loss,
              budget: Budget) -> Inputs:
    """Adam on the inputs (learning rate = magnitude, in units of the scales) that lowers
    the probability of each jet's nominally predicted class as far as it can (the change of
    the prediction; no truth needed), against a Gaussian prior of width uncertainty *
    magnitude on every shift; ``iterations`` steps from the nominal inputs, each projected
    into the epsilon box."""
    s = budget.settings
    with torch.no_grad():
        start = model(inputs).float().softmax(1)
    predicted = start.argmax(1, keepdim=True)
    shifts = {g: torch.zeros_like(x, requires_grad=True) for g, x in inputs.items()}
    optimiser = torch.optim.Adam(list(shifts.values()), lr=s.magnitude)
    count = budget.per_jet_sum({g: a.float() for g, a in budget.allowed.items()})
    width = s.uncertainty * s.magnitude
    for _ in range(s.iterations):
        with torch.enable_grad():
            x = budget.project(inputs, {g: inputs[g] + shifts[g] * budget.scale[g]
                                        for g in inputs})
            drop = start.gather(1, predicted) - model(x).float().softmax(1).gather(1, predicted)
            prior = budget.per_jet_sum({
                g: torch.where(budget.allowed[g], u / width, 0).square()
                for g, u in shifts.items()}) / (2 * count.clamp_min(1))
            objective = (prior - drop.squeeze(1)).sum()
            # gradients of the shifts only: the model's parameter gradients stay untouched
            grads = torch.autograd.grad(objective, list(shifts.values()))
        for u, grad in zip(shifts.values(), grads, strict=True):
            u.grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        optimiser.step()
    with torch.no_grad():
        return budget.project(inputs, {g: inputs[g] + shifts[g] * budget.scale[g]
                                       for g in inputs})


# -- what an attack did ---------------------------------------------------------------------
class ChangeMonitor:
    """Accumulates, per group, the mean and largest |change| of the moved inputs in units of
    the feature scales (the attack's budget is the magnitude) and the fraction of entries
    that changed."""

    def __init__(self, attack: Attack) -> None:
        self.attack = attack
        self.totals: dict[str, list[float]] = {}

    @torch.no_grad()
    def add(self, nominal: Inputs, moved: Inputs) -> None:
        for group, x0 in nominal.items():
            scale = self.attack.feature_tensors(group, x0.device)[0]
            delta = (moved[group] - x0).abs()
            units = torch.where(scale > 0, delta / scale.clamp_min(1e-30), 0)
            changed = delta > 0
            total = self.totals.setdefault(group, [0.0, 0.0, 0.0, 0.0])
            total[0] += float(units[changed].double().sum())
            total[1] = max(total[1], float(units.max()) if units.numel() else 0.0)
            total[2] += float(changed.sum())
            total[3] += float(x0.numel())

    def report(self) -> dict[str, dict[str, float]]:
        """``{group: {mean_abs_change, max_abs_change, fraction_changed}}`` (changes in
        units of the scales; the mean over the entries that changed)."""
        return {group: {"mean_abs_change": s / max(n, 1), "max_abs_change": m,
                        "fraction_changed": n / max(entries, 1)}
                for group, (s, m, n, entries) in self.totals.items()}
