"""Training end to end against the bare training step, on the same model and batches.

    python bench/end_to_end.py                         # DeepJet, demo-size dataset
    python bench/end_to_end.py --model ParticleTransformer --jets 20000

Exports a synthetic demo_part dataset (``--jets`` jets, chunk size 5000 like the demo),
trains two epochs with run_training (what TrainingTask runs: loader threads, rejection
sampling, metrics, progress bar, validation, checkpoint and plots) and compares the
last epoch's own jets/s with bench/train_step.py's measurement of the same model on that
dataset's training batches (forward, backward, Adam; no loader), measured before and
after the training (median). The last line is
``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import synthetic_dataset  # noqa: E402
from train_step import runner  # noqa: E402

from utils.config import label_to_class, load_config  # noqa: E402
from utils.settings import TrainSettings  # noqa: E402
from utils.torch.allocator import keep_freed_memory  # noqa: E402
from utils.torch.data import TRAIN, ChunkDataset, dataset_shards, make_loader  # noqa: E402
from utils.torch.run import build_model, run_training  # noqa: E402

GOAL = 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DeepJet")
    parser.add_argument("--jets", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    parser.add_argument("--epochs", type=int, default=2, help="the last one is compared (the "
                        "first also pays the warm-up of a fresh model)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--loader-threads", type=int, default=TrainSettings.n_threads)
    args = parser.parse_args()

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    config = load_config("demo_part")
    with tempfile.TemporaryDirectory(prefix="bhive-bench-") as tmp:
        tmp = Path(tmp)
        dataset, _ = synthetic_dataset(config, tmp, args.jets, 5000)

        # the bare step on this dataset's training batches (rejection-sampled, as in the
        # epoch: the reweighted jets have more candidates), before and after the training
        model, classes = build_model(config, args.model)
        data = ChunkDataset(dataset_shards(dataset), model.input_groups,
                            label_to_class(classes), args.batch_size, TRAIN)
        batches = [b for _, b in zip(range(4), make_loader(data, 0), strict=False)]
        seconds: list[float] = []

        def bare_steps(model: torch.nn.Module) -> None:
            steps = [runner(model, b["inputs"], b["target"], "train") for b in batches]
            for step in steps[:2]:  # warm-up
                step()
            for _ in range(3):
                for step in steps:
                    start = time.perf_counter()
                    step()
                    seconds.append(time.perf_counter() - start)

        bare_steps(model)
        settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                                 n_threads=args.loader_threads)
        trainer = run_training(config, args.model, dataset, tmp / "training", settings)
        rates = trainer.history.train["jets_per_second"]
        before = args.batch_size / statistics.median(seconds)
        bare_steps(trainer.model)
        after = args.batch_size / statistics.median(seconds[len(seconds) // 2:])
        bare = args.batch_size / statistics.median(seconds)
    epoch = rates[-1]
    ratio = epoch / bare
    history = trainer.history.train
    print(f"last epoch: {history['jets'][-1]:,.0f} jets in {history['seconds'][-1]:.2f} s, "
          f"{history['load_seconds'][-1]:.2f} s of it waiting for batches")
    print(f"{args.model}: training epochs {', '.join(f'{r:,.0f}' for r in rates)} jets/s, "
          f"bare step {bare:,.0f} jets/s ({before:,.0f} before, {after:,.0f} after), "
          f"last epoch / bare step {ratio:.2f} (goal >= {GOAL})")
    print("RESULT " + json.dumps({"model": args.model, "epoch_jets_per_s": round(epoch, 1),
                                  "first_epoch_jets_per_s": round(rates[0], 1),
                                  "bare_step_jets_per_s": round(bare, 1),
                                  "bare_before": round(before, 1), "bare_after": round(after, 1),
                                  "epoch_vs_bare_step": round(ratio, 3), "goal": GOAL}))


if __name__ == "__main__":
    main()
