"""minidl against Keras 3 on every common network, in one run.

    python benchmarks/suite.py [--quick] [--networks NAME ...] [--batch-sizes 32 128]
                               [--numba-threads 1 2] [--without PASS ...] [--no-record]

For every network of :data:`NETWORKS` and batch size, the two frameworks train the same architecture
from the same initial weights (built by minidl, loaded into Keras with ``set_weights``) with the same
optimizer on the same batches in the same order, each in a fresh worker process (so each process's
peak RSS is its framework's own), one after the other, alternating which goes first.  The data are
Fashion-MNIST images resized to the network's input (``cv2.resize``) and repeated over its channels,
written once by this process for both workers.

Each worker trains ``repeats`` passes over the same ``steps`` batches (a fixed-N-steps "epoch", so a
224x224 network finishes in minutes), and reports the fastest and the median of passes 2..n, predict
throughput (``predict`` over the test images at batch 256 whatever the training batch, the fastest of
:data:`PREDICT_REPEATS`), peak RSS, and test loss and accuracy after the run.  The minidl worker also times every
step of its plan over a few extra training steps and reports, per conv layer, the achieved GFLOP/s
(forward and backward at im2col's FLOP count, over the plan step that computes the conv, with its bias,
activation and any fused pooling) and the fraction of this machine's SGEMM peak, measured here by NumPy
on 2048 x 2048 float32 matrices (best of 5).

``--without PASS`` compiles minidl's models with that planner pass switched off (repeatable), the
other side of a pass's A/B against Keras.  ``--numba-threads 1 2`` runs minidl once per Numba thread count (``MINIDL_NUM_THREADS``), for the
thread policy's record.  The table is printed, written as JSON and a PNG chart under
``benchmarks/results/``, and appended to ``benchmarks/RESULTS.md`` as a dated section unless
``--no-record``.  Keras runs in ``--keras-python`` (default: ``/work/venv-keras/bin/python`` where it
exists, else this interpreter); minidl in this interpreter.

A network is a function of the framework (``minidl`` or ``keras``, both Keras-shaped) that builds the
model: add one to :data:`NETWORKS` to extend the suite.  A network whose layers minidl does not have
yet is skipped, and the report says which layer was missing.
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
from compare_keras import EpochTimer

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_KERAS_PYTHON = Path("/work/venv-keras/bin/python")
CLASSES = 10
#: Timed predicts over the test images per worker (the fastest counts).  With 2, the batch-32 and the
#: batch-128 worker of one network, which run the same predict, differed by up to 2.7x in one run
#: (the 224x224 network's 266 and 469 images/s), so one burst of load decided a ratio.
PREDICT_REPEATS = 5


# --------------------------------------------------------------------------------------- networks


def conv_pool_conv_pool_dense(lib, input_shape, hidden):
    """The seeds' network: Conv32-Pool-Conv64-Pool-Flatten-Dense(hidden)-Dense(classes)."""
    layers = lib.layers
    return lib.Sequential([
        layers.Input(input_shape),
        layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Flatten(), layers.Dense(hidden, activation="relu"), layers.Dense(CLASSES, activation="softmax"),
    ])


def seed_cnn(lib):
    return conv_pool_conv_pool_dense(lib, (28, 28, 1), 64)


def seed_cnn_224(lib):
    return conv_pool_conv_pool_dense(lib, (224, 224, 1), 128)


def cifar_cnn(lib):
    layers = lib.layers
    return lib.Sequential([
        layers.Input((32, 32, 3)),
        layers.Conv2D(32, (3, 3), padding="same", activation="relu"), layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)), layers.Dropout(0.25),
        layers.Conv2D(64, (3, 3), padding="same", activation="relu"), layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)), layers.Dropout(0.25),
        layers.Flatten(), layers.Dense(512, activation="relu"), layers.Dropout(0.5),
        layers.Dense(CLASSES, activation="softmax"),
    ])


def strided_tanh_cnn(lib):
    layers = lib.layers
    return lib.Sequential([
        layers.Input((64, 64, 3)),
        layers.Conv2D(16, (5, 5), strides=(2, 2), padding="same", activation="tanh"),
        layers.AveragePooling2D((2, 2)),
        layers.Conv2D(32, (5, 5), strides=(2, 2), padding="same", activation="tanh"),
        layers.AveragePooling2D((2, 2)),
        layers.Flatten(), layers.Dense(64, activation="sigmoid"), layers.Dense(CLASSES, activation="softmax"),
    ])


