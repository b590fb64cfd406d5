"""Write the Keras files minidl's tests read, with Keras's own outputs for fixed inputs.

    python benchmarks/keras_file_fixtures.py            # needs Keras 3 (pip install -e .[bench])

Writes into ``tests/fixtures/keras/`` (a few KB each):

* ``sequential_cnn.keras`` / ``.h5``: a Sequential CNN (two convs, 'same' padding and a stride, max and
  average pooling, dropout, a tanh Dense and a softmax Dense), compiled with Adam and categorical
  cross-entropy; layers carry their own names, so the weight paths (by class) differ from them.
* ``functional_chain.keras``: the same kind of stack written as a functional model.
* ``functional_graph.keras`` / ``.h5``: a functional model with branches: Rescaling, ZeroPadding2D,
  BatchNormalization (trained a few steps, so its moving statistics are not their initial values),
  two Conv2D branches joined by Add, a Concatenate, GlobalAveragePooling2D, Reshape and Dense.
* ``outputs.npz``: ``x_cnn``, ``y_sequential_cnn``, ``x_chain``, ``y_functional_chain``, ``x_graph``,
  ``y_functional_graph``: inputs and Keras's predictions for them.
* hostile files, each of which minidl must refuse without running or writing anything:
  ``lambda.keras`` / ``lambda.h5`` (a Lambda layer: Python bytecode), ``custom_layer.keras`` (a
  registered custom class), ``path_traversal.keras`` (a member named ``../../escaped.txt``),
  ``huge_shapes.keras`` (an input and a Dense that declare billions of values), ``weight_mismatch.keras``
  (a kernel whose shape is not the config's), ``external_link.h5`` (a weight that is a link to another
  file), ``truncated.keras`` and ``truncated.h5`` (the first half of a good file).

The weights are random with a fixed seed; rerunning rewrites the same architectures.
"""

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "keras"


def sequential_cnn():
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((10, 10, 2)),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="features"),
        layers.MaxPooling2D(2, name="downsample"),
        layers.Conv2D(3, 2, strides=1, activation="tanh", name="more_features"),
        layers.AveragePooling2D(2, strides=1, padding="same", name="smooth"),
        layers.Dropout(0.25, name="drop"),
        layers.Flatten(name="flat"),
        layers.Dense(5, activation="tanh", name="hidden"),
        layers.Dense(3, activation="softmax", name="classes"),
    ], name="cnn")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.002), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def functional_chain():
    layers = keras.layers
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(3, 3, activation="relu")(inputs)
    x = layers.AveragePooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(4)(x)
    outputs = layers.Activation("softmax")(x)
    return keras.Model(inputs, outputs, name="chain")


def functional_graph():
    layers = keras.layers
    inputs = keras.Input((8, 8, 2), name="pixels")
    x = layers.Rescaling(1 / 4, offset=-0.5)(inputs)
    x = layers.ZeroPadding2D(((1, 0), (0, 2)))(x)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.BatchNormalization(momentum=0.5)(x)
    left = layers.Conv2D(4, 3, padding="same")(x)
    right = layers.Conv2D(4, 1, activation="tanh")(x)
    joined = layers.Add()([left, right])
    both = layers.Concatenate()([joined, x])
    pooled = layers.GlobalAveragePooling2D()(both)
    x = layers.Reshape((2, 4))(pooled)
    x = layers.Flatten()(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="graph")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(7)
    model.fit(4 * rng.random((32, 8, 8, 2)), rng.integers(0, 3, 32), epochs=2, batch_size=8, verbose=0)
    return model


@keras.saving.register_keras_serializable(package="fixtures")
class Doubling(keras.layers.Layer):
    def call(self, x):
        return 2 * x


def rewrite_archive(source, target, change):
    """Copy the ``.keras`` archive ``source`` to ``target``, passing its members (a dict of bytes)
    through ``change`` first."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def edit_config(members, edit):
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()


def declare_huge_shapes(config):
    layers = config["config"]["layers"]
    layers[0]["config"]["batch_shape"] = [None, 100000, 100000, 2]


def declare_huge_dense(config):
    dense = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")
    dense["config"]["units"] = 2**33


def mismatch_first_kernel(members):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "weights.h5")
        path.write_bytes(members["model.weights.h5"])
        with h5py.File(path, "r+") as weights:
            del weights["layers/conv2d/vars/0"]
            weights["layers/conv2d/vars/0"] = np.zeros((3, 3, 2, 5), np.float32)
        members["model.weights.h5"] = path.read_bytes()


def add_traversal_member(members):
    members["../../escaped.txt"] = b"written outside the folder the archive is extracted into"


def link_weight_to_another_file(path):
    with h5py.File(path, "r+") as model_file:
        group = model_file["model_weights/hidden"]
        name = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
        del group[name]
        group[name] = h5py.ExternalLink("/etc/passwd", "/kernel")


def truncate(source, target):
    data = Path(source).read_bytes()
    Path(target).write_bytes(data[:len(data) // 2])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(19)
    rng = np.random.default_rng(19)
    outputs = {}

    cnn = sequential_cnn()
    cnn.save(OUT / "sequential_cnn.keras")
    cnn.save(OUT / "sequential_cnn.h5")
    outputs["x_cnn"] = rng.standard_normal((4, 10, 10, 2)).astype(np.float32)
    outputs["y_sequential_cnn"] = cnn.predict(outputs["x_cnn"], verbose=0)

    chain = functional_chain()
    chain.save(OUT / "functional_chain.keras")
    outputs["x_chain"] = rng.standard_normal((3, 8, 8, 1)).astype(np.float32)
    outputs["y_functional_chain"] = chain.predict(outputs["x_chain"], verbose=0)

    graph = functional_graph()
    graph.save(OUT / "functional_graph.keras")
    graph.save(OUT / "functional_graph.h5")
    outputs["x_graph"] = (4 * rng.random((5, 8, 8, 2))).astype(np.float32)
    outputs["y_functional_graph"] = graph.predict(outputs["x_graph"], verbose=0)
    np.savez(OUT / "outputs.npz", **outputs)

    lambda_model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2, name="code")])
    lambda_model.save(OUT / "lambda.keras")
    lambda_model.save(OUT / "lambda.h5")
    keras.Sequential([keras.Input((3,)), Doubling(name="custom")]).save(OUT / "custom_layer.keras")

    good = OUT / "sequential_cnn.keras"
    rewrite_archive(good, OUT / "path_traversal.keras", add_traversal_member)
    rewrite_archive(good, OUT / "huge_shapes.keras", lambda m: edit_config(m, declare_huge_shapes))
    rewrite_archive(good, OUT / "huge_dense.keras", lambda m: edit_config(m, declare_huge_dense))
    rewrite_archive(good, OUT / "weight_mismatch.keras", mismatch_first_kernel)
    shutil.copy(OUT / "sequential_cnn.h5", OUT / "external_link.h5")
    link_weight_to_another_file(OUT / "external_link.h5")
    truncate(good, OUT / "truncated.keras")
    truncate(OUT / "sequential_cnn.h5", OUT / "truncated.h5")
    for path in sorted(OUT.iterdir()):
        print(f"{path.stat().st_size:8,d}  {path.relative_to(OUT.parents[2])}")


if __name__ == "__main__":
    main()
