"""Conv2D's algorithms: which one ``"auto"`` picks, that Winograd gives im2col's results, and the direct
one-kernel pass of a grayscale first conv with its max pooling."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minidl
from minidl import gradcheck, layers

TOLERANCE = 1e-6


def built_conv(input_shape, **options):
    layer = layers.Conv2D(4, options.pop("kernel_size", 3), **options)
    layer.build(input_shape)
    return layer


@pytest.mark.parametrize("options, input_shape, expected", [
    ({}, (13, 13, 32), "winograd"),
    ({}, (28, 28, 1), "im2col"),  # too few input channels for its 16 GEMMs to pay off
    ({"kernel_size": 5}, (13, 13, 32), "im2col"),
    ({"strides": 2}, (13, 13, 32), "im2col"),
    ({"algorithm": "winograd"}, (28, 28, 1), "winograd"),
    ({"algorithm": "im2col"}, (13, 13, 32), "im2col"),
])
def test_auto_picks_winograd_for_3x3_stride_1_kernels_over_enough_channels(options, input_shape, expected):
    assert built_conv(input_shape, **options).method.name == expected


def test_an_algorithm_that_cannot_run_the_layer_is_refused_by_name():
    with pytest.raises(ValueError, match=r"conv: algorithm 'winograd' needs a 3x3 kernel at stride 1, "
                                         r"got kernel_size \(3, 3\) and strides \(2, 2\)"):
        layers.Conv2D(4, 3, strides=2, algorithm="winograd", name="conv")
    with pytest.raises(ValueError, match=r"conv: algorithm must be one of \('auto', 'im2col', 'winograd'\), "
                                         r"got 'fft'"):
        layers.Conv2D(4, 3, algorithm="fft", name="conv")


def test_a_chosen_algorithm_survives_the_config_round_trip():
    layer = layers.Conv2D(4, 3, algorithm="im2col")
    assert layers.Conv2D.from_config(layer.get_config()).algorithm == "im2col"
    assert "algorithm" not in layers.Conv2D(4, 3).get_config()


@st.composite
def winograd_layer_cases(draw):
    """A 3x3 stride-1 conv's options and an input shape ``(N, H, W, C_in)`` it fits, float64."""
    padding = draw(st.sampled_from(["valid", "same"]))
    smallest = 3 if padding == "valid" else 1
    options = {"filters": draw(st.integers(1, 3)), "padding": padding, "use_bias": draw(st.booleans()),
               "activation": draw(st.sampled_from([None, "relu", "tanh"]))}
    shape = (draw(st.integers(1, 2)), draw(st.integers(smallest, 8)), draw(st.integers(smallest, 8)),
             draw(st.integers(1, 3)))
    return options, shape


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=winograd_layer_cases())
def test_winograd_gives_the_im2col_outputs_and_gradients(backend, case):
    options, shape = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    convs = [layers.Conv2D(kernel_size=3, algorithm=algorithm, dtype="float64", **options)
             for algorithm in ("im2col", "winograd")]
    results = []
    for conv in convs:
        conv.build(shape[1:])
        conv.set_weights(convs[0].get_weights())
        conv.input_grad_needed = True
        y = conv.forward(x, training=True)
        grad_x = conv.backward(np.random.default_rng(1).standard_normal(y.shape))
        results.append((y, grad_x, conv.grads["kernel"]))
    for im2col_result, winograd_result in zip(*results):
        np.testing.assert_allclose(winograd_result, im2col_result, rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=winograd_layer_cases())
def test_winograd_conv2d_gradients_match_central_differences(backend, case):
    options, shape = case
    report = gradcheck.check_layer(layers.Conv2D(kernel_size=3, algorithm="winograd", **options), shape)
    assert report.passed(TOLERANCE), str(report)


# ------------------------------------------- a grayscale first conv and its max pooling in one kernel


