"""A/B of a training step between two checkouts of minidl (e.g. before and after a change).

    git worktree add /tmp/minidl-before <commit>
    python benchmarks/ab_commits.py /tmp/minidl-before . [--network NAME] [--task train|predict]
                                    [--batch-size 128] [--rounds 10] [--steps 20]

Each round runs one process per checkout in turn (its own code first on ``sys.path``): it builds the
network and, untimed for 3 steps (kernels loaded from the cache, buffers warm), trains it or predicts
on one random batch, then times ``--steps`` calls of ``train_on_batch`` or of ``predict`` on that
batch.  ``seed_cnn`` and ``mlp`` (the benchmark suite's MLP 784-512-512-10 with dropout) are built
from layers every version has, trained with Adam; any other name is a network of the checkout's own
``benchmarks/suite.py``, with its optimizer.  Alternating the checkouts round by round lets both see
the same load from the rest of the machine.  Each checkout keeps its measured conv choices in a cache
file of its own (in the temp directory).  Each side's minimum, 25th percentile, median and mean step
are printed with the machine line.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import machine  # benchmarks/machine.py, beside this script

TIMED_STEPS = """
import json, sys, time
import numpy as np
import minidl
from minidl import layers
from minidl.presets import seed_cnn
batch_size, steps, network, task = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
input_shape = (28, 28, 1)
if network == "mlp":
    model = minidl.Sequential([layers.Input(input_shape), layers.Flatten(),
                               layers.Dense(512, activation="relu"), layers.Dropout(0.2),
                               layers.Dense(512, activation="relu"), layers.Dropout(0.2),
                               layers.Dense(10, activation="softmax")])
elif network == "seed_cnn":
    model = seed_cnn()
if network in ("mlp", "seed_cnn"):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
else:
    sys.path.insert(0, "benchmarks")
    from suite import NETWORKS, compiled
    model, input_shape = compiled(minidl, network), NETWORKS[network][2]
rng = np.random.default_rng(0)
x, y = rng.random((batch_size, *input_shape), dtype=np.float32), rng.integers(0, 10, batch_size)
if task == "train":
    step = lambda: model.train_on_batch(x, y)
else:
    step = lambda: model.predict(x, batch_size=batch_size, verbose=0)
for _ in range(3):
    step()
seconds = []
for _ in range(steps):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
print(json.dumps(seconds))
"""


def conv_choice_cache(checkout):
    """A conv-choice cache file of ``checkout``'s own, so that two versions with different candidate
    methods do not re-time each other's choices."""
    name = os.path.abspath(checkout).strip(os.sep).replace(os.sep, "_")
    return os.path.join(tempfile.gettempdir(), f"minidl-ab-conv-choices-{name}.json")


def step_seconds(checkout, network, task, batch_size, steps):
    """``steps`` timed training steps (or predict calls) of ``network`` in a fresh process that
    imports minidl from ``checkout``."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout), "MINIDL_CONV_CACHE": conv_choice_cache(checkout)}
    completed = subprocess.run([sys.executable, "-c", TIMED_STEPS, str(batch_size), str(steps), network, task],
                               cwd=checkout, env=env, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])


def describe(seconds):
    ms = np.asarray(seconds) * 1e3
    return (f"min {ms.min():.2f}, 25th percentile {np.percentile(ms, 25):.2f}, median {np.median(ms):.2f}, "
            f"mean {ms.mean():.2f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout_a")
    parser.add_argument("checkout_b")
    parser.add_argument("--network", default="seed_cnn",
                        help="seed_cnn, mlp, or the name of a network of benchmarks/suite.py")
    parser.add_argument("--task", choices=["train", "predict"], default="train")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    checkouts = [args.checkout_a, args.checkout_b]
    for checkout in checkouts:  # the first process of a checkout may compile its kernels
        step_seconds(checkout, args.network, args.task, args.batch_size, 1)
    seconds = {checkout: [] for checkout in checkouts}
    for _ in range(args.rounds):
        for checkout in checkouts:
            seconds[checkout] += step_seconds(checkout, args.network, args.task, args.batch_size, args.steps)
    print(machine.describe())
    what = "training step" if args.task == "train" else "predict call"
    print(f"{args.network} {what}, batch {args.batch_size}, {args.rounds} rounds of {args.steps} calls:")
    for checkout, times in seconds.items():
        print(f"  {checkout}: {describe(times)}")


if __name__ == "__main__":
    main()