def mlp(lib):
    layers = lib.layers
    return lib.Sequential([
        layers.Input((28, 28, 1)), layers.Flatten(),
        layers.Dense(512, activation="relu"), layers.Dropout(0.2),
        layers.Dense(512, activation="relu"), layers.Dropout(0.2),
        layers.Dense(CLASSES, activation="softmax"),
    ])


def batchnorm_gap_cnn(lib):
    layers = lib.layers
    return lib.Sequential([
        layers.Input((32, 32, 3)),
        layers.Conv2D(32, (3, 3), padding="same", use_bias=False), layers.BatchNormalization(),
        layers.Activation("relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), padding="same", use_bias=False), layers.BatchNormalization(),
        layers.Activation("relu"), layers.GlobalAveragePooling2D(),
        layers.Dense(CLASSES, activation="softmax"),
    ])


def residual_cnn(lib):
    layers = lib.layers
    inputs = layers.Input((32, 32, 3))
    stem = layers.Conv2D(32, (3, 3), padding="same", activation="relu")(inputs)
    branch = layers.Conv2D(32, (3, 3), padding="same", activation="relu")(stem)
    branch = layers.Conv2D(32, (3, 3), padding="same")(branch)
    merged = layers.Activation("relu")(layers.Add()([stem, branch]))
    pooled = layers.MaxPooling2D((2, 2))(merged)
    outputs = layers.Dense(CLASSES, activation="softmax")(layers.Flatten()(pooled))
    return lib.Model(inputs, outputs)


#: name -> (builder, optimizer as Keras's config, input shape, (steps, repeats) full, (steps, repeats) --quick)
NETWORKS = {
    "seed_cnn": (seed_cnn, {"name": "Adam", "learning_rate": 0.001}, (28, 28, 1), (200, 4), (50, 5)),
    "seed_224": (seed_cnn_224, {"name": "SGD", "learning_rate": 0.01}, (224, 224, 1), (12, 3), (3, 3)),
    "cifar_cnn": (cifar_cnn, {"name": "RMSprop", "learning_rate": 0.0005}, (32, 32, 3), (100, 4), (20, 4)),
    "strided_tanh": (strided_tanh_cnn, {"name": "Adam", "learning_rate": 0.001}, (64, 64, 3), (100, 4), (20, 4)),
    "mlp": (mlp, {"name": "Adam", "learning_rate": 0.001}, (28, 28, 1), (200, 4), (50, 5)),
    "batchnorm_gap": (batchnorm_gap_cnn, {"name": "Adam", "learning_rate": 0.001}, (32, 32, 3), (100, 4), (20, 3)),
    "residual": (residual_cnn, {"name": "Adam", "learning_rate": 0.001}, (32, 32, 3), (100, 4), (20, 3)),
}


def compiled(lib, name, **compile_options):
    """Network ``name`` built by ``lib`` (``minidl`` or ``keras``) and compiled with its optimizer, the
    sparse cross-entropy loss and ``compile_options`` (minidl's ``optimize=...``, say)."""
    builder, optimizer_spec = NETWORKS[name][:2]
    model = builder(lib)
    spec = dict(optimizer_spec)
    model.compile(optimizer=getattr(lib.optimizers, spec.pop("name"))(**spec),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], **compile_options)
    return model


def missing_feature(name):
    """What minidl lacks to build network ``name`` (e.g. ``"layers.BatchNormalization"``), or ``None``."""
    import minidl

    try:
        NETWORKS[name][0](minidl)
    except (AttributeError, TypeError, NotImplementedError) as error:
        return f"{type(error).__name__}: {error}"
    return None


# ------------------------------------------------------------------------------------------- data


def images_for(images, labels, input_shape):
    """uint8 ``(N, 28, 28)`` images as float32 ``input_shape`` in [0, 1]: resized, channels repeated."""
    import cv2

    height, width, channels = input_shape
    scaled = images.astype(np.float32) / 255.0
    if (height, width) != scaled.shape[1:]:
        scaled = np.stack([cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) for image in scaled])
    return np.repeat(scaled[..., None], channels, axis=3), labels.astype(np.int64)


def write_data(path, input_shape, train_count, test_count):
    """The training and test images for one network, saved for both workers."""
    from minidl.data import load_fashion_mnist

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, y_train = images_for(x_train[:train_count], y_train[:train_count], input_shape)
    x_test, y_test = images_for(x_test[:test_count], y_test[:test_count], input_shape)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def write_initial_weights(path, network, seed):
    import minidl

    minidl.utils.set_random_seed(seed)
    np.savez(path, *NETWORKS[network][0](minidl).get_weights())


def load_arrays(path):
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


# ------------------------------------------------------------------------------------ measurements


