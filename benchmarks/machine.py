"""What the benchmark scripts print about the machine they ran on: the CPU's name and the vector
extensions its compiled code can use (Numba's kernels and TensorFlow's both compile for the host, so
two machines of the same name but different extensions give different figures), and the peak memory
of the process measuring; and the one timer of single calls the kernel benchmarks share."""

import os
import platform
import resource
import time

VECTOR_EXTENSIONS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")


def cpuinfo_field(name):
    """The value of field ``name`` for the first CPU in ``/proc/cpuinfo``; ``None`` where there is none."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name():
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def vector_extensions():
    """``"AVX, AVX2, FMA, no AVX-512"``-style: which of :data:`VECTOR_EXTENSIONS` the CPU has, and that
    it lacks AVX-512 where it does; ``"flags unknown"`` off Linux."""
    flags = set((cpuinfo_field("flags") or "").split())
    if not flags:
        return "flags unknown"
    present = [name.upper() for name in VECTOR_EXTENSIONS if name in flags]
    if "avx512f" not in flags:
        present.append("no AVX-512")
    return ", ".join(present)


def describe():
    """One line: cores, CPU name, vector extensions, Python version."""
    return f"{os.cpu_count()} cores, {cpu_name()} ({vector_extensions()}), Python {platform.python_version()}"


def peak_rss_mib():
    """This process's peak resident memory: ``VmHWM`` of ``/proc/self/status``, which starts afresh at
    ``exec`` (``getrusage``'s ``ru_maxrss`` keeps the launching process's peak, a floor under every
    worker's figure), else ``ru_maxrss`` where there is no ``/proc``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fastest_ms(call, repeats):
    """The fastest of ``repeats`` calls of ``call``, in milliseconds, after one untimed call (compiles,
    allocates)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best * 1e3
