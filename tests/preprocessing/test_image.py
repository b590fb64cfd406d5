"""ImageDataGenerator: Keras's arguments, seeded batches, exact flips, and loaders that feed fit."""

import re

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl.preprocessing.image import FILL_MODES, ImageDataGenerator


def images(count=12, size=10, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, channels)).astype(np.uint8)


AUGMENTING = dict(rotation_range=20, width_shift_range=0.2, height_shift_range=2, shear_range=10,
                  zoom_range=0.2, horizontal_flip=True, vertical_flip=True)


@given(count=st.integers(1, 20), batch_size=st.integers(1, 8), channels=st.sampled_from([1, 3]),
       split=st.sampled_from([0.0, 0.25, 0.5]))
@settings(max_examples=25, deadline=None)
def test_flow_batches_have_keras_shapes_and_cover_the_subset(count, batch_size, channels, split):
    x, y = images(count, channels=channels), np.arange(count)
    generator = ImageDataGenerator(rescale=1 / 255, validation_split=split, **AUGMENTING)
    subsets = ["training", "validation"] if split else [None]
    seen = []
    for subset in subsets:
        flow = generator.flow(x, y, batch_size=batch_size, seed=3, subset=subset)
        batches = list(flow)
        assert len(batches) == len(flow)
        for x_batch, y_batch in batches:
            assert x_batch.dtype == np.float32 and x_batch.shape[1:] == (10, 10, channels)
            assert len(x_batch) == len(y_batch) <= batch_size
            assert x_batch.min() >= 0 and x_batch.max() <= 1 + 1e-6
        seen.append(np.sort(np.concatenate([y_batch for _, y_batch in batches])) if batches else np.array([]))
    assert np.array_equal(np.sort(np.concatenate(seen)), y)  # the subsets split the samples
    if split:
        assert np.array_equal(seen[1], np.arange(int(count * split)))  # validation: the first samples


def test_same_seed_same_batches_every_epoch_and_epochs_differ():
    x, y = images(16), np.arange(16)
    generator = ImageDataGenerator(**AUGMENTING)
    first, second = generator.flow(x, y, batch_size=4, seed=7), generator.flow(x, y, batch_size=4, seed=7)
    epoch_0, epoch_1 = list(first), list(first)
    for (xa, ya), (xb, yb) in zip(epoch_0, list(second)):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epoch_0, epoch_1))
    other = list(generator.flow(x, y, batch_size=4, seed=8))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epoch_0, other))


@given(seed=st.integers(0, 2**31 - 1), horizontal=st.booleans(), vertical=st.booleans())
@settings(max_examples=25, deadline=None)
def test_flips_are_exact_mirrors(seed, horizontal, vertical):
    x = images(8, channels=3, seed=seed % 100)
    generator = ImageDataGenerator(horizontal_flip=horizontal, vertical_flip=vertical)
    (batch, _), = list(generator.flow(x, np.zeros(8), batch_size=8, shuffle=False, seed=seed))
    # one image is (H, W, C): a vertical flip reverses axis 0, a horizontal one axis 1
    allowed_axes = [()] + [(1,)] * horizontal + [(0,)] * vertical + [(0, 1)] * (horizontal and vertical)
    for image, out in zip(x.astype(np.float32), batch):
        assert any(np.array_equal(out, np.flip(image, axis=axes) if axes else image) for axes in allowed_axes)


def test_rescale_alone_multiplies_exactly():
    x = images(5)
    (batch, _), = list(ImageDataGenerator(rescale=1 / 255).flow(x, np.zeros(5), batch_size=5, shuffle=False))
    assert np.array_equal(batch, x.astype(np.float32) * np.float32(1 / 255))


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "wrap"])
def test_warping_a_constant_image_with_a_non_constant_fill_keeps_it_constant(fill_mode):
    x = np.full((6, 9, 9, 1), 100, np.uint8)
    generator = ImageDataGenerator(fill_mode=fill_mode, **AUGMENTING)
    (batch, _), = list(generator.flow(x, np.zeros(6), batch_size=6, seed=0))
    assert np.allclose(batch, 100, atol=1e-3)


