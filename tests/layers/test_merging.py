"""``Add`` and ``Concatenate``: their math against NumPy, their backward against central differences
(float64, on each CPU backend), and the errors a wrong list of inputs gets."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minidl import gradcheck, layers

TOLERANCE = 1e-6
FIXTURE_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def add_cases(draw):
    """A per-sample shape of rank 1 to 3, a batch size and how many inputs (2 to 4) to add."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    return (draw(st.integers(1, 3)), *shape), draw(st.integers(2, 4))


@st.composite
def concatenate_cases(draw):
    """``(axis, batch shapes)``: 2 to 3 inputs equal except on a drawn non-batch axis."""
    sample = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    axis = draw(st.integers(1, len(sample)))
    sizes = draw(st.lists(st.integers(1, 4), min_size=2, max_size=3))
    batch = draw(st.integers(1, 3))
    shapes = [(batch, *sample[:axis - 1], size, *sample[axis:]) for size in sizes]
    return draw(st.sampled_from([axis, axis - len(sample) - 1])), shapes


@FIXTURE_SETTINGS
@given(case=add_cases())
def test_add_gradients_match_central_differences(backend, case):
    batch_shape, count = case
    report = gradcheck.check_layer(layers.Add(), [batch_shape] * count)
    assert report.passed(TOLERANCE), str(report)
    assert sorted(report.errors) == [f"input_{i}" for i in range(count)]


@FIXTURE_SETTINGS
@given(case=concatenate_cases())
def test_concatenate_gradients_match_central_differences(backend, case):
    axis, shapes = case
    report = gradcheck.check_layer(layers.Concatenate(axis=axis), shapes)
    assert report.passed(TOLERANCE), str(report)


@FIXTURE_SETTINGS
@given(case=concatenate_cases(), seed=st.integers(0, 2**16))
def test_concatenate_and_add_compute_what_numpy_does(backend, case, seed):
    axis, shapes = case
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    np.testing.assert_array_equal(layers.Concatenate(axis=axis)(parts), np.concatenate(parts, axis=axis))
    same = [rng.standard_normal(shapes[0]).astype(np.float32) for _ in range(3)]
    np.testing.assert_allclose(layers.Add()(same), same[0] + same[1] + same[2], rtol=1e-6)


def test_add_refuses_inputs_of_different_shapes_naming_them():
    with pytest.raises(ValueError, match=r"'add_bad' \(Add\) needs inputs of one shape, got \(None, 4, 4, 3\), "
                                         r"\(None, 4, 4, 2\)"):
        layers.Add(name="add_bad").build([(4, 4, 3), (4, 4, 2)])


def test_concatenate_refuses_shapes_that_differ_off_its_axis_and_the_batch_axis():
    with pytest.raises(ValueError, match=r"equal shapes except on axis -1, got \(None, 4, 4, 3\), \(None, 5, 4, 2\)"):
        layers.Concatenate().build([(4, 4, 3), (5, 4, 2)])
    with pytest.raises(ValueError, match="axis 0 is the batch"):
        layers.Concatenate(axis=0)
    with pytest.raises(ValueError, match="axis 4 is not a non-batch axis of inputs with 4 axes"):
        layers.Concatenate(axis=4).build([(4, 4, 3), (4, 4, 2)])


def test_merge_layers_take_a_list_of_at_least_two_inputs():
    with pytest.raises(ValueError, match="at least two inputs, got 1"):
        layers.Add().build([(3,)])
    with pytest.raises(TypeError, match=r"is called on a list of inputs, got ndarray"):
        layers.Add()(np.zeros((2, 3)))


def test_a_built_merge_layer_names_the_shapes_it_expected_when_called_on_others():
    add = layers.Add(name="add_built")
    add([np.zeros((2, 3)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"'add_built' \(Add\) expected inputs of shapes \(None, 3\), \(None, 3\), "
                                         r"got \(2, 4\), \(2, 4\)"):
        add([np.zeros((2, 4)), np.zeros((2, 4))])


def test_concatenate_config_round_trips():
    layer = layers.Concatenate(axis=2, name="joined")
    again = layers.deserialize(layers.serialize(layer))
    assert type(again) is layers.Concatenate and again.axis == 2 and again.name == "joined"
