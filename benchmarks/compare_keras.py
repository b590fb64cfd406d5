"""minidl against Keras 3 (TensorFlow backend) on the seed CNN and Fashion-MNIST, in one run.

    python benchmarks/compare_keras.py --epochs 5 --batch-sizes 32 128 --optimizers adam nesterov

For every (optimizer, batch size) the two frameworks train the same architecture from the same initial
weights (created once by minidl, loaded into Keras with ``set_weights``), with the same optimizer and
hyper-parameters, on the same batches in the same order, each in a fresh worker process, one after the
other, alternating which goes first.  The order of every epoch is a permutation drawn from ``(--seed,
epoch)``, applied before the epoch's ``fit`` call (``shuffle=False``, outside the timed epoch), so the
two test accuracies differ by the frameworks' arithmetic alone and not by which batches each drew.
Each worker reports seconds per epoch (first; steady = median of the rest; best = fastest of the rest),
samples/s, the time of its first training step (compile / warm-up), the per-step overhead (median step
time at batch size 1), predict throughput on the 10,000 test images, peak resident memory and test
accuracy.

The table is printed, written as JSON and as a PNG chart to ``--out`` (default ``benchmarks/out``), and
a dated section is appended to ``benchmarks/RESULTS.md`` unless ``--no-record``.
Keras must be installed (``pip install -e .[bench]``); ``--keras-backend jax|torch`` runs Keras on another
backend (a GPU machine without TensorFlow), ``--backend cuda`` runs minidl on the GPU.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = {
    "adam": {"name": "Adam", "learning_rate": 0.001},
    "nesterov": {"name": "SGD", "learning_rate": 0.01, "momentum": 0.9, "nesterov": True},
}


# ------------------------------------------------------------------------------------------ data


def fashion_mnist():
    """Fashion-MNIST scaled to [0, 1], as ``(N, 28, 28, 1)`` float32, labels int."""
    from minidl.data import load_fashion_mnist

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    scale = lambda images: (images.astype(np.float32) / 255.0)[..., None]  # noqa: E731
    return scale(x_train), y_train.astype(np.int64), scale(x_test), y_test.astype(np.int64)


def initial_weights(path, seed):
    """Seeded initial weights of the seed CNN, saved for both frameworks."""
    import minidl
    from minidl.presets import seed_cnn

    minidl.utils.set_random_seed(seed)
    np.savez(path, *seed_cnn().get_weights())


def epoch_order(seed, epoch, n_samples):
    """The order in which both frameworks see the training samples in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


def load_weights(path):
    with np.load(path, allow_pickle=False) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


# --------------------------------------------------------------------------------------- models


def seed_cnn_keras():
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
    ])


def make_optimizer(module, spec):
    spec = dict(spec)
    return getattr(module, spec.pop("name"))(**spec)


# -------------------------------------------------------------------------------------- workers


class EpochTimer:
    """Wall-clock seconds of every epoch, as a callback usable by both frameworks."""

    def __init__(self, base):
        self.base, self.seconds = base, []

    def callback(self):
        timer = self

        class Callback(self.base):
            def on_epoch_begin(self, epoch, logs=None):
                timer.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.seconds.append(time.perf_counter() - timer.start)

        return Callback()


