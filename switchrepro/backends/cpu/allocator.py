"""The CPU allocator setting: glibc malloc keeps freed memory for XLA's per-step buffers.

A process-wide setting, so nothing applies it on import: the commands that train call `keep_freed_memory()`
first thing, before JAX starts its threads, and every run records `policy()` in its host description.
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP_FREED_MEMORY_ENV = "SWITCHREPRO_KEEP_FREED_MEMORY"
_policy = "system default"


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    Why: XLA's CPU runtime allocates each step's temporary and output buffers with malloc. By default glibc
    serves every block over 32 MiB with a fresh mmap and unmaps it on free, so each step touches new pages
    and takes one page fault per 4 KiB: on the 2-core VM, about 140k faults per forward+backward of a
    128-expert FFN at 4096 tokens, half its time (compare `SWITCHREPRO_KEEP_FREED_MEMORY=0 switchrepro bench
    moe` with the default). Here all threads share the main heap (arena max 1), large blocks come from that
    heap (mmap max 0; glibc still falls back to mmap when the heap cannot grow), and up to 2 GiB of free
    heap top is kept (trim threshold). Values do not change. The cost is memory: the heap grows over the
    first steps to the step's peak plus fragmentation (a 64 MiB-per-step probe settled at 2.4x the default
    resident size within 20 steps, then stayed flat for 300) and is kept until the process exits.

    Must run before JAX starts its threads (later threads then share the main heap). Returns True when
    applied; False on a C library without mallopt (macOS, musl) or when SWITCHREPRO_KEEP_FREED_MEMORY=0.
    """
    global _policy
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1
             for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
    if ok:
        _policy = "glibc malloc keeps freed memory (arena max 1, mmap max 0, trim threshold 2 GiB)"
    return ok


def policy() -> str:
    """What this process's malloc does with freed memory ('system default' unless `keep_freed_memory` ran)."""
    return _policy
