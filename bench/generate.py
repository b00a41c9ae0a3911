"""Throughput of the built-in sample generator (utils.generation), one process = one core.

    python bench/generate.py                     # TT and QCD, 2000 events each
    python bench/generate.py --process QCD --events 5000 --seed 3 --detector realistic

Each detector model (default: realistic and ideal) is measured on the same events.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Generate one file per process into a temporary directory and print jets/s/core."""
    sys.path.insert(0, str(REPO))
    from utils.generation import generate_file
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process", choices=("TT", "QCD", "both"), default="both")
    parser.add_argument("--events", type=int, default=2000, help="events per process")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pthat-min", type=float, default=30.0, help="QCD pT-hat min [GeV]")
    parser.add_argument("--detector", nargs="+", default=["realistic", "ideal"],
                        help="detector models to measure (GenerateSamplesTask --detector)")
    args = parser.parse_args()

    processes = ("TT", "QCD") if args.process == "both" else (args.process,)
    result = {}
    with tempfile.TemporaryDirectory() as directory:
        for process in processes:
            for model in args.detector:
                start = time.perf_counter()
                stats = generate_file(Path(directory) / f"{process}.root", process=process,
                                      n_events=args.events, seed=args.seed,
                                      pthat_min=args.pthat_min, detector_model=model)
                seconds = time.perf_counter() - start
                print(f"{process:4s} {model:9s} {stats['n_events']:7d} events "
                      f"{stats['n_jets']:8d} jets {seconds:7.1f} s   "
                      f"{stats['n_jets'] / seconds:7.0f} jets/s/core   "
                      f"{stats['n_events'] / seconds:6.0f} events/s/core")
                result[f"{process}_{model}_jets_per_s_per_core"] = round(
                    stats["n_jets"] / seconds, 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
