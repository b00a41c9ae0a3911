"""Merge staged per-chunk row matrices into shuffled, reweighted LZ4 chunks.

The merge is an exact uniform shuffle of all jets that streams with bounded memory:

1. the staged files, sorted by name, define the input order of the N jets;
2. a seeded random assignment gives every jet its output file (sizes ``chunk_size``, the
   last one the remainder);
3. each staged file is scattered to per-output bucket files (raw float32 rows);
4. each bucket is read, its rows permuted (seeded per output), the per-jet weight column
   filled from the weight tables, and written as ``file_<k>.lz4``.

The result depends only on the jets, the seed and the chunk size, not on how the input was
split into coffea chunks or how many workers ran.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.dataset.chunk_format import write_chunk
from utils.dataset.layout import ColumnLayout
from utils.dataset.reweighting import jet_weights

FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class MergeResult:
    files: list[Path]
    rows: list[int]
    sum_weight: list[float]


def chunk_sizes(n_rows: int, chunk_size: int) -> list[int]:
    """Rows per output file: ``chunk_size`` each, the last one the remainder."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_files = math.ceil(n_rows / chunk_size)
    return [chunk_size] * (n_files - 1) + [n_rows - chunk_size * (n_files - 1)] if n_files else []


def merge_staged(staged: Sequence[Path], layout: ColumnLayout, out_dir: Path, work_dir: Path,
                 chunk_size: int, seed: int, tables: np.ndarray, pt_key: str, eta_key: str,
                 pt_bins: tuple[float, ...], eta_bins: tuple[float, ...], workers: int = 1,
                 advance: Callable[[int], None] | None = None) -> MergeResult:
    """Merge ``staged`` (.npy row matrices) into ``out_dir/file_<k>.lz4``; see module doc.

    ``advance`` is called with the number of rows handled (scatter and write each count).
    """
    staged = sorted(staged, key=lambda p: Path(p).name)
    arrays = [np.load(p, mmap_mode="r") for p in staged]
    n_cols = layout.n_columns
    for path, array in zip(staged, arrays, strict=True):
        if array.ndim != 2 or array.shape[1] != n_cols or array.dtype != np.float32:
            raise ValueError(f"staged file {path} has shape {array.shape}/{array.dtype}, "
                             f"expected (*, {n_cols}) float32")
    sizes = chunk_sizes(sum(len(a) for a in arrays), chunk_size)
    if not sizes:
        raise ValueError("no rows to merge")
    n_out = len(sizes)
    dest = np.repeat(np.arange(n_out, dtype=np.int32), sizes)
    np.random.default_rng(seed).shuffle(dest)

    buckets = [work_dir / f"bucket_{k:06d}.raw" for k in range(n_out)]
    offset = 0
    for array in arrays:
        target = dest[offset:offset + len(array)]
        offset += len(array)
        order = np.argsort(target, kind="stable")
        bounds = np.searchsorted(target[order], np.arange(n_out + 1))
        rows = np.asarray(array)[order]
        for k in np.flatnonzero(np.diff(bounds)):
            with open(buckets[k], "ab") as f:
                f.write(rows[bounds[k]:bounds[k + 1]].tobytes())
        if advance:
            advance(len(array))
        del rows

    truth = layout.slice("truth")
    pt_col, eta_col = layout.column(pt_key), layout.column(eta_key)

    def finalise(k: int) -> tuple[Path, int, float]:
        rows = np.fromfile(buckets[k], dtype=np.float32).reshape(-1, n_cols)
        if len(rows) != sizes[k]:
            raise RuntimeError(f"bucket {k} holds {len(rows)} rows, expected {sizes[k]}")
        rows = rows[np.random.default_rng((seed, k)).permutation(len(rows))]
        labels = np.argmax(rows[:, truth], axis=1)
        weights = jet_weights(tables, labels, rows[:, pt_col], rows[:, eta_col], pt_bins,
                              eta_bins)
        rows[:, layout.weight_column] = weights
        if layout.dtype == "float16":
            np.clip(rows, -FLOAT16_MAX, FLOAT16_MAX, out=rows)
        path = out_dir / f"file_{k}.lz4"
        write_chunk(path, rows, layout)
        buckets[k].unlink()
        if advance:
            advance(len(rows))
        return path, len(rows), float(rows[:, layout.weight_column].sum(dtype=np.float64))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(finalise, range(n_out)))
    return MergeResult([r[0] for r in results], [r[1] for r in results],
                       [r[2] for r in results])
