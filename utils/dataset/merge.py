"""Merge staged per-chunk row matrices into shuffled, reweighted LZ4 chunks.

The processor gives every jet a pseudo-random 64-bit key from its identity (seed, file,
jet) and writes each coffea chunk's rows sorted by key, with the keys. The merge then:

1. cuts the key range into equal buckets (about one output file each) and takes them in
   order; a bucket's rows are contiguous slices of the staged files (in file/entry order);
2. orders each bucket's rows by key and permutes them with a generator seeded by
   (seed, bucket);
3. concatenates the permuted buckets and cuts them into files of exactly ``chunk_size``
   rows (the last file holds the remainder);
4. fills the per-jet weight column and writes ``file_<k>.lz4`` (compression in threads).

Random bucket assignment plus a random order inside each bucket is a uniform shuffle of all
jets. Memory stays at a few chunks; the result depends only on the jets, the seed and the
chunk size, not on the chunking of the input or the number of workers.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.dataset.chunk_format import write_chunk
from utils.dataset.directory import chunk_name
from utils.dataset.layout import ColumnLayout
from utils.dataset.reweighting import jet_weights

FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class MergeResult:
    files: list[Path]
    rows: list[int]
    sum_weight: list[float]
    sizes: list[int]


def chunk_sizes(n_rows: int, chunk_size: int) -> list[int]:
    """Rows per output file: ``chunk_size`` each, the last one the remainder."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_files = math.ceil(n_rows / chunk_size)
    return [chunk_size] * (n_files - 1) + [n_rows - chunk_size * (n_files - 1)] if n_files else []


def bucket_bounds(keys: np.ndarray, n_buckets: int) -> np.ndarray:
    """Row bounds of ``n_buckets`` equal key ranges in sorted ``keys`` (uint64)."""
    edges = np.array([(b << 64) // n_buckets for b in range(1, n_buckets)], dtype=np.uint64)
    return np.concatenate([[0], np.searchsorted(keys, edges, side="left"), [len(keys)]])


def merge_staged(staged: Sequence[tuple[str, int]], layout: ColumnLayout,
                 out_dir: Path, chunk_size: int, seed: int, tables: np.ndarray, pt_key: str,
                 eta_key: str, pt_bins: tuple[float, ...], eta_bins: tuple[float, ...],
                 workers: int = 1, advance: Callable[[int], None] | None = None
                 ) -> MergeResult:
    """Merge staged ``(path, rows)`` raw float32 files (rows sorted by the uint64 keys in
    ``<path>.keys``) into ``out_dir/file_<k>.lz4``.

    ``advance`` is called with the number of rows written after each output file.
    Buffers are allocated once and reused (fresh memory is expensive to fault in).
    """
    staged = sorted(staged, key=lambda entry: Path(entry[0]).name)
    n_cols = layout.n_columns
    row_bytes = 4 * n_cols
    for path, rows in staged:
        if Path(path).stat().st_size != rows * row_bytes:
            raise ValueError(f"staged file {path} has {Path(path).stat().st_size} bytes, "
                             f"expected {rows} rows of {n_cols} float32")
    sizes = chunk_sizes(sum(rows for _, rows in staged), chunk_size)
    n_buckets = max(1, len(sizes))
    keys = [np.fromfile(f"{path}.keys", dtype=np.uint64) for path, _ in staged]
    bounds = np.array([bucket_bounds(k, n_buckets) for k in keys],
                      dtype=np.int64).reshape(len(staged), -1)
    if not sizes:
        raise ValueError("no rows to merge")
    truth = layout.slice("truth")
    pt_col, eta_col, w_col = layout.column(pt_key), layout.column(eta_key), layout.weight_column
    n_workers = max(1, workers)
    free: queue.Queue[np.ndarray] = queue.Queue()
    for _ in range(min(len(sizes), n_workers + 1)):
        free.put(np.empty((sizes[0], n_cols), dtype=np.float32))
    bucket_rows = np.diff(bounds, axis=1).sum(axis=0)
    bucket = np.empty((int(bucket_rows.max()), n_cols), dtype=np.float32)

    def finalise(k: int, buffer: np.ndarray) -> tuple[Path, int, float, int]:
        rows = buffer[:sizes[k]]
        try:
            labels = np.argmax(rows[:, truth], axis=1)
            rows[:, w_col] = jet_weights(tables, labels, rows[:, pt_col], rows[:, eta_col],
                                         pt_bins, eta_bins)
            if layout.dtype == "float16":  # values, not the observers' float64 bit words
                for block in layout.blocks:
                    if block.kind != "observers":
                        part = rows[:, layout.slice(block.name)]
                        np.clip(part, -FLOAT16_MAX, FLOAT16_MAX, out=part)
            path = out_dir / chunk_name(k)
            size = write_chunk(path, rows, layout)
            sum_weight = float(rows[:, w_col].sum(dtype=np.float64))
        finally:
            free.put(buffer)
        if advance:
            advance(len(rows))
        return path, len(rows), sum_weight, size

    futures: list[Future] = []
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        k, filled = 0, 0
        buffer = free.get()
        for b in np.flatnonzero(bucket_rows):
            n_rows = 0
            for (path, _), lo, hi in zip(staged, bounds[:, b], bounds[:, b + 1],
                                         strict=True):
                if hi > lo:  # files opened one at a time (thousands of staged files)
                    with open(path, "rb") as handle:
                        handle.seek(int(lo) * row_bytes)
                        view = memoryview(bucket[n_rows:n_rows + hi - lo]).cast("B")
                        if handle.readinto(view) != (hi - lo) * row_bytes:
                            raise OSError(f"short read from staged file {path}")
                    n_rows += int(hi - lo)
            # canonical order (by key, independent of the input chunking), then shuffled
            bucket_keys = np.concatenate([key[lo:hi] for key, lo, hi in zip(
                keys, bounds[:, b], bounds[:, b + 1], strict=True)])
            perm = np.argsort(bucket_keys, kind="stable")[
                np.random.default_rng((seed, int(b))).permutation(n_rows)]
            taken = 0
            while taken < n_rows:
                n = min(n_rows - taken, sizes[k] - filled)
                np.take(bucket, perm[taken:taken + n], axis=0,
                        out=buffer[filled:filled + n], mode="clip")
                taken += n
                filled += n
                if filled == sizes[k]:
                    futures.append(pool.submit(finalise, k, buffer))
                    k, filled = k + 1, 0
                    if k < len(sizes):
                        buffer = free.get()
        results = [f.result() for f in futures]
    if k != len(sizes):
        raise RuntimeError(f"merge wrote {k} of {len(sizes)} files; staged bounds inconsistent")
    return MergeResult([r[0] for r in results], [r[1] for r in results],
                       [r[2] for r in results], [r[3] for r in results])
