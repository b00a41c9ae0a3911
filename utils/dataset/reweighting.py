"""pT-eta reweighting: per-jet acceptance probabilities for the rejection sampling.

Methods (``Config.reweighting.method``), per training class k with pT-eta histogram H_k
(its truth labels summed) over N_k jets:

- ``reference``: match each class's shape to the reference's (a class or a truth label, H_r):
  the density ratio ``r_k = (H_r / N_r) / (H_k / N_k)`` per bin is divided by its
  ``quantile``-th percentile over the class's jets (bins with fewer than
  ``min_jets_per_bin`` jets of the class do not enter that percentile) and clipped to
  [0, 1]; the clipped fraction of the jets is reported. Bins without reference jets get 0.
- ``flat``: the same with a flat target (equal jets in every pT-eta bin).
- ``none``: every weight 1.
- ``legacy_max``: the original b-hive's weights, per truth label and max-normalised:
  ``(H_r / max H_r) / (H_c / max H_c)`` divided by its maximum (kept to reproduce old
  results: one extreme bin sets each label's scale); the reference is its labels' sum.

``class_fractions`` (``"equal"`` or ``{class: fraction}`` naming every class) then scales
whole classes down (for every method) so that the expected class mix after sampling is the
requested one, with as many jets as that allows. The weights are written per truth label
(labels of a class share its table), so the stored weight of a jet is
``table[label, pt bin, eta bin]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.config import Config
from utils.config.schema import REWEIGHTING_METHODS as METHODS
from utils.errors import BHiveError


class ReweightingError(BHiveError, ValueError):
    """The histograms or settings cannot define weights."""


@dataclass(frozen=True)
class ClassReport:
    """What the weights do to one class (expected values over one epoch of sampling)."""

    jets: int
    kept: float
    clipped_fraction: float
    fraction_after: float

    def to_dict(self) -> dict[str, Any]:
        return {"jets": self.jets, "expected_kept": round(self.kept, 3),
                "clipped_fraction": round(self.clipped_fraction, 6),
                "fraction_after_sampling": round(self.fraction_after, 6)}


@dataclass(frozen=True)
class Weights:
    """Per-label weight tables ``(labels, pt bins, eta bins)`` and the per-class report."""

    tables: np.ndarray
    classes: dict[str, ClassReport]
    method: str
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        kept = sum(c.kept for c in self.classes.values())
        return {"method": self.method, "reference": self.reference,
                "expected_kept": round(kept, 3),
                "classes": {name: c.to_dict() for name, c in self.classes.items()}}


def weighted_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` each counted ``counts`` times (the smallest value
    with at least a fraction ``q`` of the counts at or below it)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(counts[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
    return float(values[order][min(index, len(values) - 1)])


def _shape_weights(h: np.ndarray, target: np.ndarray, quantile: float,
                   min_jets: int) -> tuple[np.ndarray, float]:
    """``(weights, clipped fraction)`` of one class's histogram ``h`` to the ``target``
    shape (see module doc)."""
    n = h.sum()
    populated = h > 0
    ratio = np.zeros_like(h)
    ratio[populated] = (target[populated] / target.sum()) / (h[populated] / n)
    usable = populated & (ratio > 0)
    if not usable.any():
        return np.zeros_like(h), 0.0
    scored = usable & (h >= min_jets)
    if not scored.any():  # too few jets everywhere: every populated bin counts
        scored = usable
    scale = weighted_quantile(ratio[scored], h[scored], quantile)
    weights = ratio / scale
    clipped = float(h[weights > 1].sum() / n)
    return np.clip(weights, 0.0, 1.0), clipped


def _target_fractions(fractions: str | Mapping[str, float] | None,
                      present: Sequence[str]) -> dict[str, float] | None:
    if fractions is None:
        return None
    if fractions == "equal":
        return {name: 1.0 / len(present) for name in present}
    total = sum(float(fractions.get(name, 0.0)) for name in present)
    if total <= 0:
        raise ReweightingError("reweighting.class_fractions gives no class with jets a "
                               "positive fraction")
    return {name: float(fractions.get(name, 0.0)) / total for name in present}


def legacy_tables(histogram: np.ndarray, reference: np.ndarray | int) -> np.ndarray:
    """The original b-hive's per-label, max-normalised weight tables (see module doc) to
    the ``reference`` histogram (or label index). If the reference has no jets at all the
    shapes cannot be matched: every weight is 1."""
    histogram = np.asarray(histogram, dtype=np.float64)
    ref = histogram[reference] if isinstance(reference, int | np.integer) else \
        np.asarray(reference, dtype=np.float64)
    if ref.max() <= 0:
        return np.ones_like(histogram)
    ref_shape = ref / ref.max()
    tables = np.ones_like(histogram)
    for i, h in enumerate(histogram):
        if h.max() <= 0:
            continue
        shape = h / h.max()
        ratio = np.divide(ref_shape, shape, out=np.zeros_like(shape), where=shape > 0)
        ratio /= ratio.max() if ratio.max() > 0 else 1.0
        tables[i] = np.where(shape > 0, ratio, 1.0)
    return tables


def reference_labels(reference: str, labels: Sequence[str],
                     classes: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The truth labels of the reference: a class's labels, or one truth label."""
    if reference in classes:
        return tuple(classes[reference])
    if reference in labels:
        return (reference,)
    raise ReweightingError(f"reweighting reference {reference!r} is neither a class "
                           f"{list(classes)} nor a truth label")


