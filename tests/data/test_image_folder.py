"""image_dataset_from_directory: classes, colour, size, splits and unreadable files."""

import cv2
import numpy as np
import pytest

from minidl.data import DataLoader, UnreadableImageError, image_dataset_from_directory

RED_RGB, BLUE_RGB = (255, 0, 0), (0, 0, 255)


def write_image(path, rgb, size=(10, 12)):
    """A solid ``rgb`` image of ``size = (height, width)``, written by OpenCV (which stores BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((*size, 3), dtype=np.uint8)
    image[:] = rgb[::-1]
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def folder(tmp_path):
    """``red`` (3 PNGs) and ``blue`` (2 PNGs and a JPEG) class folders plus a non-image file."""
    root = tmp_path / "images"
    for index in range(3):
        write_image(root / "red" / f"r{index}.png", RED_RGB)
    write_image(root / "blue" / "b0.png", BLUE_RGB)
    write_image(root / "blue" / "b1.png", BLUE_RGB, size=(30, 7))
    write_image(root / "blue" / "b2.jpg", BLUE_RGB)
    (root / "blue" / "notes.txt").write_text("not an image")
    return root


def all_batches(loader):
    xs, ys = zip(*loader)
    return np.concatenate(xs), np.concatenate(ys)


def test_classes_are_sorted_folder_names_and_labels_follow_them(folder):
    loader = image_dataset_from_directory(folder, image_size=(8, 8), batch_size=4, shuffle=False)
    assert isinstance(loader, DataLoader)
    assert loader.class_names == ["blue", "red"]
    x, y = all_batches(loader)
    assert x.shape == (6, 8, 8, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])


def test_images_come_out_rgb_and_grayscale_has_one_channel(folder):
    x, y = all_batches(image_dataset_from_directory(folder, image_size=(8, 8), shuffle=False))
    np.testing.assert_allclose(x[y == 1].mean(axis=(0, 1, 2)), RED_RGB, atol=1)
    np.testing.assert_allclose(x[y == 0][:2].mean(axis=(0, 1, 2)), BLUE_RGB, atol=1)
    gray_loader = image_dataset_from_directory(folder, image_size=(5, 6), color_mode="grayscale", shuffle=False)
    gray, _ = all_batches(gray_loader)
    assert gray.shape == (6, 5, 6, 1)
    np.testing.assert_allclose(gray[3:, ..., 0], round(0.299 * 255), atol=1)


def test_unreadable_file_is_skipped_with_a_warning_naming_it(folder):
    broken = folder / "red" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): .*broken\.png"):
        loader = image_dataset_from_directory(folder, image_size=(8, 8), on_error="skip")
    assert loader.num_samples == 6


def test_unreadable_file_raises_naming_it_when_asked(folder):
    (folder / "blue" / "empty.png").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=r"cannot decode image .*empty\.png"):
        image_dataset_from_directory(folder, image_size=(8, 8), on_error="raise")


def test_validation_split_gives_disjoint_subsets_covering_every_file(folder):
    training, validation = image_dataset_from_directory(
        folder, image_size=(8, 8), validation_split=0.5, subset="both", seed=3
    )
    assert training.num_samples == validation.num_samples == 3
    single = image_dataset_from_directory(folder, image_size=(8, 8), validation_split=0.5, subset="validation", seed=3)
    np.testing.assert_array_equal(np.sort(single.y), np.sort(validation.y))
    assert sorted(np.concatenate([training.y, validation.y]).tolist()) == [0, 0, 0, 1, 1, 1]


def test_split_with_shuffle_needs_a_seed(folder):
    with pytest.raises(ValueError, match="give a seed"):
        image_dataset_from_directory(folder, validation_split=0.2, subset="training")


def test_folder_without_class_directories_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no class sub-directories"):
        image_dataset_from_directory(tmp_path)
