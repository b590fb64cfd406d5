"""Process-wide memory setting shared by every backend."""

import ctypes
import sys

# glibc mallopt parameters: heap memory glibc may keep unreturned (1 GiB), and how many blocks it may
# map outside the heap (none, so every block, however large, is carved from the heap).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
HEAP_TRIM_THRESHOLD, MAPPED_BLOCKS_MAX = 2**30, 0


def retain_freed_memory():
    """Make glibc keep freed blocks in the heap for reuse instead of returning them to the OS.

    Every training step allocates the same large arrays (cols, Winograd tiles, activations,
    gradients).  By default glibc maps each block over its mmap threshold (at most 32 MiB) afresh and
    unmaps it when freed, so every step pays a page fault, and the kernel zeroes a page, for every
    page of them it touches.  With no mapped blocks and a high trim threshold, a freed block is reused
    by the next allocation of its size.  Threads other than the main one still map blocks larger than
    their arena's heap (64 MiB).  Returns ``True`` when the setting took effect (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, MAPPED_BLOCKS_MAX) and mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))
