"""Transforms: shape, dtype and range; known answers for the geometric ones; seeded determinism."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl.data import transforms as T


def random_batch(shape, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=shape).astype(dtype)


def marker_batch(height=28, width=28, row=3, col=5, count=2):
    """Black images with one white pixel at ``(row, col)``, shape ``(count, H, W, 1)``."""
    batch = np.zeros((count, height, width, 1), dtype=np.float32)
    batch[:, row, col] = 255.0
    return batch


def brightest_pixel(image):
    return np.unravel_index(np.argmax(image[..., 0]), image.shape[:2])


SHAPE_PRESERVING = [
    T.RandomFlip("horizontal"),
    T.RandomFlip("horizontal_and_vertical"),
    T.RandomRotation(30),
    T.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10),
    T.ElasticDeformation(alpha=6.0, sigma=3.0),
    T.RandomBrightnessContrast(0.3, 0.3),
    T.RandomCrop(28, padding=3),
    T.Rotate(37),
    T.Compose([T.RandomFlip(), T.RandomRotation(10), T.RandomCrop(28, padding=2)]),
]
RANDOM_TRANSFORMS = [t for t in SHAPE_PRESERVING if not isinstance(t, T.Rotate)]


@pytest.mark.parametrize("transform", SHAPE_PRESERVING, ids=repr)
@pytest.mark.parametrize("input_dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("shape", [(6, 28, 28, 1), (6, 28, 28, 3), (6, 28, 28)])
def test_shape_preserving_transforms_keep_shape_give_float32_within_the_pixel_range(transform, input_dtype, shape):
    batch = random_batch(shape, input_dtype)
    out = transform(batch, np.random.default_rng(1))
    assert out.shape == shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0 + 1e-3


@pytest.mark.parametrize("transform", RANDOM_TRANSFORMS, ids=repr)
def test_same_seed_gives_the_same_batch_and_another_seed_another(transform):
    batch = random_batch((8, 28, 28, 1))
    first = transform(batch, np.random.default_rng(7))
    again = transform(batch, np.random.default_rng(7))
    other = transform(batch, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("transform", SHAPE_PRESERVING, ids=repr)
def test_transforms_do_not_modify_their_input(transform):
    batch = random_batch((4, 28, 28, 1), np.float32)
    kept = batch.copy()
    transform(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(batch, kept)


def test_horizontal_flip_mirrors_columns_and_vertical_flip_mirrors_rows():
    batch = marker_batch(row=3, col=5)
    horizontal = T.RandomFlip("horizontal", probability=1.0)(batch, np.random.default_rng(0))
    vertical = T.RandomFlip("vertical", probability=1.0)(batch, np.random.default_rng(0))
    assert brightest_pixel(horizontal[0]) == (3, 28 - 1 - 5)
    assert brightest_pixel(vertical[0]) == (28 - 1 - 3, 5)


def test_flip_probability_zero_is_identity_and_half_flips_about_half():
    batch = marker_batch(count=2000)
    unchanged = T.RandomFlip(probability=0.0)(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(unchanged, batch)
    flipped = T.RandomFlip(probability=0.5)(batch, np.random.default_rng(0))
    fraction = np.mean(flipped[:, 3, 28 - 1 - 5, 0] == 255.0)
    assert 0.45 < fraction < 0.55


def test_rotate_by_90_moves_a_marker_counter_clockwise_like_rot90():
    batch = marker_batch(row=3, col=5)
    rotated = T.Rotate(90)(batch)
    assert brightest_pixel(rotated[0]) == (28 - 1 - 5, 3)
    np.testing.assert_allclose(rotated, np.rot90(batch, k=1, axes=(1, 2)), atol=1e-3)


def test_rotate_by_180_equals_flipping_both_axes():
    batch = random_batch((3, 20, 20, 3), np.float32)
    np.testing.assert_allclose(T.Rotate(180)(batch), batch[:, ::-1, ::-1], atol=1e-3)


def test_random_rotation_with_a_fixed_angle_equals_rotate():
    batch = random_batch((5, 28, 28, 1), np.float32)
    fixed_angle = T.RandomRotation((90, 90))(batch, np.random.default_rng(0))
    np.testing.assert_allclose(fixed_angle, T.Rotate(90)(batch), atol=1e-4)


def test_random_affine_with_no_range_is_identity_and_pure_shift_moves_the_marker():
    batch = marker_batch(row=10, col=12)
    np.testing.assert_allclose(T.RandomAffine()(batch, np.random.default_rng(0)), batch, atol=1e-4)
    affine = T.RandomAffine(translate=(0.25, 0.25))
    matrix = affine.matrix(0.0, (3.0, -2.0), 1.0, 0.0, (13.5, 13.5))
    np.testing.assert_allclose(matrix, [[1, 0, -2], [0, 1, 3]], atol=1e-12)
    shifted = T.warp_each(batch, [matrix] * len(batch), fill_value=0.0)
    assert brightest_pixel(shifted[0]) == (13, 10)


def test_batched_rotation_matrices_equal_opencvs():
    angles = [-170.0, -33.3, 0.0, 12.5, 90.0]
    expected = [cv2.getRotationMatrix2D((13.5, 9.5), angle, 1.0) for angle in angles]
    np.testing.assert_allclose(T.rotation_matrices(angles, 20, 28), expected, atol=1e-12)


def test_repr_shows_the_arguments():
    expected = "Compose(transforms=[RandomFlip(mode='vertical', probability=0.3)])"
    assert repr(T.Compose([T.RandomFlip("vertical", 0.3)])) == expected


def test_random_affine_rotation_matches_rotate():
    affine = T.RandomAffine()
    np.testing.assert_allclose(
        affine.matrix(90.0, (0.0, 0.0), 1.0, 0.0, (13.5, 13.5)), T.rotation_matrices([90.0], 28, 28)[0], atol=1e-12
    )


def test_random_crop_shifts_the_marker_by_at_most_the_padding():
    batch = marker_batch(row=14, col=14, count=300)
    crops = T.RandomCrop(28, padding=4)(batch, np.random.default_rng(0))
    positions = np.array([brightest_pixel(image) for image in crops])
    assert np.all(crops.reshape(len(crops), -1).max(axis=1) == 255.0)
    assert np.all(np.abs(positions - 14) <= 4)
    assert len({tuple(p) for p in positions}) > 40


def test_random_crop_without_padding_cuts_windows_of_the_image():
    batch = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6, 1)
    crops = T.RandomCrop(4)(batch, np.random.default_rng(3))
    for image, crop in zip(batch, crops):
        top, left = np.argwhere(image[..., 0] == crop[0, 0, 0])[0]
        np.testing.assert_array_equal(crop, image[top:top + 4, left:left + 4])


def test_center_crop_takes_the_middle():
    batch = np.arange(2 * 6 * 8 * 1, dtype=np.uint8).reshape(2, 6, 8, 1)
    np.testing.assert_array_equal(T.CenterCrop((2, 4))(batch), batch[:, 2:4, 2:6].astype(np.float32))
    with pytest.raises(ValueError, match="larger than the images"):
        T.CenterCrop(10)(batch)


@settings(max_examples=15, deadline=None)
@given(
    count=st.integers(1, 70),
    channels=st.sampled_from([1, 3]),
    size=st.tuples(st.integers(3, 40), st.integers(3, 40)),
)
def test_batched_resize_equals_resizing_each_image(count, channels, size):
    batch = random_batch((count, 17, 23, channels), np.float32, seed=count)
    resized = T.Resize(size)(batch)
    expected = np.stack([cv2.resize(image, size[::-1]).reshape(*size, channels) for image in batch])
    assert resized.shape == (count, *size, channels)
    np.testing.assert_allclose(resized, expected, atol=1e-3)  # SIMD paths differ by channel count


def test_resize_keeps_a_constant_image_constant_and_a_grayscale_batch_3d():
    batch = np.full((3, 10, 10), 77, dtype=np.uint8)
    resized = T.Resize((5, 20))(batch)
    assert resized.shape == (3, 5, 20)
    np.testing.assert_allclose(resized, 77.0)


def test_grayscale_uses_bt601_weights_and_gives_one_channel():
    batch = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    batch[0, 0, 0] = (255, 0, 0)
    batch[0, 0, 1] = (0, 255, 0)
    batch[0, 1, 0] = (0, 0, 255)
    gray = T.Grayscale()(batch)
    assert gray.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(gray[0, :, :, 0], [[0.299 * 255, 0.587 * 255], [0.114 * 255, 0.0]], rtol=1e-5)


def test_normalize_by_scale_and_by_mean_and_std():
    batch = np.array([[[[0, 255]]]], dtype=np.uint8)  # (1, 1, 1, 2)
    np.testing.assert_allclose(T.Normalize(scale=1 / 255)(batch), [[[[0.0, 1.0]]]])
    np.testing.assert_allclose(T.Normalize(mean=[0, 100], std=[1, 5])(batch), [[[[0.0, 31.0]]]])
    with pytest.raises(ValueError, match="either mean and std, or scale"):
        T.Normalize()


def test_elastic_deformation_with_zero_strength_is_identity():
    batch = random_batch((3, 28, 28, 1), np.float32)
    np.testing.assert_allclose(T.ElasticDeformation(alpha=0.0)(batch, np.random.default_rng(0)), batch, atol=1e-4)


def test_elastic_displacements_are_smooth_and_scaled_by_alpha():
    fields = T.ElasticDeformation(alpha=10.0, sigma=4.0).displacement_fields(4, 28, 28, np.random.default_rng(0))
    assert fields.shape == (4, 28, 28, 2)
    neighbour_step = np.abs(np.diff(fields, axis=2)).mean()
    assert neighbour_step < 0.2 * np.abs(fields).mean()


def test_brightness_contrast_with_zero_ranges_is_identity_and_output_is_clipped():
    batch = random_batch((4, 8, 8, 3), np.float32)
    np.testing.assert_allclose(T.RandomBrightnessContrast(0.0, 0.0)(batch, np.random.default_rng(0)), batch, atol=1e-3)
    strong = T.RandomBrightnessContrast(1.0, 1.0, max_value=1.0)(batch / 255.0, np.random.default_rng(0))
    assert strong.min() >= 0.0 and strong.max() <= 1.0


def test_compose_applies_in_order_with_one_shared_generator():
    batch = random_batch((5, 28, 28, 1))
    flip, rotation = T.RandomFlip(), T.RandomRotation(15)
    composed = T.Compose([flip, rotation])(batch, np.random.default_rng(4))
    rng = np.random.default_rng(4)
    np.testing.assert_array_equal(composed, rotation(flip(batch, rng), rng))


def test_bad_batch_shape_is_rejected_with_the_transform_name():
    with pytest.raises(ValueError, match=r"RandomFlip: expected a batch .* got shape \(28, 28\)"):
        T.RandomFlip()(np.zeros((28, 28)))
