"""Coffea processor for flat jet tuples (one tree entry per jet, jagged candidate branches).

``process`` is a pure function of one chunk: it selects jets, pads/clips the candidate
groups, computes derived features and truth labels, and writes the selected rows of the
chunk to one raw float32 staging file, grouped by shuffle bucket. It returns only small
mergeable accumulators (staged file names and row counts, per-label pT-eta histograms,
counters), never the arrays themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
from coffea import processor

from utils.config import Config, Derived
from utils.dataset.layout import ColumnLayout
from utils.dataset.reweighting import bin_index


class ColumnError(ValueError):
    """A branch has an unexpected structure (e.g. jagged where a scalar is expected)."""


def staged_name(file_index: int, entry_start: int) -> str:
    """Staging file name; sorting the names gives the input order of the jets."""
    return f"{file_index:06d}_{entry_start:012d}.raw"


_BUFFERS: dict[str, np.ndarray] = {}


def _zeroed_buffer(name: str, rows: int, cols: int) -> np.ndarray:
    """A zeroed (rows, cols) float32 array backed by a per-process reusable buffer.

    Faulting in fresh memory costs more than the processing itself on some machines, so the
    large per-chunk arrays reuse one allocation per name and worker process (each view is
    valid until the next call with the same name).
    """
    size = rows * cols
    if name not in _BUFFERS or _BUFFERS[name].size < size:
        _BUFFERS[name] = np.empty(max(size, 1), dtype=np.float32)
    view = _BUFFERS[name][:size].reshape(rows, cols)
    view.fill(0.0)
    return view


def shuffle_key(seed: int, file_index: int, jet_id: np.ndarray) -> np.ndarray:
    """Pseudo-random 64-bit key of each jet from (seed, file, jet id): a splitmix64 hash.

    Depends only on the jet's identity, not on how the input is split into chunks or jobs,
    so the shuffled output is identical for any chunking, executor and number of workers.
    The merge cuts the key range into buckets.
    """
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + (np.uint64(file_index) << np.uint64(40)) + jet_id.astype(np.uint64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def jagged_parts(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, content)`` of a one-level jagged array (content of the listed entries only)."""
    array = ak.materialize(values) if isinstance(values, ak.Array) else ak.Array(values)
    if array.ndim != 2:
        raise ColumnError(f"expected one value list per jet, got type {array.type}")
    layout = ak.to_layout(array)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(
            layout.content, ak.contents.NumpyArray):
        offsets = np.asarray(layout.offsets.data)
        content = np.asarray(layout.content.data)[offsets[0]:offsets[-1]]
        return np.diff(offsets), content
    return ak.to_numpy(ak.num(array, axis=1)), ak.to_numpy(ak.flatten(array, axis=1))


def scalar_values(values: Any) -> np.ndarray:
    """A per-jet numpy array (raises for jagged input)."""
    array = ak.materialize(values) if isinstance(values, ak.Array) else values
    if isinstance(array, ak.Array):
        if array.ndim != 1:
            raise ColumnError(f"expected one value per jet, got type {array.type}")
        return ak.to_numpy(array)
    return np.asarray(array)


