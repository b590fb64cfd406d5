"""Time and profile the seed CNN's training step through the real model (``train_on_batch``).

    python benchmarks/profile_step.py [--batch-size 128] [--steps 150] [--backend numba] [--top 15]

Prints the fastest and the median of ``--steps`` timed steps (the fastest is the least disturbed by
other load on a shared machine), then the functions that took the most time under cProfile over 100
steps: the kernel calls and GEMMs that make up a step.
"""

import argparse
import cProfile
import pstats
import statistics
import time

import numpy as np

import minidl
from minidl.presets import seed_cnn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--backend", help="default: minidl's default")
    parser.add_argument("--top", type=int, default=15, help="functions to list from the profile")
    args = parser.parse_args()
    if args.backend:
        minidl.set_backend(args.backend)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)
    model = seed_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    for _ in range(5):
        model.train_on_batch(x, y)
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        seconds.append(time.perf_counter() - start)
    print(f"backend {minidl.get_backend()}, batch {args.batch_size}: fastest {min(seconds) * 1e3:.2f} ms, "
          f"median {statistics.median(seconds) * 1e3:.2f} ms per step over {args.steps} steps")
    profile = cProfile.Profile()
    profile.runcall(lambda: [model.train_on_batch(x, y) for _ in range(100)])
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
