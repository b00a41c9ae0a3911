"""Shared figure style: CMS Simulation label via mplhep, PDF + PNG output."""

from __future__ import annotations

import os
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
    """Save as PDF and PNG (each written to a temporary name, then renamed); return both."""
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".pdf"), base.with_suffix(".png")]
    try:
        for path in paths:
            tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
            fig.savefig(tmp, bbox_inches="tight", dpi=120 if path.suffix == ".png" else None)
            os.replace(tmp, path)
    finally:
        plt.close(fig)
    return paths
