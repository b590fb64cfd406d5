"""Process-wide memory setting shared by every backend."""

import ctypes
import sys

# glibc mallopt parameters, and the values that keep freed blocks up to 32 MiB in the heap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD, HEAP_TRIM_THRESHOLD = 32 * 2**20, 2**30


def retain_freed_memory():
    """Make glibc keep freed blocks of up to 32 MiB for reuse instead of returning them to the OS.

    Every training step allocates the same large arrays (cols, activations, gradients); by default
    glibc maps each one afresh and unmaps it when freed, so every step pays a page fault per 4 KiB
    touched.  Returns ``True`` when the setting took effect (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))
