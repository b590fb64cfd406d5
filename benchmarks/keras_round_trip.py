"""minidl -> .keras / .h5 -> Keras: Keras loads what minidl writes and predicts the same.

    python benchmarks/keras_round_trip.py                       # Keras in this Python (the bench extra)
    python benchmarks/keras_round_trip.py --keras-python /path/to/venv/bin/python

minidl builds a few models (the seed CNN, a CNN with 'same' padding, strides, average pooling, tanh and
LeakyReLU, an MLP, a functional graph with BatchNormalization, Add, Concatenate, global pooling,
Reshape, Rescaling and ZeroPadding2D), compiles them, saves each as ``.keras`` and ``.h5`` with its predictions for fixed
inputs; a second process, which imports Keras and not minidl, loads every file with
``keras.models.load_model`` and compares.  Prints the largest difference per file and exits 1 if any
exceeds ``--tolerance`` (1e-5) or Keras cannot load a file.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def models():
    """``{name: compiled minidl model}``."""
    sys.path.insert(0, str(ROOT))
    import minidl
    from minidl import layers, presets
    minidl.utils.set_random_seed(0)
    seed_cnn = presets.seed_cnn()
    seed_cnn.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    varied = minidl.Sequential([
        layers.Input((17, 13, 3)), layers.Conv2D(6, 5, padding="same", activation="tanh"),
        layers.AveragePooling2D(3, strides=2, padding="same"), layers.Conv2D(4, (3, 1), strides=(2, 1)),
        layers.LeakyReLU(0.2), layers.MaxPooling2D(2, padding="same"), layers.Dropout(0.3), layers.Flatten(),
        layers.Dense(7, activation="sigmoid"), layers.Dense(3), layers.Softmax()], name="varied")
    varied.compile(minidl.optimizers.SGD(0.05, momentum=0.9, nesterov=True), "categorical_crossentropy")
    mlp = minidl.Sequential([layers.Input((20,)), layers.Dense(16, activation="relu"), layers.Dense(1)],
                            name="mlp")
    mlp.compile(minidl.optimizers.RMSprop(0.01), "mse")
    return {"seed_cnn": seed_cnn, "varied": varied, "mlp": mlp, "graph": branched_graph()}


def branched_graph():
    """A functional model whose branches hold layers of the same class (so the weight groups' names
    depend on the layers' order) and every layer that merges or normalizes."""
    import minidl
    from minidl import layers
    inputs = minidl.Input((12, 12, 3), name="image")
    x = layers.Rescaling(0.5, offset=0.1)(inputs)
    x = layers.ZeroPadding2D(1)(x)
    x = layers.Conv2D(6, 3, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    a = layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    b = layers.Conv2D(6, 1)(layers.Conv2D(5, 3, padding="same")(x))
    x = layers.Concatenate()([layers.Add()([a, b]), x])
    x = layers.BatchNormalization(center=False)(x)
    c = layers.GlobalAveragePooling2D()(x)
    d = layers.Flatten()(layers.Reshape((144, 12))(x))
    x = layers.Concatenate()([layers.Dense(8, activation="relu")(c), layers.Dense(8, activation="tanh")(d)])
    model = minidl.Model(inputs, layers.Dense(4, activation="softmax")(x), name="graph")
    for layer in model.layers:  # moving statistics away from their initial 0 and 1
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([np.random.default_rng(2).random(w.shape).astype(np.float32) + 0.5
                               for w in layer.get_weights()])
    model.compile("adam", "categorical_crossentropy")
    return model


def write_files(folder):
    """Save every model in both formats with its inputs and predictions; returns the file names."""
    rng = np.random.default_rng(0)
    files = []
    for name, model in models().items():
        x = rng.standard_normal((8, *model.input_shape)).astype(np.float32)
        np.savez(folder / f"{name}.npz", x=x, y=model.predict(x))
        for suffix in (".keras", ".h5"):
            model.save(folder / f"{name}{suffix}")
            files.append(f"{name}{suffix}")
    return files


def check_in_keras(folder, files):
    """Run in the Keras process: ``{file: largest |keras - minidl|}`` (or the error Keras raised)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    report = {}
    for file in files:
        expected = np.load(Path(folder) / f"{file.rsplit('.', 1)[0]}.npz")
        try:
            model = keras.models.load_model(Path(folder) / file)
            predicted = model.predict(expected["x"], verbose=0)
            report[file] = {"max_abs_diff": float(np.abs(predicted - expected["y"]).max()),
                            "optimizer": type(model.optimizer).__name__ if model.optimizer else None}
        except Exception as error:  # every failure is reported per file
            report[file] = {"error": f"{type(error).__name__}: {error}"[:500]}
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keras-python", default=sys.executable,
                        help="Python that has Keras 3 (default: this one)")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--keras-side", nargs=2, metavar=("FOLDER", "FILES_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_side:
        print(json.dumps(check_in_keras(args.keras_side[0], json.loads(args.keras_side[1]))))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        files = write_files(Path(folder))
        result = subprocess.run([args.keras_python, __file__, "--keras-side", folder, json.dumps(files)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return 1
        report = json.loads(result.stdout.strip().splitlines()[-1])
    failed = False
    for file, outcome in report.items():
        if "error" in outcome:
            print(f"{file:18s} Keras could not load it: {outcome['error']}")
            failed = True
            continue
        ok = outcome["max_abs_diff"] <= args.tolerance
        failed |= not ok
        print(f"{file:18s} max |Keras - minidl| = {outcome['max_abs_diff']:.2e}  optimizer {outcome['optimizer']}"
              f"  {'ok' if ok else 'TOO FAR'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