def compute_weights(histogram: np.ndarray, labels: Sequence[str],
                    classes: Mapping[str, Sequence[str]], method: str = "reference",
                    reference: str | None = None, quantile: float = 0.9,
                    min_jets_per_bin: int = 10,
                    class_fractions: str | Mapping[str, float] | None = None) -> Weights:
    """Weight tables for the truth-label histograms ``(labels, pt, eta)`` (see module doc).

    ``reference`` is a class name or a truth label (``reference``/``legacy_max``). If it has
    no jets (e.g. a test sample without b jets), the shapes are not matched: the weights are
    1 (``class_fractions`` still apply).
    """
    histogram = np.asarray(histogram, dtype=np.float64)
    if histogram.ndim != 3 or len(histogram) != len(labels):
        raise ReweightingError(f"expected a ({len(labels)} labels, pt, eta) histogram, got "
                               f"{histogram.shape}")
    if method not in METHODS:
        raise ReweightingError(f"reweighting method {method!r} is unknown; choose one of "
                               f"{METHODS}")
    index = {label: i for i, label in enumerate(labels)}
    per_class = {name: histogram[[index[label] for label in members]].sum(axis=0)
                 for name, members in classes.items()}
    target = None
    if method in ("reference", "legacy_max"):
        if reference is None:
            raise ReweightingError(f"reweighting method {method!r} needs a reference")
        target = sum(histogram[index[label]]
                     for label in reference_labels(reference, labels, classes))
    elif method == "flat":
        target = np.ones_like(histogram[0])
    clipped = {name: 0.0 for name in classes}
    if method == "legacy_max":
        tables = legacy_tables(histogram, target)
    else:
        tables = np.ones_like(histogram)
        for name, h in per_class.items():
            table = np.ones_like(h)
            if method != "none" and target.sum() > 0 and h.sum() > 0:
                table, clipped[name] = _shape_weights(h, target, quantile, min_jets_per_bin)
            for label in classes[name]:
                tables[index[label]] = table
    present = [name for name, h in per_class.items() if h.sum() > 0]
    fractions = _target_fractions(class_fractions, present)
    if fractions is not None:  # whole classes scaled down to the requested mix
        kept = {name: float(sum((tables[index[label]] * histogram[index[label]]).sum()
                                for label in classes[name])) for name in present}
        usable = [name for name in present if fractions[name] > 0]
        empty = [name for name in usable if kept[name] <= 0]
        if empty:
            raise ReweightingError(f"classes {empty} keep no jets after the shape matching; "
                                   "reweighting.class_fractions cannot be reached")
        total = min(kept[name] / fractions[name] for name in usable)
        for name in present:
            factor = total * fractions[name] / kept[name] if kept[name] > 0 else 0.0
            for label in classes[name]:
                tables[index[label]] = tables[index[label]] * min(factor, 1.0)
    return Weights(tables, _reports(tables, histogram, index, classes, clipped), method,
                   reference)


def _reports(tables: np.ndarray, histogram: np.ndarray, index: Mapping[str, int],
             classes: Mapping[str, Sequence[str]],
             clipped: Mapping[str, float]) -> dict[str, ClassReport]:
    kept = {name: float(sum((tables[index[label]] * histogram[index[label]]).sum()
                            for label in members)) for name, members in classes.items()}
    jets = {name: int(sum(histogram[index[label]].sum() for label in members))
            for name, members in classes.items()}
    total = sum(kept.values())
    return {name: ClassReport(jets[name], kept[name], clipped.get(name, 0.0),
                              kept[name] / total if total > 0 else 0.0) for name in classes}


def config_weights(config: Config, histogram: np.ndarray) -> Weights:
    """:func:`compute_weights` with the settings of ``config.reweighting``."""
    rw = config.reweighting
    return compute_weights(histogram, config.truth_labels, config.classes, rw.method,
                           config.reweighting_reference, rw.quantile, rw.min_jets_per_bin,
                           rw.class_fractions)


def reweighting_record(config: Config, weights: Weights) -> dict[str, Any]:
    """The ``reweighting`` entry of ``dataset_info.json``: the config's settings and what
    the weights do per class."""
    return {**dataclasses.asdict(config.reweighting), "reference": config.reweighting_reference,
            **weights.to_dict()}


def reweighting_table(report: Mapping[str, Any]) -> str:
    """The per-class reweighting report (``dataset_info.json["reweighting"]``) as text."""
    lines = [f"  Reweighting: {report['method']}"
             + (f" to {report['reference']}" if report["method"] in ("reference", "legacy_max")
                else "")
             + (f", quantile {report['quantile']:g}, min {report['min_jets_per_bin']} jets per "
                "bin" if report["method"] in ("reference", "flat") and "quantile" in report
                else "")
             + (f", class fractions {report['class_fractions']}"
                if report.get("class_fractions") else ""),
             f"  {'class':<8} {'jets':>10} {'kept per epoch':>15} {'clipped':>8} "
             f"{'fraction after sampling':>24}"]
    for name, c in report["classes"].items():
        kept = c["expected_kept"] / c["jets"] if c["jets"] else 0.0
        lines.append(f"  {name:<8} {c['jets']:>10,} {c['expected_kept']:>9,.0f} "
                     f"({100 * kept:4.1f}%) {100 * c['clipped_fraction']:7.1f}% "
                     f"{100 * c['fraction_after_sampling']:23.1f}%")
    total = sum(c["jets"] for c in report["classes"].values())
    lines.append(f"  {'all':<8} {total:>10,} {report['expected_kept']:>9,.0f} "
                 f"({100 * report['expected_kept'] / max(total, 1):4.1f}%)")
    return "\n".join(lines)


def bin_index(values: np.ndarray, edges: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Bin of each value for half-open bins ``[edge_i, edge_i+1)``, clipped to the range."""
    edges = np.asarray(edges)
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def jet_weights(tables: np.ndarray, labels: np.ndarray, pt: np.ndarray, eta: np.ndarray,
                pt_bins: tuple[float, ...], eta_bins: tuple[float, ...]) -> np.ndarray:
    """Weight of every jet from its label and (pT, eta) bin."""
    return tables[labels, bin_index(pt, pt_bins), bin_index(eta, eta_bins)]
