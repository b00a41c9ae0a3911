"""utils/io.py: atomic writes, leftovers of dead processes, full disks."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO, need_private_mounts
from utils.errors import DiskFullError
from utils.io import (
    atomic_path,
    owned_directory,
    owner,
    publishing,
    remove_stale,
    save_npy,
    save_npz,
    temporary_path,
    write_bytes,
    write_json,
)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_writes_leave_only_complete_files(tmp_path):
    target = tmp_path / "prediction.npy"
    save_npy(target, np.arange(5))
    np.testing.assert_array_equal(np.load(target), np.arange(5))
    # the temporary keeps the suffix (numpy and matplotlib pick the format from it)
    assert temporary_path(target).suffix == ".npy"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{half")
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "y.bin") as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prediction.npy"]


def test_disk_full_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(DiskFullError) as info:
        save_npz(tmp_path / "metrics.npz", loss=np.zeros(3))
    assert str(info.value).startswith(f"{tmp_path / 'metrics.npz'}: the disk is full")
    assert "run the same command again" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_remove_stale_only_touches_dead_owners_of_this_host(tmp_path):
    dead = owner(dead_pid())
    other_host = dead.replace(socket.gethostname(), "otherhost", 1)
    ns = dead.split("-")[-2]
    other_namespace = dead.replace(f"-{ns}-", f"-{int(ns) + 1}-")
    names = {
        f".model_1.tmp-{dead}-0123abcd.pt": True,                # killed checkpoint save
        f".work-{dead}-0123456789ab": True,                       # killed publishing
        f".model_2.tmp-{owner()}-0123abcd.pt": False,            # a live writer
        f".model_3.tmp-{other_host}-0123abcd.pt": False,         # maybe alive elsewhere
        f".model_4.tmp-{other_namespace}-0123abcd.pt": False,    # another container
        "model_0.pt": False,
    }
    for name in names:
        (tmp_path / name).mkdir() if name.startswith(".work") else (tmp_path / name).touch()
    removed = {p.name for p in remove_stale(tmp_path)}
    assert removed == {n for n, stale in names.items() if stale}
    assert {p.name for p in tmp_path.iterdir()} == {n for n, s in names.items() if not s}
    # staging directories carry a prefix instead
    mine = owned_directory(tmp_path / "shm", "bhive-staging-")
    (tmp_path / "shm" / f"bhive-staging-{dead}-0123abcd").mkdir()
    assert [p.name for p in remove_stale(tmp_path / "shm", prefix="bhive-staging-")] == \
        [f"bhive-staging-{dead}-0123abcd"]
    assert mine.is_dir()


def test_publishing_is_all_or_nothing(tmp_path):
    out = tmp_path / "task"
    with pytest.raises(KeyboardInterrupt), publishing(out) as work:
        write_json(work / "summary.json", {"a": 1})
        raise KeyboardInterrupt
    assert not out.exists()
    with publishing(out, last=("summary.json",)) as work:
        write_json(work / "summary.json", {"a": 1})
        (work / "sub").mkdir()
        write_bytes(work / "sub" / "x.bin", b"x")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == \
        ["sub", "sub/x.bin", "summary.json"]


def in_tiny_filesystem(script: str, size: str = "64k") -> subprocess.CompletedProcess:
    """Run python ``script`` with /mnt/full (the ``FULL`` variable) a tmpfs of ``size``, in a
    private mount namespace (nothing is mounted outside it)."""
    need_private_mounts()
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mkdir -p /tmp/bhive-full && mount -t tmpfs -o "
         f"size={size} tmpfs /tmp/bhive-full && exec {sys.executable} -c \"$0\"",
         "FULL = '/tmp/bhive-full'\n" + textwrap.dedent(script)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_real_full_disk():
    proc = in_tiny_filesystem("""
        import os
        from pathlib import Path
        import numpy as np
        from utils.errors import DiskFullError
        from utils.io import save_npy, write_bytes, write_raw
        write_bytes(Path(FULL) / "small.bin", b"x" * 1000)
        big = np.ones(200_000, dtype=np.float32)  # 800 kB
        for name, write in (("model_0.pt", lambda p: write_bytes(p, big.tobytes())),
                            ("staged.raw", lambda p: write_raw(p, big)),  # ndarray.tofile
                            ("prediction.npy", lambda p: save_npy(p, big))):
            try:
                write(Path(FULL) / name)
            except DiskFullError as exc:
                print("ERROR", exc)
        print("LEFT", sorted(os.listdir(FULL)))
    """)
    assert proc.returncode == 0, proc.stderr
    for name in ("model_0.pt", "staged.raw", "prediction.npy"):
        assert f"ERROR /tmp/bhive-full/{name}: the disk is full (No space left on device" \
            in proc.stdout
    assert "LEFT ['small.bin']" in proc.stdout
