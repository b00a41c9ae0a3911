"""Training and inference throughput of the tagger models against their peers, on CPU.

    python bench/train_step.py                        # every model, demo multiplicities
    python bench/train_step.py --models DeepJet ParticleTransformer --rounds 7
    python bench/train_step.py --multiplicities uniform --threads 4

Inputs are random batches shaped by the config's input spec (demo_part: the demo inputs
with candidate 4-vectors) with the rest zero padding. The number of real candidates per jet
and group comes from jets of a small built-in sample generated on the spot (``demo``, the
default: the multiplicities our loader delivers) or is uniform in [0, slots] (``uniform``).

Peers, configured to the same dimensions and fed the same jets: a plain PyTorch DeepJet
(bench/peers.py) for DeepJet, and, when weaver-core is installed (``pip install .[bench]``),
weaver's ParticleTransformer and ParticleNet. Each model is warmed up, then all models
alternate round by round (one untimed step, then ``--steps`` timed steps each: a model that
follows a large one would otherwise start on cold caches); the median seconds per step
give jets/s.
The last line is ``RESULT {json}`` with every rate and our/peer ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import PlainDeepJet, weaver_available, weaver_part, weaver_particle_net  # noqa: E402

from utils.allocator import keep_freed_memory  # noqa: E402
from utils.config import Config, load_config  # noqa: E402
from utils.models import InputSpec, available_models, get_model  # noqa: E402

FOUR_VECTOR_PREFIX = {"cpf": "Cpfcan_", "npf": "Npfcan_", "vtx": "sv_"}
COUNTERS = {"cpf": "nCpfcan", "npf": "nNpfcan", "vtx": "nsv"}
# goals of issue 15: our rate / the peer's
GOALS = {("DeepJet", "train"): 1.2, ("DeepJet", "inference"): 1.5,
         ("ParticleTransformer", "train"): 1.5, ("ParticleNet", "train"): 3.0}


def with_four_vectors(config: Config) -> Config:
    """``config`` with (pt, eta, phi, energy) declared for cpf, npf and vtx where it has
    none (the models that need 4-vectors run on every config)."""
    spec = InputSpec.from_config(config)
    for group, prefix in FOUR_VECTOR_PREFIX.items():
        if spec.group(group).four_vector is None:
            config = config.with_four_vector(group, tuple(prefix + v for v in
                                                          ("pt", "eta", "phi", "e")))
    return config


def demo_multiplicities(spec: InputSpec, events: int = 300) -> np.ndarray:
    """Candidate counts ``(jets, groups)`` (cpf, npf, vtx, capped at the slots) of the
    selected jets (30 < pT < 1000 GeV, |eta| < 2.5) of a small generated TT + QCD sample."""
    import uproot

    from utils.generation import generate_file

    counts = []
    with tempfile.TemporaryDirectory(prefix="bhive-bench-") as tmp:
        for process, n in (("TT", events), ("QCD", 2 * events)):
            path = Path(tmp) / f"{process}.root"
            generate_file(path, process=process, n_events=n, seed=7)
            tree = uproot.open(path)["deepntuplizer/tree"]
            arrays = tree.arrays(["jet_pt", "jet_eta", *COUNTERS.values()], library="np")
            keep = (arrays["jet_pt"] > 30) & (arrays["jet_pt"] < 1000) & \
                (np.abs(arrays["jet_eta"]) < 2.5)
            counts.append(np.stack([np.minimum(arrays[COUNTERS[g]][keep],
                                               spec.group(g).length)
                                    for g in COUNTERS], 1))
    return np.concatenate(counts).astype(np.int64)


def random_batch(spec: InputSpec, batch_size: int, generator: torch.Generator,
                 counts: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Raw-scale random inputs: features spread over several orders of magnitude, physical
    (pt, eta, phi, energy) where declared, zero padding after each jet's real candidates
    (counts drawn from the rows of ``counts``, else uniform in [0, slots])."""
    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    rows = None
    if counts is not None:
        rows = torch.from_numpy(counts[torch.randint(0, len(counts), (batch_size,),
                                                     generator=generator).numpy()])
    jet_eta, jet_phi = 5 * uniform(batch_size, 1) - 2.5, 2 * math.pi * uniform(batch_size, 1)
    batch = {}
    for group in spec.groups:
        shape = (batch_size, group.length or 1, group.n_features)
        scales = 10 ** (6 * uniform(group.n_features) - 3)
        x = torch.randn(*shape, generator=generator) * scales
        if group.four_vector is not None:
            pt, eta, phi, energy = group.four_vector
            x[..., pt] = 1 + 20 * uniform(*shape[:2])
            x[..., eta] = jet_eta + 0.2 * torch.randn(*shape[:2], generator=generator)
            x[..., phi] = jet_phi + 0.2 * torch.randn(*shape[:2], generator=generator)
            x[..., energy] = x[..., pt] * torch.cosh(x[..., eta]) * (1 + 0.1 * uniform(*shape[:2]))
        if group.length is None:
            batch[group.name] = x[:, 0]
            continue
        if rows is not None and group.name in COUNTERS:
            n_real = rows[:, list(COUNTERS).index(group.name)].unsqueeze(1)
        else:
            n_real = torch.randint(0, group.length + 1, (batch_size, 1), generator=generator)
        batch[group.name] = x * (torch.arange(group.length) < n_real).unsqueeze(-1)
    return batch