def sgemm_peak_gflops(size=2048, repeats=5):
    """Best GFLOP/s of NumPy's float32 ``(size, size) @ (size, size)`` on this machine."""
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def conv_flops(conv, batch_size, input_grad_needed):
    """Multiply-adds x 2 of a conv's forward at im2col's count, and of its backward (kernel gradient,
    plus the input gradient where the plan computes one)."""
    out_h, out_w, filters = conv.output_shape
    kh, kw = conv.kernel_size
    forward = 2 * batch_size * out_h * out_w * kh * kw * conv.input_shape[2] * filters
    return forward, forward * (2 if input_grad_needed else 1)


def step_seconds(model, x, y, steps):
    """``{plan step: (forward s, backward s)}`` summed over ``steps`` training steps."""
    totals = {}
    for step in model.plan.steps:
        totals[step] = [0.0, 0.0]

        def wrap(method, index, step=step):
            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    totals[step][index] += time.perf_counter() - start
            return call

        step.forward, step.backward = wrap(step.forward, 0), wrap(step.backward, 1)
    try:
        for _ in range(steps):
            model.train_on_batch(x, y)
    finally:
        for step in totals:
            del step.forward, step.backward
    return totals


def conv_method(step):
    """How a plan step computes its conv: its ``ConvLinear``'s method, the layer's own im2col, or a
    direct kernel."""
    from minidl.engine.plan import LayerStep

    if hasattr(step, "linear"):
        return step.linear.method.name
    return "im2col" if isinstance(step, LayerStep) else "direct"


def conv_layer_report(model, x, y, steps=5):
    """Per conv layer: its plan step, passes, milliseconds per training step and achieved GFLOP/s."""
    from minidl.layers import Conv2D

    model.train_on_batch(x, y)
    totals = step_seconds(model, x, y, steps)
    report = []
    for step, (forward_s, backward_s) in totals.items():
        for conv in [layer for layer in step.layers if isinstance(layer, Conv2D)]:
            forward_flops, backward_flops = conv_flops(conv, len(x), step.computes_input_grad)
            report.append({
                "layer": conv.name, "input_shape": list(conv.input_shape), "output_shape": list(conv.output_shape),
                "kernel_size": list(conv.kernel_size), "strides": list(conv.strides),
                "step": type(step).__name__, "passes": list(step.passes),
                "method": conv_method(step),
                "forward_ms": forward_s / steps * 1e3, "backward_ms": backward_s / steps * 1e3,
                "gflops": (forward_flops + backward_flops) * steps / (forward_s + backward_s) / 1e9,
            })
    return report


def run_worker(args):
    """Train one framework on one network and batch size; print the measurements as JSON."""
    if args.worker == "minidl":
        import minidl as lib

        options = {"optimize": {name: False for name in args.without}} if args.without else {}
    else:
        import keras as lib

        options = {}
    model = compiled(lib, args.network, **options)
    data, weights = load_arrays(args.data), load_arrays(args.weights)
    model.set_weights([weights[f"arr_{i}"] for i in range(len(weights))])
    x_train, y_train, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"]

    timer = EpochTimer(lib.callbacks.Callback)  # a pass is one epoch of the fixed steps
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.repeats, shuffle=False, verbose=0,
              callbacks=[timer.callback()])
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    predict_batch = min(256, len(x_test))
    model.predict(x_test[:predict_batch], batch_size=predict_batch, verbose=0)
    predict_seconds = min(timed(lambda: model.predict(x_test, batch_size=predict_batch, verbose=0))
                          for _ in range(PREDICT_REPEATS))
    steady = timer.seconds[1:] or timer.seconds
    result = {
        "network": args.network, "framework": args.worker, "batch_size": args.batch_size,
        "steps": len(x_train) // args.batch_size, "pass_seconds": timer.seconds,
        "best_pass_s": min(steady), "median_pass_s": statistics.median(steady),
        "predict_images_per_s": len(x_test) / predict_seconds,
        "test_loss": float(test_loss), "test_accuracy": float(test_accuracy),
    }
    if args.worker == "minidl":
        result["numba_threads"] = os.environ.get("MINIDL_NUM_THREADS", "default")
        result["backend"] = lib.get_backend()
        result["convs"] = conv_layer_report(model, x_train[:args.batch_size], y_train[:args.batch_size])
    else:
        result["backend"] = lib.backend.backend()
    result["peak_rss_mib"] = machine.peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


