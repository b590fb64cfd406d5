"""Keras's own results for each layer of the Keras surface, saved as small ``.npz`` fixtures that
``tests/layers/test_keras_parity.py`` compares minidl with, without importing Keras.

    python benchmarks/keras_layer_fixtures.py            # needs the bench extra: pip install -e .[bench]

Each fixture runs one layer inside a *probe*: ``Input -> a 1x1 Conv2D (images) or a Dense (vectors)
-> the layer -> Flatten -> Dense(2)``, every weight drawn from a fixed generator.  The layer before
makes one SGD step depend on the layer's backward, the Dense after on its forward.  Saved per fixture:

* ``spec``: JSON ``{"input_shape", "layer", "config", "probe"}``: the layer's class and Keras arguments;
* ``x`` ``(4, *input_shape)``, ``y`` ``(4, 2)``; ``weights_before/NN``: the probe's ``get_weights()``;
* ``output_training``, ``output_inference``: the probe's outputs for ``x`` in each mode;
* ``weights_after/NN``: ``get_weights()`` after one ``train_on_batch(x, y)`` with ``SGD(0.1)`` and the
  mean squared error (BatchNormalization's moving statistics included).
"""

import functools
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fixture_files import write_fixtures  # noqa: E402  benchmarks/fixture_files.py, beside this script

#: name -> (per-sample input shape, layer class, Keras arguments)
FIXTURES = {
    "batch_normalization_images": ((5, 5, 3), "BatchNormalization", {"momentum": 0.8, "epsilon": 0.01}),
    "batch_normalization_vectors": ((6,), "BatchNormalization", {}),
    "batch_normalization_no_center_scale": ((4, 4, 2), "BatchNormalization", {"center": False, "scale": False}),
    "global_average_pooling": ((4, 5, 3), "GlobalAveragePooling2D", {}),
    "global_max_pooling": ((4, 5, 3), "GlobalMaxPooling2D", {"keepdims": True}),
    "reshape": ((4, 6, 2), "Reshape", {"target_shape": [3, -1]}),
    "rescaling": ((5, 5, 2), "Rescaling", {"scale": 0.0078125, "offset": -1.0}),
    "zero_padding": ((4, 3, 2), "ZeroPadding2D", {"padding": [[1, 2], [0, 3]]}),
    "conv2d_without_bias": ((6, 6, 2), "Conv2D", {"filters": 3, "kernel_size": 3, "use_bias": False}),
    "dense_without_bias": ((5,), "Dense", {"units": 4, "use_bias": False}),
}

BATCH = 4
LEARNING_RATE = 0.1


def probe(input_shape, layer_class, config):
    """The probe model around ``layer_class(**config)``, every weight drawn from a fixed generator."""
    channels = input_shape[-1]
    before = keras.layers.Conv2D(channels, 1) if len(input_shape) == 3 else keras.layers.Dense(channels)
    model = keras.Sequential([keras.Input(input_shape), before, getattr(keras.layers, layer_class)(**config),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in v.path else rng.standard_normal(w.shape) * 0.5
                       for w, v in zip(model.get_weights(), model.weights)])
    return model


def fixture(input_shape, layer_class, config):
    """The arrays of one fixture (see the module's docstring)."""
    model = probe(input_shape, layer_class, config)
    rng = np.random.default_rng(1)
    scale = 100.0 if layer_class == "Rescaling" else 1.0
    x = (rng.standard_normal((BATCH, *input_shape)) * scale + scale).astype("float32")
    y = rng.standard_normal((BATCH, 2)).astype("float32")
    arrays = {"spec": np.array(json.dumps({"input_shape": list(input_shape), "layer": layer_class, "config": config,
                                           "probe": "conv" if len(input_shape) == 3 else "dense"})),
              "x": x, "y": y,
              "output_training": keras.ops.convert_to_numpy(model(x, training=True)),
              "output_inference": keras.ops.convert_to_numpy(model(x, training=False))}
    arrays.update({f"weights_before/{i:02d}": w for i, w in enumerate(model.get_weights())})
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    model.train_on_batch(x, y)
    arrays.update({f"weights_after/{i:02d}": w for i, w in enumerate(model.get_weights())})
    return arrays


def main():
    makers = {name: functools.partial(fixture, *spec) for name, spec in FIXTURES.items()}
    default_out = pathlib.Path(__file__).parent.parent / "tests" / "layers" / "fixtures"
    write_fixtures(__doc__.splitlines()[0], default_out, makers, f"Keras {keras.__version__}")


if __name__ == "__main__":
    main()
