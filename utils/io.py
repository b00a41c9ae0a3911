"""Atomic outputs: write into a hidden work directory, publish only when complete."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

WORK_PREFIX = ".work-"


@contextmanager
def publishing(directory: str | Path, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a fresh hidden work directory inside ``directory``.

    On success every file written there (also in subdirectories) is moved into
    ``directory`` at the same relative place (the names in ``last``, typically the
    completion markers, are moved last). On any exception, including
    KeyboardInterrupt, the work directory is removed and nothing is published.
    Work directories left by killed runs (their process is gone) are removed on the next call.
    """
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{WORK_PREFIX}*"):
        if not _alive(stale.name[len(WORK_PREFIX):].split("-")[0]):
            shutil.rmtree(stale, ignore_errors=True)
    work = directory / f"{WORK_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    try:
        yield work
        files = sorted(p for p in work.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name in last)
        for path in files:
            target = directory / path.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(directory.iterdir()):
            directory.rmdir()


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
