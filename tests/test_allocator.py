"""The allocator setting (utils/allocator.py): freed memory stays in the process heap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a fresh process: malloc four 600 MB blocks (below the mmap threshold: from the heap),
# free them last first, so that 2.4 GB come free at the heap top, and print the bytes the
# heap still holds (glibc's mallinfo2().arena). Any finite trim threshold glibc accepts
# (at most 2 GiB) hands them back to the kernel here; the next training step would fault
# them all in again.
CYCLE = """
import ctypes, sys
sys.path.insert(0, {root!r})
from utils.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

if not keep_freed_memory():
    sys.exit("SKIP: not glibc")
libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    sys.exit("SKIP: glibc < 2.33 has no mallinfo2")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2
blocks = [libc.malloc(600 * 2**20) for _ in range(4)]
assert all(blocks)
for block in reversed(blocks):
    libc.free(block)
print(libc.mallinfo2().arena)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's")
def test_freed_memory_stays_in_the_heap():
    result = subprocess.run([sys.executable, "-c", CYCLE.format(root=str(ROOT))],
                            capture_output=True, text=True)
    if result.stderr.startswith("SKIP: "):
        pytest.skip(result.stderr.strip()[len("SKIP: "):])
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 4 * 600 * 2**20
