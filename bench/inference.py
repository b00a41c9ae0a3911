"""Inference throughput: PyTorch (eval, inference mode) against onnxruntime (CPU) on the
graph ExportONNXTask writes, per model, at batch 1024 and batch 1 (CMSSW evaluates jet by
jet or per event).

    python bench/inference.py                                   # all models, 2 threads
    python bench/inference.py --models DeepJet ParticleTransformer --rounds 5 --threads 1

Inputs are bench/train_step.py's random raw-scale batches (offline_run3 by default, with
4-vectors for the models that need them). Batch-norm statistics come from two train-mode
passes, so the eval graphs are realistic. Both backends get the same number of threads and
are timed in interleaved rounds (medians printed); the ratio is onnxruntime / PyTorch.
The largest |probability| difference of the two on the timed batch is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import random_batch, with_four_vectors  # noqa: E402

from utils.allocator import keep_freed_memory  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.deploy import OPSET_DEFAULT  # noqa: E402
from utils.deploy.onnx import OnnxTagger, export_bytes  # noqa: E402
from utils.models import InputSpec, available_models, get_model  # noqa: E402


def rate(call: Callable[[], object], jets: int, seconds: float) -> float:
    """Jets/s of repeated ``call`` (each ``jets`` jets) over at least ``seconds``."""
    call()
    n, start = 0, time.perf_counter()
    while True:
        call()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * jets / elapsed


def benchmark(name: str, spec: InputSpec, threads: int, rounds: int, seconds: float
              ) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = get_model(name)(spec)
    with torch.no_grad():
        for _ in range(2):
            model(random_batch(spec, 512, generator))
    model.eval()
    big = {g: x for g, x in random_batch(spec, 1024, generator).items()
           if g in model.input_groups}
    singles = [{g: x[i:i + 1] for g, x in big.items()} for i in range(64)]
    tagger = OnnxTagger(export_bytes(model, OPSET_DEFAULT), model, threads=threads)
    with torch.inference_mode():
        difference = float(np.abs(tagger.run(big)[0]
                                  - model(big).softmax(-1).numpy()).max())

    def torch_big() -> None:
        with torch.inference_mode():
            model(big)

    def torch_single() -> None:
        with torch.inference_mode():
            for jet in singles:
                model(jet)

    def onnx_big() -> None:
        tagger.run(big)

    def onnx_single() -> None:
        for jet in singles:
            tagger.run(jet)

    results: dict[str, list[float]] = {k: [] for k in ("torch_1024", "onnx_1024", "torch_1",
                                                       "onnx_1")}
    for _ in range(rounds):  # interleaved: a load change hits both backends alike
        results["torch_1024"].append(rate(torch_big, 1024, seconds))
        results["onnx_1024"].append(rate(onnx_big, 1024, seconds))
        results["torch_1"].append(rate(torch_single, len(singles), seconds))
        results["onnx_1"].append(rate(onnx_single, len(singles), seconds))
    out = {k: statistics.median(v) for k, v in results.items()}
    out["difference"] = difference
    out["parameters"] = model.n_parameters()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="offline_run3")
    parser.add_argument("--models", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of each backend (torch.set_num_threads, onnxruntime "
                        "intra-op threads); default: 2")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; default: 3")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="minimum time of one measurement; default: 1")
    args = parser.parse_args()

    import onnxruntime

    keep_freed_memory()  # as InferenceTask does, for either backend
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    plain, four_vectors = InputSpec.from_config(config), None
    print(f"config {args.config}, {args.threads} thread(s), {args.rounds} rounds, torch "
          f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, opset {OPSET_DEFAULT}")
    print(f"{'model':20s} {'params':>9s} | {'batch 1024: torch':>17s} {'onnx':>8s} {'ratio':>6s}"
          f" | {'batch 1: torch':>14s} {'onnx':>8s} {'ratio':>6s} | max |dp|")
    result = {}
    for name in args.models or available_models():
        spec = plain
        if get_model(name).needs_four_vectors:
            four_vectors = four_vectors or InputSpec.from_config(with_four_vectors(config))
            spec = four_vectors
        r = benchmark(name, spec, args.threads, args.rounds, args.seconds)
        print(f"{name:20s} {r['parameters']:9,d} | {r['torch_1024']:17,.0f} "
              f"{r['onnx_1024']:8,.0f} {r['onnx_1024'] / r['torch_1024']:6.2f} | "
              f"{r['torch_1']:14,.0f} {r['onnx_1']:8,.0f} {r['onnx_1'] / r['torch_1']:6.2f} | "
              f"{r['difference']:.1e}", flush=True)
        result[name] = {"onnx/torch batch 1024": round(r["onnx_1024"] / r["torch_1024"], 3),
                        "onnx/torch batch 1": round(r["onnx_1"] / r["torch_1"], 3),
                        "torch_1024_jets_per_s": round(r["torch_1024"])}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