def launch_worker(framework, network, batch_size, repeats, paths, args, numba_threads=None):
    python = args.keras_python if framework == "keras" else sys.executable
    command = [str(python), str(Path(__file__).resolve()), "--worker", framework, "--network", network,
               "--batch-size", str(batch_size), "--repeats", str(repeats),
               "--data", str(paths["data"]), "--weights", str(paths["weights"])]
    command += [f"--without={name}" for name in args.without if framework == "minidl"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if numba_threads is not None:
        env["MINIDL_NUM_THREADS"] = str(numba_threads)
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{framework} worker on {network} failed (exit {completed.returncode}):\n"
                       f"{completed.stderr[-3000:]}")


# -------------------------------------------------------------------------------------- reporting


def keras_result(results, result):
    return next((r for r in results if r["framework"] == "keras" and r["network"] == result["network"]
                 and r["batch_size"] == result["batch_size"]), None)


def ratios(results):
    """``{(network, batch, threads): minidl best pass / Keras best pass}`` of the same run."""
    found = {}
    for result in results:
        keras = keras_result(results, result)
        if result["framework"] == "minidl" and keras:
            found[result["network"], result["batch_size"], result["numba_threads"]] = (
                result["best_pass_s"] / keras["best_pass_s"])
    return found


def results_table(results):
    header = ["network", "batch", "framework", "steps", "best pass s", "median pass s", "ratio (best)",
              "predict img/s", "predict ratio", "peak RSS MiB", "RSS ratio", "test loss", "test acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        keras = keras_result(results, result)
        name = result["framework"]
        if name == "minidl":
            name += f" ({result['backend']}, {result['numba_threads']} numba threads)"

        def compare(key):
            return f"{result[key] / keras[key]:.2f}" if keras else "-"

        lines.append("| " + " | ".join([
            result["network"], str(result["batch_size"]), name, str(result["steps"]),
            f"{result['best_pass_s']:.3f}", f"{result['median_pass_s']:.3f}", compare("best_pass_s"),
            f"{result['predict_images_per_s']:,.0f}", compare("predict_images_per_s"),
            f"{result['peak_rss_mib']:,.0f}", compare("peak_rss_mib"),
            f"{result['test_loss']:.4f}", f"{result['test_accuracy']:.4f}"]) + " |")
    return "\n".join(lines)


def conv_table(results, peak_gflops):
    header = ["network", "batch", "layer", "input", "kernel / strides", "plan step (passes)", "method",
              "fwd ms", "bwd ms", "GFLOP/s", "of SGEMM peak"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        if result["framework"] != "minidl" or result["numba_threads"] not in ("default", "1"):
            continue
        for conv in result["convs"]:
            lines.append("| " + " | ".join([
                result["network"], str(result["batch_size"]), conv["layer"], "x".join(map(str, conv["input_shape"])),
                "x".join(map(str, conv["kernel_size"])) + " / " + "x".join(map(str, conv["strides"])),
                f"{conv['step']} ({', '.join(conv['passes']) or 'plain'})", conv["method"],
                f"{conv['forward_ms']:.2f}", f"{conv['backward_ms']:.2f}", f"{conv['gflops']:.1f}",
                f"{conv['gflops'] / peak_gflops:.0%}"]) + " |")
    return "\n".join(lines)


def summary_lines(results, peak_gflops):
    """The targets of the suite, as they stand in this run."""
    found = ratios(results)
    if not found:
        return []
    default = {key: value for key, value in found.items() if key[2] in ("default", "1")}
    worst = max(default, key=default.get)
    lines = [f"- training ratio (minidl best pass / Keras best pass): median "
             f"{statistics.median(default.values()):.2f}, worst {default[worst]:.2f} ({worst[0]} at batch {worst[1]})"]
    convs = [(conv["gflops"], result["network"], result["batch_size"], conv) for result in results
             if result["framework"] == "minidl" for conv in result["convs"]]
    if convs:
        gflops, network, batch, conv = min(convs, key=lambda item: item[0])
        lines.append(f"- slowest conv layer: {network} batch {batch}, {conv['layer']} on "
                     f"{'x'.join(map(str, conv['input_shape']))} ({conv['method']}), {gflops:.1f} GFLOP/s = "
                     f"{gflops / peak_gflops:.0%} of the {peak_gflops:.0f} GFLOP/s SGEMM peak")
    return lines


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = {key: value for key, value in ratios(results).items() if key[2] in ("default", "1")}
    labels = [f"{network}\nbatch {batch}" for network, batch, _ in found]
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(found)), 4))
    axis.bar(np.arange(len(found)), list(found.values()), color="tab:blue")
    axis.axhline(1.0, color="black", linewidth=1, label="Keras")
    axis.set_xticks(np.arange(len(found)), labels, fontsize=7)
    axis.set_ylabel("minidl / Keras training time (best pass)")
    axis.set_title("benchmarks/suite.py: lower is faster than Keras")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def code_version():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=ROOT).stdout.strip()
    return (commit.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty else "")


