"""Keras's own results for ``Add``, ``Concatenate`` and a small functional model, saved as small
``.npz`` fixtures that ``tests/test_functional_keras_parity.py`` compares minidl with, without
importing Keras.

    python benchmarks/keras_functional_fixtures.py       # needs the bench extra: pip install -e .[bench]

Each fixture is a functional model described as a graph: ``spec`` is JSON ``{"input_shape", "layers":
[[name, Keras class, Keras arguments, [names of the tensors it reads]], ...]}``, where ``"input"``
names the model's input and the last layer is its output.  Every weight is drawn from a fixed
generator.  Saved per fixture:

* ``spec``; ``x`` ``(4, *input_shape)`` and ``y``, the targets;
* ``weights_before/<layer>/NN``: each layer's ``get_weights()``, by layer name (the two libraries may
  order a graph's layers differently);
* ``output``: the model's outputs for ``x``;
* ``weights_after/<layer>/NN``: each layer's weights after one ``train_on_batch(x, y)`` with
  ``SGD(0.1)`` and the mean squared error.
"""

import functools
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fixture_files import write_fixtures  # noqa: E402  benchmarks/fixture_files.py, beside this script

#: name -> (per-sample input shape, [[layer name, class, arguments, inbound names], ...])
FIXTURES = {
    "add": ((5, 5, 2), [
        ["conv_a", "Conv2D", {"filters": 3, "kernel_size": 1}, ["input"]],
        ["conv_b", "Conv2D", {"filters": 3, "kernel_size": 3, "padding": "same", "activation": "tanh"}, ["input"]],
        ["sum", "Add", {}, ["conv_a", "conv_b"]],
        ["flat", "Flatten", {}, ["sum"]],
        ["head", "Dense", {"units": 2}, ["flat"]]]),
    "add_three_vectors": ((6,), [
        ["dense_a", "Dense", {"units": 4}, ["input"]],
        ["dense_b", "Dense", {"units": 4, "activation": "relu"}, ["input"]],
        ["dense_c", "Dense", {"units": 4, "activation": "sigmoid"}, ["input"]],
        ["sum", "Add", {}, ["dense_a", "dense_b", "dense_c"]],
        ["head", "Dense", {"units": 2}, ["sum"]]]),
    "concatenate_channels": ((4, 4, 2), [
        ["conv_a", "Conv2D", {"filters": 3, "kernel_size": 1}, ["input"]],
        ["conv_b", "Conv2D", {"filters": 2, "kernel_size": 3, "padding": "same", "activation": "relu"}, ["input"]],
        ["joined", "Concatenate", {"axis": -1}, ["conv_a", "conv_b"]],
        ["flat", "Flatten", {}, ["joined"]],
        ["head", "Dense", {"units": 2}, ["flat"]]]),
    "concatenate_rows": ((4, 3, 2), [
        ["conv_a", "Conv2D", {"filters": 2, "kernel_size": 1}, ["input"]],
        ["conv_b", "Conv2D", {"filters": 2, "kernel_size": [2, 1], "activation": "tanh"}, ["input"]],
        ["joined", "Concatenate", {"axis": 1}, ["conv_a", "conv_b"]],
        ["flat", "Flatten", {}, ["joined"]],
        ["head", "Dense", {"units": 2}, ["flat"]]]),
    "residual_inception_model": ((8, 8, 1), [
        ["stem", "Conv2D", {"filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"}, ["input"]],
        ["branch_a", "Conv2D", {"filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"}, ["stem"]],
        ["branch_b", "Conv2D", {"filters": 4, "kernel_size": 3, "padding": "same"}, ["branch_a"]],
        ["skip", "Add", {}, ["stem", "branch_b"]],
        ["skip_relu", "Activation", {"activation": "relu"}, ["skip"]],
        ["pool", "MaxPooling2D", {"pool_size": 2}, ["skip_relu"]],
        ["narrow", "Conv2D", {"filters": 2, "kernel_size": 1, "activation": "relu"}, ["pool"]],
        ["wide", "Conv2D", {"filters": 3, "kernel_size": 3, "padding": "same", "activation": "tanh"}, ["pool"]],
        ["towers", "Concatenate", {}, ["narrow", "wide", "pool"]],
        ["flat", "Flatten", {}, ["towers"]],
        ["head", "Dense", {"units": 3, "activation": "softmax"}, ["flat"]]]),
}

BATCH = 4
LEARNING_RATE = 0.1
MERGE_LAYERS = ("Add", "Concatenate")


def keras_model(input_shape, graph):
    """The Keras functional model of ``graph``, every weight drawn from a fixed generator."""
    tensors = {"input": keras.Input(input_shape)}
    for name, class_name, config, inbound in graph:
        sources = [tensors[source] for source in inbound]
        layer = getattr(keras.layers, class_name)(name=name, **config)
        tensors[name] = layer(sources if class_name in MERGE_LAYERS else sources[0])
    model = keras.Model(tensors["input"], tensors[graph[-1][0]])
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape) * 0.5 for w in model.get_weights()])
    return model


def layer_weights(model, prefix):
    return {f"{prefix}/{layer.name}/{i:02d}": w for layer in model.layers for i, w in enumerate(layer.get_weights())}


def fixture(input_shape, graph):
    """The arrays of one fixture (see the module's docstring)."""
    model = keras_model(input_shape, graph)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, *input_shape)).astype("float32")
    y = rng.standard_normal((BATCH, *model.output_shape[1:])).astype("float32")
    arrays = {"spec": np.array(json.dumps({"input_shape": list(input_shape), "layers": graph})), "x": x, "y": y,
              "output": keras.ops.convert_to_numpy(model(x, training=False)), **layer_weights(model, "weights_before")}
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    model.train_on_batch(x, y)
    arrays.update(layer_weights(model, "weights_after"))
    return arrays


def main():
    makers = {name: functools.partial(fixture, *spec) for name, spec in FIXTURES.items()}
    default_out = pathlib.Path(__file__).parent.parent / "tests" / "fixtures" / "functional"
    write_fixtures(__doc__.splitlines()[0], default_out, makers, f"Keras {keras.__version__}")


if __name__ == "__main__":
    main()
