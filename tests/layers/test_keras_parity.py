"""Each layer of the Keras surface against Keras's own results, from the fixtures that
``benchmarks/keras_layer_fixtures.py`` made with Keras (this test does not import Keras).

Each fixture runs the layer in a probe, ``Input -> 1x1 Conv2D or Dense -> layer -> Flatten -> Dense(2)``,
with fixed weights: the outputs in training and inference mode must agree within 1e-5, and the weights
(moving statistics included) after one SGD step on the mean squared error within 1e-4.
"""

import json
import pathlib

import numpy as np
import pytest

import minidl
from minidl import layers
from minidl.backend import ops

FIXTURES = sorted((pathlib.Path(__file__).parent / "fixtures").glob("*.npz"))


def probe(spec):
    """minidl's probe around the fixture's layer, built from the Keras arguments as they are."""
    input_shape = tuple(spec["input_shape"])
    channels = input_shape[-1]
    before = layers.Conv2D(channels, 1) if spec["probe"] == "conv" else layers.Dense(channels)
    return minidl.Sequential([layers.Input(input_shape), before, getattr(layers, spec["layer"])(**spec["config"]),
                              layers.Flatten(), layers.Dense(2)])


def arrays(fixture, prefix):
    return [fixture[key] for key in sorted(fixture.files) if key.startswith(prefix)]


def test_there_is_a_fixture_for_every_new_layer():
    made = {json.loads(str(np.load(path)["spec"]))["layer"] for path in FIXTURES}
    assert made >= {"BatchNormalization", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Reshape", "Rescaling",
                    "ZeroPadding2D", "Conv2D", "Dense"}


@pytest.mark.parametrize("path", FIXTURES, ids=[path.stem for path in FIXTURES])
def test_outputs_and_one_sgd_step_match_keras(backend, path):
    fixture = np.load(path)
    model = probe(json.loads(str(fixture["spec"])))
    model.set_weights(arrays(fixture, "weights_before/"))
    model.compile(optimizer=minidl.optimizers.SGD(0.1), loss="mse")
    x, y = fixture["x"], fixture["y"]
    np.testing.assert_allclose(model.predict(x), fixture["output_inference"], rtol=1e-5, atol=1e-5)
    training_output = ops.to_host(model.forward(ops.to_device(x), training=True))
    np.testing.assert_allclose(training_output, fixture["output_training"], rtol=1e-5, atol=1e-5)
    model.train_on_batch(x, y)
    after = arrays(fixture, "weights_after/")
    assert len(model.get_weights()) == len(after)
    for actual, expected in zip(model.get_weights(), after):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
