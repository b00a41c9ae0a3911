"""Validation plots of generated samples: per-flavour shapes of key b-tagging inputs.

Usage: ``python -m utils.generation.validation FILE... --out DIR``
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import matplotlib.style
import mplhep
import numpy as np
import uproot
from matplotlib.figure import Figure

from utils.plotting.style import experiment_label, save, set_figure_label

from .schema import TREE_NAME
from .truth import B_LABELS, C_LABELS, LIGHT_LABELS

FLAVOURS = {"b": B_LABELS, "c": C_LABELS, "light (udsg)": LIGHT_LABELS}
COLOURS = {"b": "#e42536", "c": "#f89c20", "light (udsg)": "#5790fc"}


@dataclass(frozen=True)
class Observable:
    """One validation histogram of the leading (first) entry per jet.

    Candidates are stored sorted (tracks by Sip2dSig, SVs by d3dsig), so the first entry is
    the leading one; under/overflow is added to the first/last bin.
    """

    name: str
    branch: str
    xlabel: str
    bins: np.ndarray
    logx: bool
    logy: bool


OBSERVABLES = (
    Observable("leading_track_sip2dsig", "Cpfcan_BtagPf_trackSip2dSig",
               "Leading-track 2D IP significance", np.linspace(-20, 100, 61), False, True),
    Observable("sv_mass", "sv_mass", "Leading SV mass [GeV]", np.linspace(0, 6.5, 27),
               False, False),
    Observable("sv_d3dsig", "sv_d3dsig", "Leading SV 3D flight distance significance",
               np.geomspace(3, 1000, 41), True, True),
)


def _read(files: Iterable[str | os.PathLike]) -> ak.Array:
    branches = [o.branch for o in OBSERVABLES]
    branches += [label for labels in FLAVOURS.values() for label in labels]
    arrays = [uproot.open(f)[TREE_NAME].arrays(branches) for f in files]
    if not arrays:
        raise ValueError("plot_validation needs at least one input file")
    return ak.concatenate(arrays)


def plot_validation(files: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """Plot normalised b/c/light distributions; returns the PNG and PDF paths written."""
    jets = _read(files)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    masks = {name: np.sum([ak.to_numpy(jets[label]) for label in labels], axis=0) > 0
             for name, labels in FLAVOURS.items()}
    written: list[Path] = []
    set_figure_label("Private work (Pythia8 sample)")
    with matplotlib.style.context(mplhep.style.CMS):
        for observable in OBSERVABLES:
            leading = ak.to_numpy(ak.fill_none(ak.firsts(jets[observable.branch]), np.nan))
            is_sv = observable.branch.startswith("sv_")
            fig = Figure()
            ax = fig.subplots()
            peak = 0.0
            for name, mask in masks.items():
                values = leading[mask & np.isfinite(leading)]
                if len(values) == 0:
                    continue
                clipped = np.clip(values, observable.bins[0], observable.bins[-1] - 1e-9)
                fraction = np.histogram(clipped, observable.bins)[0] / len(values)
                peak = max(peak, fraction.max())
                mplhep.histplot(fraction, observable.bins, ax=ax, color=COLOURS[name],
                                label=f"{name} jets ({len(values)})", linewidth=2)
            ax.set_xlabel(observable.xlabel)
            ax.set_ylabel("Fraction of jets" + (" with an SV" if is_sv else "") + " / bin")
            ax.set_xlim(observable.bins[0], observable.bins[-1])
            if observable.logx:
                ax.set_xscale("log")
            if observable.logy:
                ax.set_yscale("log")
                ax.set_ylim(1e-4, max(peak, 1e-3) * 30)  # headroom for the legend
            else:
                ax.set_ylim(0, max(peak, 1e-3) * 1.5)
            ax.legend(title="Pythia8 + toy detector", loc="upper right")
            experiment_label(ax)
            written += save(fig, out / f"validation_{observable.name}")
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="generated ROOT files")
    parser.add_argument("--out", required=True, help="output directory for PNG/PDF plots")
    args = parser.parse_args(argv)
    for path in plot_validation(args.files, args.out):
        print(path)


if __name__ == "__main__":
    main()
