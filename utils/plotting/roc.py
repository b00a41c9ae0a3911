"""ROC curves and binned efficiency / mis-id figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from utils.evaluation.binned import VARIABLE_LABELS, BinnedRate
from utils.evaluation.discriminants import FLAVOUR_LABELS
from utils.plotting.style import experiment_label, legend_beside, new_figure, save

MISTAG_FLOOR = 1e-4  # lowest mis-id rate drawn on ROC figures
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def window_label(process: str, pt_range: tuple[float, float] | None = None,
                 eta_range: tuple[float, float] | None = None) -> str:
    """E.g. ``TT, 30 <= pT < 1000 GeV, |eta| < 2.5`` in matplotlib mathtext."""
    parts = [process]
    if pt_range is not None:
        parts.append(_range_text(r"p_{\mathrm{T}}", pt_range, " GeV"))
    if eta_range is not None:
        low, high = eta_range
        if math.isfinite(high) and low == -high:
            parts.append(rf"$|\eta| < {_number(high)}$")
        else:
            parts.append(_range_text(r"\eta", eta_range, ""))
    return ", ".join(p for p in parts if p)


def _range_text(symbol: str, window: tuple[float, float], unit: str) -> str:
    low, high = window
    if math.isfinite(low) and math.isfinite(high):
        return rf"${_number(low)} \leq {symbol} < {_number(high)}${unit}"
    if math.isfinite(low):
        return rf"${symbol} \geq {_number(low)}${unit}"
    if math.isfinite(high):
        return rf"${symbol} < {_number(high)}${unit}"
    return ""


def _number(value: float) -> str:
    return f"{value:g}"


def thin_curve(x: np.ndarray, y: np.ndarray, max_points: int = 3000
               ) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` points of a curve for drawing: evenly spaced in index
    plus log-spaced from both ends (where the low rates of ROC / threshold curves lie)."""
    n = len(x)
    if n <= max_points:
        return np.asarray(x), np.asarray(y)
    m = max_points // 3
    ends = np.geomspace(1, n - 1, m).astype(np.int64)
    keep = np.unique(np.r_[0, np.linspace(0, n - 1, m).astype(np.int64), ends, n - 1 - ends,
                           n - 1])
    return np.asarray(x)[keep], np.asarray(y)[keep]


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]],
             path: str | Path, title: str, xlabel: str, ylabel: str) -> list[Path]:
    """ROC figure of ``(label, fpr, tpr, auc)`` curves: efficiency on x, log mis-id on y.

    ``title`` (e.g. :func:`window_label`) heads the legend beside the axes. The y axis starts at
    the decade of the smallest measured mis-id rate (1 / N_background), at least 1e-4.
    Writes ``path`` .pdf and .png and returns both paths.
    """
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    fig, ax = new_figure()
    smallest = 1.0
    for label, fpr, tpr, area in curves:
        fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        shown = fpr > 0
        if shown.any():
            smallest = min(smallest, float(fpr[shown].min()))
        x, y = thin_curve(tpr[shown], fpr[shown])
        ax.plot(x, y, lw=2.5, label=f"{label} (AUC = {area:.3f})")
    floor = max(MISTAG_FLOOR, 10 ** math.floor(math.log10(smallest)))
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(which="major", alpha=0.4)
    ax.grid(which="minor", axis="y", alpha=0.15)
    legend_beside(ax, title, fontsize=16)
    experiment_label(ax)
    return save(fig, path)


def plot_binned(rates: Sequence[BinnedRate], path: str | Path, title: str, ylabel: str,
                log_y: bool = False) -> list[Path]:
    """Efficiency or mis-id rate vs jet pT or eta with Wilson error bars, one series per
    :class:`BinnedRate` (several flavours / working points in one figure).

    Empty bins (NaN) are left out; the x axis spans the bins with data. The legend, headed
    by ``title``, sits beside the axes, so it never hides a point. Writes ``path`` .pdf and
    .png and returns both paths.
    """
    if not rates:
        raise ValueError("plot_binned needs at least one series")
    variables = {r.variable for r in rates}
    if len(variables) != 1:
        raise ValueError(f"all series must be binned in the same variable, got {variables}")
    variable = variables.pop()
    fig, ax = new_figure()
    flavours = list(dict.fromkeys(r.flavour for r in rates))
    labels = list(dict.fromkeys(r.label for r in rates))
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    filled = np.zeros(len(rates[0].edges) - 1, dtype=bool)
    shown = []
    for r in rates:
        centres = 0.5 * (r.edges[1:] + r.edges[:-1])
        half = 0.5 * np.diff(r.edges)
        ok = np.isfinite(r.rate)
        if log_y:
            ok &= r.rate > 0
        if not ok.any():
            continue
        filled |= ok
        shown.append(r.rate[ok])
        flavour = FLAVOUR_LABELS.get(r.flavour, r.flavour)
        name = f"{flavour} jets" + (f", {r.label}" if r.label else "")
        # colour by flavour (by working point if there is one flavour), marker by WP
        colour = (flavours.index(r.flavour) if len(flavours) > 1 else labels.index(r.label))
        ax.errorbar(centres[ok], r.rate[ok], xerr=half[ok],
                    yerr=[r.rate[ok] - r.low[ok], r.high[ok] - r.rate[ok]],
                    color=colours[colour % len(colours)],
                    marker=MARKERS[labels.index(r.label) % len(MARKERS)], ls="none", ms=7,
                    capsize=0, label=name)
    edges = rates[0].edges
    if filled.any():
        used = np.flatnonzero(filled)
        low, high = edges[used[0]], edges[used[-1] + 1]
    else:
        low, high = edges[0], edges[-1]
    if variable == "pt" and low > 0 and high / low > 8:
        ax.set_xscale("log")
    ax.set_xlim(low, high)
    if log_y:
        ax.set_yscale("log")
        values = np.concatenate(shown) if shown else np.array([1e-3, 1.0])
        ax.set_ylim(10 ** math.floor(math.log10(values.min()) - 0.3),
                    10 ** (math.log10(max(values.max(), 1e-6)) + 0.3))
    else:
        ax.set_ylim(0, 1.05)
    ax.set_xlabel(VARIABLE_LABELS.get(variable, variable))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    legend_beside(ax, title)
    experiment_label(ax)
    return save(fig, path)
