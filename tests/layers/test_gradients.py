"""Every layer's hand-written backward against central differences, in float64, on each CPU backend."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minidl import gradcheck, layers

TOLERANCE = 1e-6


@st.composite
def conv_cases(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["valid", "same"]))
    height, width = draw(st.integers(kernel[0], 7)), draw(st.integers(kernel[1], 7))
    layer = layers.Conv2D(draw(st.integers(1, 3)), kernel, strides=strides, padding=padding,
                          activation=draw(st.sampled_from([None, "relu", "sigmoid", "tanh"])),
                          use_bias=draw(st.booleans()))
    return layer, (draw(st.integers(1, 2)), height, width, draw(st.integers(1, 3)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases())
def test_conv2d_gradients_match_central_differences(backend, case):
    layer, input_shape = case
    report = gradcheck.check_layer(layer, input_shape)
    assert report.passed(TOLERANCE), str(report)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_gradients_match_central_differences(backend, activation, use_bias):
    layer = layers.Dense(4, activation=activation, use_bias=use_bias)
    assert gradcheck.check_layer(layer, (3, 5)).passed(TOLERANCE)


@st.composite
def pooling_cases(draw):
    pool = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["valid", "same"]))
    layer_class = draw(st.sampled_from([layers.MaxPooling2D, layers.AveragePooling2D]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(pool[0], 7)), draw(st.integers(pool[1], 7)),
             draw(st.integers(1, 3)))
    return layer_class(pool, strides=strides, padding=padding), shape


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=pooling_cases())
def test_pooling_gradients_match_central_differences(backend, case):
    layer, input_shape = case
    report = gradcheck.check_layer(layer, input_shape)
    assert report.passed(TOLERANCE), str(report)


@pytest.mark.parametrize("layer_factory, input_shape", [
    (lambda: layers.Flatten(), (2, 3, 4, 2)),
    (lambda: layers.ReLU(), (3, 5)),
    (lambda: layers.Sigmoid(), (3, 5)),
    (lambda: layers.Tanh(), (2, 3, 3, 2)),
    (lambda: layers.Softmax(), (3, 5)),
    (lambda: layers.Softmax(), (2, 3, 3, 4)),
    (lambda: layers.Activation("tanh"), (3, 5)),
    (lambda: layers.LeakyReLU(negative_slope=0.2), (3, 5)),
    (lambda: layers.Dropout(0.5), (3, 5)),
])
def test_shape_and_activation_layer_gradients(backend, layer_factory, input_shape):
    assert gradcheck.check_layer(layer_factory(), input_shape).passed(TOLERANCE)


def test_dropout_backward_uses_the_forward_mask(backend):
    layer = layers.Dropout(0.5, seed=3)
    layer.build((1000,))
    x = np.ones((2, 1000), dtype=np.float32)
    y = np.asarray(layer.forward(x, training=True))
    kept = y != 0
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert 0.4 < kept.mean() < 0.6
    grad = np.asarray(layer.backward(np.ones_like(x)))
    np.testing.assert_array_equal(grad, y)
    np.testing.assert_array_equal(np.asarray(layer.forward(x, training=False)), x)


@st.composite
def batch_norm_cases(draw):
    """A BatchNormalization with random options and an input after Dense ``(N, C)`` or Conv2D
    ``(N, H, W, C)``, in training or inference mode."""
    layer = layers.BatchNormalization(momentum=draw(st.floats(0, 1)), epsilon=draw(st.floats(1e-3, 1)),
                                      center=draw(st.booleans()), scale=draw(st.booleans()))
    channels = draw(st.integers(1, 3))
    spatial = draw(st.sampled_from([(), (2, 3), (3, 1)]))
    return layer, (draw(st.integers(2, 4)), *spatial, channels), draw(st.booleans())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=batch_norm_cases())
def test_batch_normalization_gradients_match_central_differences(backend, case):
    layer, input_shape, training = case
    report = gradcheck.check_layer(layer, input_shape, training=training)
    assert report.passed(TOLERANCE), str(report)


def test_frozen_batch_normalization_differentiates_through_its_moving_statistics(backend):
    layer = layers.BatchNormalization(trainable=False)
    layer.build((3,))
    layer.set_weights([np.array([1.0, 2.0, 0.5]), np.zeros(3), np.array([0.1, -0.2, 0.3]), np.array([2.0, 0.5, 1.0])])
    assert gradcheck.check_layer(layer, (4, 3), training=True).passed(TOLERANCE)


@pytest.mark.parametrize("layer_factory, input_shape", [
    (lambda: layers.GlobalAveragePooling2D(), (2, 3, 4, 2)),
    (lambda: layers.GlobalAveragePooling2D(keepdims=True), (2, 1, 5, 3)),
    (lambda: layers.GlobalMaxPooling2D(), (2, 3, 4, 2)),
    (lambda: layers.GlobalMaxPooling2D(keepdims=True), (3, 2, 2, 1)),
    (lambda: layers.Reshape((-1, 2)), (2, 3, 4)),
    (lambda: layers.Reshape((6, 2, 1)), (2, 3, 4)),
    (lambda: layers.Rescaling(1 / 255), (3, 5)),
    (lambda: layers.Rescaling(-2.0, offset=1.0), (2, 3, 3, 2)),
    (lambda: layers.ZeroPadding2D(1), (2, 3, 3, 2)),
    (lambda: layers.ZeroPadding2D((2, 0)), (1, 3, 2, 1)),
    (lambda: layers.ZeroPadding2D(((0, 2), (1, 3))), (2, 2, 3, 2)),
])
def test_new_shape_and_pooling_layer_gradients(backend, layer_factory, input_shape):
    report = gradcheck.check_layer(layer_factory(), input_shape)
    assert report.passed(TOLERANCE), str(report)
