"""A/B of one design decision in the seed CNN's training step, both sides in one process.

    python benchmarks/ab_step.py [--batch-size 128] [--rounds 30] [--steps 10]

Side A is minidl as it is: a conv followed by max pooling computes only the outputs the pooling
reads (``Conv2D.pads_read_by``).  Side B patches that method to return the layer's full padding, so
the conv computes every output, as it did before that change.  The two sides alternate every
``--steps`` steps on one model and one batch, so both see the same caches and the same load from the
rest of the machine; comparing separate runs on a shared 2-core VM cannot resolve 10% differences.
"""

import argparse
import time

import numpy as np

from minidl.layers.conv import Conv2D
from minidl.presets import seed_cnn


def summary(seconds):
    ms = np.asarray(seconds) * 1e3
    return f"min {ms.min():.2f}, 25th percentile {np.percentile(ms, 25):.2f}, median {np.median(ms):.2f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side per round")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)
    model = seed_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    sides = {"A: only the pooled outputs": Conv2D.pads_read_by,
             "B: every output": lambda layer, pool: layer.pads}
    seconds = {name: [] for name in sides}
    try:
        for _ in range(args.rounds):
            for name, pads_read_by in sides.items():
                Conv2D.pads_read_by = pads_read_by
                model.train_on_batch(x, y)  # untimed: the first step after a switch reallocates
                for _ in range(args.steps):
                    start = time.perf_counter()
                    model.train_on_batch(x, y)
                    seconds[name].append(time.perf_counter() - start)
    finally:
        Conv2D.pads_read_by = sides["A: only the pooled outputs"]
    print(f"batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps per side:")
    for name, times in seconds.items():
        print(f"  {name}: {summary(times)}")


if __name__ == "__main__":
    main()
