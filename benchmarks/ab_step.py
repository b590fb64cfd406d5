"""A/B of one planner pass (or all of them) in one network, both sides in one process.

    python benchmarks/ab_step.py [--decision PASS|all] [--task train|predict] [--network seed_cnn]
                                 [--images 10000] [--batch-size 128] [--rounds 30] [--steps 10]

``--network`` names any network of the benchmark suite (``benchmarks/suite.py``), with its optimizer;
the default is the seed CNN.
Side A is the model as ``compile()`` plans it by default; side B switches one pass of
``minidl.engine.passes`` off (``compile(optimize={PASS: False})``), or, with ``--decision all``, every
pass (``optimize=False``: each layer's own forward and backward).  The passes and the decisions they
cite in ``benchmarks/RESULTS.md``:

* ``softmax_cross_entropy`` [D10]: the loss starts from the last softmax's logits.
* ``direct_conv_pool`` [D5]: the first conv (one channel, 3x3) and its 2x2 max pooling as one kernel.
* ``activation_after_max_pool`` [D1]: a conv's bias and activation after its max pooling.
* ``activation_with_average_pool`` [D18]: a conv's bias, activation and average pooling in one pass.
* ``crop_unread_outputs`` [D2]: a conv before pooling computes only the outputs the pooling reads.
* ``conv_algorithm`` [D7, D3]: each conv by the method timed fastest for its shape (the second conv,
  3x3 over 32 channels: im2col + GEMM or Winograd F(2x2, 3x3)).
* ``workspace_chunking`` [D4]: convs whose scratch passes the bound run in chunks of images.
* ``inference_chunking`` [D9] (for ``--task predict``): convs outside training in chunks of images.
* ``inference_maxima`` [D6] (for ``--task predict``): max pooling outside training without the argmax.

``--task train`` times ``train_on_batch`` steps; ``--task predict`` times ``predict`` on ``--images``
random images at ``--batch-size`` (one call per step).  The two sides alternate every ``--steps`` steps on
one model and one batch, so both see the same caches and the same load from the rest of the machine;
comparing separate runs on a shared 2-core VM cannot resolve 10% differences.  Each side's minimum,
25th percentile, median and mean are printed; the mean is what an epoch adds up.
"""

import argparse
import time

import numpy as np

import minidl
from minidl.engine import PASSES
from suite import NETWORKS, compiled  # benchmarks/suite.py, beside this script


def summary(seconds):
    ms = np.asarray(seconds) * 1e3
    return (f"min {ms.min():.2f}, 25th percentile {np.percentile(ms, 25):.2f}, median {np.median(ms):.2f}, "
            f"mean {ms.mean():.2f} ms")


def sides(model, decision):
    """``{side name: switch}``; each switch sets the model's planner switches to that side."""
    off = False if decision == "all" else {decision: False}
    without = "every pass off (the plain layers)" if decision == "all" else f"without {decision}"
    return {"A: as planned by default": lambda: setattr(model, "optimize", True),
            f"B: {without}": lambda: setattr(model, "optimize", off)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decision", choices=[*PASSES, "all"], default="crop_unread_outputs")
    parser.add_argument("--task", choices=["train", "predict"], default="train")
    parser.add_argument("--network", default="seed_cnn", choices=list(NETWORKS))
    parser.add_argument("--images", type=int, default=10_000, help="images per predict call")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side per round")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    model, input_shape = compiled(minidl, args.network), NETWORKS[args.network][2]
    if args.task == "train":
        x = rng.random((args.batch_size, *input_shape), dtype=np.float32)
        y = rng.integers(0, 10, args.batch_size)
        step = lambda: model.train_on_batch(x, y)  # noqa: E731
    else:
        x = rng.random((args.images, *input_shape), dtype=np.float32)
        step = lambda: model.predict(x, batch_size=args.batch_size)  # noqa: E731
    switches = sides(model, args.decision)
    seconds = {name: [] for name in switches}
    try:
        for _ in range(args.rounds):
            for name, switch in switches.items():
                switch()
                step()  # untimed: the first step after a switch reallocates
                for _ in range(args.steps):
                    start = time.perf_counter()
                    step()
                    seconds[name].append(time.perf_counter() - start)
    finally:
        next(iter(switches.values()))()
    print(f"{args.network}: {args.decision}, {args.task}, batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps per side:")
    for name, times in seconds.items():
        print(f"  {name}: {summary(times)}")


if __name__ == "__main__":
    main()
