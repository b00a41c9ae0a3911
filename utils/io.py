"""Every file b-hive writes goes through this module.

- :func:`atomic_path` (and the writers built on it: :func:`write_bytes`, :func:`write_text`,
  :func:`write_json`, :func:`save_npy`, :func:`save_npz`, :func:`write_raw`) writes to a
  hidden temporary name beside the target and renames it when complete, so a reader never
  sees a half-written file; on any error, Ctrl-C included, the temporary is removed.
- :func:`publishing` does the same for a whole directory of outputs.
- Temporary names carry their owner (host, pid namespace and pid): :func:`remove_stale`
  deletes those of dead processes of this host and namespace (``kill -9`` leftovers); the
  next run of a task calls it.
- A full disk (or quota) becomes a :class:`~utils.errors.DiskFullError` naming the file.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import DiskFullError

WORK_PREFIX = ".work-"
TEMP_MARK = ".tmp-"
# <owner> = <host>-<pid namespace>-<pid>; a random part keeps writers of one process apart
_OWNED = re.compile(r"(?P<host>.+)-(?P<ns>\d+)-(?P<pid>\d+)-[0-9a-f]{8,12}")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _pid_namespace() -> int:
    """Inode of this process's pid namespace (containers on one host with one hostname have
    different ones, so a pid is only compared within its namespace); 0 if unknown."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def owner(pid: int | None = None) -> str:
    """``<host>-<pid namespace>-<pid>`` of this process (or of ``pid`` in this namespace);
    evaluated per call, since forked workers differ."""
    return f"{socket.gethostname()}-{_pid_namespace()}-{os.getpid() if pid is None else pid}"


def _tag() -> str:
    return f"{owner()}-{uuid.uuid4().hex[:8]}"


def temporary_path(path: str | Path) -> Path:
    """The hidden temporary name of ``path``: ``.<stem>.tmp-<host>-<pid>-<random><suffix>``
    (the suffix is kept, so numpy and matplotlib see the intended format)."""
    path = Path(path)
    return path.with_name(f".{path.stem}{TEMP_MARK}{_tag()}{path.suffix}")


def disk_full(exc: BaseException, path: str | Path) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``exc`` if it means "no space left" (else None)."""
    if not isinstance(exc, OSError) or exc.errno not in _FULL:
        return None
    where = Path(path)
    try:
        usage = shutil.disk_usage(where.parent if where.parent.exists() else where.anchor)
        free = f"; {usage.free / 1024**2:.1f} MB free of {usage.total / 1024**3:.1f} GB"
    except OSError:
        free = ""
    return DiskFullError(
        f"{where}: the disk is full ({os.strerror(exc.errno)}{free}); nothing partial was "
        "kept. Free some space (or set DATA_PATH / BHIVE_STAGING_DIR to a larger disk) and "
        "run the same command again")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` to; rename it into place on success.

    On any exception the temporary file is removed; "no space left on device" is raised as
    :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: the writer produced no file")
        os.replace(tmp, path)
    except OSError as exc:
        full = disk_full(exc, path)
        if full is not None:
            raise full from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (indented, numpy values and paths converted)."""
    return write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` atomically (through memory: numpy writes to real files with ``tofile``,
    whose short-write error carries no errno)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return write_bytes(path, buffer.getbuffer())


def save_npz(path: str | Path, compressed: bool = False, **arrays: Any) -> Path:
    with atomic_path(path) as tmp:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
    return Path(path)


def write_raw(path: str | Path, array: np.ndarray) -> Path:
    """The raw bytes of ``array`` (as ``ndarray.tofile``, whose short-write error carries no
    errno, so a full disk would not be recognised), atomically."""
    return write_bytes(path, np.ascontiguousarray(array).data)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


# -- leftovers of dead processes ------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_owner(tag: str) -> bool:
    """True if ``tag`` (``<host>-<ns>-<pid>-<random>...``) names a dead process of this host
    and pid namespace. Leftovers of other hosts or namespaces are never touched: their
    process may still run there."""
    match = _OWNED.match(tag)
    if match is None or match["host"] != socket.gethostname() or \
            int(match["ns"]) != _pid_namespace():
        return False
    return not _alive(int(match["pid"]))


def remove_stale(directory: str | Path, prefix: str | None = None) -> list[Path]:
    """Remove temporary files (``.*.tmp-<owner>-*``) and work directories
    (``.work-<owner>-*``, or ``<prefix><owner>-*`` if ``prefix`` is given) left in
    ``directory`` by dead processes of this host; return what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        name = entry.name
        if prefix is not None:
            tag = name[len(prefix):] if name.startswith(prefix) else None
        elif name.startswith(WORK_PREFIX):
            tag = name[len(WORK_PREFIX):]
        elif name.startswith(".") and TEMP_MARK in name:
            tag = name.split(TEMP_MARK, 1)[1]
        else:
            tag = None
        if tag is None or not _dead_owner(tag):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def owned_directory(parent: str | Path, prefix: str) -> Path:
    """Create ``<parent>/<prefix><host>-<pid>-<random>`` (removable by :func:`remove_stale`
    with the same prefix once this process is dead)."""
    path = Path(parent) / f"{prefix}{_tag()}"
    path.mkdir(parents=True)
    return path


@contextmanager
def publishing(directory: str | Path, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a fresh hidden work directory inside ``directory``.

    On success every file written there (also in subdirectories) is moved into
    ``directory`` at the same relative place (the names in ``last``, typically the
    completion markers, are moved last, in that order). On any exception, including
    KeyboardInterrupt, the work directory is removed and nothing is published. Leftovers of
    dead processes in ``directory`` are removed first.
    """
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale(directory)
    work = directory / f"{WORK_PREFIX}{_tag()}"
    work.mkdir()
    try:
        yield work
        files = sorted(p for p in work.rglob("*") if p.is_file())
        files.sort(key=lambda p: list(last).index(p.name) if p.name in last else -1)
        for path in files:
            target = directory / path.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except OSError as exc:
        full = disk_full(exc, exc.filename or directory)
        if full is not None:
            raise full from exc
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and directory.exists() and not any(directory.iterdir()):
            directory.rmdir()
