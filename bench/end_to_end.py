"""Training end to end against the bare training step, on the same model and batches.

    python bench/end_to_end.py                         # DeepJet, demo-size dataset
    python bench/end_to_end.py --model ParticleTransformer --jets 20000

Exports a synthetic demo_part dataset (``--jets`` jets, chunk size 5000 like the demo) and
trains ``--epochs`` epochs with run_training (what TrainingTask runs: loader threads,
rejection sampling, metrics, progress bar, validation, checkpoints and plots). Then, in
``--rounds`` interleaved rounds on the trained model, it times bench/train_step.py's bare
step (forward, backward, Adam; no loader; after 2 untimed steps) on every batch of one
epoch, listed in memory beforehand, and right after it the trainer's own epoch over the
same batches (its jets/s as TrainingTask reports them; the trainer's optimiser is fused
AdamW where torch has it). The ratio is the median epoch rate over the median bare rate;
interleaving keeps the machine's drift out of it. The last line is ``RESULT {json}``.
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

from utils.allocator import keep_freed_memory  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.settings import TrainSettings  # noqa: E402
from utils.torch.data import training_batches  # noqa: E402
from utils.torch.run import run_training  # noqa: E402

GOAL = 0.9
WARMUP = 2  # untimed bare steps per round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DeepJet")
    parser.add_argument("--jets", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    parser.add_argument("--epochs", type=int, default=2, help="run_training epochs before "
                        "the timed rounds (the first pays the warm-up of a fresh model)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved bare-step / epoch "
                        "rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--loader-threads", type=int, default=TrainSettings.n_threads)
    args = parser.parse_args()

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    config = load_config("demo_part")
    with tempfile.TemporaryDirectory(prefix="bhive-bench-") as tmp:
        tmp = Path(tmp)
        dataset, _ = synthetic_dataset(config, tmp, args.jets, 5000)
        settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                                 n_threads=args.loader_threads)
        trainer = run_training(config, args.model, dataset, tmp / "training", settings)
        fit_rates = list(trainer.history.train["jets_per_second"])
        bare, epochs, waiting = [], [], []
        for _ in range(args.rounds):
            trainer.train_data.set_epoch(trainer.epoch)
            batches = list(training_batches(trainer.train_data, 0, trainer.batches_per_epoch))
            adam = torch.optim.Adam(trainer.model.parameters(), lr=1e-3)  # as train_step.py
            steps = [runner(trainer.model, b["inputs"], b["target"], "train", adam)
                     for b in batches]
            for step in steps[:WARMUP]:
                step()
            seconds = []
            for step in steps:
                start = time.perf_counter()
                step()
                seconds.append(time.perf_counter() - start)
            bare.append(sum(len(b["target"]) for b in batches) / sum(seconds))
            del batches
            metrics = trainer.train_epoch()  # the same epoch (same seed), loader included
            epochs.append(metrics["jets"] / metrics["seconds"])
            waiting.append(metrics["load_seconds"])
    epoch, step_rate = statistics.median(epochs), statistics.median(bare)
    ratio = epoch / step_rate
    print(f"{args.model}: run_training epochs {', '.join(f'{r:,.0f}' for r in fit_rates)} "
          "jets/s")
    print(f"  interleaved rounds: epoch {', '.join(f'{r:,.0f}' for r in epochs)} jets/s "
          f"({', '.join(f'{w:.2f}' for w in waiting)} s waiting for batches), bare step "
          f"{', '.join(f'{r:,.0f}' for r in bare)} jets/s")
    print(f"  epoch / bare step {ratio:.2f} (medians; goal >= {GOAL}); last run_training "
          f"epoch / bare step {fit_rates[-1] / step_rate:.2f}")
    print("RESULT " + json.dumps({"model": args.model, "epoch_jets_per_s": round(epoch, 1),
                                  "bare_step_jets_per_s": round(step_rate, 1),
                                  "run_training_epochs_jets_per_s": [round(r, 1)
                                                                     for r in fit_rates],
                                  "epoch_vs_bare_step": round(ratio, 3), "goal": GOAL}))

if __name__ == "__main__":
    main()
