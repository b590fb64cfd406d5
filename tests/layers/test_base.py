"""The layer contract's guards: float dtypes only, and backward before forward named as such."""

import re

import numpy as np
import pytest

from minidl import layers
from minidl.layers.base import window_geometry


@pytest.mark.parametrize("make, input_shape", [
    (lambda: layers.Dense(3, activation="relu"), (4,)),
    (lambda: layers.Conv2D(2, 3, activation="relu"), (5, 5, 1)),
    (lambda: layers.MaxPooling2D(2), (4, 4, 2)),
    (lambda: layers.AveragePooling2D(2), (4, 4, 2)),
    (lambda: layers.Flatten(), (2, 3)),
    (lambda: layers.Activation("tanh"), (3,)),
    (lambda: layers.LeakyReLU(), (3,)),
    (lambda: layers.BatchNormalization(), (4, 4, 2)),
    (lambda: layers.GlobalAveragePooling2D(), (4, 4, 2)),
    (lambda: layers.GlobalMaxPooling2D(), (4, 4, 2)),
])
def test_backward_before_any_forward_says_that_forward_must_run_first(make, input_shape):
    layer = make()
    layer.build(input_shape)
    grad_out = np.ones((2, *layer.output_shape), np.float32)
    with pytest.raises(AttributeError, match=rf"layer '{layer.name}' \({type(layer).__name__}\): "
                                             rf"backward\(\) needs '\w+', which forward\(\) keeps; "
                                             rf"call forward\(x, training=True\) before backward\(\)"):
        layer.backward(grad_out)


@pytest.mark.parametrize("make, input_shape", [
    (lambda: layers.Dense(3, activation="softmax"), (4,)), (lambda: layers.Conv2D(2, 3), (5, 5, 1)),
    (lambda: layers.MaxPooling2D(2), (4, 4, 2)), (lambda: layers.AveragePooling2D(2), (4, 4, 2)),
    (lambda: layers.GlobalAveragePooling2D(), (4, 4, 2)), (lambda: layers.GlobalMaxPooling2D(), (4, 4, 2)),
    (lambda: layers.Flatten(), (2, 3)), (lambda: layers.BatchNormalization(), (4, 4, 2)),
    (lambda: layers.Activation("softmax"), (3,)), (lambda: layers.LeakyReLU(), (3,)),
])
def test_forward_keeps_names_what_a_training_forward_keeps(make, input_shape):
    layer = make()
    layer.build(input_shape)
    assert layer.forward_keeps
    layer.forward(np.ones((2, *input_shape), np.float32), training=True)
    assert set(layer.forward_keeps) <= set(vars(layer))


def test_a_missing_attribute_outside_backward_keeps_python_s_usual_message():
    with pytest.raises(AttributeError, match="'Dense' object has no attribute 'fliters'"):
        layers.Dense(3).fliters  # noqa: B018
    assert getattr(layers.Dense(3), "y", None) is None


@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8", "bool", "object", "complex64", "float16",
                                   "nonsense", 5])
def test_a_layer_refuses_a_dtype_other_than_float32_or_float64(dtype):
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\), got"):
        layers.Dense(3, dtype=dtype)
    layer = layers.Dense(3)
    with pytest.raises(ValueError, match="dtype must be one of"):
        layer.cast(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float64])
def test_float32_and_float64_layers_compute_in_their_dtype(dtype):
    layer = layers.Dense(3, dtype=dtype)
    assert layer(np.ones((2, 4))).dtype == np.dtype(dtype)


def test_cast_converts_parameters_and_state_and_a_refused_dtype_changes_nothing():
    layer = layers.BatchNormalization()
    layer.build((3,))
    before = layer.get_weights()
    layer.cast("float64")
    after = layer.get_weights()
    assert layer.dtype == np.float64 and all(weight.dtype == np.float64 for weight in after)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(new, old)
    with pytest.raises(ValueError, match="dtype must be one of"):
        layer.cast("int32")
    assert layer.dtype == np.float64 and all(weight.dtype == np.float64 for weight in layer.get_weights())


def test_no_layer_file_moves_arrays_between_the_host_and_the_backend():
    """A layer's file holds its math: ``layer(x)`` and the weights in and out as NumPy arrays cross
    to and from the backend in ``minidl/host.py`` alone."""
    from pathlib import Path

    import minidl.layers

    crossing = [path.name for path in Path(minidl.layers.__file__).parent.glob("*.py")
                if "to_device" in path.read_text() or "to_host" in path.read_text()]
    assert crossing == []


def test_no_layer_file_names_the_plans_speed_machinery():
    """Algorithm choice, chunking and fusions are passes of the plan (``minidl/engine``) over the
    kernels (``minidl/kernels``, reached through ``minidl.backend.ops``); a layer's file computes its
    own formula and names none of them."""
    from pathlib import Path

    import minidl.layers

    machinery = (r"(from|import) minidl\.(engine|kernels)", r"\bwinograd", r"by_image", r"\bchunk", r"\bworkspace",
                 r"conv_choice", r"\bfus(ed|ion)\b")
    naming = {path.name: [word for word in machinery if re.search(word, path.read_text().lower())]
              for path in Path(minidl.layers.__file__).parent.glob("*.py")}
    assert {name: words for name, words in naming.items() if words} == {}


def test_a_layer_called_on_host_arrays_and_its_weights_round_trip_as_host_arrays():
    dense = layers.Dense(2)
    y = dense(np.ones((3, 4), np.float32))
    assert isinstance(y, np.ndarray) and y.shape == (3, 2)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 2, bias + 1])
    np.testing.assert_allclose(dense(np.ones((3, 4))), np.ones((3, 4)) @ (kernel * 2) + bias + 1,
                               rtol=1e-5, atol=1e-6)  # float32 sums
    assert all(isinstance(w, np.ndarray) for w in dense.get_weights())


def test_same_padding_matches_tensorflow_rule():
    # TensorFlow: out = ceil(in / stride), total pad split with the extra pixel after
    pads, out_hw = window_geometry((5, 6), (3, 2), (2, 1), "same")
    assert out_hw == (3, 6)
    assert pads == ((1, 1), (0, 1))
