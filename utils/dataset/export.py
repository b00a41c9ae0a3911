"""Export ROOT jet ntuples to shuffled, reweighted LZ4 chunks (law-free core of the task)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import Config
from utils.dataset.inputs import assign_processes, inspect_files
from utils.dataset.layout import ColumnLayout
from utils.dataset.merge import merge_staged
from utils.dataset.reweighting import weight_tables
from utils.io import write_json
from utils.progress import console, progress_bar

EXECUTORS = ("iterative", "futures", "dask")
DEBUG_MAX_CHUNKS = 3
DEBUG_CHUNK_ROWS = 5_000
TARGET_CHUNK_BYTES = 64 * 1024**2

PROCESSED_FILES = "processed_files.txt"
HISTOGRAM = "histogram.npy"
WEIGHTS = "weights.json"
INFO = "dataset_info.json"


class ExportError(RuntimeError):
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


def default_coffea_chunk_size(layout: ColumnLayout) -> int:
    """Entries per coffea chunk so that one chunk's float32 rows take about 64 MB."""
    return int(np.clip(TARGET_CHUNK_BYTES // (4 * layout.n_columns), 1_000, 200_000))


@contextlib.contextmanager
def _runner(executor: str, workers: int, chunk_size: int, max_chunks: int | None,
            scheduler_address: str | None = None) -> Iterator[Any]:
    """A coffea Runner for ``executor``; for dask, a client of ``scheduler_address`` or of a
    local cluster of ``workers`` processes, closed afterwards."""
    from coffea import processor
    from coffea.nanoevents import BaseSchema

    with contextlib.ExitStack() as stack:
        if executor == "iterative":
            engine = processor.IterativeExecutor(status=True)
        elif executor == "futures":
            # fork: workers inherit the imported modules instead of re-importing coffea
            pool = functools.partial(concurrent.futures.ProcessPoolExecutor,
                                     mp_context=multiprocessing.get_context("fork"))
            engine = processor.FuturesExecutor(workers=workers, status=True, pool=pool)
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
            engine = processor.DaskExecutor(client=client, status=True, retries=0)
        else:
            raise ValueError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
        yield processor.Runner(executor=engine, schema=BaseSchema, chunksize=chunk_size,
                               maxchunks=max_chunks)


def plan_inputs(config: Config, files: Sequence[str], debug: bool = False
                ) -> dict[str, list[str]]:
    """Input files by process (config order); with ``debug`` one file per process. The
    position of a file in this plan is its file index (part of every jet's shuffle key)."""
    by_process = assign_processes(files, config.processes)
    if debug:
        by_process = {name: fs[:1] for name, fs in by_process.items()}
    return by_process


def check_inputs(config: Config, files: Sequence[str], workers: int = 4) -> dict[str, int]:
    """Pre-flight check of every input file (tree, branches, entries); entries per file."""
    from utils.processors import get_processor

    processor_cls = get_processor(config.processor)
    return inspect_files(files, config.tree_name,
                         lambda available: processor_cls.missing_branches(config, available),
                         workers=max(4, workers))


def run_processor(config: Config, by_process: dict[str, list[str]],
                  file_index: dict[str, int], staging: Path, seed: int,
                  executor: str = "futures", workers: int = 1, debug: bool = False,
                  coffea_chunk_size: int | None = None,
                  scheduler_address: str | None = None) -> dict[str, Any]:
    """Run the config's coffea processor over the files; staged rows go to ``staging``.

    Returns the accumulated result: ``staged`` [(path, rows)], ``histogram``, ``counts``,
    ``rows_per_file``.
    """
    from utils.processors import get_processor

    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {EXECUTORS}, got {executor!r}")
    if workers < 1:
        raise ValueError(f"--coffea-worker must be >= 1, got {workers}")
    processor_cls = get_processor(config.processor)
    layout = ColumnLayout.from_config(config)
    proc = processor_cls(config, staging, file_index, seed=seed)
    rows_per_chunk = DEBUG_CHUNK_ROWS if debug else (coffea_chunk_size or
                                                      default_coffea_chunk_size(layout))
    # preload: read all needed branches of a chunk in one uproot call (faster than lazily)
    preload = processor_cls.preload_branches(config)
    fileset = {name: {"files": {f: config.tree_name for f in fs},
                      **({"preload": preload} if preload else {})}
               for name, fs in by_process.items() if fs}
    with _runner(executor, workers, rows_per_chunk, DEBUG_MAX_CHUNKS if debug else None,
                 scheduler_address) as runner:
        return dict(runner(fileset, proc, treename=config.tree_name))


def combine_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum the results of several processor runs (e.g. one per batch job)."""
    combined: dict[str, Any] = {"staged": [], "histogram": None, "counts": {},
                                "rows_per_file": {}}
    for result in results:
        combined["staged"] += [tuple(entry) for entry in result["staged"]]
        histogram = np.asarray(result["histogram"], dtype=np.float64)
        combined["histogram"] = histogram if combined["histogram"] is None else \
            combined["histogram"] + histogram
        for key in ("counts", "rows_per_file"):
            for name, value in result[key].items():
                combined[key][name] = combined[key].get(name, 0) + int(value)
    return combined


def export_dataset(config: Config, files: Sequence[str], out_dir: Path, work_dir: Path,
                   chunk_size: int = 100_000, seed: int = 123456, executor: str = "futures",
                   workers: int = 1, debug: bool = False,
                   coffea_chunk_size: int | None = None,
                   scheduler_address: str | None = None) -> ExportSummary:
    """Run the export; write every output into ``work_dir`` naming final paths in ``out_dir``.

    Outputs: ``file_<k>.lz4``, ``processed_files.txt``, ``histogram.npy``, ``weights.json``,
    ``dataset_info.json``. The caller publishes ``work_dir`` into ``out_dir`` on success.
    With ``executor="dask"`` and a ``scheduler_address`` the workers may run on other
    machines: the staging files then go to ``work_dir`` (a shared file system) unless
    ``$BHIVE_STAGING_DIR`` names another shared place.
    """
    start = time.perf_counter()
    if chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {chunk_size}")
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
    from utils.processors import get_processor

    rows = sum(entries.values()) * get_processor(config.processor).rows_per_entry
    staging = staging_dir(work_dir, rows * 4 * layout.n_columns, shared=bool(scheduler_address))
    try:
        result = run_processor(config, by_process, {f: i for i, f in enumerate(used)},
                               staging, seed, executor, workers, debug, coffea_chunk_size,
                               scheduler_address)
        return finish_export(config, [result], by_process, entries, out_dir, work_dir,
                             chunk_size, seed, workers, debug, start)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def finish_export(config: Config, results: Sequence[dict[str, Any]],
                  by_process: dict[str, list[str]], entries: dict[str, int], out_dir: Path,
                  work_dir: Path, chunk_size: int, seed: int, workers: int, debug: bool,
                  start: float) -> ExportSummary:
    """Merge the staged rows of the processor ``results`` and write all dataset files."""
    layout = ColumnLayout.from_config(config)
    result = combine_results(results)
    counts = {k: int(v) for k, v in result["counts"].items()}
    histogram = np.asarray(result["histogram"], dtype=np.float64)
    if counts.get("non_finite"):
        console.print(f"[yellow]Dropped {counts['non_finite']:,} jet(s) with NaN/inf "
                      "features[/]")
    if not result["staged"]:
        raise ExportError(
            f"no jet passed the selection in {len(entries)} file(s) "
            f"({counts.get('entries', 0):,} entries: {counts.get('out_of_window', 0):,} "
            f"outside pT {config.pt_bins[0]}-{config.pt_bins[-1]} / eta "
            f"{config.eta_bins[0]}-{config.eta_bins[-1]}, {counts.get('no_label', 0):,} "
            f"without truth label, {counts.get('non_finite', 0):,} with NaN/inf)")
    reference = config.truth_labels.index(config.reference_flavour)
    if histogram[reference].sum() == 0:
        warnings.warn(f"reference flavour {config.reference_flavour!r} has no jets in this "
                      "dataset: weights are all 1 (no pT-eta reweighting)", stacklevel=2)
        console.print(f"[yellow]Reference flavour {config.reference_flavour} has no jets: "
                      "all weights set to 1[/]")
    with progress_bar("Merging", total=counts["selected"], unit="jets") as bar:
        merged = merge_staged(result["staged"], layout, out_dir=work_dir,
                              chunk_size=chunk_size, seed=seed,
                              tables=weight_tables(histogram, reference),
                              pt_key=config.pt_key, eta_key=config.eta_key,
                              pt_bins=config.pt_bins, eta_bins=config.eta_bins,
                              workers=workers, advance=bar.advance)
    final_files = [out_dir / p.name for p in merged.files]

    np.save(work_dir / HISTOGRAM, histogram)
    write_json(work_dir / WEIGHTS, {
        "files": [p.name for p in final_files],
        "rows": merged.rows,
        "sum_weight": merged.sum_weight,
        "total_rows": int(sum(merged.rows)),
        "total_weight": float(sum(merged.sum_weight)),
        "chunk_size": chunk_size,
    })
    inputs = {f: {"process": name, "entries": entries[f],
                  "selected": int(result["rows_per_file"].get(f, 0))}
              for name, fs in by_process.items() for f in fs}
    seconds = time.perf_counter() - start
    write_json(work_dir / INFO, {
        "config": config.name,
        "config_fingerprint": config.fingerprint(),
        "seed": seed,
        "chunk_size": chunk_size,
        "debug": debug,
        "counts": counts,
        "jets_per_label": dict(zip(config.truth_labels,
                                   histogram.sum(axis=(1, 2)).astype(int).tolist(), strict=True)),
        "inputs": inputs,
        "layout": layout.to_dict(),
        "seconds": round(seconds, 3),
    })
    (work_dir / PROCESSED_FILES).write_text("".join(f"{p}\n" for p in final_files))
    return ExportSummary(final_files, merged.rows, merged.sum_weight, histogram, counts,
                         inputs, seconds)


def staging_dir(work_dir: Path, estimated_bytes: int, shared: bool = False) -> Path:
    """Where the processor stages its rows: ``$BHIVE_STAGING_DIR`` if set, else (unless the
    workers run elsewhere, ``shared``) ``/dev/shm`` (memory, much faster than most disks)
    when it and the free memory comfortably hold the estimate, else the work directory."""
    scratch = os.environ.get("BHIVE_STAGING_DIR")
    if not scratch and not shared and os.path.isdir("/dev/shm"):
        free = shutil.disk_usage("/dev/shm").free
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if free > 2 * estimated_bytes and available > 4 * estimated_bytes:
            scratch = "/dev/shm"
    if scratch:
        return Path(tempfile.mkdtemp(prefix="bhive-staging-", dir=scratch))
    staging = work_dir / "staged"
    staging.mkdir()
    return staging


def read_processed_files(dataset_dir: str | Path) -> list[Path]:
    """Chunk files of an exported dataset (paths in ``processed_files.txt``).

    A listed absolute path that no longer exists is looked up by name in ``dataset_dir``
    (datasets can be moved together with their directory).
    """
    dataset_dir = Path(dataset_dir)
    listing = dataset_dir / PROCESSED_FILES
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} does not exist; run DatasetConstructorTask first")
    files = []
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        path = Path(line.strip())
        if not path.exists() and (dataset_dir / path.name).exists():
            path = dataset_dir / path.name
        files.append(path)
    return files