class JetTupleProcessor(processor.ProcessorABC):
    """Turn chunks of a flat jet tuple into staged row matrices (see :class:`ColumnLayout`).

    Selected rows are written sorted by their shuffle key (``shuffle_key`` of the jet's file
    and id), with the keys beside them (``<name>.keys``), so the merge reads every key range
    (bucket) as contiguous slices.
    """

    def __init__(self, config: Config, staging_dir: str | Path, file_index: dict[str, int],
                 seed: int = 0) -> None:
        self.config = config
        self.layout = ColumnLayout.from_config(config)
        self.staging_dir = str(staging_dir)
        self.file_index = dict(file_index)
        self.process_index = {name: i for i, name in enumerate(config.process_names)}
        self.seed = seed

    # -- where the per-jet columns come from (overridden for event-level formats) ----------
    rows_per_entry = 1  # jets per tree entry, to estimate the staging size

    @classmethod
    def missing_branches(cls, config: Config, available: set[str]) -> list[str]:
        """Branches the config needs that a file lacks (checked before any work starts)."""
        return [b for b in config.branches if b not in available]

    @classmethod
    def preload_branches(cls, config: Config) -> list[str] | None:
        """Branches to read in one go per chunk (None: read lazily)."""
        return list(config.branches)

    def jet_source(self, events: Any) -> tuple[int, Callable[[str], Any], np.ndarray]:
        """``(n_jets, column(name), jet_id)``: one tree entry is one jet; the id (for the
        shuffle) is the entry number."""
        entry = np.asarray(events.metadata["entrystart"], dtype=np.int64) + \
            np.arange(len(events), dtype=np.int64)
        return len(events), lambda name: events[name], entry

    # -- rows -------------------------------------------------------------------------------
    def process(self, events: Any) -> dict[str, Any]:
        meta = events.metadata
        filename = meta["filename"]
        config, layout = self.config, self.layout
        n, source, jet_id = self.jet_source(events)
        cache: dict[str, Any] = {}
        derived = {d.name: d for g in config.groups for d in g.derived}
        derived.update({t.name: t for t in config.truths if isinstance(t, Derived)})
        derived.update({o.name: o for o in config.observers if isinstance(o, Derived)})

        def column(name: str) -> Any:
            if name not in cache:
                if name in derived:
                    cache[name] = derived[name]({u: column(u) for u in derived[name].uses})
                else:
                    cache[name] = source(name)
            return cache[name]

        def scalar(name: str) -> np.ndarray:
            try:
                return scalar_values(column(name))
            except ColumnError as exc:
                raise ColumnError(f"{filename}: branch '{name}': {exc}") from exc

        # truth labels: the first true flag (config order) is the jet's label
        flags = np.stack([scalar(label).astype(bool) for label in config.truth_labels], axis=1)
        n_true = flags.sum(axis=1)
        label = np.argmax(flags, axis=1)
        pt = scalar(config.pt_key).astype(np.float64)
        eta = scalar(config.eta_key).astype(np.float64)
        in_window = ((pt >= config.pt_bins[0]) & (pt < config.pt_bins[-1]) &
                     (eta >= config.eta_bins[0]) & (eta < config.eta_bins[-1]))
        mask = in_window & (n_true > 0)
        rejected = 0
        if config.selection is not None:
            passed = scalar_values(config.selection(
                {u: column(u) for u in config.selection.uses})).astype(bool)
            rejected = int((mask & ~passed).sum())
            mask &= passed

        # gather every stored value once (as float32) and find jets with NaN/inf
        bad = np.zeros(n, dtype=bool)
        scalars: dict[str, np.ndarray] = {}
        for name in [f for g in config.groups if not g.is_candidates for f in g.features]:
            scalars[name] = scalar(name).astype(np.float32, copy=False)
            bad |= ~np.isfinite(scalars[name])
        observers = np.empty((n, len(config.observers)), dtype=np.float64)
        for i, name in enumerate(config.observer_names):
            observers[:, i] = scalar(name)
        bad |= ~np.isfinite(observers).all(axis=1)
        candidates: dict[str, tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = {}
        for group in (g for g in config.groups if g.is_candidates):
            counts_ref, contents = None, []
            order = None
            if group.sort_by is not None:
                order = ak.argsort(column(group.sort_by), axis=1, ascending=False, stable=True)
            for feature in group.features:
                try:
                    values = column(feature)
                    counts, content = jagged_parts(values if order is None else
                                                   ak.materialize(values)[order])
                except ColumnError as exc:
                    raise ColumnError(f"{filename}: branch '{feature}': {exc}") from exc
                if counts_ref is None:
                    counts_ref = counts
                    rows = np.repeat(np.arange(n), counts)
                    local = np.arange(len(content)) - np.repeat(np.cumsum(counts) - counts,
                                                                counts)
                elif not np.array_equal(counts, counts_ref):
                    raise ColumnError(
                        f"{filename}: branch '{feature}' of group '{group.name}' has other "
                        f"candidate counts than '{group.features[0]}'; all features of a "
                        "candidate group must share one counter")
                if not np.isfinite(content).all():  # rare: find the jets (stored part only)
                    stored = local < group.length
                    bad[rows[stored & ~np.isfinite(content)]] = True
                contents.append(content)
            candidates[group.name] = (rows, local, contents)
        n_bad = int((mask & bad).sum())
        mask &= ~bad

        # order the selected jets by shuffle bucket, then fill the rows in that order
        selected = np.flatnonzero(mask)
        key = shuffle_key(self.seed, self.file_index[filename], jet_id[selected])
        order = np.argsort(key, kind="stable")
        selected, key = selected[order], key[order]
        m = len(selected)
        position = np.full(n, -1, dtype=np.int64)
        position[selected] = np.arange(m)

        matrix = _zeroed_buffer("rows", m, layout.n_columns)
        for group in config.groups:
            block = matrix[:, layout.slice(group.name)]
            if not group.is_candidates:
                for j, feature in enumerate(group.features):
                    block[:, j] = scalars[feature][selected]
                continue
            rows, local, contents = candidates[group.name]
            target = position[rows]
            take = np.flatnonzero((target >= 0) & (local < group.length))
            # fill feature-major (sequential writes), then transpose into the row block
            dense = _zeroed_buffer(f"group:{group.name}", len(contents), m * group.length)
            slot = target[take] * group.length + local[take]
            for j, content in enumerate(contents):
                dense[j, slot] = content[take]
            block.reshape(m, group.length, len(contents))[...] = \
                dense.reshape(len(contents), m, group.length).transpose(1, 2, 0)
        if config.observers:
            matrix[:, layout.slice("observers")] = layout.encode_observers(observers[selected])
        matrix[:, layout.process_column] = self.process_index[meta["dataset"]]
        matrix[np.arange(m), layout.slice("truth").start + label[selected]] = 1.0

        pt_bin = bin_index(pt[selected], config.pt_bins)
        eta_bin = bin_index(eta[selected], config.eta_bins)
        n_pt, n_eta = len(config.pt_bins) - 1, len(config.eta_bins) - 1
        flat_bin = (label[selected] * n_pt + pt_bin) * n_eta + eta_bin
        histogram = np.bincount(flat_bin, minlength=len(config.truths) * n_pt * n_eta)
        histogram = histogram.reshape(len(config.truths), n_pt, n_eta).astype(np.float64)

        staged = []
        if m:
            path = Path(self.staging_dir) / staged_name(self.file_index[filename],
                                                        meta["entrystart"])
            matrix.tofile(path)
            key.tofile(f"{path}.keys")
            staged.append((str(path), m))
        counts = {
            "entries": n,
            "selected": m,
            "out_of_window": int((~in_window).sum()),
            "no_label": int((in_window & (n_true == 0)).sum()),
            "multi_label": int((mask & (n_true > 1)).sum()),
            "rejected": rejected,
            "non_finite": n_bad,
        }
        return {"staged": staged, "histogram": histogram, "counts": counts,
                "rows_per_file": {filename: m}}

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator
