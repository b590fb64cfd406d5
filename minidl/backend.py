"""Which kernel module the layers compute with: ``"numpy"``, ``"numba"`` or ``"cuda"``.

Layers never branch on the backend; they call ``ops.<kernel>(...)``, and ``ops`` forwards to the
active module of the ``minidl.kernels`` package.  The choice, in order: :func:`set_backend`, the environment
variable ``MINIDL_BACKEND``, else ``"numba"`` when Numba is installed and ``"numpy"`` otherwise.  The
module is imported on first use, so ``import minidl`` stays fast.

Importing minidl or choosing a backend changes no process-wide setting; :func:`apply_process_settings`
does, where a model first runs.
"""

import importlib
import importlib.util
import os
import threading
import time

import numpy as np

from minidl.kernels.memory import retain_freed_memory

KERNEL_MODULES = {"numpy": "minidl.kernels.numpy_ref", "numba": "minidl.kernels.cpu", "cuda": "minidl.kernels.cuda"}

_active = {"name": None, "module": None}


def _default_backend():
    requested = os.environ.get("MINIDL_BACKEND")
    if requested:
        return requested
    return "numba" if importlib.util.find_spec("numba") is not None else "numpy"


def set_backend(name):
    """Make ``name`` (``"numpy"``, ``"numba"`` or ``"cuda"``) the kernel module for every layer.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when the backend cannot run here
    (Numba not installed, no CUDA GPU).  Models keep their weights as host arrays between calls, so
    switching between fits is safe.
    """
    if name not in KERNEL_MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(KERNEL_MODULES)}")
    try:
        module = importlib.import_module(KERNEL_MODULES[name])
    except ImportError as error:
        raise RuntimeError(f"backend {name!r} is not available: {error}") from error
    check = getattr(module, "check_available", None)
    if check is not None:
        check()
    _active["name"], _active["module"] = name, module


def get_backend():
    """Name of the active backend (choosing the default on first call)."""
    if _active["module"] is None:
        set_backend(_default_backend())
    return _active["name"]


class _ActiveKernels:
    """Attribute access forwards to the active kernel module: ``ops.im2col(...)``."""

    def __getattr__(self, name):
        get_backend()
        return getattr(_active["module"], name)


ops = _ActiveKernels()


def on_active_backend(arrays):
    """``{key: array}`` with every array moved onto the backend active now (after ``set_backend``)."""
    return {key: ops.to_device(ops.to_host(value)) for key, value in arrays.items()}


_settings = threading.local()


def apply_process_settings():
    """The process-wide settings that make training fast, applied once per thread by the first
    ``fit``, ``evaluate``, ``predict`` or ``train_on_batch``, by the first timing of conv methods
    (:mod:`minidl.engine.conv_choice`, which must time them as they will run), or by calling this;
    never on import:

    * glibc keeps freed blocks in the heap for reuse, however large
      (:func:`minidl.kernels.memory.retain_freed_memory`): every step allocates the same large arrays,
      and without it each one page-faults afresh (``benchmarks/RESULTS.md`` [P1]).
    * on the ``numba`` backend, its thread policy (``minidl.kernels.cpu.apply_thread_policy``): one
      pool of threads for the whole step, NumPy's BLAS set to one thread and each GEMM split across
      Numba's threads (``MINIDL_NUM_THREADS`` of them, default every core) ([P3]); where no BLAS
      library of ``minidl.kernels.blas`` is found, one Numba thread beside BLAS's own threads and
      ``OMP_WAIT_POLICY=PASSIVE`` unless set ([P2]).

    ``MINIDL_PROCESS_SETTINGS=0`` leaves the process as it is.
    """
    if os.environ.get("MINIDL_PROCESS_SETTINGS", "1") == "0" or getattr(_settings, "applied", False):
        return
    retain_freed_memory()
    if get_backend() == "numba":
        _active["module"].apply_thread_policy()
    _settings.applied = True


#: the dtypes whose ``numba`` kernels this process has checked (and compiled if cold): the check reads
#: the cache's files, too slow for every training step
_kernels_ready_for = set()

#: what a first run prints before it compiles the kernels (``{cache}``: the folder they are kept in)
COLD_COMPILE_NOTICE = "minidl: compiling kernels once, about 30 s, cached in {cache}"


def numba_cache_state():
    """``(cached, cache folder)`` for the ``numba`` backend's kernels: whether Numba's on-disk cache
    holds most of them (each kernel keeps an index file there once compiled; choosing the backend
    already compiles one, and a model may never call some) and where that cache is."""
    import numba

    dispatchers = [value for value in vars(_active["module"]).values()
                   if isinstance(value, numba.core.registry.CPUDispatcher)]
    index_files = [dispatcher._cache._cache_file._index_path for dispatcher in dispatchers]
    cached_count = sum(os.path.exists(path) for path in index_files)
    return 2 * cached_count >= len(index_files), os.path.dirname(index_files[0])


def compile_kernels_if_cold(dtype, print_fn=print):
    """On a first run (the ``numba`` backend with nothing in its cache), say so in one line and
    compile every kernel for ``dtype`` before training starts, so that no progress bar times the
    compilation; returns the seconds it took, or ``None`` when there was nothing to do."""
    if get_backend() != "numba" or np.dtype(dtype) in _kernels_ready_for:
        return None
    _kernels_ready_for.add(np.dtype(dtype))
    cached, cache_folder = numba_cache_state()
    if cached:
        return None
    print_fn(COLD_COMPILE_NOTICE.format(cache=cache_folder))
    start = time.perf_counter()
    _active["module"].warmup(dtype)
    return time.perf_counter() - start
