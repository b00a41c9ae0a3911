"""Distributed training throughput: 1 process vs N DDP processes (same global batch size).

    python bench/ddp.py [--processes 2] [--model DeepJet] [--jets 40000] [--epochs 1]

Exports a synthetic offline_run3 dataset to a temporary directory, trains with loss
weighting (every jet, no sampling) once in one process and once with torchrun on
--processes processes, and prints the training jets/s of each (from the metrics files).
On CPU the processes share the cores (OMP threads = cores / processes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import synthetic_dataset  # noqa: E402

from utils.config import load_config  # noqa: E402
from utils.settings import TrainSettings  # noqa: E402
from utils.torch.ddp import launch, training_spec  # noqa: E402
from utils.torch.run import run_training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="DeepJet")
    parser.add_argument("--jets", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    config = load_config("offline_run3")
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, seed=1,
                             loss_weighting=True, lr_scheduler="none", n_threads=1)
    with tempfile.TemporaryDirectory(prefix="bhive-bench-") as tmp:
        tmp = Path(tmp)
        dataset, _ = synthetic_dataset(config, tmp, args.jets, max(1000, args.jets // 16),
                                       executor="iterative")
        run_training(config, args.model, dataset, tmp / "single", settings)
        launch(training_spec("offline_run3", settings, model_name=args.model,
                             dataset_dir=dataset, out_dir=tmp / "ddp"), args.processes,
               tmp / "ddp")
        rates = {name: float(np.mean(np.load(tmp / name / "training_metrics.npz")
                                     ["jets_per_second"]))
                 for name in ("single", "ddp")}
    print(f"{args.model}, global batch {args.batch_size}, {args.jets:,} jets")
    print(f"1 process            : {rates['single']:10,.0f} jets/s")
    print(f"{args.processes} DDP processes      : {rates['ddp']:10,.0f} jets/s   "
          f"ratio {rates['ddp'] / rates['single']:.2f}")
    print("RESULT " + json.dumps({"single_jets_per_s": round(rates["single"]),
                                  "ddp_vs_single": round(rates["ddp"] / rates["single"], 3)}))


if __name__ == "__main__":
    main()
