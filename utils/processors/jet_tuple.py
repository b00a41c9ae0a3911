"""Coffea processor for flat jet tuples (one tree entry per jet, jagged candidate branches).

``process`` is a pure function of one chunk, in the steps of README "What the export does":
:meth:`~JetTupleProcessor.label` (first true truth flag), :meth:`~JetTupleProcessor.select`
(finite pT/eta inside the bins, a label, the config selection),
:meth:`~JetTupleProcessor.gather` (per-jet values and candidate groups padded/clipped,
derived features included), :meth:`~JetTupleProcessor.drop_non_finite`,
:meth:`~JetTupleProcessor.staged_rows` (the per-jet part of the rows and only the real
candidates), :meth:`~JetTupleProcessor.histogram` and :meth:`~JetTupleProcessor.stage` (raw
staging files sorted by shuffle key, see :mod:`utils.dataset.merge`). It returns only small
mergeable accumulators (staged file names and row counts, per-label pT-eta histograms,
counters), never the arrays themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
from coffea import processor

from utils.config import Config, Derived
from utils.dataset.layout import ColumnLayout
from utils.dataset.merge import write_staged
from utils.dataset.reweighting import bin_index
from utils.errors import BHiveError


class ColumnError(BHiveError, ValueError):
    """A branch has an unexpected structure (e.g. jagged where a scalar is expected)."""


def staged_name(file_index: int, entry_start: int) -> str:
    """Staging file name; sorting the names gives the input order of the jets."""
    return f"{file_index:06d}_{entry_start:012d}.raw"


_BUFFERS: dict[str, np.ndarray] = {}
TRANSPOSE_BLOCK = 1 << 16  # candidates per block of the feature-major -> candidate-major copy


def _buffer(name: str, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) float32 array backed by a per-process reusable buffer.

    Faulting in fresh memory costs more than the processing itself on some machines, so the
    large per-chunk arrays reuse one allocation per name and worker process (each view is
    valid until the next call with the same name).
    """
    size = rows * cols
    if name not in _BUFFERS or _BUFFERS[name].size < size:
        _BUFFERS[name] = np.empty(max(size, 1), dtype=np.float32)
    return _BUFFERS[name][:size].reshape(rows, cols)


def shuffle_key(seed: int, file_index: int, jet_id: np.ndarray) -> np.ndarray:
    """Pseudo-random 64-bit key of each jet from (seed, file, jet id): a splitmix64 hash.

    Depends only on the jet's identity, not on how the input is split into chunks or jobs,
    so the shuffled output is identical for any chunking, executor and number of workers.
    The output is in key order.
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


def _value_type(values: Any) -> str:
    """The type of a column as a message shows it (e.g. ``200 * var * float32``)."""
    return str(ak.type(ak.without_parameters(values))) if isinstance(values, ak.Array) else \
        f"{np.shape(values)} {getattr(values, 'dtype', type(values).__name__)}"


@dataclass
class Chunk:
    """One coffea chunk seen as jets: their number, a cached column reader (derived
    features, truth conditions and observers computed on demand) and the jets' ids."""

    filename: str
    process: str
    entry_start: int
    n: int
    jet_id: np.ndarray
    read: Callable[[str], Any]
    derived: dict[str, Derived]
    cache: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> Any:
        if name not in self.cache:
            self.cache[name] = (self.apply(self.derived[name]) if name in self.derived
                                else self.read(name))
        return self.cache[name]

    def apply(self, function: Derived) -> Any:
        """A derived column of the config on this chunk; its failure, e.g. on a jagged
        branch given to a per-jet function, is an error naming the file, the column and
        the types of its inputs."""
        inputs = {u: self.column(u) for u in function.uses}
        try:
            return function(inputs)
        except BHiveError:
            raise
        except Exception as exc:  # the config's function on this file's values
            shapes = ", ".join(f"'{u}' ({_value_type(v)})" for u, v in inputs.items())
            raise ColumnError(f"{self.filename}: '{function.name}' of the config, computed "
                              f"from {shapes}, failed: {type(exc).__name__}: {exc}") from exc

    def scalar(self, name: str) -> np.ndarray:
        """Column ``name`` with one value per jet expected."""
        return self._one_per_jet(lambda: self.column(name), f"branch '{name}'")

    def scalar_of(self, function: Derived) -> np.ndarray:
        """:meth:`apply` with one value per jet expected."""
        return self._one_per_jet(lambda: self.apply(function), f"'{function.name}'")

    def _one_per_jet(self, values: Callable[[], Any], what: str) -> np.ndarray:
        try:
            return scalar_values(values())
        except ColumnError as exc:
            if str(exc).startswith(f"{self.filename}: "):  # already names the file
                raise
            raise ColumnError(f"{self.filename}: {what}: {exc}") from exc


