"""Working points: discriminant thresholds at fixed mis-id rates, computed exactly.

Convention (selection is always ``score >= threshold``). For a target mis-id rate ``r`` of
the background flavour with ``N`` jets, at most ``k = floor(r * N)`` background jets may be
selected. Let ``s_k`` be the ``(k + 1)``-th largest background score. The threshold is the
smallest score of any jet in the sample (all flavours) that is strictly above ``s_k``:
the loosest cut that keeps the achieved mis-id at or below the target, and it lies on the
exact ROC curve. Tied scores pass or fail together, so with ties at ``s_k`` the achieved
mis-id can be below the target (never above). If no jet scores above ``s_k`` the threshold
is the next float above ``s_k`` and selects no jet; a target of 1 selects every jet.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.evaluation.discriminants import FLAVOUR_LABELS, flavour_classes
from utils.evaluation.roc import EvaluationError
from utils.io import atomic_path, write_json

MISTAG_TARGETS: dict[str, float] = {"L": 0.1, "M": 0.01, "T": 0.001, "XT": 0.0005,
                                    "XXT": 0.0001}
JET_FLAVOURS: tuple[str, ...] = ("b", "c", "l")  # disjoint flavours reported for each WP


@dataclass(frozen=True)
class WorkingPoint:
    """One working point: its threshold and the selected fraction of each flavour."""

    name: str
    target: float  # target mis-id rate of ``background``
    threshold: float
    signal: str
    background: str
    rates: dict[str, float]  # fraction of the jets of each flavour with score >= threshold
    n_jets: dict[str, int]
    n_selected: dict[str, int]

    @property
    def efficiency(self) -> float:
        """Signal efficiency."""
        return self.rates[self.signal]

    @property
    def mistag(self) -> float:
        """Achieved mis-id rate of the background flavour (<= target)."""
        return self.rates[self.background]

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON/CSV row: ``<f>_efficiency`` for the signal, ``<f>_misid`` otherwise."""
        row: dict[str, Any] = {"name": self.name, "target": self.target,
                               "threshold": self.threshold, "signal": self.signal,
                               "background": self.background}
        for f, rate in self.rates.items():
            row[f"{f}_{'efficiency' if f == self.signal else 'misid'}"] = rate
        for f in self.rates:
            row[f"n_{f}"] = self.n_jets[f]
            row[f"n_{f}_selected"] = self.n_selected[f]
        return row


def jet_flavours(truth: np.ndarray, class_names: Sequence[str],
                 flavours: Sequence[str] = JET_FLAVOURS) -> np.ndarray:
    """Flavour name of each jet from its true class index ('' for classes in no flavour)."""
    lookup = np.full(len(class_names), "", dtype=object)
    for flavour in flavours:
        lookup[flavour_classes(flavour, class_names)] = flavour
    return lookup[np.asarray(truth, dtype=np.int64)].astype(str)


def working_points(score: np.ndarray, flavour: np.ndarray,
                   targets: Mapping[str, float] = MISTAG_TARGETS, signal: str = "b",
                   background: str = "l") -> list[WorkingPoint]:
    """Working points at the ``targets`` mis-id rates of ``background`` (see module doc).

    ``flavour`` holds one flavour name per jet (e.g. from :func:`jet_flavours`); every
    flavour present is reported, jets with an empty flavour only enter the threshold search.
    """
    score = np.asarray(score, dtype=np.float64)
    flavour = np.asarray(flavour).astype(str)
    if score.shape != flavour.shape or score.ndim != 1:
        raise ValueError(f"score {score.shape} and flavour {flavour.shape} must be 1-d arrays "
                         "of the same length")
    bad = {name: r for name, r in targets.items() if not 0 < r <= 1}
    if bad:
        raise ValueError(f"mis-id targets must be in (0, 1], got {bad}")
    if np.isnan(score).any():
        raise ValueError(f"{np.isnan(score).sum()} NaN discriminant score(s)")
    found = set(np.unique(flavour).tolist()) - {""}
    present = [f for f in JET_FLAVOURS if f in found] + sorted(found - set(JET_FLAVOURS))
    if background not in present:
        name = FLAVOUR_LABELS.get(background, background)
        raise EvaluationError(f"no {name} jets: cannot define {name} mis-id working points")
    if signal not in present:
        name = FLAVOUR_LABELS.get(signal, signal)
        raise EvaluationError(f"no {name} jets: cannot measure the {name}-jet efficiency")
    sorted_by = {f: np.sort(score[flavour == f]) for f in present}
    every = np.sort(score)
    bkg = sorted_by[background]
    n_bkg = len(bkg)
    target = np.array(list(targets.values()), dtype=np.float64)
    # largest number of background jets allowed to pass (relative slack for float products)
    allowed = np.floor(target * n_bkg * (1 + 1e-12)).astype(np.int64)
    cut = np.where(allowed >= n_bkg, -np.inf, bkg[np.maximum(n_bkg - 1 - allowed, 0)])
    above = np.searchsorted(every, cut, side="right")
    threshold = np.where(above < len(every), every[np.minimum(above, len(every) - 1)],
                         np.nextafter(cut, np.inf))
    selected = {f: len(s) - np.searchsorted(s, threshold, side="left")
                for f, s in sorted_by.items()}
    return [WorkingPoint(name=name, target=float(target[i]), threshold=float(threshold[i]),
                         signal=signal, background=background,
                         rates={f: float(selected[f][i] / len(sorted_by[f])) for f in present},
                         n_jets={f: len(sorted_by[f]) for f in present},
                         n_selected={f: int(selected[f][i]) for f in present})
            for i, name in enumerate(targets)]


def write_working_points(wps: Sequence[WorkingPoint], path_without_suffix: str | Path
                         ) -> list[Path]:
    """Write ``<path>.csv`` and ``<path>.json`` (one row per working point); return both."""
    if not wps:
        raise ValueError("no working points to write")
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    rows = [wp.to_dict() for wp in wps]
    csv_path, json_path = base.with_name(base.name + ".csv"), base.with_name(base.name + ".json")
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(json_path, rows)
    return [csv_path, json_path]