def conv_then_pool(input_shape=(9, 8, 1), conv_options=None, pool_options=None, first=True, dtype="float32"):
    """``[Input, (Conv2D 1x1,) Conv2D(relu), MaxPooling2D, Flatten, Dense]``; with ``first=False`` a
    1x1 conv before the conv makes the conv's input gradient needed."""
    model = minidl.Sequential([layers.Input(input_shape)])
    if not first:
        model.add(layers.Conv2D(input_shape[-1], 1, dtype=dtype))
    model.add(layers.Conv2D(3, **{"kernel_size": 3, "activation": "relu", "dtype": dtype, **(conv_options or {})}))
    model.add(layers.MaxPooling2D(**{"pool_size": 2, **(pool_options or {})}))
    model.add(layers.Flatten())
    model.add(layers.Dense(2, dtype=dtype))
    return model


@pytest.mark.parametrize("conv_options, pool_options, input_shape, first, expected", [
    ({}, {}, (9, 8, 1), True, True),
    ({"padding": "same"}, {}, (9, 8, 1), True, False),
    ({"strides": 2}, {}, (9, 8, 1), True, False),
    ({"kernel_size": 5}, {}, (9, 8, 1), True, False),
    ({"algorithm": "im2col"}, {}, (9, 8, 1), True, False),
    ({}, {}, (9, 8, 3), True, False),  # three input channels
    ({}, {}, (9, 8, 1), False, False),  # not the first layer: its input gradient is needed
    ({}, {"pool_size": 3}, (9, 8, 1), True, False),
    ({}, {"strides": 1}, (9, 8, 1), True, False),
    ({}, {"padding": "same"}, (9, 9, 1), True, False),  # a 7x7 output, padded by one for its last window
])
def test_a_gray_first_conv_runs_with_its_pooling_as_one_kernel_only_where_that_kernel_applies(
        conv_options, pool_options, input_shape, first, expected):
    model = conv_then_pool(input_shape, conv_options, pool_options, first)
    conv_index = 0 if first else 1
    conv, pool = model.layers[conv_index], model.layers[conv_index + 1]
    assert conv.pools_directly(pool) == expected
    lines = []
    model.summary(print_fn=lines.append)
    assert ("none (direct, with pooling)" in lines[0]) == expected


def forward_backward(model, x, grad_out, training):
    """``(y, [every parameter gradient])`` of one forward pass and one backward pass."""
    y = np.asarray(model.forward(x, training=training))
    model.backward(grad_out)
    return y, [np.asarray(g) for layer in model.layers for g in layer.grads.values()]


@pytest.mark.parametrize("training", [True, False], ids=["training", "after an inference pass"])
def test_the_direct_conv_and_pooling_give_the_im2col_outputs_and_gradients(backend, training):
    direct, im2col = conv_then_pool(dtype="float64"), conv_then_pool(conv_options={"algorithm": "im2col"},
                                                                      dtype="float64")
    im2col.set_weights(direct.get_weights())
    for model in (direct, im2col):
        model.compile(optimizer="sgd", loss="mse")  # backward starts from dL/dy
    rng = np.random.default_rng(0)
    x, grad_out = rng.standard_normal((4, 9, 8, 1)), rng.standard_normal((4, 2))
    direct_y, direct_grads = forward_backward(direct, x, grad_out, training)
    im2col_y, im2col_grads = forward_backward(im2col, x, grad_out, training=True)
    assert direct.layers[0].pooled_directly and not im2col.layers[0].pooled_directly
    np.testing.assert_allclose(direct_y, im2col_y, rtol=1e-12, atol=1e-12)
    for direct_grad, im2col_grad in zip(direct_grads, im2col_grads):
        np.testing.assert_allclose(direct_grad, im2col_grad, rtol=1e-10, atol=1e-12)


def test_a_model_with_the_direct_conv_passes_the_gradient_check(backend):
    model = conv_then_pool()
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(2)
    report = gradcheck.check_model(model, rng.standard_normal((3, 9, 8, 1)), rng.standard_normal((3, 2)),
                                   check_input=False)
    assert model.layers[0].pooled_directly
    assert report.passed(TOLERANCE), str(report)