def runner(model: torch.nn.Module, inputs: object, target: torch.Tensor,
           mode: str, optimizer: torch.optim.Optimizer | None = None) -> Callable[[], None]:
    """One training step (forward, backward, Adam: ``optimizer`` or a new one) or one
    inference pass on the batch."""
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(inputs)
        return infer
    model.train()
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(model(inputs), target).backward()
        optimizer.step()
    return step


def contestants(names: list[str], spec: InputSpec, batch: dict[str, torch.Tensor]
                ) -> list[tuple[str, str, torch.nn.Module, object]]:
    """(label, our model it is compared with, model, inputs) for ours and the peers."""
    out = []
    for name in names:
        model = get_model(name)(spec)
        out.append((name, name, model, {g: batch[g] for g in model.input_groups}))
        if name == "DeepJet":
            out.append(("plain PyTorch DeepJet", name, PlainDeepJet(spec), batch))
        elif name in ("ParticleTransformer", "ParticleNet") and weaver_available():
            peer = (weaver_part if name == "ParticleTransformer" else weaver_particle_net)(spec)
            out.append((f"weaver {name}", name, peer, peer.convert(batch)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo_part")
    parser.add_argument("--models", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--multiplicities", choices=("demo", "uniform"), default="demo")
    parser.add_argument("--modes", nargs="+", choices=("train", "inference"),
                        default=["train", "inference"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    keep_freed_memory()  # as TrainingTask and InferenceTask do
    torch.set_num_threads(args.threads)
    config = with_four_vectors(load_config(args.config))
    spec = InputSpec.from_config(config)
    counts = demo_multiplicities(spec) if args.multiplicities == "demo" else None
    generator = torch.Generator().manual_seed(0)
    batch = random_batch(spec, args.batch_size, generator, counts)
    target = torch.randint(0, spec.n_classes, (args.batch_size,), generator=generator)
    names = args.models or available_models()
    entries = contestants(names, spec, batch)
    real = {g: float((batch[g] != 0).any(-1).float().sum(1).mean()) for g in COUNTERS
            if g in batch}
    print(f"config {args.config}, batch {args.batch_size}, {args.multiplicities} "
          f"multiplicities (mean real {real}), {args.rounds} rounds x {args.steps} steps, "
          f"{args.threads} threads, torch {torch.__version__}"
          + ("" if weaver_available() else "; weaver-core not installed (no weaver peers)"))
    result: dict[str, object] = {"multiplicities": args.multiplicities,
                                 "batch_size": args.batch_size, "threads": args.threads}
    for mode in args.modes:
        steps = [(label, ours, model, runner(model, inputs, target, mode))
                 for label, ours, model, inputs in entries]
        for *_, step in steps:
            for _ in range(args.warmup):
                step()
        seconds: dict[str, list[float]] = {label: [] for label, *_ in steps}
        for _ in range(args.rounds):
            for label, _, _, step in steps:
                step()  # untimed: the previous model's run left cold caches and heap
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                seconds[label].append((time.perf_counter() - start) / args.steps)
        rates = {label: args.batch_size / statistics.median(s) for label, s in seconds.items()}
        print(f"\n{mode}: {'model':30s} {'parameters':>11s} {'jets/s':>9s}  vs peer")
        for label, ours, model, _ in steps:
            line = f"{'':{len(mode) + 2}s}{label:30s} {model.n_parameters():11,d} " \
                   f"{rates[label]:9.0f}"
            result[f"{label} {mode} jets/s"] = round(rates[label], 1)
            if label != ours:
                ratio = rates[ours] / rates[label]
                goal = GOALS.get((ours, mode))
                result[f"{ours}/{label} {mode}"] = round(ratio, 3)
                line += f"  {ours} is {ratio:.2f}x" + (f" (goal >= {goal})" if goal else "")
            print(line, flush=True)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
