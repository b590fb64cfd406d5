"""``Add``, ``Concatenate`` and a small functional model against Keras's own results, from the
fixtures that ``benchmarks/keras_functional_fixtures.py`` made with Keras (this test does not import
Keras): outputs within 1e-5, every layer's weights after one SGD step on the mean squared error
within 1e-4."""

import json
import pathlib

import numpy as np
import pytest

import minidl
from minidl import layers

FIXTURES = sorted((pathlib.Path(__file__).parent / "fixtures" / "functional").glob("*.npz"))


def functional_model(spec):
    """minidl's model of the fixture's graph, each layer made from its Keras arguments as they are."""
    tensors = {"input": minidl.Input(tuple(spec["input_shape"]))}
    for name, class_name, config, inbound in spec["layers"]:
        layer = getattr(layers, class_name)(name=name, **config)
        sources = [tensors[source] for source in inbound]
        tensors[name] = layer(sources if layer.takes_several_inputs else sources[0])
    return minidl.Model(tensors["input"], tensors[spec["layers"][-1][0]])


def layer_arrays(fixture, prefix, layer_name):
    return [fixture[key] for key in sorted(fixture.files) if key.startswith(f"{prefix}/{layer_name}/")]


def test_there_are_fixtures_for_add_concatenate_and_a_functional_model():
    classes = {entry[1] for path in FIXTURES for entry in json.loads(str(np.load(path)["spec"]))["layers"]}
    assert {"Add", "Concatenate"} <= classes and len(FIXTURES) >= 3


@pytest.mark.parametrize("path", FIXTURES, ids=[path.stem for path in FIXTURES])
def test_outputs_and_one_sgd_step_match_keras(backend, path):
    fixture = np.load(path)
    model = functional_model(json.loads(str(fixture["spec"])))
    for layer in model.layers:
        layer.set_weights(layer_arrays(fixture, "weights_before", layer.name))
    model.compile(optimizer=minidl.optimizers.SGD(0.1), loss="mse")
    x, y = fixture["x"], fixture["y"]
    np.testing.assert_allclose(model.predict(x), fixture["output"], rtol=1e-5, atol=1e-5)
    model.train_on_batch(x, y)
    for layer in model.layers:
        expected = layer_arrays(fixture, "weights_after", layer.name)
        assert len(layer.get_weights()) == len(expected), layer.name
        for actual, keras_value in zip(layer.get_weights(), expected):
            np.testing.assert_allclose(actual, keras_value, rtol=1e-4, atol=1e-4, err_msg=layer.name)
