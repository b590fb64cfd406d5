"""GlobalAveragePooling2D and GlobalMaxPooling2D: one value per channel of each image."""

import numpy as np
import pytest

import minidl
from minidl import layers


@pytest.mark.parametrize("layer_class, reduce", [(layers.GlobalAveragePooling2D, np.mean),
                                                 (layers.GlobalMaxPooling2D, np.max)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_each_channel_of_each_image_is_reduced_over_every_pixel(backend, layer_class, reduce, keepdims):
    x = np.random.default_rng(0).standard_normal((3, 5, 4, 2)).astype(np.float32)
    y = layer_class(keepdims=keepdims)(x)
    np.testing.assert_allclose(y, reduce(x, axis=(1, 2), keepdims=keepdims), rtol=1e-6)


def test_the_max_gradient_goes_to_the_winning_pixel_only(backend):
    layer = layers.GlobalMaxPooling2D()
    x = np.zeros((1, 3, 3, 2), dtype=np.float32)
    x[0, 2, 1, 0], x[0, 0, 0, 1] = 5, 7
    layer(x)
    grad = np.asarray(layer.backward(np.array([[1.0, 2.0]], dtype=np.float32)))
    expected = np.zeros_like(x)
    expected[0, 2, 1, 0], expected[0, 0, 0, 1] = 1, 2
    np.testing.assert_array_equal(grad, expected)


def test_inputs_that_are_not_images_are_refused_naming_the_layer():
    with pytest.raises(ValueError, match=r"'gap' \(GlobalAveragePooling2D\) expects inputs of shape "
                                         r"\(None, height, width, channels\), got \(None, 10\)"):
        minidl.Sequential([layers.Input((10,)), layers.GlobalAveragePooling2D(name="gap")])


def test_keras_aliases_name_the_same_classes():
    assert layers.GlobalAvgPool2D is layers.GlobalAveragePooling2D
    assert layers.GlobalMaxPool2D is layers.GlobalMaxPooling2D
