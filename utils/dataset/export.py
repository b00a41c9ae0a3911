"""Export ROOT jet ntuples to shuffled, reweighted LZ4 chunks (law-free core of the task).

Stages: a pre-flight check of every input (:func:`check_inputs`), the coffea processor
over all files (:func:`run_processor`, rows staged in ``/dev/shm`` or the work directory),
the shuffle-merge into chunk files and the bookkeeping (:func:`finish_export`). The
dataset directory's names and formats belong to :mod:`utils.dataset.directory`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.allocator import keep_freed_memory
from utils.config import Config, label_to_class
from utils.dataset.directory import Chunk, dataset_info, write_bookkeeping
from utils.dataset.inputs import assign_processes, inspect_files, is_remote, uproot_options
from utils.dataset.layout import ColumnLayout
from utils.dataset.merge import merge_staged
from utils.dataset.reweighting import (
    config_weights,
    reference_labels,
    reweighting_record,
    reweighting_table,
)
from utils.dataset.scales import SAMPLE_JETS, config_defaults, row_entries, scales_of_entries
from utils.errors import BHiveError
from utils.io import disk_full, owned_directory, remove_stale
from utils.progress import console, progress_bar
from utils.settings import EXECUTORS, ExportSettings

DEBUG_MAX_CHUNKS = 3
DEBUG_CHUNK_ROWS = 5_000
# padded float32 bytes of one coffea chunk: big chunks open each TTree and parse its
# metadata fewer times (100k-entry chunks export 1.1x faster than 27k-entry ones)
TARGET_CHUNK_BYTES = 256 * 1024**2
STAGING_PREFIX = "bhive-staging-"
ABORT = "ABORT"  # marker in the staging directory: a chunk failed, the others stop early
REMOTE_RETRIES = 2  # coffea retries of a chunk that reads root:// files (network hiccups)
COUNTS = ("entries", "selected", "out_of_window", "no_label", "rejected", "non_finite",
          "multi_label")


class ExportError(BHiveError, RuntimeError):
    """The export cannot produce a dataset (e.g. no jet passes the selection)."""


@dataclass
class ExportSummary:
    files: list[Path]
    rows: list[int]
    sum_weight: list[float]
    histogram: np.ndarray
    counts: dict[str, int]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    non_finite_branches: dict[str, int] = field(default_factory=dict)
    labels_per_process: dict[str, dict[str, int]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    reweighting: dict[str, Any] = field(default_factory=dict)

    @property
    def empty_files(self) -> list[str]:
        """Input files that contributed no jet."""
        return [f for f, entry in self.inputs.items() if entry["selected"] == 0]


def default_coffea_chunk_size(layout: ColumnLayout, entries: int | None = None,
                              workers: int = 1) -> int:
    """Entries per coffea chunk so that one chunk's padded float32 rows would take about
    256 MB (staged are only the real candidates: less), and, given the total ``entries``,
    at least two chunks per worker."""
    size = TARGET_CHUNK_BYTES // (4 * layout.n_columns)
    if entries:
        size = min(size, math.ceil(entries / (2 * max(workers, 1))))
    return int(np.clip(size, 1_000, 200_000))


@contextlib.contextmanager
def _runner(executor: str, workers: int, chunk_size: int, max_chunks: int | None,
            retries: int, scheduler_address: str | None = None) -> Iterator[Any]:
    """A coffea Runner for ``executor``; for dask, a client of ``scheduler_address`` or of a
    local cluster of ``workers`` processes, closed afterwards."""
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    with contextlib.ExitStack() as stack:
        if executor == "iterative":
            engine = processor.IterativeExecutor(status=True, retries=retries)
        elif executor == "futures":
            # fork: workers inherit the imported modules instead of re-importing coffea
            pool = functools.partial(concurrent.futures.ProcessPoolExecutor,
                                     mp_context=multiprocessing.get_context("fork"))
            engine = processor.FuturesExecutor(workers=workers, status=True, pool=pool,
                                               retries=retries)
        elif executor == "dask":
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                raise ExportError("--executor dask needs dask.distributed: "
                                  "pip install 'dask[distributed]'") from None
            if scheduler_address:
                client = stack.enter_context(Client(scheduler_address))
            else:
                cluster = stack.enter_context(LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None))
                client = stack.enter_context(Client(cluster))
            engine = processor.DaskExecutor(client=client, status=True, retries=retries)
        else:
            raise ExportError(f"--executor must be one of {', '.join(EXECUTORS)}, got "
                              f"{executor!r}")
        # chunks end on cluster boundaries: no basket is decompressed by two chunks (not in
        # debug mode, whose few chunks stay small)
        yield processor.Runner(executor=engine, schema=BaseSchema, chunksize=chunk_size,
                               maxchunks=max_chunks, align_clusters=max_chunks is None)


def plan_inputs(config: Config, files: Sequence[str], debug: bool = False
                ) -> dict[str, list[str]]:
    """Input files by process (config order); with ``debug`` one file per process. The
    position of a file in this plan is its file index (part of every jet's shuffle key)."""
    by_process = assign_processes(files, config.processes)
    if debug:
        by_process = {name: fs[:1] for name, fs in by_process.items()}
    return by_process


def check_inputs(config: Config, files: Sequence[str], workers: int = 4) -> dict[str, int]:
    """Pre-flight check of every input file (tree, branches, truncation, entries); entries
    per file."""
    from utils.processors import get_processor

    processor_cls = get_processor(config.processor)
    optional = config.optional_branches
    absent: dict[str, int] = {}  # optional branch -> files without it

    def branches(available: set[str]) -> tuple[list[str], list[str]]:
        needed, missing = processor_cls.source_branches(config, available)
        for name in (m for m in missing if m in optional):
            absent[name] = absent.get(name, 0) + 1
        return needed, [m for m in missing if m not in optional]

    entries = inspect_files(files, config.tree_name, branches, workers=max(4, workers))
    for label, names in config.tagger_branches.items():
        lacking = [b for b in names if b in absent]
        if lacking:
            n = max(absent[b] for b in lacking)
            console.print(f"[yellow]Reference tagger {label}: {n} of {len(files)} input "
                          f"file(s) lack {lacking}; its scores are left empty (NaN) there and "
                          "the evaluation leaves it out[/]")
    return entries


class _Guarded:
    """Wraps a processor: an expected error (:class:`BHiveError`: bad branch structure,
    full disk, ...) in a chunk is returned as a result instead of raised, so coffea neither
    retries it nor prints a traceback, and the remaining chunks stop early (a marker file in
    the staging directory). In worker processes (not the one that merges) freed memory is
    kept for the next chunk (:func:`keep_freed_memory`)."""

    def __init__(self, processor: Any, staging: Path) -> None:
        self.processor = processor
        self.abort = Path(staging) / ABORT
        self.parent = os.getpid()

    def __call__(self, events: Any) -> dict[str, Any]:
        if self.abort.exists():
            return {}
        if os.getpid() != self.parent:
            keep_freed_memory()
        try:
            return self.processor.process(events)
        except BHiveError as exc:
            error = exc
        except OSError as exc:
            full = disk_full(exc, exc.filename or self.abort.parent)
            if full is None:
                raise
            error = full
        self.abort.touch()
        return {"errors": {events.metadata["filename"]: str(error)}}


def run_processor(config: Config, by_process: dict[str, list[str]],
                  file_index: dict[str, int], staging: Path, seed: int,
                  executor: str = ExportSettings.executor,
                  workers: int = ExportSettings.coffea_worker, debug: bool = False,
                  coffea_chunk_size: int | None = None,
                  scheduler_address: str | None = None,
                  retries: int | None = None, entries: int | None = None) -> dict[str, Any]:
    """Run the config's coffea processor over the files; staged rows go to ``staging``.

    ``entries``: the files' total entries, if known (sizes the coffea chunks, see
    :func:`default_coffea_chunk_size`).

    ``retries``: coffea's retries of a failing chunk (default: a few for root:// inputs,
    whose reads can fail transiently, else none); b-hive's own input errors are never
    retried.

    Returns the accumulated result: ``staged`` [(path, rows)], ``histogram``, ``counts``,
    ``rows_per_file``, ``non_finite_branches``, ``labels_per_process``. An input problem
    found in a chunk raises :class:`ExportError` naming the file.
    """
    from utils.processors import get_processor

    ExportSettings(coffea_worker=workers, executor=executor)  # valid values (raises)
    processor_cls = get_processor(config.processor)
    layout = ColumnLayout.from_config(config)
    proc = processor_cls(config, staging, file_index, seed=seed)
    rows_per_chunk = DEBUG_CHUNK_ROWS if debug else (
        coffea_chunk_size or default_coffea_chunk_size(layout, entries, workers))
    # preload: read all needed branches of a chunk in one uproot call (faster than lazily)
    preload = processor_cls.preload_branches(config)
    fileset = {name: {"files": {f: config.tree_name for f in fs},
                      **({"preload": preload} if preload else {})}
               for name, fs in by_process.items() if fs}
    files = [f for fs in by_process.values() for f in fs]
    if retries is None:
        retries = REMOTE_RETRIES if any(is_remote(f) for f in files) else 0
    with _runner(executor, workers, rows_per_chunk, DEBUG_MAX_CHUNKS if debug else None,
                 retries, scheduler_address) as runner:
        result = dict(runner(fileset, _Guarded(proc, staging), treename=config.tree_name,
                             uproot_options=uproot_options(files)))
    errors = result.get("errors") or {}
    if errors:
        raise ExportError(f"{len(errors)} input file(s) could not be exported:\n  " +
                          "\n  ".join(f"{message}" if path in message else f"{path}: {message}"
                                      for path, message in sorted(errors.items())))
    return result


def combine_results(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the results of several processor runs (e.g. one per batch job)."""
    combined: dict[str, Any] = {"staged": [], "histogram": None, "counts": {},
                                "rows_per_file": {}, "non_finite_branches": {},
                                "labels_per_process": {}}
    for result in results:
        combined["staged"] += [tuple(entry) for entry in result.get("staged", [])]
        if result.get("histogram") is not None:
            histogram = np.asarray(result["histogram"], dtype=np.float64)
            combined["histogram"] = histogram if combined["histogram"] is None else \
                combined["histogram"] + histogram
        for key in ("counts", "rows_per_file", "non_finite_branches"):
            for name, value in result.get(key, {}).items():
                combined[key][name] = combined[key].get(name, 0) + int(value)
        for process, labels in result.get("labels_per_process", {}).items():
            target = combined["labels_per_process"].setdefault(process, {})
            for label, value in labels.items():
                target[label] = target.get(label, 0) + int(value)
    return combined


def export_dataset(config: Config, files: Sequence[str], out_dir: Path, work_dir: Path,
                   chunk_size: int = ExportSettings.chunk_size,
                   seed: int = ExportSettings.seed, executor: str = ExportSettings.executor,
                   workers: int = ExportSettings.coffea_worker, debug: bool = False,
                   coffea_chunk_size: int | None = None,
                   scheduler_address: str | None = None) -> ExportSummary:
    """Run the export; write every output into ``work_dir`` naming final paths in ``out_dir``.

    Outputs: ``file_<k>.lz4``, ``processed_files.txt``, ``histogram.npy``, ``weights.json``,
    ``dataset_info.json``. The caller publishes ``work_dir`` into ``out_dir`` on success.
    With ``executor="dask"`` and a ``scheduler_address`` the workers may run on other
    machines: the staging files then go to ``work_dir`` (a shared file system) unless
    ``$BHIVE_STAGING_DIR`` names another shared place.
    """
    from utils.processors import get_processor

    start = time.perf_counter()
    ExportSettings(chunk_size=chunk_size, seed=seed, coffea_worker=workers, executor=executor)
    by_process = plan_inputs(config, files, debug)
    used = [f for fs in by_process.values() for f in fs]
    entries = check_inputs(config, used, workers)
    layout = ColumnLayout.from_config(config)
    console.print(f"[bold]Dataset construction[/] config [cyan]{config.name}[/]: {len(used)} "
                  f"input file(s), {sum(entries.values()):,} entries, "
                  f"{layout.n_columns} columns per jet, processor {config.processor}, "
                  f"executor {executor} x {workers}")
    for name, fs in by_process.items():
        console.print(f"  {name}: {len(fs)} file(s), {sum(entries[f] for f in fs):,} entries")
    checked = time.perf_counter()
    rows = sum(entries.values()) * get_processor(config.processor).rows_per_entry
    staging = staging_dir(work_dir, rows * 4 * layout.n_columns, shared=bool(scheduler_address))
    try:
        result = run_processor(config, by_process, {f: i for i, f in enumerate(used)},
                               staging, seed, executor, workers, debug, coffea_chunk_size,
                               scheduler_address, entries=sum(entries.values()))
        timing = {"pre-flight check": checked - start,
                  "processing": time.perf_counter() - checked}
        return finish_export(config, [result], by_process, entries, out_dir, work_dir,
                             chunk_size, seed, workers, debug, start, timing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def no_jets_message(config: Config, counts: Mapping[str, int], n_files: int,
                    non_finite_branches: Mapping[str, int]) -> str:
    """Why no jet was selected: the selection and what each cut dropped."""
    nan = ""
    if non_finite_branches:
        nan = " (in " + ", ".join(f"{k}: {v:,}" for k, v in
                                  sorted(non_finite_branches.items())) + ")"
    return (f"no jet passed the selection in {n_files} file(s) "
            f"({counts.get('entries', 0):,} entries): "
            f"{counts.get('out_of_window', 0):,} outside {config.pt_key} "
            f"[{config.pt_bins[0]:g}, {config.pt_bins[-1]:g}) / {config.eta_key} "
            f"[{config.eta_bins[0]:g}, {config.eta_bins[-1]:g}) (the config's outer pt_bins / "
            f"eta_bins edges), {counts.get('no_label', 0):,} without any of the truth labels "
            f"{list(config.truth_labels)}, {counts.get('rejected', 0):,} rejected by the "
            f"config selection, {counts.get('non_finite', 0):,} with NaN/inf{nan}")


def finish_export(config: Config, results: Sequence[Mapping[str, Any]],
                  by_process: dict[str, list[str]], entries: dict[str, int], out_dir: Path,
                  work_dir: Path, chunk_size: int, seed: int, workers: int, debug: bool,
                  start: float, timing: dict[str, float] | None = None) -> ExportSummary:
    """Merge the staged rows of the processor ``results`` and write all dataset files."""
    timing = dict(timing or {})
    layout = ColumnLayout.from_config(config)
    result = combine_results(results)
    counts = {k: int(result["counts"].get(k, 0)) for k in COUNTS}
    non_finite = dict(sorted(result["non_finite_branches"].items()))
    if not result["staged"]:
        raise ExportError(no_jets_message(config, counts, len(entries), non_finite))
    histogram = np.asarray(result["histogram"], dtype=np.float64)
    weights = config_weights(config, histogram)
    reference = config.reweighting_reference
    members = reference_labels(reference, config.truth_labels, config.classes)
    if config.reweighting.method in ("reference", "legacy_max") and not sum(
            histogram[config.truth_labels.index(label)].sum() for label in members):
        console.print(f"[yellow]Reweighting reference {reference} has no jets: the shapes "
                      "are not matched (weights 1 before class fractions)[/]")
    merge_start = time.perf_counter()
    with progress_bar("Merging", total=counts["selected"], unit="jets") as bar:
        merged = merge_staged(result["staged"], layout, out_dir=work_dir,
                              chunk_size=chunk_size,
                              tables=weights.tables,
                              pt_key=config.pt_key, eta_key=config.eta_key,
                              pt_bins=config.pt_bins, eta_bins=config.eta_bins,
                              workers=workers, advance=bar.advance, sample=SAMPLE_JETS,
                              extract=functools.partial(row_entries, layout=layout),
                              on_sample=functools.partial(scales_of_entries, layout=layout,
                                                          defaults=config_defaults(config)))
    timing["merge"] = time.perf_counter() - merge_start
    chunks = [Chunk(out_dir / p.name, rows, weight, size) for p, rows, weight, size in zip(
        merged.files, merged.rows, merged.sum_weight, merged.sizes, strict=True)]
    inputs = {f: {"process": name, "entries": entries[f],
                  "selected": int(result["rows_per_file"].get(f, 0))}
              for name, fs in by_process.items() for f in fs}
    seconds = time.perf_counter() - start
    timing["total"] = seconds
    scales = merged.sample_result  # computed during the merge
    reweighting = reweighting_record(config, weights)
    write_bookkeeping(work_dir, out_dir, chunks, histogram, dataset_info(
        config, layout, histogram, seconds, timing, seed=seed, chunk_size=chunk_size,
        debug=debug, counts=counts, non_finite_branches=non_finite,
        jets_per_process_label=result["labels_per_process"], reweighting=reweighting,
        inputs=inputs), chunk_size, scales)
    return ExportSummary([c.path for c in chunks], merged.rows, merged.sum_weight, histogram,
                         counts, inputs, seconds, non_finite, result["labels_per_process"],
                         timing, reweighting)


def report(summary: ExportSummary, config: Config, directory: Path,
           verbose: bool = False, verb: str = "Exported") -> None:
    """Print the export summary (with ``verbose``: NaN/inf per branch, jets per process and
    class, time per stage)."""
    c = summary.counts
    console.print(
        f"[bold green]{verb} {sum(summary.rows):,} jets[/] of {c['entries']:,} entries "
        f"into {len(summary.files)} file(s) in {summary.seconds:.1f} s "
        f"({c['entries'] / max(summary.seconds, 1e-9):,.0f} entries/s): "
        f"{c['out_of_window']:,} outside pT/eta bins, {c['no_label']:,} without label, "
        f"{c['rejected']:,} rejected by the selection, {c['non_finite']:,} with NaN/inf "
        f"dropped, {c['multi_label']:,} with several labels (first one kept)")
    if summary.reweighting:
        console.print(reweighting_table(summary.reweighting))
    empty = summary.empty_files
    if empty:
        shown = ", ".join(empty[:5]) + (f", ... ({len(empty) - 5} more)" if len(empty) > 5
                                        else "")
        console.print(f"[yellow]{len(empty)} input file(s) contributed no jets: {shown}[/]")
    if verbose:
        if summary.non_finite_branches:
            console.print("  NaN/inf per branch (jets): " + ", ".join(
                f"{k} {v:,}" for k, v in summary.non_finite_branches.items()))
        else:
            console.print("  NaN/inf per branch: none")
        class_of = label_to_class(config.classes)
        for process, labels in summary.labels_per_process.items():
            per_class = np.zeros(len(config.classes), dtype=np.int64)
            for label, n in labels.items():
                per_class[class_of[label]] += n
            console.print(f"  {process}: " + ", ".join(
                f"{cls} {n:,}" for cls, n in zip(config.classes, per_class, strict=True)))
        console.print("  time per stage: " + ", ".join(f"{k} {v:.1f} s"
                                                       for k, v in summary.timing.items()))
    console.print(f"  {directory}")


def staging_dir(work_dir: Path, estimated_bytes: int, shared: bool = False) -> Path:
    """Where the processor stages its rows: ``$BHIVE_STAGING_DIR`` if set, else (unless the
    workers run elsewhere, ``shared``) ``/dev/shm`` (memory, much faster than most disks)
    when it and the free memory comfortably hold the estimate, else the work directory.
    Staging directories of dead exports (``kill -9``) found there are removed first."""
    scratch = os.environ.get("BHIVE_STAGING_DIR")
    if not scratch and not shared and os.path.isdir("/dev/shm"):
        free = shutil.disk_usage("/dev/shm").free
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if free > 2 * estimated_bytes and available > 4 * estimated_bytes:
            scratch = "/dev/shm"
    if scratch:
        Path(scratch).mkdir(parents=True, exist_ok=True)
        remove_stale(scratch, prefix=STAGING_PREFIX)
        return owned_directory(scratch, STAGING_PREFIX)
    staging = work_dir / "staged"
    staging.mkdir()
    return staging
