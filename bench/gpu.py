"""GPU throughput in one command (< 5 minutes on one GPU): training and inference jets/s of
DeepJet and ParticleTransformer with float32, AMP bfloat16 / float16 and torch.compile, the
loader feeding the GPU, and onnxruntime's CUDA provider where it is installed.

    python bench/gpu.py                          # needs a CUDA device
    python bench/gpu.py --device cpu --quick     # dry run of every code path on the CPU

Inputs are bench/train_step.py's random batches with demo multiplicities (demo_part
config). Each variant is warmed up (compilation included), then timed over ``--steps``
steps with CUDA synchronisation; medians of ``--rounds`` rounds. ``loader`` trains DeepJet
on a synthetic exported dataset through ChunkDataset + ThreadLoader (pinned memory,
non-blocking copies) and compares with the step rate on one resident batch. A variant
that fails prints its error and the run continues. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import synthetic_dataset  # noqa: E402
from train_step import demo_multiplicities, random_batch  # noqa: E402

from utils.allocator import keep_freed_memory  # noqa: E402
from utils.config import label_to_class, load_config  # noqa: E402
from utils.models import InputSpec, get_model  # noqa: E402

MODELS = ("DeepJet", "ParticleTransformer")
VARIANTS = ("float32", "bf16", "fp16", "compile")


def timed(call: Callable[[], None], device: torch.device, steps: int, rounds: int) -> float:
    """Median seconds per call over ``rounds`` rounds of ``steps`` calls (synchronised)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            call()
        sync()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def variant_step(name: str, spec: InputSpec, batch: dict[str, torch.Tensor],
                 target: torch.Tensor, device: torch.device, variant: str, mode: str
                 ) -> Callable[[], None]:
    """A training step or an inference pass of model ``name`` in ``variant``."""
    torch.manual_seed(0)
    model = get_model(name)(spec).to(device)
    inputs = {g: batch[g].to(device) for g in model.input_groups}
    target = target.to(device)
    forward = torch.compile(model, dynamic=True) if variant == "compile" else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(variant)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast():
                forward(inputs)
        return infer
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=variant == "fp16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model.loss(forward(inputs), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def loader_rate(spec_config: str, device: torch.device, batch_size: int, tmp: Path,
                jets: int) -> tuple[float, float]:
    """DeepJet training jets/s fed by the loader from a synthetic dataset, and on one
    resident batch of the same data."""
    from utils.torch.data import TRAIN, ChunkDataset, dataset_shards, make_loader

    config = load_config(spec_config)
    directory, _ = synthetic_dataset(config, tmp, jets, max(jets // 8, 1000))
    spec = InputSpec.from_config(config)
    model = get_model("DeepJet")(spec).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = ChunkDataset(dataset_shards(directory), model.input_groups,
                        label_to_class(config.classes), batch_size, TRAIN, sampling=False)
    pin = device.type == "cuda"

    def train(batch: dict) -> None:
        inputs = {g: (x.pin_memory() if pin else x).to(device, non_blocking=True)
                  for g, x in batch["inputs"].items()}
        target = batch["target"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        model.loss(model(inputs), target).backward()
        optimizer.step()

    first = next(iter(make_loader(data, 2)))
    for _ in range(3):
        train(first)
    seconds = timed(lambda: train(first), device, 10, 3)
    start, n = time.perf_counter(), 0
    for batch in make_loader(data, 2):
        train(batch)
        n += len(batch["target"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start), batch_size / seconds


def onnx_cuda_rate(spec: InputSpec, batch: dict[str, torch.Tensor], rounds: int
                   ) -> dict[str, float]:
    """onnxruntime CUDA-provider inference jets/s per model (empty if not available)."""
    import onnxruntime

    from utils.deploy import OPSET_DEFAULT
    from utils.deploy.onnx import export_bytes

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        print("onnxruntime: no CUDAExecutionProvider (install onnxruntime-gpu)")
        return {}
    out = {}
    for name in MODELS:
        model = get_model(name)(spec).eval()
        session = onnxruntime.InferenceSession(export_bytes(model, OPSET_DEFAULT),
                                               providers=["CUDAExecutionProvider"])
        feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
        session.run(None, feed)
        seconds = timed(lambda s=session, f=feed: s.run(None, f), torch.device("cpu"), 10,
                        rounds)
        out[name] = len(next(iter(feed.values()))) / seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU dry run)")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.rounds = 64, 1, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device here (use --device cpu --quick for a dry run)")
    keep_freed_memory()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, batch {args.batch_size}")
    config = load_config("demo_part")
    spec = InputSpec.from_config(config)
    counts = demo_multiplicities(spec, 50 if args.quick else 200)
    generator = torch.Generator().manual_seed(0)
    batch = random_batch(spec, args.batch_size, generator, counts)
    target = torch.randint(0, spec.n_classes, (args.batch_size,), generator=generator)
    result: dict[str, object] = {"device": name, "batch_size": args.batch_size}
    for mode in ("train", "inference"):
        for model_name in MODELS:
            for variant in VARIANTS:
                key = f"{model_name} {mode} {variant}"
                try:
                    step = variant_step(model_name, spec, batch, target, device, variant, mode)
                    for _ in range(1 if args.quick else 5):
                        step()
                    rate = args.batch_size / timed(step, device, args.steps, args.rounds)
                except Exception as exc:  # noqa: BLE001 (report and go on)
                    print(f"{key:45s} failed: {type(exc).__name__}: {exc}".splitlines()[0])
                    result[key] = f"failed: {type(exc).__name__}"
                    continue
                result[key] = round(rate, 1)
                print(f"{key:45s} {rate:12,.0f} jets/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="bhive-gpu-") as tmp:
        fed, resident = loader_rate("demo", device, args.batch_size, Path(tmp),
                                    4000 if args.quick else 200_000)
    result["DeepJet train fed by the loader"] = round(fed, 1)
    result["DeepJet train on a resident batch"] = round(resident, 1)
    print(f"{'DeepJet train, loader-fed / resident batch':45s} {fed:12,.0f} / {resident:,.0f} "
          f"jets/s ({fed / resident:.2f})")
    try:
        for model_name, rate in onnx_cuda_rate(spec, batch, args.rounds).items():
            result[f"{model_name} inference onnxruntime-cuda"] = round(rate, 1)
            print(f"{model_name + ' inference onnxruntime-cuda':45s} {rate:12,.0f} jets/s")
    except Exception as exc:  # noqa: BLE001
        print(f"onnxruntime CUDA failed: {type(exc).__name__}: {exc}".splitlines()[0])
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
