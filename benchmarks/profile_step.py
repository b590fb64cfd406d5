"""Time and profile a network's training step through the real model (``train_on_batch``), or a
predict of one batch (``--task predict``).

    python benchmarks/profile_step.py [--network seed_cnn] [--batch-size 128] [--steps 150]
                                      [--task train|predict] [--backend numba] [--top 15] [--kernels]
                                      [--without PASS ...]

``--network`` names any network of the benchmark suite (``benchmarks/suite.py``), trained with the
suite's optimizer on random images of its input shape; the default is the seed CNN.

Prints the fastest and the median of ``--steps`` timed steps (the fastest is the least disturbed by
other load on a shared machine), then the functions that took the most time under cProfile over 100
steps: the kernel calls and GEMMs that make up a step.  cProfile's own overhead inflates them (the
GEMMs most).  ``--kernels`` instead times every call into the backend's kernel module with a wall
clock and prints the milliseconds per step of each kernel and argument shape: the figures that add up
to a step (``numpy`` and ``numba`` backends; ``cuda`` launches return before the GPU is done).
``--without direct_conv_pool`` profiles the first conv as im2col + GEMM and then its pooling, instead
of the direct kernel that pools as it convolves; any planner pass can be switched off so.
"""

import argparse
import cProfile
import collections
import importlib
import inspect
import pstats
import statistics
import time

import numpy as np

import minidl
from minidl.backend import KERNEL_MODULES
from minidl.engine import PASSES
from suite import NETWORKS, compiled  # benchmarks/suite.py, beside this script


def kernel_milliseconds(step, steps):
    """``{(kernel, argument shapes): ms per step}`` over ``steps`` calls of ``step``, every public
    function of the active kernel module wrapped in a wall-clock timer for the duration.  A kernel
    that calls another public one counts the time as its own."""
    module = importlib.import_module(KERNEL_MODULES[minidl.get_backend()])
    seconds = collections.defaultdict(float)
    depth = [0]

    def timed(name, kernel):
        def call(*args, **kwargs):
            if depth[0]:
                return kernel(*args, **kwargs)
            depth[0] += 1
            start = time.perf_counter()
            try:
                return kernel(*args, **kwargs)
            finally:
                shapes = tuple(arg.shape for arg in args if hasattr(arg, "shape"))
                seconds[name, shapes] += time.perf_counter() - start
                depth[0] -= 1
        return call

    originals = {name: value for name, value in vars(module).items()
                 if inspect.isfunction(value) and not name.startswith("_")}
    try:
        for name, kernel in originals.items():
            setattr(module, name, timed(name, kernel))
        for _ in range(steps):
            step()
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)
    return {key: total * 1e3 / steps for key, total in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="seed_cnn", choices=list(NETWORKS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--task", choices=["train", "predict"], default="train",
                        help="a training step, or model.predict of one batch")
    parser.add_argument("--backend", help="default: minidl's default")
    parser.add_argument("--top", type=int, default=15, help="functions to list from the profile")
    parser.add_argument("--kernels", action="store_true", help="time every kernel call instead of cProfile")
    parser.add_argument("--without", action="append", default=[], choices=list(PASSES), metavar="PASS",
                        help="switch this planner pass off (repeatable), e.g. direct_conv_pool to profile "
                             "the first conv as im2col + GEMM with its pooling")
    args = parser.parse_args()
    if args.backend:
        minidl.set_backend(args.backend)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, *NETWORKS[args.network][2]), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)
    model = compiled(minidl, args.network, optimize={name: False for name in args.without})
    if args.task == "train":
        step = lambda: model.train_on_batch(x, y)  # noqa: E731
    else:
        step = lambda: model.predict(x, batch_size=args.batch_size)  # noqa: E731
    for _ in range(5):
        step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    print(f"{args.network}, {args.task}, backend {minidl.get_backend()}, batch {args.batch_size}: fastest "
          f"{min(seconds) * 1e3:.2f} ms, median {statistics.median(seconds) * 1e3:.2f} ms per step over {args.steps} steps")
    if args.kernels:
        if minidl.get_backend() == "cuda":
            raise SystemExit("--kernels times host calls; cuda kernels run asynchronously")
        per_kernel = kernel_milliseconds(step, 100)
        print(f"kernel calls over 100 steps, ms per step (sum {sum(per_kernel.values()):.2f}):")
        for (name, shapes), ms in sorted(per_kernel.items(), key=lambda item: -item[1])[:args.top]:
            print(f"  {ms:7.3f}  {name}{shapes}")
        return
    profile = cProfile.Profile()
    profile.runcall(lambda: [step() for _ in range(100)])
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