def record(results, skipped, peak_gflops, command, keras_version, load):
    section = [f"\n## {datetime.date.today().isoformat()}: benchmark suite, minidl vs Keras {keras_version}",
               f"- command: `{command}`",
               f"- machine: {machine.describe()}; code at commit {code_version()}; load average before the "
               f"run {load}; NumPy float32 SGEMM peak measured {peak_gflops:.0f} GFLOP/s",
               "- a pass is the fixed number of training steps in `steps`; best = fastest of passes 2..n; "
               "every ratio is minidl / Keras of the same run: below 1 is faster training, above 1 more "
               "predict throughput, below 1 less memory"]
    section += [f"- skipped {name}: {reason}" for name, reason in skipped.items()]
    section += summary_lines(results, peak_gflops)
    section += ["", results_table(results), "", "Per conv layer (minidl):", "", conv_table(results, peak_gflops)]
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as results_file:
        results_file.write("\n".join(section) + "\n")


def keras_version(python):
    completed = subprocess.run([str(python), "-c", "import keras; print(keras.__version__)"], capture_output=True,
                               text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return completed.stdout.strip() or "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--quick", action="store_true", help="few steps per network: minutes, not an hour")
    parser.add_argument("--numba-threads", type=int, nargs="+", default=None,
                        help="run minidl once per Numba thread count (default: its own policy, once)")
    parser.add_argument("--keras-python", type=Path,
                        default=DEFAULT_KERAS_PYTHON if DEFAULT_KERAS_PYTHON.exists() else Path(sys.executable))
    parser.add_argument("--seed", type=int, default=0, help="seeds the initial weights")
    parser.add_argument("--without", action="append", default=[], metavar="PASS",
                        help="switch this planner pass off in minidl's models (repeatable)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--worker", choices=["minidl", "keras"], help=argparse.SUPPRESS)
    parser.add_argument("--network", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    peak_gflops = sgemm_peak_gflops()
    print(f"SGEMM peak {peak_gflops:.0f} GFLOP/s; load average {load}", flush=True)
    results, skipped, run = [], {}, 0
    with tempfile.TemporaryDirectory() as scratch:
        for network in args.networks:
            reason = missing_feature(network)
            if reason:
                skipped[network] = f"minidl cannot build it yet ({reason})"
                print(f"skip {network}: {skipped[network]}", flush=True)
                continue
            input_shape = NETWORKS[network][2]
            steps, repeats = NETWORKS[network][4 if args.quick else 3]
            paths = {"data": Path(scratch) / f"{network}_data.npz", "weights": Path(scratch) / f"{network}_weights.npz"}
            write_data(paths["data"], input_shape, steps * max(args.batch_sizes), 256 if input_shape[0] > 100 else 2000)
            write_initial_weights(paths["weights"], network, args.seed)
            for batch_size in args.batch_sizes:
                slice_path = Path(scratch) / f"{network}_{batch_size}.npz"
                arrays = load_arrays(paths["data"])
                arrays["x_train"], arrays["y_train"] = (arrays["x_train"][:steps * batch_size],
                                                        arrays["y_train"][:steps * batch_size])
                np.savez(slice_path, **arrays)
                runs = [("minidl", threads) for threads in (args.numba_threads or [None])] + [("keras", None)]
                if run % 2:
                    runs.reverse()
                for framework, threads in runs:
                    print(f"{network}, batch {batch_size}: {framework}"
                          + (f" ({threads} numba threads)" if threads else "") + " ...", flush=True)
                    result = launch_worker(framework, network, batch_size, repeats,
                                           {**paths, "data": slice_path}, args, threads)
                    if framework == "minidl" and threads is None:
                        result["numba_threads"] = "default"
                    results.append(result)
                run += 1
    print(results_table(results))
    print(conv_table(results, peak_gflops))
    print("\n".join(summary_lines(results, peak_gflops)))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / f"suite_{datetime.datetime.now().strftime('%Y-%m-%d_%H%M')}"
    stem.with_suffix(".json").write_text(json.dumps({"sgemm_peak_gflops": peak_gflops, "load_average": load,
                                                     "machine": machine.describe(), "skipped": skipped,
                                                     "results": results}, indent=2))
    chart(results, stem.with_suffix(".png"))
    if not args.no_record:
        record(results, skipped, peak_gflops, "python benchmarks/suite.py " + " ".join(argv or sys.argv[1:]),
               keras_version(args.keras_python), load)
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")


if __name__ == "__main__":
    main()
