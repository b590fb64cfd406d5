"""Dense and Conv2D: the bias and the activation in one pass over the layer's product."""

import importlib

import numpy as np
import pytest

from minidl import layers
from minidl.backend import KERNEL_MODULES


@pytest.mark.parametrize("make, input_shape", [
    (lambda: layers.Dense(4, activation="relu"), (3, 5)),
    (lambda: layers.Dense(4, activation="tanh"), (3, 5)),
    (lambda: layers.Conv2D(3, 2, activation="sigmoid"), (2, 4, 4, 2)),
])
def test_forward_adds_the_bias_and_activates_in_one_pass(backend, monkeypatch, make, input_shape):
    """``y = f(product + b)`` by one ``bias_activation`` call, the bias and ``f`` together (the layers
    once added the bias in one pass and applied ``f`` in another)."""
    layer = make()
    layer.build(input_shape[1:])
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    expected = layer.forward(x)
    kernels = importlib.import_module(KERNEL_MODULES[backend])
    calls = []

    def counted(z, bias, activation):
        calls.append((bias is not None, activation))
        return original(z, bias, activation)

    original = kernels.bias_activation
    monkeypatch.setattr(kernels, "bias_activation", counted)
    np.testing.assert_array_equal(layer.forward(x), expected)
    assert calls == [(True, layer.activation)]
