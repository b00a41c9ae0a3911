"""Validation plots of generated samples: per-flavour shapes of key b-tagging inputs, and
the pileup and V0 views (tracks per jet from the hard scatter and from pileup, the leading
track's 3D IP significance with and without the pileup tracks, PUPPI weights, all SV masses).

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


PILEUP_BRANCHES = ("Cpfcan_BtagPf_trackSip3dSig", "Cpfcan_isPileup", "Npfcan_puppiw",
                   "Npfcan_isPileup")
SIP3D_BINS = np.linspace(-20, 100, 61)


def _read(files: Iterable[str | os.PathLike]) -> ak.Array:
    """The validation branches; files written before ``*_isPileup`` existed have none."""
    branches = [o.branch for o in OBSERVABLES] + list(PILEUP_BRANCHES)
    branches += [label for labels in FLAVOURS.values() for label in labels]
    arrays = []
    for f in files:
        tree = uproot.open(f)[TREE_NAME]
        part = tree.arrays([b for b in branches if b in tree])
        for name in ("Cpfcan_isPileup", "Npfcan_isPileup"):
            if name not in part.fields:  # no pileup truth: every candidate is hard scatter
                like = "Cpfcan_BtagPf_trackSip3dSig" if name.startswith("C") else "Npfcan_puppiw"
                part[name] = part[like] * 0
        arrays.append(part)
    if not arrays:
        raise ValueError("plot_validation needs at least one input file")
    return ak.concatenate(arrays)


def _fractions(ax: object, values: np.ndarray, bins: np.ndarray, label: str, colour: str,
               linestyle: str = "-") -> float:
    """Draw the normalised histogram of ``values`` (clipped into the range); its peak."""
    if len(values) == 0:
        return 0.0
    clipped = np.clip(values, bins[0], bins[-1] - 1e-9)
    fraction = np.histogram(clipped, bins)[0] / len(values)
    mplhep.histplot(fraction, bins, ax=ax, color=colour, label=f"{label} ({len(values)})",
                    linewidth=2, linestyle=linestyle)
    return float(fraction.max())


def _finish(ax: object, xlabel: str, ylabel: str, bins: np.ndarray, peak: float,
            logy: bool, title: str = "Pythia8 + toy detector") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(bins[0], bins[-1])
    if logy:
        ax.set_yscale("log")
        ax.set_ylim(1e-4, max(peak, 1e-3) * 30)  # headroom for the legend
    else:
        ax.set_ylim(0, max(peak, 1e-3) * 1.6)
    ax.legend(title=title, loc="upper right", fontsize="small")
    experiment_label(ax)


def _pileup_views(jets: ak.Array, masks: dict[str, np.ndarray], out: Path) -> list[Path]:
    """Tracks per jet (hard scatter / pileup), leading-track Sip3dSig with and without the
    pileup tracks, neutral PUPPI weights, and the mass of every SV (the V0 view)."""
    written: list[Path] = []
    pileup = jets["Cpfcan_isPileup"] > 0.5
    sip3d = jets["Cpfcan_BtagPf_trackSip3dSig"]

    fig = Figure()
    ax = fig.subplots()
    bins = np.arange(-0.5, 30.5, 1.0)
    peak = 0.0
    for name, mask in masks.items():
        hard = ak.to_numpy(ak.sum(~pileup, axis=1))[mask]
        from_pu = ak.to_numpy(ak.sum(pileup, axis=1))[mask]
        peak = max(peak, _fractions(ax, hard, bins, f"{name}: hard scatter", COLOURS[name]),
                   _fractions(ax, from_pu, bins, f"{name}: pileup", COLOURS[name], "--"))
    _finish(ax, "Tracks per jet", "Fraction of jets / bin", bins, peak, True)
    written += save(fig, out / "validation_tracks_per_jet_pileup")

    fig = Figure()
    ax = fig.subplots()
    peak = 0.0
    for name, mask in masks.items():
        with_pu = ak.to_numpy(ak.fill_none(ak.firsts(sip3d), np.nan))[mask]
        without = ak.to_numpy(ak.fill_none(ak.firsts(sip3d[~pileup]), np.nan))[mask]
        peak = max(peak, _fractions(ax, with_pu[np.isfinite(with_pu)], SIP3D_BINS,
                                    f"{name}, all tracks", COLOURS[name]),
                   _fractions(ax, without[np.isfinite(without)], SIP3D_BINS,
                              f"{name}, pileup tracks removed", COLOURS[name], "--"))
    _finish(ax, "Leading-track 3D IP significance", "Fraction of jets / bin", SIP3D_BINS,
            peak, True)
    written += save(fig, out / "validation_leading_track_sip3dsig_pileup")

    fig = Figure()
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    weights = ak.to_numpy(ak.flatten(jets["Npfcan_puppiw"]))
    from_pu = ak.to_numpy(ak.flatten(jets["Npfcan_isPileup"])) > 0.5
    peak = max(_fractions(ax, weights[~from_pu], bins, "hard-scatter neutrals", "#e42536"),
               _fractions(ax, weights[from_pu], bins, "pileup neutrals", "#5790fc", "--"))
    _finish(ax, "Neutral candidate PUPPI weight", "Fraction of candidates / bin", bins, peak,
            True)
    written += save(fig, out / "validation_neutral_puppiw")

    fig = Figure()
    ax = fig.subplots()
    bins = np.linspace(0, 6.5, 131)  # 50 MeV: the K0S veto window shows
    peak = 0.0
    for name, mask in masks.items():
        masses = ak.to_numpy(ak.flatten(jets["sv_mass"][mask]))
        peak = max(peak, _fractions(ax, masses, bins, f"{name} jets, all SVs", COLOURS[name]))
    _finish(ax, "SV mass [GeV] (K0S veto: 0.448-0.548 GeV for 2-track SVs)",
            "Fraction of SVs / bin", bins, peak, True)
    written += save(fig, out / "validation_sv_mass_all")
    return written


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
        written += _pileup_views(jets, masks, out)
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
