"""Distributed training (DistributedDataParallel) launched with torchrun.

``launch(spec, nproc)`` writes the training arguments to a JSON file and runs
``torchrun --standalone --nproc-per-node <nproc> -m utils.torch.ddp <spec.json>``; every
process initialises torch.distributed (nccl on GPUs, gloo on CPU) and runs
:func:`utils.torch.run.run_training` with its rank. Ranks read disjoint shares of the chunk
files each epoch, metrics are summed over ranks, and only rank 0 writes checkpoints, metrics
and plots (checkpoints hold the plain model state, loadable without DDP).

For several nodes use torchrun's own options (``--nnodes``, ``--rdzv-endpoint``) with
``python -m utils.torch.ddp <spec.json>``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from utils.errors import BHiveError, InterruptedRun
from utils.io import write_json, write_text

SHUTDOWN_SECONDS = 60
ERROR_FILE = ".ddp_error.txt"  # rank 0's message of an expected error, for the launcher
USER_ERROR = 3  # exit code of ranks that stopped with such an error


class DistributedTrainingError(BHiveError, RuntimeError):
    """The distributed training stopped with an error (its message is rank 0's)."""


def launch(spec: dict[str, Any], nproc: int, out_dir: Path) -> None:
    """Run the training described by ``spec`` (run_training keyword arguments, with
    ``config`` a config name or path and ``settings`` a dict) on ``nproc`` processes."""
    if nproc < 2:
        raise ValueError(f"--ddp needs at least 2 processes, got {nproc}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_json(out_dir / ".ddp_spec.json", spec)
    env = dict(os.environ)
    if not torch.cuda.is_available():  # share the CPU cores between the processes
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "utils.torch.ddp", str(path)]
    error = out_dir / ERROR_FILE
    error.unlink(missing_ok=True)
    process = subprocess.Popen(command, env=env)
    try:
        returncode = process.wait()
    except KeyboardInterrupt:  # stop the ranks through torchrun, which forwards the signal
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SHUTDOWN_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    finally:
        path.unlink(missing_ok=True)
    if error.exists():
        message = error.read_text()
        error.unlink()
        raise DistributedTrainingError(message)
    if returncode != 0:
        raise RuntimeError(f"distributed training failed (exit code {returncode}); "
                           f"command: {' '.join(command)}")


def main(spec_path: str) -> None:
    import torch.distributed as dist

    from utils.config import load_config
    from utils.settings import TrainSettings
    from utils.torch.run import run_training
    from utils.torch.training import DistContext

    spec = json.loads(Path(spec_path).read_text())
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    settings = spec.pop("settings")
    out_dir = Path(spec["out_dir"])
    try:
        run_training(config=load_config(spec.pop("config")),
                     settings=TrainSettings(**settings),
                     dataset_dir=Path(spec.pop("dataset_dir")),
                     out_dir=Path(spec.pop("out_dir")), device=device,
                     dist=DistContext(rank, world), **spec)
    except InterruptedRun:
        sys.exit(130)  # the launching task says after which epoch
    except BHiveError as exc:  # one message, from rank 0, shown by the launching task
        if rank == 0:
            write_text(out_dir / ERROR_FILE, f"{type(exc).__name__}: {exc}")
        sys.exit(USER_ERROR)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def training_spec(config: str, settings: Any, **kwargs: Any) -> dict[str, Any]:
    """A JSON-serialisable description of a training for :func:`launch`."""
    spec = {"config": config, "settings": dataclasses.asdict(settings)}
    spec.update({k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()})
    return spec


if __name__ == "__main__":
    main(sys.argv[1])
