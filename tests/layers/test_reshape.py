"""Reshape: the same values in C order under a new per-sample shape."""

import numpy as np
import pytest

import minidl
from minidl import layers


@pytest.mark.parametrize("target, expected", [((6, 2), (6, 2)), ((-1, 3), (4, 3)), ((2, -1, 1), (2, 6, 1))])
def test_reshape_keeps_c_order_and_infers_one_unknown_dimension(target, expected):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    model = minidl.Sequential([layers.Input((3, 4)), layers.Reshape(target)])
    assert model.output_shape == expected
    np.testing.assert_array_equal(model.predict(x), x.reshape(2, *expected))


def test_a_shape_of_another_size_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"'r' \(Reshape\) cannot reshape inputs \(None, 3, 4\) \(12 values per "
                                         r"sample\) to \(None, 5, -1\)"):
        minidl.Sequential([layers.Input((3, 4)), layers.Reshape((5, -1), name="r")])


@pytest.mark.parametrize("target", [(), (0, 2), (-1, -1), (2.5,)])
def test_a_bad_target_shape_is_refused(target):
    with pytest.raises(ValueError, match="target_shape must be positive ints with at most one -1"):
        layers.Reshape(target)
