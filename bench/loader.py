"""Loader throughput against raw LZ4 decompression of the same chunk files, in one run.

    python bench/loader.py [--dataset DIR] [--batch-size 1024] [--threads 1 2] [--rounds 5]

Without --dataset, a synthetic offline_run3 dataset (~300k jets, chunk size 100000) is
exported to a temporary directory. Each chunk's array is stored again as a plain LZ4 frame
without checksums (the same compressed blocks, nothing verified) and decompressed, spread
over the same number of threads, in two ways:

- ``lz4``: one ``lz4.frame.decompress`` call per chunk (the issue's limit; it faults in
  fresh pages for every chunk's output),
- ``warm``: piece by piece into one reused buffer per thread (what the loader does; the
  limit of any loader that has to decompress the chunks).

The loader (ChunkDataset + ThreadLoader, no rejection sampling, so every jet is delivered
once) additionally verifies the stored block checksums, permutes the rows and gathers the
batches. The three alternate round by round; medians are compared. With weaver-core
installed (``pip install .[bench]``), its loader reads the same jets from the ntuples
(whole files per fetch, the same padding, no transformation) with as many DataLoader
processes. The last line is ``RESULT {json}`` with the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lz4.frame  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from common import synthetic_dataset  # noqa: E402
from peers import weaver_available  # noqa: E402

from utils.allocator import keep_freed_memory  # noqa: E402
from utils.config import Config, label_to_class, load_config  # noqa: E402
from utils.dataset.chunk_format import decompress_into, read_chunk  # noqa: E402
from utils.dataset.directory import DatasetDirectory  # noqa: E402
from utils.torch.data import TRAIN, ChunkDataset, dataset_shards, make_loader  # noqa: E402

GOAL = 0.85


def plain_frames(files: list[Path]) -> list[bytes]:
    """Each chunk's array as an LZ4 frame without any checksum (the same blocks)."""
    return [lz4.frame.compress(read_chunk(path)[0], block_checksum=False,
                               content_checksum=False, store_size=True) for path in files]


def decompress_all(frames: list[bytes], threads: int, buffers: list[np.ndarray] | None
                   ) -> float:
    """Seconds to decompress every frame, ``threads`` at a time: with one call each, or
    (with ``buffers``, one per thread, already in memory) piece by piece into them."""
    def decompress(slot: int) -> None:
        for frame in frames[slot::threads]:
            if buffers is None:
                lz4.frame.decompress(frame)
                continue
            size = lz4.frame.get_frame_info(frame)["content_size"]
            with memoryview(frame) as view:
                decompress_into(Path("bench"), view, buffers[slot][:size])

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decompress, range(threads)))
    return time.perf_counter() - start


def load_all(data: ChunkDataset, threads: int) -> tuple[int, float]:
    """Jets delivered and seconds for one pass of the loader."""
    start = time.perf_counter()
    jets = sum(len(batch["target"]) for batch in make_loader(data, threads))
    return jets, time.perf_counter() - start


def weaver_data_config(config: Config, path: Path) -> Path:
    """A weaver data config reading the same features, padded to the same slots, without
    any transformation (our loader hands raw values to the models too)."""
    inputs = {g.name: {"length": g.length or 1, "pad_mode": "constant",
                       "vars": [[f, None] for f in g.features]}
              for g in config.groups if not g.derived}
    labelled = "(" + " + ".join(config.truth_labels) + ") == 1"  # weaver needs one label
    options = {"treename": config.tree_name, "selection": labelled,
               "preprocess": {"method": "manual", "data_fraction": 1},
               "inputs": inputs, "labels": {"type": "simple",
                                            "value": list(config.truth_labels)},
               "observers": [], "weights": None}
    path.write_text(yaml.safe_dump(options))
    return path


