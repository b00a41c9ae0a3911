"""Input feature distributions per class, from :mod:`utils.dataset.histograms`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from utils.dataset.histograms import FeatureHistograms
from utils.plotting.style import experiment_label, legend_beside, new_figure, save

SPIKE_RATIO = 20.0
AXIS_LABELS = {"jet_pt": r"Jet $p_{\mathrm{T}}$ [GeV]", "jet_eta": r"Jet $\eta$"}


def safe_name(name: str) -> str:
    """File-name-safe version of a feature or process name (only ``[A-Za-z0-9_]``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name) or "_"


def plot_feature(hists: FeatureHistograms, name: str, process: str, path: str | Path,
                 classes: Mapping[str, Sequence[str]] | None = None, log_y: bool | None = None
                 ) -> list[Path]:
    """One feature of one process: a unit-area step histogram per class (truth labels grouped
    by ``classes``, default one per label). Under- and overflow fractions are given in the
    legend. ``log_y=None`` uses a log y axis for peaked distributions (highest bin above
    ``SPIKE_RATIO`` times the median non-empty bin). Writes ``path`` .pdf and .png and
    returns both paths."""
    if process not in hists.processes:
        raise KeyError(f"no process {process!r}; processes are {list(hists.processes)}")
    hist = hists.histograms[name]
    p = hists.processes.index(process)
    per_class = {c: counts[p] for c, counts in hists.counts_by_class(name, classes).items()}
    entries = "candidates" if hist.per_candidate else "jets"
    widths = np.diff(hist.edges)
    fig, ax = new_figure()
    peak, lowest, filled = 0.0, np.inf, []
    for i, (cls, counts) in enumerate(per_class.items()):
        total = counts.sum()
        if not total:
            continue
        density = counts[1:-1] / (total * widths)
        label = f"{cls} ({total:,} {entries})"
        flow = [f"{tag} {100 * n / total:.1f}%" for tag, n in (("UF", counts[0]),
                                                                ("OF", counts[-1])) if n]
        if flow:
            label += ", " + ", ".join(flow)
        ax.stairs(density, hist.edges, lw=2, color=f"C{i % 10}", label=label)
        peak = max(peak, float(density.max()))
        filled.append(density[density > 0])
    filled_bins = np.concatenate(filled) if filled else np.zeros(0)
    if filled_bins.size:
        lowest = float(filled_bins.min())
    else:
        ax.text(0.5, 0.5, "no entries in range", transform=ax.transAxes, ha="center")
    if log_y is None:
        log_y = bool(filled_bins.size) and peak > SPIKE_RATIO * float(np.median(filled_bins))
    ax.set_xlim(hist.edges[0], hist.edges[-1])
    if hist.integer:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log_y and np.isfinite(lowest):
        ax.set_yscale("log")
        ax.set_ylim(lowest / 2, peak * 30)
    else:
        ax.set_ylim(0, 1.5 * peak if peak else 1)
    xlabel = (f"Number of {hist.group} candidates" if name.endswith("_multiplicity")
              and not hist.per_candidate else AXIS_LABELS.get(name, name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Normalised to unit area")
    what = f"{hist.group} candidates (real ones only)" if hist.per_candidate else \
        f"{hist.group}, per jet"
    legend_beside(ax, f"{process}: {what}")
    experiment_label(ax)
    return save(fig, path)


def plot_feature_histograms(hists: FeatureHistograms, out_dir: str | Path,
                            classes: Mapping[str, Sequence[str]] | None = None,
                            features: Sequence[str] | None = None,
                            processes: Sequence[str] | None = None,
                            log_y: bool | None = None) -> list[Path]:
    """Every (or the listed) feature for every (or the listed) process with jets:
    ``out_dir/<process>/<feature>.{pdf,png}``. Returns the written paths."""
    names = list(hists.histograms) if features is None else list(features)
    unknown = [n for n in names if n not in hists.histograms]
    if unknown:
        raise KeyError(f"no histograms for {unknown}; features are {list(hists.histograms)}")
    chosen = hists.processes if processes is None else processes
    paths: list[Path] = []
    for process in chosen:
        if process in hists.processes and not hists.n_jets[hists.processes.index(process)].sum():
            continue
        for name in names:
            paths += plot_feature(hists, name, process,
                                  Path(out_dir) / safe_name(process) / safe_name(name),
                                  classes=classes, log_y=log_y)
    return paths