def test_constant_fill_brings_cval_in_from_outside():
    x = np.full((4, 9, 9, 1), 100, np.uint8)
    generator = ImageDataGenerator(width_shift_range=0.4, fill_mode="constant", cval=7)
    (batch, _), = list(generator.flow(x, np.zeros(4), batch_size=4, seed=1))
    assert all(np.isclose(image, 7).any() for image in batch) and batch.max() <= 100 + 1e-3


def test_random_transform_is_reproducible_from_its_seed_and_skips_rescale():
    image = images(1, channels=3)[0]
    generator = ImageDataGenerator(rescale=1 / 255, **AUGMENTING)
    one, two = generator.random_transform(image, seed=4), generator.random_transform(image, seed=4)
    assert np.array_equal(one, two) and one.shape == image.shape and one.max() > 1
    assert not np.array_equal(one, generator.random_transform(image, seed=5))


def test_next_steps_through_batches_epoch_after_epoch_like_a_keras_iterator():
    flow = ImageDataGenerator().flow(images(5), np.arange(5), batch_size=2, shuffle=False)
    labels = [next(flow)[1].tolist() for _ in range(4)]
    assert labels == [[0, 1], [2, 3], [4], [0, 1]]


def write_class_folders(root, counts, size=12):
    rng = np.random.default_rng(0)
    for class_name, count in counts.items():
        (root / class_name).mkdir(parents=True)
        for index in range(count):
            cv2.imwrite(str(root / class_name / f"{index}.png"), rng.integers(0, 256, (size, size, 3), np.uint8))


@pytest.mark.parametrize("class_mode", ["categorical", "sparse", "binary", None])
def test_flow_from_directory_labels_split_per_class_and_resizes(tmp_path, class_mode):
    write_class_folders(tmp_path, {"cat": 6, "dog": 4})
    generator = ImageDataGenerator(rescale=1 / 255, validation_split=0.5)
    train = generator.flow_from_directory(tmp_path, target_size=(8, 8), color_mode="grayscale",
                                          class_mode=class_mode, batch_size=4, subset="training", seed=0)
    val = generator.flow_from_directory(tmp_path, target_size=(8, 8), class_mode=class_mode, batch_size=4,
                                        subset="validation", shuffle=False)
    assert train.class_indices == {"cat": 0, "dog": 1} and train.class_names == ["cat", "dog"]
    assert (train.samples, val.samples) == (5, 5)  # half of each class folder
    assert val.filenames == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png"]
    assert np.array_equal(val.classes, [0, 0, 0, 1, 1])
    x_batch, y_batch = next(iter(train))
    assert x_batch.shape == (4, 8, 8, 1) and next(iter(val))[0].shape == (4, 8, 8, 3)
    if class_mode == "categorical":
        assert y_batch.shape == (4, 2) and np.all(y_batch.sum(axis=1) == 1)
    elif class_mode is None:
        assert y_batch is None
    else:
        assert y_batch.shape == (4,) and set(y_batch) <= {0.0, 1.0}


def test_bad_arguments_are_refused_with_their_names(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"fill_mode must be one of {sorted(FILL_MODES)}, got 'mirror'")):
        ImageDataGenerator(fill_mode="mirror")
    with pytest.raises(ValueError, match="zoom_range"):
        ImageDataGenerator(zoom_range=1.5)
    with pytest.raises(ValueError, match="rotation_range must be a finite number >= 0"):
        ImageDataGenerator(rotation_range=-1)
    with pytest.raises(ValueError, match="subset='training' needs the generator's validation_split"):
        ImageDataGenerator().flow(images(4), np.arange(4), subset="training")
    with pytest.raises(ValueError, match=r"x must be images \(N, H, W, C\) or \(N, H, W\), got shape \(4, 10\)"):
        ImageDataGenerator().flow(np.zeros((4, 10)))
    with pytest.raises(ValueError, match="x has 4 samples but y has 3"):
        ImageDataGenerator().flow(images(4), np.arange(3))
    write_class_folders(tmp_path, {"a": 1, "b": 1, "c": 1})
    with pytest.raises(ValueError, match="class_mode='binary' needs 2 class folders"):
        ImageDataGenerator().flow_from_directory(tmp_path, class_mode="binary")
