"""The model contract: every tagger is a :class:`BaseModel` subclass in its own file.

A subclass sets ``name`` (the ``--model-name`` value, registered automatically), the input
groups it consumes, optionally its own class grouping of truth labels, and implements
``forward(inputs) -> logits`` with all sizes taken from the :class:`InputSpec` built from
the configuration. The training loop lives in ``utils/torch``; models only provide hooks
with sensible defaults (the loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from utils.errors import BHiveError

_REGISTRY: dict[str, type[BaseModel]] = {}


class ModelInputError(BHiveError, ValueError):
    """The configuration does not provide what a model needs."""


@dataclass(frozen=True)
class GroupSpec:
    """One input group: feature names, candidate length (None: one value per jet) and the
    indices of the (pt, eta, phi, energy) features if the config declares them."""

    name: str
    features: tuple[str, ...]
    length: int | None = None
    four_vector: tuple[int, int, int, int] | None = None

    @property
    def n_features(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class InputSpec:
    """Everything a model may know about its inputs and outputs."""

    groups: tuple[GroupSpec, ...]
    class_names: tuple[str, ...]
    config_name: str = ""

    @classmethod
    def from_config(cls, config: Any, class_names: Sequence[str] | None = None) -> InputSpec:
        groups = []
        for g in config.groups:
            fv = None
            if g.four_vector is not None:
                fv = tuple(g.features.index(f) for f in g.four_vector)
            groups.append(GroupSpec(g.name, g.features, g.length, fv))
        names = tuple(class_names) if class_names is not None else tuple(config.classes)
        return cls(tuple(groups), names, config.name)

    def group(self, name: str) -> GroupSpec:
        for g in self.groups:
            if g.name == name:
                return g
        raise ModelInputError(f"config {self.config_name!r} has no input group {name!r}; "
                              f"groups are {[g.name for g in self.groups]}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


class BaseModel(nn.Module):
    """Base class of all taggers.

    Class attributes a subclass may set:

    - ``name``: registry key (``--model-name``); subclasses without a name are abstract.
    - ``input_groups``: groups consumed by ``forward`` (others are not passed).
    - ``classes``: class name -> truth labels, or None to use the configuration's classes.
    - ``needs_four_vectors``: groups whose (pt, eta, phi, energy) the model needs.
    - ``onnx_variable_length``: the exported ONNX graph accepts any number of candidate
      slots per group (dynamic candidate axes); otherwise they are fixed at the config
      lengths.
    """

    name: ClassVar[str] = ""
    input_groups: ClassVar[tuple[str, ...]] = ("global", "cpf", "npf", "vtx")
    classes: ClassVar[Mapping[str, tuple[str, ...]] | None] = None
    needs_four_vectors: ClassVar[tuple[str, ...]] = ()
    onnx_variable_length: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
                raise TypeError(f"model name {cls.name!r} is registered twice "
                                f"({_REGISTRY[cls.name].__module__} and {cls.__module__})")
            _REGISTRY[cls.name] = cls

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.spec = spec
        self.check_inputs(spec)

    @classmethod
    def check_inputs(cls, spec: InputSpec) -> None:
        """Raise :class:`ModelInputError` saying what to add to the config."""
        available = {g.name for g in spec.groups}
        missing = [g for g in cls.input_groups if g not in available]
        if missing:
            raise ModelInputError(
                f"model {cls.name} needs input groups {list(cls.input_groups)}; config "
                f"{spec.config_name!r} lacks {missing}")
        lacking = [g for g in cls.needs_four_vectors if spec.group(g).four_vector is None]
        if lacking:
            raise ModelInputError(
                f"model {cls.name} needs the candidate 4-vectors of groups {lacking}: add the "
                f"(pt, eta, phi, energy) branches to these groups of config "
                f"{spec.config_name!r} and declare them with four_vector=(...), e.g. "
                "FeatureGroup('cpf', (..., 'Cpfcan_pt', 'Cpfcan_eta', 'Cpfcan_phi', "
                "'Cpfcan_e'), length=25, four_vector=('Cpfcan_pt', 'Cpfcan_eta', "
                "'Cpfcan_phi', 'Cpfcan_e'))")

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` from ``inputs[group]``: ``(batch, features)`` for
        per-jet groups, ``(batch, candidates, features)`` for candidate groups."""
        raise NotImplementedError

    # -- hooks with defaults ----------------------------------------------------------------
    def loss(self, logits: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor | None = None,
             criterion: nn.Module | None = None) -> torch.Tensor:
        """Mean per-jet loss; with ``weight`` a weighted mean (loss weighting)."""
        criterion = criterion or nn.CrossEntropyLoss(reduction="none")
        per_jet = criterion(logits, target)
        if per_jet.ndim == 0:
            return per_jet
        if weight is None:
            return per_jet.mean()
        return (per_jet * weight).sum() / weight.sum().clamp_min(1e-12)

    @staticmethod
    def padding_mask(candidates: torch.Tensor) -> torch.Tensor:
        """True for real candidates: padding slots are all-zero feature vectors."""
        return (candidates != 0).any(dim=-1)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def registered_models() -> dict[str, type[BaseModel]]:
    return dict(_REGISTRY)
