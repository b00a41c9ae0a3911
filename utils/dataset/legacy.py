"""Import a dataset exported by the original b-hive (its header-less LZ4 chunks).

The original's DatasetConstructorTask (LZ4 processors) left, per dataset directory::

    file_0.lz4 ...        one lz4 frame each: [n_rows, n_cols, row-major rows] (float32/16)
    processed_files.txt   the chunk paths, newline-joined
    histogram.npy         jets per truth label in (pT, eta) bins        (checked if present)
    weights.json          {"chunk_size": [rows per file], "sum_weight": [...]} (newer versions)

Its rows do not describe themselves: the columns follow from the config, as they did there:
``[global | cpf (candidate-major) | npf | vtx | [lt] | process | truth one-hot | weight]``,
which is this framework's :class:`~utils.dataset.layout.ColumnLayout` of a config without
observers. :func:`import_legacy_dataset` checks every file against that layout first (width,
0/1 truth flags, process indices, row counts against ``weights.json``) and writes nothing
unless all pass; then it writes each file with jets as one chunk of this framework's
format (same jets, same order). Rows the original's own loader skipped are dropped and
counted: non-finite values, no truth flag (e.g. the zero rows of an untrimmed last file);
rows outside the config's pT/eta range too (edges included, as in the original). A row with
several flags keeps the first (the original's argmax). The histogram is counted from the
imported jets (the original's ``histogram.npy`` only warns if its shape does not fit). The
stored weights are replaced by those of the config's reweighting, so the dataset trains,
infers and plots like one exported here (the original always took the first truth label
as the reference, whatever ``reference_flavour`` said).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import Config
from utils.dataset.chunk_format import (
    MAGIC,
    read_legacy_chunk,
    read_legacy_shape,
    write_chunk,
)
from utils.dataset.directory import (
    HISTOGRAM,
    PROCESSED_FILES,
    WEIGHTS,
    Chunk,
    chunk_name,
    dataset_info,
    write_bookkeeping,
)
from utils.dataset.layout import ColumnLayout
from utils.dataset.merge import FLOAT16_MAX
from utils.dataset.reweighting import bin_index, config_weights, jet_weights, reweighting_record
from utils.dataset.scales import compute_scales, config_defaults
from utils.errors import BHiveError
from utils.progress import console, progress_bar

DEBUG_FILES = 2  # files imported with --debug
COUNTS = ("entries", "selected", "out_of_window", "no_label", "non_finite", "multi_label")


class LegacyDatasetError(BHiveError, ValueError):
    """A directory is not a dataset of the original b-hive that matches the config."""


def legacy_layout(config: Config) -> ColumnLayout:
    """The column layout of the original's rows for ``config`` (observers: none)."""
    if config.observers:
        raise LegacyDatasetError(
            f"config '{config.name}' declares observers ({', '.join(config.observer_names)}), "
            "which datasets of the original b-hive do not hold: import them with the config "
            "they were exported with (e.g. its .yml, or a config without observers)")
    return ColumnLayout.from_config(config)


def width_text(layout: ColumnLayout) -> str:
    """How ``layout``'s columns add up, e.g. ``global 15 + cpf 26 x 20 + ... = 873``
    (candidates x features for candidate groups)."""
    parts = [f"{b.name} {b.length} x {len(b.features)}" if b.length else
             f"{b.name} {len(b.features)}" for b in layout.blocks]
    return " + ".join(parts) + f" = {layout.n_columns} columns"


def legacy_files(source: Path, warn: bool = False) -> list[Path]:
    """The chunk files listed in ``source/processed_files.txt``, taken from ``source`` by
    name (a copy reads its own files, never those of the place it was copied from); a
    listed path is used only where ``source`` lacks the file (with ``warn``, a line
    names those)."""
    listing = source / PROCESSED_FILES
    if not source.is_dir():
        raise LegacyDatasetError(f"--legacy-dataset {source}: no such directory")
    if not listing.is_file():
        raise LegacyDatasetError(f"{source} holds no {PROCESSED_FILES}: not a (finished) "
                                 "dataset of the original b-hive")
    files, missing, elsewhere = [], [], []
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        path = Path(line.strip())
        if (source / path.name).is_file() or not path.is_absolute():
            path = source / path.name
        elif path.is_file():
            elsewhere.append(path)
        if path.suffix == ".npz":
            raise LegacyDatasetError(
                f"{listing} lists {path.name}: datasets of the original's structured (npz) "
                "processors cannot be imported, only those of its LZ4 processors "
                "(LZ4Processing, LZ4FP16Processing); export the ROOT files here instead")
        (files if path.is_file() else missing).append(path)
    if missing:
        raise LegacyDatasetError(f"{listing} lists {len(missing)} file(s) that exist neither "
                                 f"there nor in {source}: "
                                 + ", ".join(str(p) for p in missing[:5]))
    if not files:
        raise LegacyDatasetError(f"{listing} lists no file")
    if elsewhere and warn:
        console.print(f"[yellow]{source} lacks {len(elsewhere)} of its {len(files)} file(s); "
                      f"read from the paths {PROCESSED_FILES} lists: "
                      + ", ".join(str(p) for p in elsewhere[:5])
                      + (", ..." if len(elsewhere) > 5 else "") + "[/]")
    return files


