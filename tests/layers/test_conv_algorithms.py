"""Conv2D's two algorithms: which one ``"auto"`` picks, and that Winograd gives im2col's results."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
