"""Shared figure style: CMS Simulation label via mplhep, PDF + PNG output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mplhep as hep  # noqa: E402

plt.style.use(hep.style.CMS)


def new_figure(figsize: tuple[float, float] = (10, 8)) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def cms_label(ax: plt.Axes, right: str = "(13.6 TeV)") -> None:
    hep.cms.label(data=False, rlabel=right, ax=ax, loc=0)  # data=False adds "Simulation"


def save(fig: plt.Figure, path_without_suffix: str | Path) -> list[Path]:
    """Save as PDF and PNG; return both paths."""
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".pdf"), base.with_suffix(".png")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=120 if path.suffix == ".png" else None)
    plt.close(fig)
    return paths
