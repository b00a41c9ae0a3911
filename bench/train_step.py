"""Training-step throughput of the tagger models on CPU (forward, backward, Adam step).

    python bench/train_step.py                                  # all models, batch 1024
    python bench/train_step.py --models DeepJet ParticleNet --steps 10 --threads 4

Inputs are random batches shaped by the config's input spec (offline_run3 by default),
with a random number of real candidates per jet and group (zero included) and the rest
zero padding. Models that need candidate 4-vectors get (pt, eta, phi, energy) branches
appended to the cpf, npf and vtx groups.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.config import Config, load_config  # noqa: E402
from utils.models import InputSpec, available_models, get_model  # noqa: E402

FOUR_VECTOR_PREFIX = {"cpf": "Cpfcan_", "npf": "Npfcan_", "vtx": "sv_"}


def with_four_vectors(config: Config) -> Config:
    """``config`` with (pt, eta, phi, energy) declared for cpf, npf and vtx."""
    for group, prefix in FOUR_VECTOR_PREFIX.items():
        config = config.with_four_vector(group, tuple(prefix + v for v in ("pt", "eta", "phi",
                                                                             "e")))
    return config


def random_batch(spec: InputSpec, batch_size: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Raw-scale random inputs: features spread over several orders of magnitude, physical
    (pt, eta, phi, energy) where declared, random candidate counts and zero padding."""
    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

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
        else:
            n_real = torch.randint(0, group.length + 1, (batch_size, 1), generator=generator)
            batch[group.name] = x * (torch.arange(group.length) < n_real).unsqueeze(-1)
    return batch


def benchmark(name: str, spec: InputSpec, batch_size: int, steps: int) -> tuple[int, float]:
    """Parameter count and jets/s of ``steps`` timed training steps (after one warm-up)."""
    generator = torch.Generator().manual_seed(0)
    model = get_model(name)(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = {g: x for g, x in random_batch(spec, batch_size, generator).items()
             if g in model.input_groups}
    target = torch.randint(0, spec.n_classes, (batch_size,), generator=generator)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(model(batch), target).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return model.n_parameters(), steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="offline_run3")
    parser.add_argument("--models", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    plain, four_vectors = InputSpec.from_config(config), None
    print(f"config {args.config}, batch {args.batch_size}, {args.steps} steps, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'model':22s} {'parameters':>11s} {'jets/s':>9s}")
    for name in args.models or available_models():
        spec = plain
        if get_model(name).needs_four_vectors:
            four_vectors = four_vectors or InputSpec.from_config(with_four_vectors(config))
            spec = four_vectors
        n_parameters, rate = benchmark(name, spec, args.batch_size, args.steps)
        print(f"{name:22s} {n_parameters:11,d} {rate:9.0f}", flush=True)


if __name__ == "__main__":
    main()
