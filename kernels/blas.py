"""The CBLAS GEMMs of the BLAS library NumPy loaded, callable from Numba kernels.

NumPy's BLAS runs each GEMM on a thread pool of its own. Between GEMMs, those threads spin (an
idle OpenBLAS thread waits for work that way) on the cores the Numba kernels want next. So the two
pools fight, and the Numba kernels have run on one thread beside them ([P2]). The CPU backend can
instead set the library to one thread and split each GEMM across Numba's threads
(``minidl.kernels.cpu``, GEMMs), each calling this library's ``?gemm`` on its part. Then one pool
runs the whole step: the GEMMs and every other kernel ([P3] in ``benchmarks/RESULTS.md``).

:func:`find` looks for the library on Linux among the shared objects the process has mapped, and
for the names below. OpenBLAS's builds are the ones it knows: NumPy's wheels ship one whose CBLAS
names carry a ``scipy_`` prefix and, for 64-bit integers, a ``64_`` suffix. Elsewhere, or for any
other BLAS, it returns ``None`` and the backend keeps NumPy's ``@`` and the library's own threads.
"""

import ctypes
import functools
import os
import sys

import numpy as np

#: CBLAS constants: row-major storage; an operand as it is or transposed
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

#: the names of one build: (float32 GEMM, float64 GEMM, set threads, get threads, integer type, core name)
FLAVOURS = (
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", "scipy_openblas_set_num_threads64_",
     "scipy_openblas_get_num_threads64_", ctypes.c_int64, "scipy_openblas_get_corename64_"),
    ("scipy_cblas_sgemm", "scipy_cblas_dgemm", "scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads",
     ctypes.c_int32, "scipy_openblas_get_corename"),
    ("cblas_sgemm64_", "cblas_dgemm64_", "openblas_set_num_threads64_", "openblas_get_num_threads64_",
     ctypes.c_int64, "openblas_get_corename64_"),
    ("cblas_sgemm", "cblas_dgemm", "openblas_set_num_threads", "openblas_get_num_threads", ctypes.c_int32,
     "openblas_get_corename"),
)

#: OpenBLAS's kernels for these cores multiply a product of at most ``SMALL_PRODUCT`` multiply-adds
#: (``M*N*K``) by its "small-matrix" kernels, which read the operands where they lie; larger products
#: are first packed into blocks (OpenBLAS's ``kernel/x86_64/sgemm_small_kernel_permit_skylakex.c``).
#: In the row-major terms of :data:`ROW_MAJOR` calls, a transposed second operand is let in only for
#: outputs of at most 1,200 values, and never with a transposed first one.  On thin products the
#: packing cost more than it saved: ``benchmarks/gemm_rows.py``.
SMALL_KERNEL_CORES, SMALL_PRODUCT = ("SkylakeX",), 100**3


class Library:
    """One BLAS library's ``gemms`` (``{dtype: ctypes function}``, float32 and float64), its
    ``set_num_threads(n)`` and ``get_num_threads()``; ``path`` is the shared object they come from,
    ``core`` the name of the processor its kernels were chosen for (``""`` where it does not say),
    and ``small_product`` the most multiply-adds of a product its small-matrix kernels take (0:
    none, :data:`SMALL_KERNEL_CORES`).

    Each GEMM has CBLAS's arguments ``(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb,
    beta, C, ldc)``. The three pointers are declared as ``size_t`` addresses, so that a Numba kernel
    can pass ``array.ctypes.data`` plus an offset.
    """

    def __init__(self, path, handle, flavour):
        sgemm, dgemm, set_threads, get_threads, integer, core_name = flavour
        self.path = path
        self.gemms = {np.dtype(np.float32): self._gemm(handle, sgemm, ctypes.c_float, integer),
                      np.dtype(np.float64): self._gemm(handle, dgemm, ctypes.c_double, integer)}
        self.set_num_threads = getattr(handle, set_threads)
        self.set_num_threads.argtypes, self.set_num_threads.restype = (ctypes.c_int,), None
        self.get_num_threads = getattr(handle, get_threads)
        self.get_num_threads.argtypes, self.get_num_threads.restype = (), ctypes.c_int
        self.core = self._core(handle, core_name)
        self.small_product = SMALL_PRODUCT if self.core in SMALL_KERNEL_CORES else 0

    @staticmethod
    def _core(handle, name):
        """The core name the library's function ``name`` returns, or ``""`` where it has none."""
        if not hasattr(handle, name):
            return ""
        function = getattr(handle, name)
        function.argtypes, function.restype = (), ctypes.c_char_p
        return function().decode()

    @staticmethod
    def _gemm(handle, name, scalar, integer):
        function = getattr(handle, name)
        address = ctypes.c_size_t
        function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, scalar,
                             address, integer, address, integer, scalar, address, integer)
        function.restype = None
        return function


def _mapped_blas_paths():
    """The paths of the shared objects mapped into this process whose file names contain ``blas``
    (NumPy's extension module links its BLAS, so importing NumPy maps it)."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and "blas" in os.path.basename(fields[5].strip()):
                paths.add(fields[5].strip())
    return sorted(paths)


@functools.cache
def find():
    """The :class:`Library` of NumPy's BLAS, or ``None`` where none of :data:`FLAVOURS` is found
    (not Linux, or another BLAS). Looked up once per process.

    Other packages may map a BLAS of their own (OpenCV's wheels bring an OpenBLAS), so the flavours
    are tried in order, NumPy's own build first, and among the libraries of one flavour those
    under NumPy's folders first."""
    if not sys.platform.startswith("linux"):
        return None
    paths = sorted(_mapped_blas_paths(), key=lambda path: "numpy" not in path)
    handles = []
    for path in paths:
        try:
            handles.append((path, ctypes.CDLL(path)))
        except OSError:
            continue
    for flavour in FLAVOURS:
        for path, handle in handles:
            if all(hasattr(handle, name) for name in flavour[:4]):
                return Library(path, handle, flavour)
    return None
