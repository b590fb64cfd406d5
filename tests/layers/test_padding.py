"""ZeroPadding2D: a border of zeros around each image."""

import numpy as np
import pytest

import minidl
from minidl import layers


@pytest.mark.parametrize("padding, pads", [
    (2, ((2, 2), (2, 2))),
    ((1, 3), ((1, 1), (3, 3))),
    (((0, 1), (2, 0)), ((0, 1), (2, 0))),
])
def test_padding_takes_an_int_a_pair_or_a_pair_of_pairs_as_keras_does(backend, padding, pads):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2)).astype(np.float32)
    y = layers.ZeroPadding2D(padding)(x)
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), *pads, (0, 0))))


@pytest.mark.parametrize("padding", [-1, (1, 2, 3), ((1, 2), (3,)), (1.5, 1), "same", True])
def test_bad_padding_is_refused_saying_what_is_accepted(padding):
    with pytest.raises(ValueError, match="padding must be an int >= 0, a pair of them"):
        layers.ZeroPadding2D(padding)


def test_inputs_that_are_not_images_are_refused_naming_the_layer():
    with pytest.raises(ValueError, match=r"'pad' \(ZeroPadding2D\) expects inputs of shape"):
        minidl.Sequential([layers.Input((4, 4)), layers.ZeroPadding2D(1, name="pad")])
