"""The process's memory: free heap pages handed back to the system during a long run."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

PROBE = """
import gc, os
from asr.engine.memory import limit_malloc_arenas, release_free_memory

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if {setup}:
    limit_malloc_arenas()
blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 125 MiB on the heap (under mmap's size)
keep = blocks[-1]  # the heap's top stays in use: free() alone cannot give the pages back
del blocks
gc.collect()
before = rss()
release_free_memory(every=0)
print(before, rss())
"""


@pytest.mark.parametrize("setup", [True, False])
def test_free_heap_pages_go_back_only_where_the_process_is_ours(setup):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    before, after = int(out[0]), int(out[1])
    if setup:  # the CLI's process: the 125 MiB freed leave its RSS
        assert after < before - 64 * 2**20, (before, after)
    else:  # a library user's process is left alone
        assert after > before - 16 * 2**20, (before, after)
