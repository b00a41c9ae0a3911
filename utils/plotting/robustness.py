"""Robustness figures: AUC and b-efficiency at 1 % light mis-id vs attack magnitude."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from utils.plotting.roc import MARKERS
from utils.plotting.style import experiment_label, save

PANELS = (("auc", "AUC"), ("eff_at_1pc", "b-jet eff. at 1% mis-id"))
LINESTYLES = ("-", "--", ":", "-.")


def plot_metric_vs_magnitude(
        series: Mapping[tuple[str, str], Sequence[tuple[float, Mapping[str, Any]]]],
        path: str | Path, title: str, discriminant: str) -> list[Path]:
    """Two panels (AUC, b-efficiency at 1 % mis-id of the discriminant's background: light
    jets for BvsL, all other jets for BvsAll) vs magnitude, one line per
    ``(training, attack)`` series of ``(magnitude, summary)`` points (magnitude 0: the
    nominal evaluation); one colour per training, one line style per attack."""
    trainings = list(dict.fromkeys(t for t, _ in series))
    attacks = list(dict.fromkeys(a for _, a in series))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(20, 8))
    fig.subplots_adjust(wspace=0.28)
    for (training, attack), points in series.items():
        i, j = trainings.index(training), attacks.index(attack)
        style = dict(color=colours[i % len(colours)], ls=LINESTYLES[j % len(LINESTYLES)],
                     marker=MARKERS[j % len(MARKERS)], lw=2.2, label=f"{training}, {attack}")
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            shown = [(m, values[key]) for m, values in points if values.get(key) is not None]
            if shown:
                ax.plot(*zip(*shown, strict=True), **style)
    for ax, (_, ylabel) in zip(axes, PANELS, strict=True):
        ax.set_xlabel(r"attack magnitude $\epsilon$ (feature spreads)")
        ax.set_ylabel(f"{discriminant} {ylabel}")
        ax.grid(alpha=0.4)
    experiment_label(axes[0], right="")
    axes[1].set_title(f"{discriminant} under attack", loc="right", fontsize=18)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                   fontsize=13, frameon=False, title=title, title_fontsize=13,
                   alignment="left")
    return save(fig, path)

