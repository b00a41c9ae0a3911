"""Run ``law`` with a fault injected at an exact point (for the interruption tests).

    python -m tests.faults <fault> <law arguments...>

Faults (deterministic, independent of timing):

- ``kill-writing:<name>``: SIGKILL this process once the file ``<name>`` has been written to
  its temporary name, before it is renamed into place (a ``kill -9`` during a checkpoint save
  or during the merge of an export);
- ``signal-writing:<SIGNAL>:<name>``: the same with another signal (e.g. INT: Ctrl-C while
  a plot is being saved);
- ``enospc-writing:<name>``: writing ``<name>`` fails with "No space left on device" (a
  full disk where a real one cannot be mounted);
- ``signal-at-epoch:<SIGNAL>:<k>``: send ``SIGNAL`` (INT, TERM or KILL) to this process
  when training epoch ``k`` (0-based) starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path


def _signal_writing(name: str, signum: int | None) -> None:
    """Send ``signum`` (None: raise ENOSPC) once ``name`` is written, before its rename."""
    import utils.dataset.chunk_format as chunk_format
    import utils.io as io
    import utils.plotting.style as style

    original = io.atomic_path

    @contextlib.contextmanager
    def atomic_path(path: str | Path) -> Iterator[Path]:
        with original(path) as tmp:
            yield tmp
            if Path(path).name == name and tmp.exists():
                if signum is None:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
                os.kill(os.getpid(), signum)

    io.atomic_path = atomic_path
    chunk_format.atomic_path = atomic_path
    style.atomic_path = atomic_path


def _signal_at_epoch(name: str, epoch: int) -> None:
    from utils.torch.training import Trainer

    original = Trainer.train_epoch
    signum = getattr(signal, f"SIG{name}")

    def train_epoch(self: Trainer) -> dict[str, float]:
        if self.epoch == epoch:
            os.kill(os.getpid(), signum)
        return original(self)

    Trainer.train_epoch = train_epoch


def main(argv: list[str]) -> int:
    fault, *law_args = argv
    # as in a terminal: a process started in the background without job control (as CI
    # may run the tests) inherits SIGINT ignored, which would make the INT faults no-ops
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    kind, _, spec = fault.partition(":")
    if kind == "kill-writing":
        _signal_writing(spec, signal.SIGKILL)
    elif kind == "enospc-writing":
        _signal_writing(spec, None)
    elif kind == "signal-writing":
        name, path = spec.split(":", 1)
        _signal_writing(path, getattr(signal, f"SIG{name}"))
    elif kind == "signal-at-epoch":
        name, epoch = spec.split(":")
        _signal_at_epoch(name, int(epoch))
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    from law.cli import run

    return run(law_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