def median_step_seconds(train_on_batch, x, y, repeats=30):
    """Median wall time of ``train_on_batch`` on one sample: the fixed cost of a step."""
    train_on_batch(x[:1], y[:1])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_on_batch(x[:1], y[:1])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_worker(args):
    """Train one framework for one configuration and print its measurements as JSON."""
    dependency_seconds = 0.0
    if args.worker == "minidl":
        started = time.perf_counter()
        import numba  # noqa: F401  (timed apart: the warm-start target is measured beyond it)

        dependency_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if args.worker == "minidl":
        import minidl as framework
        from minidl.presets import seed_cnn

        model = seed_cnn()
        callback_base = framework.callbacks.Callback
        optimizer_module = framework.optimizers
        if args.backend:
            framework.set_backend(args.backend)
    else:
        import keras as framework

        model = seed_cnn_keras()
        callback_base = framework.callbacks.Callback
        optimizer_module = framework.optimizers
    import_seconds = time.perf_counter() - started
    x_train, y_train, x_test, y_test = fashion_mnist()
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]

    def start_from_initial_weights():
        model.set_weights(load_weights(args.weights))
        model.compile(optimizer=make_optimizer(optimizer_module, OPTIMIZERS[args.optimizer]),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    start_from_initial_weights()
    start = time.perf_counter()
    model.train_on_batch(x_train[:args.batch_size], y_train[:args.batch_size])
    first_step_seconds = time.perf_counter() - start
    start_from_initial_weights()  # the warm-up step's update and optimizer state are discarded
    timer = EpochTimer(callback_base)
    for epoch in range(args.epochs):
        order = epoch_order(args.seed, epoch, len(x_train))
        model.fit(x_train[order], y_train[order], batch_size=args.batch_size, epochs=epoch + 1,
                  initial_epoch=epoch, shuffle=False, verbose=0, callbacks=[timer.callback()])
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)

    model.predict(x_test[:256], batch_size=256, verbose=0)
    start = time.perf_counter()
    model.predict(x_test, batch_size=256, verbose=0)
    predict_seconds = time.perf_counter() - start
    step_overhead = median_step_seconds(model.train_on_batch, x_train, y_train)

    steady = timer.seconds[1:] or timer.seconds
    result = {
        "framework": args.worker, "optimizer": args.optimizer, "batch_size": args.batch_size,
        "epochs": args.epochs, "samples": len(x_train), "epoch_seconds": timer.seconds,
        "first_epoch_s": timer.seconds[0], "steady_epoch_s": statistics.median(steady),
        "best_epoch_s": min(steady),
        "samples_per_s": len(x_train) / statistics.median(steady),
        "numba_import_s": dependency_seconds, "import_s": import_seconds,
        "first_step_s": first_step_seconds,
        "step_overhead_ms": step_overhead * 1e3,
        "predict_images_per_s": len(x_test) / predict_seconds,
        "peak_rss_mib": machine.peak_rss_mib(),
        "test_accuracy": float(test_accuracy),
    }
    if args.worker == "minidl":
        result["backend"] = framework.get_backend()
    else:
        result["backend"] = framework.backend.backend()
    print("RESULT " + json.dumps(result), flush=True)


def launch_worker(framework, optimizer, batch_size, args, weights_path):
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", framework,
               "--optimizer", optimizer, "--batch-size", str(batch_size), "--epochs", str(args.epochs),
               "--weights", str(weights_path), "--limit", str(args.limit or 0), "--seed", str(args.seed)]
    if args.backend:
        command += ["--backend", args.backend]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": args.keras_backend}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{framework} worker failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")


# ------------------------------------------------------------------------------------- reporting


COLUMNS = [("first_epoch_s", "first epoch s", "{:.1f}"), ("steady_epoch_s", "steady epoch s", "{:.1f}"),
           ("best_epoch_s", "best epoch s", "{:.1f}"),
           ("samples_per_s", "samples/s", "{:,.0f}"), ("import_s", "import s", "{:.2f}"),
           ("first_step_s", "first step s", "{:.2f}"),
           ("step_overhead_ms", "step @batch 1 ms", "{:.2f}"),
           ("predict_images_per_s", "predict img/s", "{:,.0f}"), ("peak_rss_mib", "peak RSS MiB", "{:,.0f}"),
           ("test_accuracy", "test acc", "{:.4f}")]


