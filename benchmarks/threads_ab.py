"""Numba and BLAS threads, 1 against 2, on the suite's networks: all settings alternate in one process.

    python benchmarks/threads_ab.py [--networks seed_cnn mlp ...] [--batch-sizes 32 128]
                                    [--rounds 8] [--steps 3]

For each network of ``benchmarks/suite.py`` and batch size, one model trains on one random batch while
the settings take turns every ``--steps`` training steps for ``--rounds`` rounds, so every setting sees
the same caches and the same load from the rest of the machine:

* Numba threads: ``minidl.kernels.cpu.set_num_threads`` (the parallel kernels: im2col, pooling, ...);
* BLAS threads: OpenBLAS's own ``set_num_threads``, found in the library NumPy loaded (the GEMMs).

minidl's policy (``minidl.kernels.cpu.apply_thread_policy``, [P2] in ``benchmarks/RESULTS.md``) is
Numba 1, BLAS 2.  Each setting's fastest and median step are printed, in milliseconds.
"""

import argparse
import ctypes
import itertools
import time

import numpy as np

import minidl
import suite  # benchmarks/suite.py, beside this script
from minidl.kernels import cpu

#: OpenBLAS's thread setter under the names its builds export (NumPy's wheels prefix it).
OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")


def openblas_thread_setter():
    """``set(n)`` for the OpenBLAS that NumPy loaded; raises ``RuntimeError`` where NumPy's BLAS is not one."""
    np.ones((2, 2)) @ np.ones((2, 2))
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    for path in sorted(paths):
        library = ctypes.CDLL(path)
        for name in OPENBLAS_SETTERS:
            if hasattr(library, name):
                setter = getattr(library, name)
                setter.argtypes = [ctypes.c_int]
                return setter
    raise RuntimeError(f"no OpenBLAS with a thread setter among the loaded libraries {sorted(paths)}")


def compiled(network):
    builder, optimizer_spec, input_shape = suite.NETWORKS[network][:3]
    model = builder(minidl)
    spec = dict(optimizer_spec)
    model.compile(optimizer=getattr(minidl.optimizers, spec.pop("name"))(**spec),
                  loss="sparse_categorical_crossentropy")
    return model, input_shape


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", choices=list(suite.NETWORKS),
                        default=["seed_cnn", "cifar_cnn", "strided_tanh", "mlp"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting per round")
    args = parser.parse_args()
    set_blas_threads = openblas_thread_setter()
    settings = list(itertools.product((1, 2), (1, 2)))  # (numba threads, BLAS threads)
    rng = np.random.default_rng(0)
    for network, batch_size in itertools.product(args.networks, args.batch_sizes):
        if suite.missing_feature(network):
            print(f"{network}: skipped ({suite.missing_feature(network)})")
            continue
        model, input_shape = suite.compiled(minidl, network), suite.NETWORKS[network][2]
        x = rng.random((batch_size, *input_shape), dtype=np.float32)
        y = rng.integers(0, suite.CLASSES, batch_size)
        model.train_on_batch(x, y)  # applies the process settings, compiles, plans
        seconds = {setting: [] for setting in settings}
        for _ in range(args.rounds):
            for numba_threads, blas_threads in settings:
                cpu.set_num_threads(numba_threads)
                set_blas_threads(blas_threads)
                model.train_on_batch(x, y)  # untimed: the pools wake up
                for _ in range(args.steps):
                    start = time.perf_counter()
                    model.train_on_batch(x, y)
                    seconds[numba_threads, blas_threads].append(time.perf_counter() - start)
        cells = [f"numba {n} BLAS {b}: min {min(t) * 1e3:.1f} median {np.median(t) * 1e3:.1f}"
                 for (n, b), t in seconds.items()]
        print(f"{network} batch {batch_size}: " + "; ".join(cells), flush=True)
    cpu.set_num_threads(1)
    set_blas_threads(2)


if __name__ == "__main__":
    main()
