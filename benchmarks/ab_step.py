"""A/B of one design decision in the seed CNN, both sides in one process.

    python benchmarks/ab_step.py [--decision crop|winograd|maxima|direct] [--task train|predict]
                                 [--batch-size 128] [--rounds 30] [--steps 10]

Side A is minidl as it is; side B undoes one decision:

* ``crop``: a conv followed by max pooling computes only the outputs the pooling reads
  (``Conv2D.pads_read_by``).  Side B patches that method to return the layer's full padding, so the
  conv computes every output.
* ``winograd``: ``Conv2D(algorithm="auto")`` computes the second conv (3x3, 32 input channels) by
  Winograd F(2x2, 3x3).  Side B gives that layer the im2col + GEMM method instead.
* ``direct``: the first conv (one input channel, 3x3) and its 2x2 max pooling run as one direct kernel
  (``Conv2D.pools_directly``, ``conv3x3_maxpool``).  Side B gives that conv ``algorithm="im2col"``, so
  it runs as im2col + GEMM and then max pooling.
* ``maxima`` (for ``--task predict``): outside training, max pooling computes the maxima alone
  (``maxpool_values``).  Side B computes them with the argmax, as training does, and drops it.

``--task train`` times ``train_on_batch`` steps; ``--task predict`` times ``predict`` on 10,000 random
images at ``--batch-size`` (one call per step).  The two sides alternate every ``--steps`` steps on
one model and one batch, so both see the same caches and the same load from the rest of the machine;
comparing separate runs on a shared 2-core VM cannot resolve 10% differences.  Each side's minimum,
25th percentile, median and mean are printed; the mean is what an epoch adds up.
"""

import argparse
import time

import numpy as np

from minidl.layers.conv import Conv2D
from minidl.layers.conv_algorithms import Im2colGemm
from minidl.presets import seed_cnn


def summary(seconds):
    ms = np.asarray(seconds) * 1e3
    return (f"min {ms.min():.2f}, 25th percentile {np.percentile(ms, 25):.2f}, median {np.median(ms):.2f}, "
            f"mean {ms.mean():.2f} ms")


def crop_sides(model):
    """``{side name: switch}``; each switch puts the model on that side."""
    pads_read_by = Conv2D.pads_read_by

    def every_output():
        Conv2D.pads_read_by = lambda layer, pool: layer.pads

    def only_pooled():
        Conv2D.pads_read_by = pads_read_by

    return {"A: only the pooled outputs": only_pooled, "B: every output": every_output}


def winograd_sides(model):
    conv = model.layers[2]
    winograd, im2col = conv.method, Im2colGemm(conv.kernel_size, conv.strides)
    if winograd.name != "winograd":
        raise SystemExit(f"{conv.name} does not use Winograd here, so there is nothing to compare")
    return {"A: Winograd F(2x2, 3x3)": lambda: setattr(conv, "method", winograd),
            "B: im2col + GEMM": lambda: setattr(conv, "method", im2col)}


def maxima_sides(model):
    from minidl.kernels import cpu

    maxima_alone = cpu.maxpool_values

    def maxima_from_forward(x, pool_size, strides, pads):
        return cpu.maxpool_forward(x, pool_size, strides, pads)[0]

    return {"A: the maxima alone": lambda: setattr(cpu, "maxpool_values", maxima_alone),
            "B: maxima and argmax": lambda: setattr(cpu, "maxpool_values", maxima_from_forward)}


def direct_sides(model):
    conv, pool = model.layers[0], model.layers[1]
    if not conv.pools_directly(pool):
        raise SystemExit(f"{conv.name} does not run with {pool.name} as one kernel here, so there is nothing to compare")
    return {"A: direct conv + pooling": lambda: setattr(conv, "algorithm", "auto"),
            "B: im2col + GEMM, then pooling": lambda: setattr(conv, "algorithm", "im2col")}


SIDES = {"crop": crop_sides, "winograd": winograd_sides, "maxima": maxima_sides, "direct": direct_sides}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decision", choices=sorted(SIDES), default="crop")
    parser.add_argument("--task", choices=["train", "predict"], default="train")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side per round")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    model = seed_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if args.task == "train":
        x = rng.random((args.batch_size, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 10, args.batch_size)
        step = lambda: model.train_on_batch(x, y)  # noqa: E731
    else:
        x = rng.random((10_000, 28, 28, 1), dtype=np.float32)
        step = lambda: model.predict(x, batch_size=args.batch_size)  # noqa: E731
    sides = SIDES[args.decision](model)
    seconds = {name: [] for name in sides}
    try:
        for _ in range(args.rounds):
            for name, switch in sides.items():
                switch()
                step()  # untimed: the first step after a switch reallocates
                for _ in range(args.steps):
                    start = time.perf_counter()
                    step()
                    seconds[name].append(time.perf_counter() - start)
    finally:
        next(iter(sides.values()))()
    print(f"{args.decision}, {args.task}, batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps per side:")
    for name, times in seconds.items():
        print(f"  {name}: {summary(times)}")


if __name__ == "__main__":
    main()