def _stored_rows(source: Path, files: Sequence[Path]) -> list[int] | None:
    """Rows per file from the original's ``weights.json`` (None if it has none)."""
    path = source / WEIGHTS
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise LegacyDatasetError(f"{path}: not JSON ({exc})") from None
    if not isinstance(meta, dict) or "files" in meta:
        raise LegacyDatasetError(f"{path} is not the original's weights.json "
                                 '({"chunk_size": [...], "sum_weight": [...]})')
    rows = meta.get("chunk_size")
    if not isinstance(rows, list) or len(rows) != len(files):
        raise LegacyDatasetError(f"{path}: 'chunk_size' lists "
                                 f"{len(rows) if isinstance(rows, list) else rows!r} files, "
                                 f"{PROCESSED_FILES} {len(files)}")
    if not all(isinstance(n, int) and n >= 0 for n in rows):
        raise LegacyDatasetError(f"{path}: 'chunk_size' must list row counts, got {rows[:5]!r}")
    return rows


def _check_histogram(source: Path, config: Config) -> None:
    """Warn if the original's histogram does not fit the config (it is not used: the
    histogram is counted from the imported jets)."""
    path = source / HISTOGRAM
    if not path.is_file():
        return
    try:
        shape = tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError) as exc:
        console.print(f"[yellow]{path}: unreadable ({exc}); not needed, the histogram is "
                      "counted from the imported jets[/]")
        return
    expected = (len(config.truth_labels), len(config.pt_bins) - 1, len(config.eta_bins) - 1)
    if shape != expected:
        console.print(f"[yellow]{path} has shape {shape}, config '{config.name}' has "
                      f"{expected[0]} truth labels and {expected[1]} x {expected[2]} pT-eta "
                      "bins: was the dataset exported with another config (or an older "
                      "b-hive)? Not needed: the histogram is counted from the imported "
                      "jets[/]")


@dataclass
class FileScan:
    """What the check of one legacy file found."""

    path: Path
    entries: int
    counts: dict[str, int]
    histogram: np.ndarray
    per_process: np.ndarray  # (processes, labels) jets


@dataclass
class _Selection:
    keep: np.ndarray
    labels: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def _select(path: Path, rows: np.ndarray, config: Config, layout: ColumnLayout) -> _Selection:
    """The rows to import and their truth-label indices; raises on values that show the
    rows do not follow ``layout`` (truth flags other than 0/1, unknown process indices)."""
    truth = rows[:, layout.slice("truth")]
    finite = np.isfinite(rows).all(axis=1)
    flags = truth[finite]
    if flags.size and not np.isin(flags, (0, 1)).all():
        bad = flags[~np.isin(flags, (0, 1))]
        raise LegacyDatasetError(
            f"{path}: truth columns hold values other than 0/1 (e.g. {bad[:3].tolist()}): the "
            f"rows do not have the columns of config '{config.name}' "
            f"({width_text(layout)}); import with the config the dataset was exported with")
    process = rows[finite, layout.process_column]
    valid = (process == np.round(process)) & (process >= 0) & \
        (process < len(config.processes))
    if not valid.all():
        values = sorted(set(process[~valid].tolist()))[:5]
        raise LegacyDatasetError(
            f"{path}: {int((~valid).sum()):,} jets have process index {values}, config "
            f"'{config.name}' has {len(config.processes)} process(es) "
            f"{list(config.process_names)} (-1: jets of files that matched no process)")
    n_flags = np.zeros(len(rows), dtype=np.int64)
    n_flags[finite] = (flags == 1).sum(axis=1)
    pt = rows[:, layout.column(config.pt_key)]
    eta = rows[:, layout.column(config.eta_key)]
    with np.errstate(invalid="ignore"):  # the original's windows included the last edge
        inside = (pt >= config.pt_bins[0]) & (pt <= config.pt_bins[-1]) & \
            (eta >= config.eta_bins[0]) & (eta <= config.eta_bins[-1])
    keep = finite & (n_flags > 0) & inside
    counts = {"entries": len(rows), "selected": int(keep.sum()),
              "non_finite": int((~finite).sum()),
              "no_label": int((finite & (n_flags == 0)).sum()),
              "out_of_window": int((finite & (n_flags > 0) & ~inside).sum()),
              "multi_label": int((keep & (n_flags > 1)).sum())}
    labels = np.argmax(truth[keep], axis=1)  # the first flag, as the original's argmax
    return _Selection(keep, labels, counts)


