"""Throughput of the built-in sample generator (utils.generation), one process = one core.

    python bench/generate.py                     # TT and QCD, 2000 events, every set-up
    python bench/generate.py --process TT --events 1000 --setups default no-pileup

Set-ups (GenerateSamplesTask options): default (realistic detector, MPI, pileup 30),
no-pileup (--pileup 0), easy (--pileup 0 --mpi False) and ideal (easy with --detector
ideal), each on the same seed. The pileup pool (one per sample version, shared by all its
files) is generated once up front and its time reported on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUPS = {
    "default": {},
    "no-pileup": {"pileup_mu": 0.0},
    "easy": {"pileup_mu": 0.0, "mpi": False},
    "ideal": {"pileup_mu": 0.0, "mpi": False, "detector_model": "ideal"},
}
HARD_JET_PT = 30.0  # GeV: the demo's selection


def main() -> None:
    """Generate one file per process and set-up into a temporary directory; print
    jets/s/core (all jets above 15 GeV and those above 30 GeV)."""
    sys.path.insert(0, str(REPO))
    import uproot

    from utils.generation import TREE_NAME, generate_file, pileup
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process", choices=("TT", "QCD", "both"), default="both")
    parser.add_argument("--events", type=int, default=2000, help="events per process")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pthat-min", type=float, default=30.0, help="QCD pT-hat min [GeV]")
    parser.add_argument("--pileup", type=float, default=30.0, help="mean pileup of 'default'")
    parser.add_argument("--setups", nargs="+", choices=tuple(SETUPS), default=list(SETUPS))
    args = parser.parse_args()

    processes = ("TT", "QCD") if args.process == "both" else (args.process,)
    result = {}
    start = time.perf_counter()
    pool = pileup.generate_pool(pileup.POOL_EVENTS, pileup.pool_seed(args.seed), True)
    result["pool_seconds"] = round(time.perf_counter() - start, 2)
    print(f"pileup pool: {pool.n_events} minimum-bias events in {result['pool_seconds']} s "
          "(once per sample version)")
    with tempfile.TemporaryDirectory() as directory:
        for process in processes:
            for setup in args.setups:
                kwargs = {"pileup_mu": args.pileup, "pileup_pool": pool, **SETUPS[setup]}
                path = Path(directory) / f"{process}.root"
                start = time.perf_counter()
                stats = generate_file(path, process=process, n_events=args.events,
                                      seed=args.seed, pthat_min=args.pthat_min, **kwargs)
                seconds = time.perf_counter() - start
                hard = int((uproot.open(path)[TREE_NAME]["jet_pt"].array(library="np")
                            > HARD_JET_PT).sum())
                print(f"{process:4s} {setup:9s} {stats['n_events']:7d} events "
                      f"{stats['n_jets']:8d} jets {seconds:7.1f} s   "
                      f"{stats['n_jets'] / seconds:7.0f} jets/s/core   "
                      f"{hard / seconds:7.0f} jets(pT>30)/s/core   "
                      f"{stats['n_events'] / seconds:6.0f} events/s/core")
                key = f"{process}_{setup}"
                result[f"{key}_jets_per_s_per_core"] = round(stats["n_jets"] / seconds, 1)
                result[f"{key}_jets_pt30_per_s_per_core"] = round(hard / seconds, 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
