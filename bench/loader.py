"""Loader throughput vs. raw LZ4 decompression of the same chunk files, in one run.

    python bench/loader.py [--dataset DIR] [--batch-size 1024] [--workers 1]

Without --dataset, a synthetic offline_run3 dataset (~300k jets, chunk size 100000) is
exported to a temporary directory. The limit decompresses every chunk file's LZ4 frame;
the loader (ChunkDataset + ThreadLoader with --workers threads, no rejection sampling so that
every jet is delivered) additionally permutes rows and gathers the batches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lz4.frame  # noqa: E402

from utils.config import label_to_class, load_config  # noqa: E402
from utils.dataset.chunk_format import MAGIC  # noqa: E402
from utils.dataset.directory import DatasetDirectory  # noqa: E402
from utils.dataset.export import export_dataset  # noqa: E402
from utils.synthetic import write_synthetic_ntuple  # noqa: E402
from utils.torch.data import TRAIN, ChunkDataset, dataset_shards, make_loader  # noqa: E402


def lz4_limit(files: list[Path]) -> tuple[int, float]:
    """Rows and seconds to decompress every file's LZ4 frame (header parsing excluded)."""
    rows, seconds = 0, 0.0
    for path in files:
        raw = path.read_bytes()
        assert raw[:8] == MAGIC
        size = int.from_bytes(raw[8:12], "little")
        body = raw[16 + size:]
        start = time.perf_counter()
        data = lz4.frame.decompress(body)
        seconds += time.perf_counter() - start
        rows += len(data) // 4
    return rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="an exported dataset directory (default: synthetic)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    config = load_config("offline_run3")
    with tempfile.TemporaryDirectory(prefix="bhive-bench-") as tmp:
        if args.dataset:
            directory = Path(args.dataset)
        else:
            tmp = Path(tmp)
            files = []
            for i, proc in enumerate(("TT", "QCD")):
                path = tmp / f"{proc}_{i}.root"
                write_synthetic_ntuple(path, config, 160_000, seed=i)
                files.append(str(path))
            directory = tmp / "dataset"
            directory.mkdir()
            export_dataset(config, files, directory, directory, chunk_size=100_000,
                           executor="futures", workers=2)
        files = DatasetDirectory(directory).files()
        shards = dataset_shards(directory)
        n_cols = None
        limits = [lz4_limit(files) for _ in range(3)]  # best of three, like the loader
        values, limit_seconds = min(limits, key=lambda r: r[1])
        data = ChunkDataset(shards, ("global", "cpf", "npf", "vtx"),
                            label_to_class(config.classes), args.batch_size,
                            TRAIN, sampling=False, seed=1)
        n_cols = data.layout.n_columns
        jets_limit = values / n_cols
        loader_seconds = float("inf")
        for _ in range(3):  # best of three passes
            start = time.perf_counter()
            jets = sum(len(batch["target"]) for batch in make_loader(data, args.workers))
            loader_seconds = min(loader_seconds, time.perf_counter() - start)
    limit_rate = jets_limit / limit_seconds
    loader_rate = jets / loader_seconds
    print(f"{len(files)} files, {jets_limit:,.0f} jets, {n_cols} columns")
    print(f"lz4 decompression (limit): {limit_rate:12,.0f} jets/s")
    print(f"loader ({args.workers} worker)      : {loader_rate:12,.0f} jets/s")
    print(f"ratio loader/limit       : {loader_rate / limit_rate:12.2f}   (goal >= 0.6)")


if __name__ == "__main__":
    main()
