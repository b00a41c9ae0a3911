"""Export throughput vs. the uproot limit, both measured in this run.

    python bench/export.py [--workers 2] [--files 4] [--jets-per-file 100000]
    python bench/export.py --filelist my_files.txt --config offline_run3
    python bench/export.py --executor futures,dask     # both executors on the same files

Without --filelist, synthetic files with the config's branches are written to a temporary
directory, once with one basket per branch and once with CMS-like small baskets. The limit
is uproot reading the same branches of the same files with the same number of worker
processes (one file per task), with uproot's default source; the export runs
DatasetConstructorTask's code path (coffea futures executor, chunks aligned to the ROOT
clusters, staging, shuffle-merge, LZ4 compression), which reads local files with uproot's
plain file source. The same read with that source is measured too ("file source"), and the
export's ratio to it reported beside the goal's. After one untimed round of each,
``--rounds`` rounds alternate the reads and the export(s); the ratios are of their medians.
The last line is ``RESULT {json}`` with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uproot  # noqa: E402

from utils.config import Config, load_config  # noqa: E402
from utils.dataset.export import export_dataset  # noqa: E402
from utils.dataset.inputs import read_filelist, uproot_options  # noqa: E402
from utils.progress import console  # noqa: E402
from utils.synthetic import write_synthetic_ntuple  # noqa: E402

FILE_SOURCE = "file source"


def read_file(args: tuple[str, str, list[str], dict[str, object]]) -> int:
    path, tree, branches, options = args
    arrays = uproot.open(path, **options)[tree].arrays(branches, library="ak")
    return len(arrays)


def uproot_read(files: list[str], tree: str, branches: list[str], workers: int,
                options: dict[str, object] | None = None) -> float:
    """Jets/s of reading ``branches`` of every file into awkward arrays, one file per task
    in ``workers`` fresh processes (``options``: of ``uproot.open``)."""
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        n = sum(pool.map(read_file, [(f, tree, branches, options or {}) for f in files]))
    return n / (time.perf_counter() - start)


def export_rate(config: Config, files: list[str], out: Path, executor: str,
                args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    """One export of ``files`` into ``out`` (removed afterwards): jets/s and time per stage."""
    work = out / "work"
    work.mkdir(parents=True)
    start = time.perf_counter()
    with console.capture():
        summary = export_dataset(config, files, out, work, chunk_size=args.chunk_size,
                                 executor=executor, workers=args.workers)
    rate = summary.counts["entries"] / (time.perf_counter() - start)
    shutil.rmtree(out)
    return rate, summary.timing


def measure(config: Config, files: list[str], tmp: Path, args: argparse.Namespace,
            label: str) -> dict[str, float]:
    """Median rates (jets/s) on ``files`` of the uproot read with its default source and
    with the export's source (the same where a file is a URL), and of the export per
    executor, from ``args.rounds`` interleaved rounds after an untimed one."""
    branches = list(config.branches)
    entries = sum(uproot.open(f)[config.tree_name].num_entries for f in files)
    print(f"{label}: {len(files)} files, {entries:,} jets, {len(branches)} branches, "
          f"{args.workers} workers, {args.rounds} rounds")
    executors = args.executor.split(",")
    rates: dict[str, list[float]] = {name: [] for name in ["uproot", FILE_SOURCE, *executors]}
    for round_ in range(args.rounds + 1):
        read = uproot_read(files, config.tree_name, branches, args.workers)
        plain = uproot_read(files, config.tree_name, branches, args.workers,
                            uproot_options(files))
        line = [f"uproot {read:,.0f}", f"{FILE_SOURCE} {plain:,.0f}"]
        exported = {}
        for executor in executors:
            exported[executor], timing = export_rate(
                config, files, tmp / f"dataset_{label}_{executor}", executor, args)
            line.append(f"{executor} {exported[executor]:,.0f} (" + ", ".join(
                f"{k} {v:.2f} s" for k, v in timing.items()) + ")")
        if round_:  # the first round warms caches and the page cache: not counted
            rates["uproot"].append(read)
            rates[FILE_SOURCE].append(plain)
            for executor, rate in exported.items():
                rates[executor].append(rate)
        print(f"  round {round_}{'' if round_ else ' (warm-up)'}: " + "; ".join(line) +
              " jets/s")
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="offline_run3")
    parser.add_argument("--filelist", help="real input files (default: synthetic)")
    parser.add_argument("--files", type=int, default=4, help="synthetic files per process")
    parser.add_argument("--jets-per-file", type=int, default=100_000)
    parser.add_argument("--basket-entries", type=int, nargs="+", default=[0, 4000],
                        help="synthetic files with one basket per branch (0) and with baskets "
                        "of this many entries (CMS ntuples: a few thousand)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds (uproot reads, export) after an untimed one")
    parser.add_argument("--executor", default="futures",
                        help="comma-separated executors to measure (futures, dask, iterative)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")

    import coffea.processor  # noqa: F401  (import time is not throughput)

    config = load_config(args.config)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bhive-bench-") as tmp:
        tmp = Path(tmp)
        if args.filelist:
            results["filelist"] = measure(config, read_filelist(args.filelist), tmp, args,
                                          "filelist")
        for baskets in ([] if args.filelist else args.basket_entries):
            label = f"baskets of {baskets} entries" if baskets else "one basket per branch"
            files = []
            for i in range(args.files):
                for proc in config.process_names:
                    path = tmp / f"{proc}_{i}_{baskets}.root"
                    write_synthetic_ntuple(path, config, args.jets_per_file, seed=i,
                                           basket_entries=baskets or None)
                    files.append(str(path))
            os.sync()  # written back now, not by the kernel during the timed rounds
            results[label] = measure(config, files, tmp, args, label)
            for f in files:
                Path(f).unlink()
    result = {}
    for label, rates in results.items():
        print(f"{label}: uproot read (limit) {rates['uproot']:12,.0f} jets/s, with the "
              f"{FILE_SOURCE} {rates[FILE_SOURCE]:,.0f} (medians)")
        for executor, rate in rates.items():
            if executor in ("uproot", FILE_SOURCE):
                continue
            ratio = rate / rates["uproot"]
            plain = rate / rates[FILE_SOURCE]
            result[f"{label}: {executor}/uproot"] = round(ratio, 3)
            result[f"{label}: {executor}/uproot {FILE_SOURCE}"] = round(plain, 3)
            print(f"  export ({executor:9s}) {rate:12,.0f} jets/s   ratio to read {ratio:5.2f}   "
                  f"(goal >= 0.3, moonshot 0.5); to the read with the {FILE_SOURCE} "
                  f"{plain:5.2f}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
