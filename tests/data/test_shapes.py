"""make_shapes: the labels match the shapes drawn."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl.data import SHAPE_NAMES, make_shapes


def fill_ratio(image):
    """Shape area over the area of its smallest enclosing circle: pi r^2 -> 1, square 2/pi, triangle
    3 sqrt(3) / (4 pi).  The half pixel added to the radius accounts for pixel extent."""
    mask = (image.max(axis=-1) > 0).astype(np.uint8)
    _, radius = cv2.minEnclosingCircle(cv2.findNonZero(mask))
    return mask.sum() / (np.pi * (radius + 0.5) ** 2)


def classify(image):
    ratio = fill_ratio(image)
    return 0 if ratio > 0.75 else 1 if ratio > 0.53 else 2


@pytest.mark.parametrize("channels", [1, 3])
def test_labels_match_the_area_ratio_of_the_drawn_shape(channels):
    x, y = make_shapes(300, seed=5, channels=channels)
    predicted = np.array([classify(image) for image in x])
    np.testing.assert_array_equal(predicted, y)


def test_shapes_have_the_requested_layout_and_all_classes():
    x, y = make_shapes(90, size=32, seed=1, channels=3)
    assert x.shape == (90, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (90,) and set(y.tolist()) == set(range(len(SHAPE_NAMES)))
    assert x.reshape(90, -1).max(axis=1).min() >= 96


def test_same_seed_same_images_other_seed_other_images():
    first, again, other = make_shapes(20, seed=2), make_shapes(20, seed=2), make_shapes(20, seed=3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_shapes_stay_clear_of_the_border():
    x, _ = make_shapes(200, seed=0)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    assert border.max() == 0


@given(size=st.integers(15, 40), seed=st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_every_size_from_the_minimum_up_draws_its_shapes(size, seed):
    x, y = make_shapes(12, size=size, seed=seed)
    assert x.shape == (12, size, size, 1) and (x.reshape(12, -1).max(axis=1) > 0).all()


def test_a_size_too_small_for_the_largest_shape_is_refused_naming_the_minimum():
    with pytest.raises(ValueError, match="size must be at least 15 pixels.*got 14"):
        make_shapes(3, size=14)
