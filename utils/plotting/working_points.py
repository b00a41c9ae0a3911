"""Mis-id rate vs discriminant threshold with the chosen working points."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.evaluation.discriminants import FLAVOUR_LABELS
from utils.evaluation.working_points import WorkingPoint
from utils.plotting.roc import thin_curve
from utils.plotting.style import experiment_label, legend_beside, new_figure, save


def rate_vs_threshold(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(thresholds, rate)``: the fraction of ``score >= t`` at every distinct score t."""
    values = np.sort(np.asarray(score, dtype=np.float64))
    thresholds = np.unique(values)
    rate = (len(values) - np.searchsorted(values, thresholds, side="left")) / len(values)
    return thresholds, rate


def plot_working_points(score: np.ndarray, flavour: np.ndarray, wps: Sequence[WorkingPoint],
                        path: str | Path, discriminant: str, title: str = "",
                        flavours: Sequence[str] = ("l", "c")) -> list[Path]:
    """Mis-id rate of ``flavours`` vs the threshold on ``discriminant`` (log y), with the WP
    targets as horizontal lines and the chosen thresholds marked and annotated.

    ``score`` and ``flavour`` (flavour name per jet) are those the WPs were computed from.
    Writes ``path`` .pdf and .png and returns both paths.
    """
    if not wps:
        raise ValueError("plot_working_points needs at least one working point")
    score = np.asarray(score, dtype=np.float64)
    flavour = np.asarray(flavour).astype(str)
    fig, ax = new_figure()
    smallest = min(wp.target for wp in wps)
    drawn = 0
    for i, f in enumerate(flavours):
        jets = score[flavour == f]
        if not len(jets):
            continue
        thresholds, rate = rate_vs_threshold(jets)
        x, y = thin_curve(thresholds, rate)
        ax.plot(x, y, drawstyle="steps-pre", lw=2.5, color=f"C{i}",
                label=f"{FLAVOUR_LABELS.get(f, f)} jets ({len(jets):,})")
        smallest = min(smallest, 1 / len(jets))
        drawn += 1
    if not drawn:
        raise ValueError(f"no jets of flavours {list(flavours)} to draw")
    bottom = 10 ** math.floor(math.log10(smallest) - 0.5)
    for k, wp in enumerate(wps):
        ax.axhline(wp.target, color="grey", ls="--", lw=1.2,
                   label="Target mis-id rates" if k == 0 else None)
    # one marker per threshold: working points that share one (e.g. XT and XXT of a small
    # sample) are named together; one without mis-identified jets sits at the axis bottom
    same: dict[float, list[WorkingPoint]] = {}
    for wp in wps:
        same.setdefault(wp.threshold, []).append(wp)
    for k, group in enumerate(same.values()):
        wp = group[0]
        achieved = wp.mistag
        y = achieved if achieved > 0 else 2 * bottom
        if achieved > 0:
            ax.plot([wp.threshold, wp.threshold], [bottom, achieved], color="black", ls=":", lw=1.2)
        ax.plot(wp.threshold, y, marker="o", ms=9, color="black",
                ls="none", label="Working points" if k == 0 else None)
        signal = FLAVOUR_LABELS.get(wp.signal, wp.signal)
        left = wp.threshold > 0.5  # the text goes where it cannot cross the axis
        names = ", ".join(w.name for w in group)
        ax.annotate(rf"{names}: $t$ = {wp.threshold:.4f}, $\varepsilon_{{{signal}}}$ = "
                    f"{100 * wp.efficiency:.1f}%" + ("" if achieved > 0 else ", no mis-id"),
                    (wp.threshold, y),
                    xytext=(-12 if left else 12, 0), textcoords="offset points",
                    ha="right" if left else "left", va="center",
                    fontsize=14, zorder=5,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.85})
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom, 3)
    ax.set_xlabel(f"Threshold on {discriminant}")
    ax.set_ylabel("Mis-identification rate")
    ax.grid(which="major", alpha=0.3)
    legend_beside(ax, title)
    experiment_label(ax)
    return save(fig, path)
