import ctypes
import subprocess
import sys

import pytest

# In a fresh process: allocate and free a 64 MiB tensor; report whether the block came from mmap and whether
# the freed memory stayed in the heap for the next step.
SCRIPT = """
import ctypes, sys, torch
from catdog.allocator import reuse_freed_memory
class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
x = torch.empty(2**26, dtype=torch.uint8)
mapped = libc.mallinfo2().hblkhd >= 2**26
del x
kept = libc.mallinfo2().fordblks >= 2**26
print(applied, mapped, kept)
"""


def _has_glibc_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_glibc_mallinfo2(), reason="glibc >= 2.33 only")
@pytest.mark.parametrize(("mode", "expected"), [("off", "False True False"), ("on", "True False True")])
def test_big_blocks_come_from_the_heap_and_stay_there(mode, expected):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == expected
