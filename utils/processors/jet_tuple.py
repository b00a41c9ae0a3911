"""Coffea processor for flat jet tuples (one tree entry per jet, jagged candidate branches).

``process`` is a pure function of one chunk: it selects jets, pads/clips the candidate
groups, computes derived features and truth labels, and writes the selected rows of the
chunk to one staging ``.npy`` file. It returns only small mergeable accumulators (staged
file names, per-label pT-eta histograms, counters), never the arrays themselves.
"""

from __future__ import annotations

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
    return f"{file_index:06d}_{entry_start:012d}.npy"


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
    """Turn chunks of a flat jet tuple into staged row matrices (see :class:`ColumnLayout`)."""

    def __init__(self, config: Config, staging_dir: str | Path,
                 file_index: dict[str, int]) -> None:
        self.config = config
        self.layout = ColumnLayout.from_config(config)
        self.staging_dir = str(staging_dir)
        self.file_index = dict(file_index)
        self.process_index = {name: i for i, name in enumerate(config.process_names)}

    def _column(self, events: Any, cache: dict[str, Any], name: str,
                derived: dict[str, Derived]) -> Any:
        if name not in cache:
            if name in derived:
                cache[name] = derived[name]({u: self._column(events, cache, u, {})
                                             for u in derived[name].uses})
            else:
                cache[name] = events[name]
        return cache[name]

    def process(self, events: Any) -> dict[str, Any]:
        meta = events.metadata
        filename = meta["filename"]
        config, layout = self.config, self.layout
        n = len(events)
        cache: dict[str, Any] = {}
        derived = {d.name: d for g in config.groups for d in g.derived}
        derived.update({t.name: t for t in config.truths if isinstance(t, Derived)})

        def column(name: str) -> Any:
            try:
                return self._column(events, cache, name, derived)
            except ColumnError as exc:
                raise ColumnError(f"{filename}: branch '{name}': {exc}") from exc

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
        if config.selection is not None:
            passed = scalar_values(config.selection(
                {u: column(u) for u in config.selection.uses})).astype(bool)
            mask_before = mask
            mask = mask & passed
            rejected = int((mask_before & ~passed).sum())
        else:
            rejected = 0
        selected = np.flatnonzero(mask)
        m = len(selected)

        matrix = np.zeros((m, layout.n_columns), dtype=np.float32)
        for group in config.groups:
            block = matrix[:, layout.slice(group.name)]
            if not group.is_candidates:
                for j, feature in enumerate(group.features):
                    block[:, j] = scalar(feature)[selected]
                continue
            view = block.reshape(m, group.length, len(group.features))
            reference_counts = None
            for j, feature in enumerate(group.features):
                try:
                    counts, content = jagged_parts(column(feature))
                except ColumnError as exc:
                    raise ColumnError(f"{filename}: branch '{feature}': {exc}") from exc
                if reference_counts is None:
                    reference_counts = counts
                    rows = np.repeat(np.arange(n), counts)
                    local = np.arange(len(content)) - np.repeat(np.cumsum(counts) - counts,
                                                                counts)
                    keep = (local < group.length) & mask[rows]
                    target_row = (np.cumsum(mask) - 1)[rows[keep]]
                    target_cand = local[keep]
                elif not np.array_equal(counts, reference_counts):
                    raise ColumnError(
                        f"{filename}: branch '{feature}' of group '{group.name}' has other "
                        f"candidate counts than '{group.features[0]}'; all features of a "
                        "candidate group must share one counter")
                view[target_row, target_cand, j] = content[keep]
        for feature in config.observers:
            matrix[:, layout.column(feature)] = scalar(feature)[selected]
        matrix[:, layout.process_column] = self.process_index[meta["dataset"]]
        truth_start = layout.slice("truth").start
        matrix[np.arange(m), truth_start + label[selected]] = 1.0

        finite = np.isfinite(matrix).all(axis=1)
        n_bad = int(m - finite.sum())
        if n_bad:
            matrix = matrix[finite]
            selected = selected[finite]

        pt_bin = bin_index(pt[selected], config.pt_bins)
        eta_bin = bin_index(eta[selected], config.eta_bins)
        n_pt, n_eta = len(config.pt_bins) - 1, len(config.eta_bins) - 1
        flat_bin = (label[selected] * n_pt + pt_bin) * n_eta + eta_bin
        histogram = np.bincount(flat_bin, minlength=len(config.truths) * n_pt * n_eta)
        histogram = histogram.reshape(len(config.truths), n_pt, n_eta).astype(np.float64)

        staged = []
        if len(matrix):
            path = Path(self.staging_dir) / staged_name(self.file_index[filename],
                                                        meta["entrystart"])
            np.save(path, matrix)
            staged.append(str(path))
        counts = {
            "entries": n,
            "selected": len(matrix),
            "out_of_window": int((~in_window).sum()),
            "no_label": int((in_window & (n_true == 0)).sum()),
            "multi_label": int((mask & (n_true > 1)).sum()),
            "rejected": rejected,
            "non_finite": n_bad,
        }
        return {"staged": staged, "histogram": histogram, "counts": counts,
                "rows_per_file": {filename: len(matrix)}}

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator
