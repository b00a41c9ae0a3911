"""Staged rows of the export and their merge into shuffled, reweighted LZ4 chunks.

The processor stages every coffea chunk's selected jets, sorted by their shuffle key (a
pseudo-random 64-bit hash of the jet's identity), as raw files (:func:`write_staged`):

- ``<base>.keys``: the keys (uint64);
- ``<base>``: the flat part of each row, float32 (jets, ``layout.n_flat``): the per-jet
  features, observers, process, truth (see :meth:`ColumnLayout.flat_ranges`);
- ``<base>.c<i>.counts`` / ``<base>.c<i>``: for candidate group ``i``, the stored candidates
  per jet (int32) and only those candidates, float32 (candidates, features) — no padding.

The merge (:func:`merge_staged`):

1. orders all jets by (key, file, entry). The keys hash each jet's identity, so this order is
   a uniform pseudo-random shuffle that depends only on the jets and the seed, not on how
   the input was split into chunks, jobs or workers;
2. cuts that order into files of exactly ``chunk_size`` rows (the last one the remainder);
   the jets of one output file are a contiguous slice of every staged chunk;
3. builds the output files in ``workers`` threads, each file on its own: it takes its slices
   straight from the staged files (mapped, not copied), puts every jet's row at its place
   (candidates written candidate-major into the zeroed padding), fills the weight column
   and writes ``file_<k>.lz4``.

Memory: the keys and ranks of all jets (16 bytes per jet) plus a few output files' buffers.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.dataset.chunk_format import write_chunk
from utils.dataset.directory import chunk_name
from utils.dataset.layout import ColumnLayout
from utils.dataset.reweighting import jet_weights
from utils.io import write_raw

FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class MergeResult:
    files: list[Path]
    rows: list[int]
    sum_weight: list[float]
    sizes: list[int]
    sample_result: Any = None  # what ``on_sample`` returned


def chunk_sizes(n_rows: int, chunk_size: int) -> list[int]:
    """Rows per output file: ``chunk_size`` each, the last one the remainder."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_files = math.ceil(n_rows / chunk_size)
    return [chunk_size] * (n_files - 1) + [n_rows - chunk_size * (n_files - 1)] if n_files else []