def _scan(path: Path, config: Config, layout: ColumnLayout,
          stored_rows: int | None) -> FileScan:
    rows = read_legacy_chunk(path, layout.dtype)
    if rows.shape[1] != layout.n_columns:
        raise _width_error(path, rows.shape[1], config, layout)
    if stored_rows is not None and stored_rows != len(rows):
        raise LegacyDatasetError(f"{path} holds {len(rows):,} jets, the original's "
                                 f"weights.json lists {stored_rows:,} (truncated or replaced)")
    selection = _select(path, rows, config, layout)
    kept = rows[selection.keep]
    histogram = np.zeros((len(config.truth_labels), len(config.pt_bins) - 1,
                          len(config.eta_bins) - 1))
    np.add.at(histogram, (selection.labels,
                          bin_index(kept[:, layout.column(config.pt_key)], config.pt_bins),
                          bin_index(kept[:, layout.column(config.eta_key)], config.eta_bins)),
              1.0)
    per_process = np.zeros((len(config.processes), len(config.truth_labels)), dtype=np.int64)
    np.add.at(per_process, (kept[:, layout.process_column].astype(np.int64),
                            selection.labels), 1)
    return FileScan(path, len(rows), selection.counts, histogram, per_process)


def _width_error(path: Path, n_cols: int, config: Config,
                 layout: ColumnLayout) -> LegacyDatasetError:
    hint = ""
    if n_cols == layout.n_columns - 1:
        hint = (" (one fewer: a config with one feature more than the export's, or a "
                "per-chunk file of an unfinished export, which has no weight column)")
    return LegacyDatasetError(
        f"{path}: {n_cols} columns per jet, config '{config.name}' gives "
        f"{width_text(layout)}{hint}: import the dataset with the config it was exported "
        "with (same features, custom features, candidate numbers and truths, in order)")


@dataclass
class LegacyImport:
    """The checked legacy dataset: its files and what the import will keep."""

    source: Path
    scans: list[FileScan]

    @property
    def counts(self) -> dict[str, int]:
        return {k: sum(s.counts[k] for s in self.scans) for k in COUNTS}

    @property
    def histogram(self) -> np.ndarray:
        return sum(s.histogram for s in self.scans)


def check_legacy_dataset(config: Config, source: str | Path, workers: int = 1,
                         debug: bool = False) -> LegacyImport:
    """Check every file of the original b-hive's dataset in ``source`` against ``config``
    (decompresses each file); raise :class:`LegacyDatasetError` naming the file and what is
    wrong."""
    source = Path(source).expanduser().resolve()
    layout = legacy_layout(config)
    files = legacy_files(source, warn=True)
    stored = _stored_rows(source, files)
    _check_histogram(source, config)
    if debug:
        files, stored = files[:DEBUG_FILES], (stored[:DEBUG_FILES] if stored else None)
    for path in files:  # cheap: the shape only, so a wrong config fails at once
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) == MAGIC:
                raise LegacyDatasetError(f"{path} is a chunk of this framework already: use "
                                         "its dataset directory directly")
        _, n_cols = read_legacy_shape(path, layout.dtype)
        if n_cols != layout.n_columns:
            raise _width_error(path, n_cols, config, layout)
    with progress_bar("Checking", total=len(files), unit="files") as bar:
        def scan(item: tuple[Path, int | None]) -> FileScan:
            result = _scan(item[0], config, layout, item[1])
            bar.advance()
            return result

        scans = parallel_map(scan, list(zip(files, stored or [None] * len(files),
                                            strict=True)), workers)
    return LegacyImport(source, scans)


def parallel_map(function: Callable[[Any], Any], items: Sequence[Any],
                 workers: int) -> list[Any]:
    """``[function(item) for item in items]`` in ``workers`` threads; the first error is
    raised at once (the items not started yet are cancelled)."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(function, item) for item in items]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def import_legacy_dataset(config: Config, source: str | Path, out_dir: Path, work_dir: Path,
                          workers: int = 1, debug: bool = False) -> Any:
    """Check (:func:`check_legacy_dataset`), then write the dataset in this framework's
    format into ``work_dir`` (naming the final paths in ``out_dir``); return the
    :class:`~utils.dataset.export.ExportSummary`."""
    from utils.dataset.export import ExportError, ExportSummary

    start = time.perf_counter()
    layout = legacy_layout(config)
    checked = check_legacy_dataset(config, source, workers, debug)
    counts = checked.counts
    console.print(f"[bold]Legacy dataset[/] {checked.source}: {len(checked.scans)} file(s), "
                  f"{counts['entries']:,} jets, {width_text(layout)}, {layout.dtype}")
    if not counts["selected"]:
        raise ExportError(f"{checked.source}: none of its {counts['entries']:,} jets can be "
                          f"imported ({counts['non_finite']:,} with NaN/inf, "
                          f"{counts['no_label']:,} without truth flag, "
                          f"{counts['out_of_window']:,} outside the config's pT/eta bins)")
    histogram = checked.histogram
    weights = config_weights(config, histogram)
    check_seconds = time.perf_counter() - start
    todo = [s for s in checked.scans if s.counts["selected"]]
    with progress_bar("Importing", total=counts["selected"], unit="jets") as bar:
        chunks = parallel_map(lambda item: _convert(item[1].path, work_dir / chunk_name(
            item[0]), config, layout, weights.tables, bar.advance), list(enumerate(todo)),
            workers)
    scales = compute_scales([work_dir / chunk_name(k) for k in range(len(chunks))],
                            config_defaults(config))
    chunks = [dataclasses.replace(c, path=out_dir / c.path.name) for c in chunks]
    seconds = time.perf_counter() - start
    inputs = {str(s.path): {"process": "legacy", "entries": s.entries,
                            "selected": s.counts["selected"]} for s in checked.scans}
    per_process = sum(s.per_process for s in checked.scans)
    labels_per_process = {p.name: {label: int(n) for label, n in zip(
        config.truth_labels, per_process[i], strict=True) if n}
        for i, p in enumerate(config.processes)}
    reweighting = reweighting_record(config, weights)
    timing = {"check": check_seconds, "import": seconds - check_seconds, "total": seconds}
    write_bookkeeping(work_dir, out_dir, chunks, histogram, dataset_info(
        config, layout, histogram, seconds, timing, legacy_dataset=str(checked.source),
        chunk_size=max(c.rows for c in chunks), debug=debug,
        counts={**counts, "rejected": 0}, non_finite_branches={},
        jets_per_process_label=labels_per_process, reweighting=reweighting, inputs=inputs),
        max(c.rows for c in chunks), scales)
    return ExportSummary([c.path for c in chunks], [c.rows for c in chunks],
                         [c.sum_weight for c in chunks], histogram,
                         {**counts, "rejected": 0}, inputs, seconds, {}, labels_per_process,
                         timing, reweighting)


def _convert(source: Path, target: Path, config: Config, layout: ColumnLayout,
             tables: np.ndarray, advance: Callable[[int], None]) -> Chunk:
    """One legacy file -> one chunk: kept rows, one-hot truth of the first flag, weights."""
    rows = read_legacy_chunk(source, layout.dtype)
    selection = _select(source, rows, config, layout)
    rows = rows[selection.keep]  # a copy (the decompressed buffer is read-only)
    truth = layout.slice("truth")
    rows[:, truth] = np.eye(truth.stop - truth.start, dtype=rows.dtype)[selection.labels]
    weight = jet_weights(tables, selection.labels, rows[:, layout.column(config.pt_key)],
                         rows[:, layout.column(config.eta_key)], config.pt_bins,
                         config.eta_bins)
    if layout.dtype == "float16":
        weight = np.clip(weight, -FLOAT16_MAX, FLOAT16_MAX)
    rows[:, layout.weight_column] = weight
    size = write_chunk(target, rows, layout)
    advance(len(rows))
    return Chunk(target, len(rows), float(rows[:, layout.weight_column].sum(dtype=np.float64)),
                 size)
