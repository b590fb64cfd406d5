"""BatchNormalization: batch statistics while training, moving statistics otherwise, committed only
after a successful update, saved and exchanged in Keras's weight order."""

import numpy as np
import pytest

import minidl
from minidl import layers


def bn_model(momentum=0.9, **options):
    """``Dense(3) -> BatchNormalization -> Dense(2)`` on 4 features, float64."""
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(3), layers.BatchNormalization(momentum=momentum, **options),
                               layers.Dense(2)]).cast("float64")
    model.compile(optimizer=minidl.optimizers.SGD(0.01), loss="mse")
    return model


def batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.standard_normal((n, 2))


def test_keras_weight_order_and_shapes_with_the_moving_statistics_non_trainable():
    layer = layers.BatchNormalization()
    layer.build((5, 5, 3))
    assert [key for key, _ in layer.weights()] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert sorted(layer.params) == ["beta", "gamma"] and sorted(layer.state) == ["moving_mean", "moving_variance"]
    np.testing.assert_array_equal(np.stack(layer.get_weights()), [[1] * 3, [0] * 3, [0] * 3, [1] * 3])
    assert layer.count_params() == 12 and layer.count_trainable_params() == 6


def test_without_center_and_scale_only_the_moving_statistics_are_weights():
    layer = layers.BatchNormalization(center=False, scale=False)
    layer.build((3,))
    assert [key for key, _ in layer.weights()] == ["moving_mean", "moving_variance"]
    x = np.random.default_rng(0).standard_normal((6, 3)) * 4 + 2
    y = layer(x, training=True)
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3), rtol=1e-5)


def test_training_forward_uses_batch_statistics_and_inference_the_moving_ones():
    layer = layers.BatchNormalization(epsilon=0.01)
    layer.build((2, 2, 3))
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 3.0])
    moving_mean, moving_variance = np.array([0.5, 0.0, -1.0]), np.array([2.0, 1.0, 0.25])
    layer.set_weights([gamma, beta, moving_mean, moving_variance])
    x = np.random.default_rng(1).standard_normal((4, 2, 2, 3)).astype(np.float32)
    mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # over every pixel of every image
    np.testing.assert_allclose(layer(x, training=True), gamma * (x - mean) / np.sqrt(variance + 0.01) + beta,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(x), gamma * (x - moving_mean) / np.sqrt(moving_variance + 0.01) + beta,
                               rtol=1e-5, atol=1e-5)


def test_a_training_step_moves_the_statistics_toward_the_batch_by_momentum():
    model = bn_model(momentum=0.9)
    x, y = batch()
    hidden = model.layers[0](x)  # the batch as BatchNormalization sees it
    model.train_on_batch(x, y)
    moving_mean, moving_variance = model.layers[1].get_weights()[2:]
    np.testing.assert_allclose(moving_mean, 0.1 * hidden.mean(0), rtol=1e-10)
    np.testing.assert_allclose(moving_variance, 0.9 + 0.1 * hidden.var(0), rtol=1e-10)


def test_forward_passes_alone_leave_the_moving_statistics_unchanged():
    model = bn_model()
    before = model.get_weights()
    x, y = batch()
    model.layers[1].forward(model.layers[0](x), training=True)
    model.predict(x)
    model.evaluate(x, y, verbose=0)
    for after, expected in zip(model.get_weights(), before):
        np.testing.assert_array_equal(after, expected)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_a_step_that_fails_on_a_non_finite_gradient_leaves_the_moving_statistics_unchanged():
    model = bn_model()
    weights = model.get_weights()
    weights[-2][:] = 1e300  # the last Dense overflows after a finite BatchNormalization
    model.set_weights(weights)
    x, y = batch()
    with pytest.raises(FloatingPointError, match="weights were left unchanged"):
        model.train_on_batch(x, y)
    for after, expected in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(after, expected)
    model.set_weights([w if i != len(weights) - 2 else np.ones_like(w) for i, w in enumerate(weights)])
    hidden = model.layers[0](x)
    model.train_on_batch(x, y)  # the failed step's statistics are not committed by the next one either
    np.testing.assert_allclose(model.layers[1].get_weights()[2], 0.1 * hidden.mean(0), rtol=1e-10)


def test_a_frozen_layer_normalizes_with_its_moving_statistics_and_never_updates_them():
    model = bn_model(trainable=False)
    x, y = batch()
    moving = [w.copy() for w in model.layers[1].get_weights()]
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    for after, expected in zip(model.layers[1].get_weights(), moving):
        np.testing.assert_array_equal(after, expected)
    hidden = model.layers[0](x)
    np.testing.assert_allclose(model.layers[1](hidden, training=True), hidden / np.sqrt(1 + 1e-3), rtol=1e-10)


@pytest.mark.parametrize("options, message", [
    ({"axis": 1}, r"normalizes the channels, the last axis \(-1 or 3 for inputs \(None, 4, 4, 2\)\), got axis=1"),
    ({"momentum": 1.5}, r"momentum must be in \[0, 1\], got 1.5"),
    ({"epsilon": 0}, "epsilon must be > 0, got 0"),
])
def test_bad_arguments_are_refused_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        minidl.Sequential([layers.Input((4, 4, 2)), layers.BatchNormalization(**options)])


def test_the_last_axis_may_be_given_by_its_index():
    model = minidl.Sequential([layers.Input((4, 4, 2)), layers.BatchNormalization(axis=3)])
    assert model.output_shape == (4, 4, 2)


def test_summary_counts_the_moving_statistics_as_non_trainable():
    model = minidl.Sequential([layers.Input((4, 4, 2)), layers.Conv2D(3, 3), layers.BatchNormalization(),
                               layers.Flatten(), layers.Dense(2)])
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Total params: 95" in text and "Trainable params: 89" in text and "Non-trainable params: 6" in text
