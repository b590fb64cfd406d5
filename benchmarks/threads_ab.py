"""Thread policies on the suite's networks: one pool against two, all settings alternating in one process.

    python benchmarks/threads_ab.py [--networks seed_cnn mlp ...] [--batch-sizes 32 128]
                                    [--rounds 8] [--steps 3]

For each network of ``benchmarks/suite.py`` and batch size, one model trains on one random batch while
the settings take turns every ``--steps`` training steps for ``--rounds`` rounds, so every setting sees
the same caches and the same load from the rest of the machine:

* one pool, 2 threads: minidl's policy ([P3] in ``benchmarks/RESULTS.md``): BLAS on one thread, each
  GEMM split across Numba's two threads, which run every other kernel too;
* one pool, 1 thread: the same on a single thread;
* two pools, Numba 1 + BLAS 2: the previous policy ([P2]): NumPy's ``@`` on BLAS's own two threads,
  the Numba kernels on one;
* two pools, Numba 2 + BLAS 2.

After each change of setting the process sleeps :data:`SETTLE_SECONDS`, so that the previous setting's
spinning threads are asleep before the next is timed.  The policy applied first leaves
``OMP_WAIT_POLICY`` unset, so the two-pool settings here run with
libgomp's default wait (spin a while, then sleep) rather than [P2]'s ``PASSIVE``.  Each setting's
fastest and median step are printed, in milliseconds.
"""

import argparse
import itertools
import time

import numpy as np

import minidl
import suite  # benchmarks/suite.py, beside this script
from minidl.kernels import blas, cpu

#: name -> (Numba threads, BLAS threads, GEMMs split across Numba's threads)
SETTINGS = {
    "one pool, 2 threads": (2, 1, True),
    "one pool, 1 thread": (1, 1, True),
    "two pools, Numba 1 + BLAS 2": (1, 2, False),
    "two pools, Numba 2 + BLAS 2": (2, 2, False),
}


#: Pause after a change of setting: BLAS's threads of the previous setting spin a while after their last
#: GEMM, on the cores the next setting's threads want (without it, a setting timed after a two-pool one
#: took up to 3x longer at the median on the smaller networks).
SETTLE_SECONDS = 0.5


def apply(setting, library):
    numba_threads, blas_threads, split_gemms = SETTINGS[setting]
    cpu.set_num_threads(numba_threads)
    library.set_num_threads(blas_threads)
    cpu.GEMM_LIBRARY = library if split_gemms else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", choices=list(suite.NETWORKS),
                        default=["seed_cnn", "cifar_cnn", "strided_tanh", "mlp"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting per round")
    args = parser.parse_args()
    library = blas.find()
    if library is None:
        raise SystemExit("threads_ab.py needs NumPy's BLAS to be an OpenBLAS that minidl.kernels.blas can call")
    rng = np.random.default_rng(0)
    for network, batch_size in itertools.product(args.networks, args.batch_sizes):
        if suite.missing_feature(network):
            print(f"{network}: skipped ({suite.missing_feature(network)})")
            continue
        model, input_shape = suite.compiled(minidl, network), suite.NETWORKS[network][2]
        x = rng.random((batch_size, *input_shape), dtype=np.float32)
        y = rng.integers(0, suite.CLASSES, batch_size)
        model.train_on_batch(x, y)  # applies the process settings, compiles, plans
        seconds = {setting: [] for setting in SETTINGS}
        for _ in range(args.rounds):
            for setting in SETTINGS:
                apply(setting, library)
                time.sleep(SETTLE_SECONDS)
                model.train_on_batch(x, y)  # untimed: the pools wake up
                for _ in range(args.steps):
                    start = time.perf_counter()
                    model.train_on_batch(x, y)
                    seconds[setting].append(time.perf_counter() - start)
        cells = [f"{setting}: min {min(t) * 1e3:.1f} median {np.median(t) * 1e3:.1f}" for setting, t in seconds.items()]
        print(f"{network} batch {batch_size}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