def weaver_pass(files: list[str], data_config: Path, batch_size: int, workers: int
                ) -> tuple[int, float]:
    """Jets and seconds of one pass of weaver-core's loader over the ROOT files (whole files
    per fetch, ``workers`` DataLoader processes)."""
    from torch.utils.data import DataLoader
    from weaver.utils.dataset import SimpleIterDataset

    dataset = SimpleIterDataset({"bench": files}, str(data_config), for_training=True,
                                fetch_by_files=True, fetch_step=1, infinity_mode=False,
                                in_memory=False, name="bench")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    start = time.perf_counter()
    jets = sum(len(label["_label_"]) for _, label, _ in loader)
    return jets, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="an exported offline_run3 dataset directory "
                        "(default: synthetic, exported from two generated ntuples)")
    parser.add_argument("--root-files", nargs="*", default=None,
                        help="the ntuples --dataset was exported from (for weaver's loader)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--weaver-rounds", type=int, default=1,
                        help="passes of weaver's loader per thread count (it is slow)")
    args = parser.parse_args()

    keep_freed_memory()  # as TrainingTask and InferenceTask do
    config = load_config("offline_run3")
    with tempfile.TemporaryDirectory(prefix="bhive-bench-") as tmp:
        if args.dataset:
            directory, roots = Path(args.dataset), list(args.root_files or [])
        else:
            directory, roots = synthetic_dataset(config, Path(tmp), 320_000, 100_000)
        files = DatasetDirectory(directory).files()
        frames = plain_frames(files)
        data = ChunkDataset(dataset_shards(directory), ("global", "cpf", "npf", "vtx"),
                            label_to_class(config.classes), args.batch_size, TRAIN,
                            sampling=False, seed=1)
        n_jets = sum(s.rows for s in data.shards)
        largest = max(lz4.frame.get_frame_info(f)["content_size"] for f in frames)
        buffers = [np.ones(largest, dtype=np.uint8) for _ in range(max(args.threads))]
        times: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for threads in args.threads:
                times.setdefault(f"lz4_{threads}", []).append(
                    decompress_all(frames, threads, None))
                times.setdefault(f"warm_{threads}", []).append(
                    decompress_all(frames, threads, buffers[:threads]))
                jets, seconds = load_all(data, threads)
                times.setdefault(f"loader_{threads}", []).append(seconds)
        weaver: dict[int, float] = {}
        if roots and weaver_available():
            data_config = weaver_data_config(config, Path(tmp) / "weaver.yaml")
            for threads in args.threads:
                passes = [weaver_pass(roots, data_config, args.batch_size, threads)
                          for _ in range(args.weaver_rounds)]
                weaver[threads] = statistics.median(n / t for n, t in passes)
    # ChunkDataset drops the last partial batch of each thread in training mode
    print(f"{len(files)} files, {n_jets:,d} jets, {data.layout.n_columns} columns, "
          f"{args.rounds} rounds (medians)"
          + ("" if weaver_available() else "; weaver-core not installed (no weaver peer)"))
    result: dict[str, float] = {"goal": GOAL}
    for threads in args.threads:
        rate = {kind: n_jets / statistics.median(times[f"{kind}_{threads}"])
                for kind in ("lz4", "warm")}
        loader = jets / statistics.median(times[f"loader_{threads}"])
        result[f"loader_vs_lz4_{threads}_threads"] = round(loader / rate["lz4"], 3)
        result[f"loader_vs_warm_{threads}_threads"] = round(loader / rate["warm"], 3)
        result[f"loader_jets_per_s_{threads}_threads"] = round(loader)
        line = (f"{threads} thread(s): lz4 {rate['lz4']:10,.0f}  warm {rate['warm']:10,.0f}  "
                f"loader {loader:10,.0f} jets/s   loader/lz4 {loader / rate['lz4']:.2f} "
                f"(goal >= {GOAL})   loader/warm {loader / rate['warm']:.2f}")
        if threads in weaver:
            result[f"loader_vs_weaver_{threads}_workers"] = round(loader / weaver[threads], 2)
            line += f"   weaver {weaver[threads]:9,.0f} ({loader / weaver[threads]:.1f}x)"
        print(line)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
