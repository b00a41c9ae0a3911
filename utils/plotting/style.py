"""Shared figure style: the experiment label via mplhep, PDF + PNG output.

The label says what the figure shows: "CMS Simulation Private Work" for CMS inputs, "Private
work (Pythia8 sample)" for the built-in samples (which are not CMS simulation); a config may
set its own (``Config.figure_label``). The steps set it with :func:`set_figure_label` before
they draw.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mplhep as hep  # noqa: E402

from utils.io import atomic_path  # noqa: E402

plt.style.use(hep.style.CMS)


def new_figure(figsize: tuple[float, float] = (10, 8)) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


DEFAULT_LABEL = "Private work"
_label = [DEFAULT_LABEL]


def set_figure_label(text: str) -> None:
    """The label of the figures drawn from now on in this process."""
    _label[0] = text or DEFAULT_LABEL


def experiment_label(ax: plt.Axes, right: str = "(13.6 TeV)") -> None:
    """Draw the current label (a leading "CMS" in bold, as mplhep does) and ``right``."""
    text = _label[0]
    exp, rest = ("CMS", text[4:]) if text.startswith("CMS ") else ("", text)
    hep.label.exp_label(exp=exp, text=rest, data=True, rlabel=right, ax=ax, loc=0)


def legend_beside(ax: plt.Axes, title: str = "", fontsize: float = 15) -> None:
    """The legend to the right of the axes (headed by ``title``): it never hides data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize, frameon=False,
              title=title or None, title_fontsize=fontsize, alignment="left")


def save(fig: plt.Figure, path_without_suffix: str | Path) -> list[Path]:
    """Save as PDF and PNG (each written to a temporary name, then renamed); return both."""
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".pdf"), base.with_suffix(".png")]
    try:
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, bbox_inches="tight", dpi=120 if path.suffix == ".png" else None)
    finally:
        plt.close(fig)
    return paths
