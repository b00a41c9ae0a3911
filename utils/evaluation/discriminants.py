"""Flavour discriminants, defined once as data and reused by ROC, working points and plots.

A discriminant is ``P(signal) / (P(signal) + P(background))`` where each side is a flavour
made of model classes (b = b + bb + lepb, l = uds + g, ...). It is evaluated on the jets
whose true class belongs to the signal or the background flavour. A model gets every
discriminant whose flavours its classes provide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# flavour -> class names that make it up (whichever of them a model has)
FLAVOURS: dict[str, tuple[str, ...]] = {
    "b": ("b", "bb", "lepb", "gbb"),
    "c": ("c", "cc", "gcc"),
    "l": ("uds", "g", "light", "udsg", "l", "u", "d", "s"),
    "uds": ("uds", "u", "d", "s"),
    "g": ("g",),
}
FLAVOUR_LABELS = {"b": "b", "c": "c", "l": "light", "uds": "uds", "g": "gluon"}


@dataclass(frozen=True)
class Discriminant:
    name: str
    signal: tuple[str, ...]
    background: tuple[str, ...]

    @property
    def xlabel(self) -> str:
        return f"{' + '.join(FLAVOUR_LABELS[f] for f in self.signal)}-jet efficiency"

    @property
    def ylabel(self) -> str:
        return f"{' + '.join(FLAVOUR_LABELS[f] for f in self.background)}-jet mis-id. rate"


DISCRIMINANTS: tuple[Discriminant, ...] = (
    Discriminant("BvsL", ("b",), ("l",)),
    Discriminant("BvsC", ("b",), ("c",)),
    Discriminant("CvsL", ("c",), ("l",)),
    Discriminant("CvsB", ("c",), ("b",)),
    Discriminant("BvsAll", ("b",), ("c", "l")),
    Discriminant("UDSvsG", ("uds",), ("g",)),
)


def flavour_classes(flavour: str, class_names: Sequence[str]) -> list[int]:
    """Indices of the model classes that make up ``flavour``."""
    return [i for i, name in enumerate(class_names) if name in FLAVOURS[flavour]]


def available(class_names: Sequence[str]) -> list[Discriminant]:
    """The discriminants a model with these classes can provide."""
    return [d for d in DISCRIMINANTS
            if all(flavour_classes(f, class_names) for f in d.signal + d.background)
            and not set(_classes(d.signal, class_names)) & set(_classes(d.background,
                                                                           class_names))]


def by_name(name: str) -> Discriminant:
    for d in DISCRIMINANTS:
        if d.name.lower() == name.lower():
            return d
    raise KeyError(f"unknown discriminant {name!r}; known: {[d.name for d in DISCRIMINANTS]}")


def formula(disc: Discriminant, class_names: Sequence[str]) -> str:
    """The discriminant in terms of the model's class probabilities, e.g.
    ``(p_b + p_bb) / (p_b + p_bb + p_uds + p_g)``."""
    def total(flavours: Sequence[str]) -> list[str]:
        return [f"p_{class_names[i]}" for i in _classes(flavours, class_names)]

    signal = total(disc.signal)
    numerator = " + ".join(signal)
    numerator = f"({numerator})" if len(signal) > 1 else numerator
    return f"{numerator} / ({' + '.join(signal + total(disc.background))})"


def _classes(flavours: Sequence[str], class_names: Sequence[str]) -> list[int]:
    return sorted({i for f in flavours for i in flavour_classes(f, class_names)})


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(disc: Discriminant, probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The discriminant value of every jet (also of jets outside its flavours, e.g. the c
    jets of BvsL whose mis-id a working point reports)."""
    sig, bkg = _classes(disc.signal, class_names), _classes(disc.background, class_names)
    p_sig = probs[:, sig].sum(axis=1)
    denominator = p_sig + probs[:, bkg].sum(axis=1)
    return np.divide(p_sig, denominator, out=np.zeros_like(p_sig), where=denominator > 0)


def jets(disc: Discriminant, truth: np.ndarray, class_names: Sequence[str]
         ) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, is_signal)``: the jets (true class index ``truth``) the discriminant applies
    to, and which of them are signal."""
    sig, bkg = _classes(disc.signal, class_names), _classes(disc.background, class_names)
    mask = np.isin(truth, sig + bkg)
    return mask, np.isin(truth[mask], sig)


def evaluate(disc: Discriminant, probs: np.ndarray, truth: np.ndarray,
             class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, score, is_signal)``: the jets the discriminant applies to (mask over all
    jets), their discriminant values and whether each is signal."""
    mask, is_signal = jets(disc, truth, class_names)
    return mask, score(disc, probs[mask], class_names), is_signal
