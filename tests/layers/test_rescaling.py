"""Rescaling: ``y = x * scale + offset``."""

import numpy as np
import pytest

from minidl import layers


def test_pixels_map_to_the_unit_interval_and_to_minus_one_one(backend):
    x = np.array([[0.0, 127.5, 255.0]], dtype=np.float32)
    np.testing.assert_allclose(layers.Rescaling(1 / 255)(x), [[0, 0.5, 1]], rtol=1e-6)
    np.testing.assert_allclose(layers.Rescaling(1 / 127.5, offset=-1)(x), [[-1, 0, 1]], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arguments", [{"scale": "1/255"}, {"scale": float("nan")}, {"scale": 1, "offset": None},
                                       {"scale": True}])
def test_scale_and_offset_must_be_finite_numbers(arguments):
    with pytest.raises(ValueError, match="must be a finite number"):
        layers.Rescaling(**arguments)