def write_staged(path: str | Path, keys: np.ndarray, flat: np.ndarray,
                 candidates: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    """Stage one chunk's jets (sorted by ``keys``): the flat row parts and, per candidate
    group, ``(stored candidates per jet, candidates x features)``."""
    write_raw(path, np.asarray(flat, dtype=np.float32))
    for i, (counts, values) in enumerate(candidates):
        write_raw(f"{path}.c{i}.counts", np.asarray(counts, dtype=np.int32))
        write_raw(f"{path}.c{i}", np.asarray(values, dtype=np.float32))
    write_raw(f"{path}.keys", np.asarray(keys, dtype=np.uint64))  # last: marks it complete


class _Run:
    """One staged chunk: its files, keys and per-group candidate offsets, checked."""

    def __init__(self, path: str, rows: int, layout: ColumnLayout) -> None:
        self.path = path
        self.rows = rows
        self.keys = self._load(f"{path}.keys", np.uint64, rows)
        if rows > 1 and not (self.keys[1:] >= self.keys[:-1]).all():
            raise ValueError(f"staged file {path}: rows are not sorted by their keys")
        self._expect(path, rows * layout.n_flat * 4)
        self.offsets = []
        for i, block in enumerate(layout.candidate_blocks):
            counts = self._load(f"{path}.c{i}.counts", np.int32, rows)
            if rows and (counts.min() < 0 or counts.max() > block.length):
                raise ValueError(f"staged file {path}.c{i}.counts: candidate counts outside "
                                 f"[0, {block.length}]")
            offsets = np.zeros(rows + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            self._expect(f"{path}.c{i}", int(offsets[-1]) * len(block.features) * 4)
            self.offsets.append(offsets)
        # mapped, not read: the merge takes each jet's values straight from the page cache
        self.flat = _map(path, (rows, layout.n_flat))
        self.values = [_map(f"{path}.c{i}", (int(offsets[-1]), len(block.features)))
                       for i, (offsets, block) in enumerate(zip(self.offsets,
                                                                 layout.candidate_blocks,
                                                                 strict=True))]

    @staticmethod
    def _expect(path: str, size: int) -> None:
        actual = Path(path).stat().st_size
        if actual != size:
            raise ValueError(f"staged file {path} has {actual} bytes, expected {size}")

    @classmethod
    def _load(cls, path: str, dtype: type, rows: int) -> np.ndarray:
        cls._expect(path, rows * np.dtype(dtype).itemsize)
        return np.fromfile(path, dtype=dtype)


def _flat_column(flat_ranges: list[tuple[slice, slice]], column: int) -> int:
    """Column of the flat part holding row column ``column`` (a per-jet column)."""
    for columns, staged in flat_ranges:
        if columns.start <= column < columns.stop:
            return staged.start + column - columns.start
    raise ValueError(f"row column {column} is not a per-jet column")


def _map(path: str, shape: tuple[int, int]) -> np.ndarray:
    """The staged float32 file ``path`` as a read-only array (mapped; a file without
    values cannot be mapped and needs none)."""
    if not shape[0]:
        return np.empty(shape, dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=shape)


class _Buffers:
    """Reusable arrays of one worker (fresh memory is expensive to fault in)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        size = math.prod(shape)
        array = self.arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            array = self.arrays[name] = np.empty(max(size, 1), dtype=dtype)
        return array[:size].reshape(shape)


def merge_staged(staged: Sequence[tuple[str, int]], layout: ColumnLayout,
                 out_dir: Path, chunk_size: int, tables: np.ndarray, pt_key: str,
                 eta_key: str, pt_bins: tuple[float, ...], eta_bins: tuple[float, ...],
                 workers: int = 1, advance: Callable[[int], None] | None = None,
                 sample: int = 0, extract: Callable[[np.ndarray], Any] | None = None,
                 on_sample: Callable[[list[Any]], Any] | None = None) -> MergeResult:
    """Merge the staged ``(path, rows)`` chunks (see :func:`write_staged`) into
    ``out_dir/file_<k>.lz4`` (the seed is in the keys: the order needs nothing else).

    The first ``sample`` rows of the dataset feed e.g. the feature scales: ``extract`` is
    called with (a view of) each output file's share of them while it is built and keeps
    what it needs; ``on_sample`` gets the extracts in file order, in its own thread while
    the later files are built. ``advance`` is called with the number of rows written after
    each output file.
    """
    runs = [_Run(path, rows, layout) for path, rows in
            sorted(staged, key=lambda entry: Path(entry[0]).name)]
    total = sum(run.rows for run in runs)
    sizes = chunk_sizes(total, chunk_size)
    if not sizes:
        raise ValueError("no rows to merge")
    edges = np.concatenate([[0], np.cumsum(sizes)])
    # rank of every jet in the (key, file, entry) order; within a run the ranks increase
    keys = np.concatenate([run.keys for run in runs])
    order = np.argsort(keys, kind="stable")
    del keys
    rank = np.empty(total, dtype=np.int64)
    rank[order] = np.arange(total)
    del order
    starts = np.concatenate([[0], np.cumsum([run.rows for run in runs])])
    ranks = [rank[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    bounds = np.array([np.searchsorted(r, edges) for r in ranks],
                      dtype=np.int64).reshape(len(runs), len(edges))

    n_cols, n_flat = layout.n_columns, layout.n_flat
    flat_ranges = layout.flat_ranges()
    groups = [(layout.slice(b.name), b.length, len(b.features))
              for b in layout.candidate_blocks]
    # per-jet values for the weights come from the flat part (a row's columns are strided)
    truth = layout.flat_slice("truth")
    pt_col, eta_col = (_flat_column(flat_ranges, layout.column(key)) for key in (pt_key, eta_key))
    w_col = layout.weight_column
    pool_size = max(1, min(workers, len(sizes)))
    free: queue.Queue[_Buffers] = queue.Queue()
    for _ in range(pool_size):
        free.put(_Buffers())

    def build(k: int) -> tuple[Path, int, float, int, np.ndarray | None]:
        buffers = free.get()
        try:
            return _build(k, buffers)
        finally:
            free.put(buffers)

    def _build(k: int, buffers: _Buffers) -> tuple[Path, int, float, int, np.ndarray | None]:
        n = sizes[k]
        parts = [(run, r, int(bounds[i, k]), int(bounds[i, k + 1]))
                 for i, (run, r) in enumerate(zip(runs, ranks, strict=True))
                 if bounds[i, k + 1] > bounds[i, k]]
        dest = buffers.get("dest", (n,), np.int64)  # row of each staged jet (read order)
        in_order = buffers.get("in_order", (n, n_flat))
        at = 0
        for run, r, lo, hi in parts:
            dest[at:at + hi - lo] = r[lo:hi] - edges[k]
            in_order[dest[at:at + hi - lo]] = run.flat[lo:hi]
            at += hi - lo
        rows = buffers.get("rows", (n, n_cols))
        rows.fill(0.0)
        for columns, staged_columns in flat_ranges:
            rows[:, columns] = in_order[:, staged_columns]
        for g, (columns, length, n_features) in enumerate(groups):
            # each candidate's features as one item: one index per candidate, not per value
            item = np.dtype((np.void, n_features * rows.itemsize))
            block = rows[:, columns].reshape(n, length, n_features).view(item)[..., 0]
            if not np.may_share_memory(block, rows):  # numpy reshapes this view in place
                raise RuntimeError("candidate block is not a view of the rows")
            at = 0
            for run, _, lo, hi in parts:
                offsets = run.offsets[g][lo:hi + 1]
                a, b = int(offsets[0]), int(offsets[-1])
                if b > a:
                    counts = np.diff(offsets)
                    slot = np.arange(b - a, dtype=np.int64) - np.repeat(offsets[:-1] - a, counts)
                    block[np.repeat(dest[at:at + hi - lo], counts), slot] = \
                        run.values[g][a:b].view(item)[:, 0]
                at += hi - lo
        labels = np.argmax(in_order[:, truth], axis=1)
        weights = jet_weights(tables, labels, in_order[:, pt_col], in_order[:, eta_col],
                              pt_bins, eta_bins)
        if layout.dtype == "float16":
            weights = np.clip(weights, -FLOAT16_MAX, FLOAT16_MAX)
        weights = weights.astype(rows.dtype)
        rows[:, w_col] = weights
        if layout.dtype == "float16":  # values, not the observers' float64 bit words
            for block in layout.blocks:
                if block.kind != "observers":
                    part = rows[:, layout.slice(block.name)]
                    np.clip(part, -FLOAT16_MAX, FLOAT16_MAX, out=part)
        path = out_dir / chunk_name(k)
        size = write_chunk(path, rows, layout)
        sum_weight = float(weights.sum(dtype=np.float64))
        head = extract(rows[:max(0, min(n, sample - int(edges[k])))]) \
            if extract is not None and edges[k] < sample else None
        if advance:
            advance(n)
        return path, n, sum_weight, size, head

    n_heads = int(np.searchsorted(edges[:-1], sample, side="left"))  # files with sample rows
    with ThreadPoolExecutor(max_workers=pool_size) as pool, \
            ThreadPoolExecutor(max_workers=1) as side:
        futures = [pool.submit(build, k) for k in range(len(sizes))]
        results, sampled = [], None
        for k, future in enumerate(futures):
            results.append(future.result())
            if on_sample is not None and k == max(n_heads, 1) - 1:
                sampled = side.submit(on_sample, [r[4] for r in results if r[4] is not None])
        sample_result = sampled.result() if sampled is not None else None
    return MergeResult([r[0] for r in results], [r[1] for r in results],
                       [r[2] for r in results], [r[3] for r in results], sample_result)