def table(results):
    header = ["framework", "optimizer", "batch"] + [title for _, title, _ in COLUMNS] + ["epoch ratio",
                                                                                       "best ratio"]
    rows = []
    for result in results:
        keras = next(r for r in results if r["framework"] == "keras" and r["optimizer"] == result["optimizer"]
                     and r["batch_size"] == result["batch_size"])
        ratio = result["steady_epoch_s"] / keras["steady_epoch_s"]
        best_ratio = result["best_epoch_s"] / keras["best_epoch_s"]
        name = result["framework"] + (f" ({result['backend']})" if result["framework"] == "minidl" else "")
        rows.append([name, result["optimizer"], str(result["batch_size"])]
                    + [fmt.format(result[key]) for key, _, fmt in COLUMNS] + [f"{ratio:.2f}", f"{best_ratio:.2f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(r["optimizer"], r["batch_size"]) for r in results})
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.38
    for offset, framework in ((-width / 2, "minidl"), (width / 2, "keras")):
        seconds = [next(r["best_epoch_s"] for r in results if r["framework"] == framework
                        and (r["optimizer"], r["batch_size"]) == config) for config in configs]
        axis.bar(np.arange(len(configs)) + offset, seconds, width, label=framework)
    axis.set_xticks(np.arange(len(configs)), [f"{o}\nbatch {b}" for o, b in configs])
    axis.set_ylabel("seconds per epoch (fastest of epochs 2..n)")
    axis.set_title("Seed CNN on Fashion-MNIST, 60k samples/epoch")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def code_version():
    completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=ROOT).stdout.strip()
    return (completed.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty else "")


def record(results, command, args):
    os.environ["KERAS_BACKEND"] = args.keras_backend
    import keras
    import numba

    section = [f"\n## {datetime.date.today().isoformat()}: minidl vs Keras {keras.__version__} "
               f"({args.keras_backend} backend), seed CNN, Fashion-MNIST",
               f"- command: `{command}`",
               f"- machine: {machine.describe()}; code at commit {code_version()}",
               f"- numpy {np.__version__}, numba {numba.__version__}; {args.epochs} epochs per run; "
               f"steady = median of epochs 2..n, best = fastest of them; epoch ratio = minidl steady / Keras "
               f"steady, best ratio = minidl best / Keras best (same run; the best is the least disturbed by "
               f"other load on a shared machine)", "", table(results)]
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as results_file:
        results_file.write("\n".join(section) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--optimizers", nargs="+", choices=sorted(OPTIMIZERS), default=["adam", "nesterov"])
    parser.add_argument("--backend", help="minidl backend (default: minidl's default)")
    parser.add_argument("--keras-backend", choices=("tensorflow", "jax", "torch"), default="tensorflow",
                        help="Keras 3 backend (default tensorflow; jax or torch on a GPU machine without TF)")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N samples only")
    parser.add_argument("--seed", type=int, default=0, help="seeds the initial weights and the epochs' order")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--worker", choices=["minidl", "keras"], help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        weights_path = Path(scratch) / "initial_weights.npz"
        initial_weights(weights_path, args.seed)
        run = 0
        for optimizer in args.optimizers:
            for batch_size in args.batch_sizes:
                order = ["minidl", "keras"] if run % 2 == 0 else ["keras", "minidl"]
                for framework in order:
                    print(f"{framework}: {optimizer}, batch {batch_size}, {args.epochs} epochs ...", flush=True)
                    results.append(launch_worker(framework, optimizer, batch_size, args, weights_path))
                run += 1
    results.sort(key=lambda r: (r["optimizer"], r["batch_size"], r["framework"] != "minidl"))
    print(table(results))
    (args.out / "compare_keras.json").write_text(json.dumps(results, indent=2))
    chart(results, args.out / "compare_keras.png")
    if not args.no_record:
        record(results, "python benchmarks/compare_keras.py " + " ".join(argv or sys.argv[1:]), args)
    print(f"wrote {args.out / 'compare_keras.json'} and {args.out / 'compare_keras.png'}")


if __name__ == "__main__":
    main()