@dataclass
class Gathered:
    """The stored values of a chunk's jets: per-jet features (float32), observers
    (float64) and, per candidate group, ``(candidates per jet, one content array per
    feature)``."""

    scalars: dict[str, np.ndarray]
    observers: np.ndarray
    candidates: dict[str, tuple[np.ndarray, list[np.ndarray]]]


class JetTupleProcessor(processor.ProcessorABC):
    """Turn chunks of a flat jet tuple into staged rows (see :mod:`utils.dataset.merge`).

    Selected jets are staged sorted by their shuffle key (``shuffle_key`` of the jet's file
    and id), with the keys, so the jets of every output file are contiguous slices.
    """

    def __init__(self, config: Config, staging_dir: str | Path, file_index: dict[str, int],
                 seed: int = 0) -> None:
        self.config = config
        self.layout = ColumnLayout.from_config(config)
        self.staging_dir = str(staging_dir)
        self.file_index = dict(file_index)
        self.process_index = {name: i for i, name in enumerate(config.process_names)}
        self.seed = seed
        derived = {d.name: d for g in config.groups for d in g.derived}
        derived.update({t.name: t for t in config.truths if isinstance(t, Derived)})
        derived.update({o.name: o for o in config.observers if isinstance(o, Derived)})
        self.derived = derived
        self.optional = config.optional_branches
        self.optional_observers = config.optional_observers

    # -- where the per-jet columns come from (overridden for event-level formats) ----------
    rows_per_entry = 1  # jets per tree entry, to estimate the staging size

    @classmethod
    def source_branches(cls, config: Config, available: set[str]
                        ) -> tuple[list[str], list[str]]:
        """``(needed, missing)``: the file's branches the config reads, and descriptions of
        what the config needs but the file lacks (checked before any work starts)."""
        needed = [b for b in config.branches if b in available]
        return needed, [b for b in config.branches if b not in available]

    @classmethod
    def preload_branches(cls, config: Config) -> list[str] | None:
        """Branches to read in one go per chunk (None: read lazily)."""
        optional = config.optional_branches  # may be absent: read lazily, if at all
        return [b for b in config.branches if b not in optional]

    def jet_source(self, events: Any) -> tuple[int, Callable[[str], Any], np.ndarray]:
        """``(n_jets, column(name), jet_id)``: one tree entry is one jet; the id (for the
        shuffle) is the entry number."""
        entry = np.asarray(events.metadata["entrystart"], dtype=np.int64) + \
            np.arange(len(events), dtype=np.int64)
        return len(events), lambda name: events[name], entry

    # -- the steps --------------------------------------------------------------------------
    def label(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
        """``(label, n_true)``: the first true truth flag (config order) of every jet and
        the number of true flags."""
        flags = np.stack([chunk.scalar(name).astype(bool) for name in self.config.truth_labels],
                         axis=1)
        return np.argmax(flags, axis=1), flags.sum(axis=1)

    def select(self, chunk: Chunk, n_true: np.ndarray
               ) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
        """``(keep, counts, non_finite_by_branch)``: jets with finite pT and eta inside the
        outer bin edges, at least one true flag and passing the config selection. Every
        dropped jet is counted under one reason."""
        config = self.config
        pt = chunk.scalar(config.pt_key).astype(np.float64)
        eta = chunk.scalar(config.eta_key).astype(np.float64)
        finite = np.isfinite(pt) & np.isfinite(eta)
        in_window = finite & (pt >= config.pt_bins[0]) & (pt < config.pt_bins[-1]) & \
            (eta >= config.eta_bins[0]) & (eta < config.eta_bins[-1])
        keep = in_window & (n_true > 0)
        rejected = 0
        if config.selection is not None:
            passed = chunk.scalar_of(config.selection).astype(bool)
            rejected = int((keep & ~passed).sum())
            keep &= passed
        counts = {"entries": chunk.n, "non_finite": int((~finite).sum()),
                  "out_of_window": int((finite & ~in_window).sum()),
                  "no_label": int((in_window & (n_true == 0)).sum()), "rejected": rejected}
        by_branch = {name: int((~np.isfinite(values)).sum())
                     for name, values in ((config.pt_key, pt), (config.eta_key, eta))}
        return keep, counts, {k: v for k, v in by_branch.items() if v}

    def gather(self, chunk: Chunk) -> Gathered:
        """Every stored value: per-jet features as float32, observers as float64, and the
        candidate groups (sorted by ``sort_by`` if set) as flat contents with the
        candidates per jet, ready to be clipped into the rows."""
        config = self.config
        scalars = {name: chunk.scalar(name).astype(np.float32, copy=False)
                   for g in config.groups if not g.is_candidates for name in g.features}
        observers = np.empty((chunk.n, len(config.observers)), dtype=np.float64)
        for i, name in enumerate(config.observer_names):
            observers[:, i] = chunk.scalar(name)
        candidates = {}
        for group in (g for g in config.groups if g.is_candidates):
            order = None
            if group.sort_by is not None:
                order = ak.argsort(chunk.column(group.sort_by), axis=1, ascending=False,
                                   stable=True)
            counts_ref, contents = None, []
            for feature in group.features:
                try:
                    values = chunk.column(feature)
                    counts, content = jagged_parts(values if order is None else
                                                   ak.materialize(values)[order])
                except ColumnError as exc:
                    raise ColumnError(f"{chunk.filename}: branch '{feature}': {exc}") from exc
                if counts_ref is None:
                    counts_ref = counts
                elif not np.array_equal(counts, counts_ref):
                    raise ColumnError(
                        f"{chunk.filename}: branch '{feature}' of group '{group.name}' has "
                        f"other candidate counts than '{group.features[0]}'; all features of "
                        "a candidate group must share one counter")
                contents.append(content)
            candidates[group.name] = (counts_ref, contents)
        return Gathered(scalars, observers, candidates)

    def drop_non_finite(self, values: Gathered, keep: np.ndarray
                        ) -> tuple[np.ndarray, int, dict[str, int]]:
        """``(keep, dropped, by_branch)``: kept jets without NaN/inf in any stored value
        (candidates beyond a group's length are clipped, so they do not count); the number
        dropped and, per branch, how many kept jets held NaN/inf in it."""
        bad = np.zeros(len(keep), dtype=bool)
        by_branch: dict[str, int] = {}

        def mark(name: str, jets: np.ndarray) -> None:
            n = int(keep[jets].sum()) if jets.dtype == bool else \
                int(keep[np.unique(jets)].sum())
            if n:
                by_branch[name] = by_branch.get(name, 0) + n
            bad[jets] = True

        for name, column in values.scalars.items():
            finite = np.isfinite(column)
            if not finite.all():
                mark(name, ~finite)
        if values.observers.size:
            for i, name in enumerate(self.config.observer_names):
                if name in self.optional_observers:
                    continue  # a reference tagger's score: NaN where a file lacks it
                finite = np.isfinite(values.observers[:, i])
                if not finite.all():
                    mark(name, ~finite)
        for group in (g for g in self.config.groups if g.is_candidates):
            counts, contents = values.candidates[group.name]
            for name, content in zip(group.features, contents, strict=True):
                if not np.isfinite(content).all():  # rare: find the jets (stored part only)
                    rows = np.repeat(np.arange(len(counts)), counts)
                    local = np.arange(len(content)) - np.repeat(np.cumsum(counts) - counts,
                                                                counts)
                    mark(name, rows[(local < group.length) & ~np.isfinite(content)])
        dropped = int((keep & bad).sum())
        return keep & ~bad, dropped, by_branch

    def staged_rows(self, values: Gathered, selected: np.ndarray, label: np.ndarray,
                    process: str) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """The rows of the ``selected`` jets (in that order) as staged: the flat part
        (per-jet features, observers, process, truth one-hot; weight 0) and, per candidate
        group, ``(stored candidates per jet, candidates x features)`` with each jet's first
        ``length`` candidates only (the merge pads them)."""
        config, layout = self.config, self.layout
        m = len(selected)
        flat = np.zeros((m, layout.n_flat), dtype=np.float32)
        candidates = []
        for group in config.groups:
            if not group.is_candidates:
                block = flat[:, layout.flat_slice(group.name)]
                for j, feature in enumerate(group.features):
                    block[:, j] = values.scalars[feature][selected]
                continue
            per_jet, contents = values.candidates[group.name]
            counts = np.minimum(per_jet[selected], group.length).astype(np.int32)
            first = np.cumsum(per_jet) - per_jet  # each jet's first candidate in the contents
            offsets = np.cumsum(counts, dtype=np.int64) - counts
            take = np.repeat(first[selected] - offsets, counts) + \
                np.arange(int(counts.sum()), dtype=np.int64)
            # gathered feature by feature (contiguous writes), then transposed in blocks
            by_feature = _buffer(f"features:{group.name}", len(contents), len(take))
            # into the buffer (no temporary); the indices lie in range by construction, and
            # mode "wrap" skips numpy's buffered bounds check (1.5x faster than "raise")
            for j, content in enumerate(contents):
                np.take(content.astype(np.float32, copy=False), take, out=by_feature[j],
                        mode="wrap")
            stored = _buffer(f"group:{group.name}", len(take), len(contents))
            for a in range(0, len(take), TRANSPOSE_BLOCK):
                stored[a:a + TRANSPOSE_BLOCK] = by_feature[:, a:a + TRANSPOSE_BLOCK].T
            candidates.append((counts, stored))
        if config.observers:
            flat[:, layout.flat_slice("observers")] = layout.encode_observers(
                values.observers[selected])
        flat[:, layout.flat_slice("process")] = self.process_index[process]
        truth = layout.flat_slice("truth")
        flat[np.arange(m), truth.start + label[selected]] = 1.0
        return flat, candidates

    def histogram(self, chunk: Chunk, selected: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Selected jets per truth label in the (pT, eta) bins."""
        config = self.config
        pt_bin = bin_index(chunk.scalar(config.pt_key)[selected], config.pt_bins)
        eta_bin = bin_index(chunk.scalar(config.eta_key)[selected], config.eta_bins)
        n_pt, n_eta = len(config.pt_bins) - 1, len(config.eta_bins) - 1
        flat_bin = (label[selected] * n_pt + pt_bin) * n_eta + eta_bin
        histogram = np.bincount(flat_bin, minlength=len(config.truths) * n_pt * n_eta)
        return histogram.reshape(len(config.truths), n_pt, n_eta).astype(np.float64)

    def stage(self, chunk: Chunk, key: np.ndarray, flat: np.ndarray,
              candidates: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[str, int]]:
        """Write the staged rows and their shuffle keys to the staging directory (nothing
        for a chunk without selected jets)."""
        if not len(key):
            return []
        path = Path(self.staging_dir) / staged_name(self.file_index[chunk.filename],
                                                    chunk.entry_start)
        write_staged(path, key, flat, candidates)
        return [(str(path), len(key))]

    def process(self, events: Any) -> dict[str, Any]:
        meta = events.metadata
        n, read, jet_id = self.jet_source(events)
        absent = {b for b in self.optional if b not in events.fields}
        if absent:  # reference-tagger branches this file lacks: NaN scores
            source = read

            def read(name: str) -> Any:
                return np.full(n, np.nan) if name in absent else source(name)
        chunk = Chunk(meta["filename"], meta["dataset"], int(meta["entrystart"]), n, jet_id,
                      read, self.derived)
        label, n_true = self.label(chunk)
        keep, counts, non_finite = self.select(chunk, n_true)
        values = self.gather(chunk)
        keep, dropped, by_branch = self.drop_non_finite(values, keep)
        counts["non_finite"] += dropped
        for name, count in by_branch.items():
            non_finite[name] = non_finite.get(name, 0) + count
        # order the selected jets by shuffle key, then fill the rows in that order
        selected = np.flatnonzero(keep)
        key = shuffle_key(self.seed, self.file_index[chunk.filename], jet_id[selected])
        order = np.argsort(key, kind="stable")
        selected, key = selected[order], key[order]
        flat, candidates = self.staged_rows(values, selected, label, chunk.process)
        counts["selected"] = len(selected)
        counts["multi_label"] = int((n_true[selected] > 1).sum())
        labels = np.bincount(label[selected], minlength=len(self.config.truths))
        return {
            "staged": self.stage(chunk, key, flat, candidates),
            "histogram": self.histogram(chunk, selected, label),
            "counts": counts,
            "rows_per_file": {chunk.filename: len(selected)},
            "non_finite_branches": non_finite,
            "labels_per_process": {chunk.process: {
                name: int(k) for name, k in zip(self.config.truth_labels, labels, strict=True)
                if k}},
        }

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator
