"""Efficiency and mis-id rate in bins of jet pT or eta at fixed thresholds.

In every bin (half-open, ``low <= x < high``; jets outside the edges are ignored) the rate
is the unweighted fraction of the jets of one flavour with ``score >= threshold``. The
uncertainty is the Wilson score interval at 68.3 % CL (z = 1): unlike the normal
approximation it stays inside [0, 1] and is non-zero for rates of 0 or 1. Bins without jets
of the flavour give NaN rate and interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.evaluation.working_points import WorkingPoint

VARIABLE_LABELS = {"pt": r"Jet $p_{\mathrm{T}}$ [GeV]", "eta": r"Jet $\eta$",
                   "abseta": r"Jet $|\eta|$"}


@dataclass(frozen=True, eq=False)
class BinnedRate:
    """Selected fraction of one flavour per bin of ``variable``, with its Wilson interval."""

    variable: str
    edges: np.ndarray  # (n_bins + 1,)
    flavour: str
    threshold: float
    label: str  # e.g. the working point name
    n_total: np.ndarray  # jets of the flavour per bin
    n_pass: np.ndarray  # of which with score >= threshold
    rate: np.ndarray  # n_pass / n_total, NaN for empty bins
    low: np.ndarray  # lower bound of the interval, NaN for empty bins
    high: np.ndarray  # upper bound of the interval, NaN for empty bins

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN becomes None)."""
        def listed(a: np.ndarray) -> list[Any]:
            return [None if np.isnan(v) else float(v) for v in np.asarray(a, dtype=float)]

        return {"variable": self.variable, "flavour": self.flavour, "label": self.label,
                "threshold": self.threshold, "edges": self.edges.tolist(),
                "n_total": self.n_total.tolist(), "n_pass": self.n_pass.tolist(),
                "rate": listed(self.rate), "low": listed(self.low), "high": listed(self.high)}


def wilson_interval(n_pass: np.ndarray, n_total: np.ndarray, z: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval ``(low, high)`` of ``n_pass / n_total``; NaN where n_total = 0."""
    k = np.asarray(n_pass, dtype=np.float64)
    n = np.asarray(n_total, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        denominator = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denominator
        half = z / denominator * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    # the interval contains p mathematically; min/max remove rounding at p = 0 or 1
    return np.clip(np.minimum(centre - half, p), 0, 1), np.clip(np.maximum(centre + half, p), 0, 1)


def binned_rate(values: np.ndarray, passed: np.ndarray, edges: Sequence[float],
                variable: str = "pt", flavour: str = "", threshold: float = np.nan,
                label: str = "") -> BinnedRate:
    """Fraction of ``passed`` jets per bin of ``values`` (the jets of one flavour)."""
    values = np.asarray(values, dtype=np.float64)
    passed = np.asarray(passed, dtype=bool)
    if values.shape != passed.shape:
        raise ValueError(f"values {values.shape} and passed {passed.shape} differ in shape")
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin edges must be strictly increasing, got {edges.tolist()}")
    n_bins = len(edges) - 1
    index = np.searchsorted(edges, values, side="right") - 1
    inside = (index >= 0) & (index < n_bins)
    n_total = np.bincount(index[inside], minlength=n_bins)
    n_pass = np.bincount(index[inside & passed], minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n_total > 0, n_pass / n_total, np.nan)
    low, high = wilson_interval(n_pass, n_total)
    return BinnedRate(variable, edges, flavour, float(threshold), label, n_total, n_pass,
                      rate, low, high)


def binned_rates(values: np.ndarray, score: np.ndarray, flavour: np.ndarray,
                 edges: Sequence[float], working_points: Sequence[WorkingPoint],
                 flavours: Sequence[str] = ("b", "c", "l"), variable: str = "pt"
                 ) -> list[BinnedRate]:
    """Rates of every flavour at every working point's threshold, per bin of ``values``.

    ``values`` (e.g. jet pT), ``score`` and ``flavour`` (flavour name per jet) are aligned.
    Flavours without jets give all-NaN rates.
    """
    values = np.asarray(values, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    flavour = np.asarray(flavour).astype(str)
    if not values.shape == score.shape == flavour.shape:
        raise ValueError(f"values {values.shape}, score {score.shape} and flavour "
                         f"{flavour.shape} must have the same shape")
    out = []
    for f in flavours:
        jets = flavour == f
        for wp in working_points:
            out.append(binned_rate(values[jets], score[jets] >= wp.threshold, edges,
                                   variable=variable, flavour=f, threshold=wp.threshold,
                                   label=f"{wp.name} WP"))
    return out
