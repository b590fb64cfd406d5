"""Labelled images from a directory tree, like Keras's ``image_dataset_from_directory``.

Layout: one sub-directory per class; class names are the sorted sub-directory names and label ``i``
is ``class_names[i]``::

    path/cat/001.png  path/cat/002.jpg  path/dog/001.png ...

Images are decoded with OpenCV (BGR converted to RGB), resized to ``image_size`` and held in memory as
uint8; the result is a :class:`~minidl.data.loader.DataLoader` with a ``class_names`` attribute.
"""

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from .loader import DataLoader

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
COLOR_MODES = {"grayscale": 1, "rgb": 3}
SUBSETS = ("training", "validation", "both")


class UnreadableImageError(ValueError):
    """An image file that OpenCV cannot decode."""


def image_dataset_from_directory(
    path, image_size=(256, 256), color_mode="rgb", batch_size=32, shuffle=True,
    validation_split=None, subset=None, seed=None, on_error="skip",
):
    """A :class:`DataLoader` over the images under ``path`` with labels from their sub-directories.

    ``image_size``: ``(height, width)`` every image is resized to.  ``color_mode``: 'rgb' (3 channels)
    or 'grayscale' (1).  ``validation_split`` (a fraction in (0, 1)) with ``subset`` 'training',
    'validation' or 'both' (returns ``(training, validation)``): the file list is shuffled with
    ``seed`` (required when shuffling) and its last ``validation_split`` part is the validation set.
    ``on_error``: 'skip' leaves out files OpenCV cannot decode, with one warning naming them all;
    'raise' raises :class:`UnreadableImageError` at the first one.
    """
    if color_mode not in COLOR_MODES:
        raise ValueError(
            f"image_dataset_from_directory: color_mode must be one of {sorted(COLOR_MODES)}, got {color_mode!r}"
        )
    if on_error not in ("skip", "raise"):
        raise ValueError(f"image_dataset_from_directory: on_error must be 'skip' or 'raise', got {on_error!r}")
    check_split_arguments(validation_split, subset, shuffle, seed)

    class_names, files, labels = list_image_files(path)
    if shuffle and validation_split:
        order = np.random.default_rng(seed).permutation(len(files))
        files, labels = [files[i] for i in order], labels[order]
    images, labels = read_images(files, labels, image_size, color_mode, on_error)

    def make_loader(selection):
        loader = DataLoader(images[selection], labels[selection], batch_size=batch_size, shuffle=shuffle, seed=seed)
        loader.class_names = class_names
        return loader

    if not validation_split:
        return make_loader(slice(None))
    validation_count = int(round(validation_split * len(images)))
    training, validation = slice(0, len(images) - validation_count), slice(len(images) - validation_count, None)
    if subset == "both":
        return make_loader(training), make_loader(validation)
    return make_loader(training if subset == "training" else validation)


def check_split_arguments(validation_split, subset, shuffle, seed):
    """Raise ValueError for an inconsistent ``validation_split`` / ``subset`` / ``seed`` combination."""
    if validation_split is None and subset is None:
        return
    if validation_split is None or not 0 < validation_split < 1:
        raise ValueError(
            "image_dataset_from_directory: validation_split must be in (0, 1) when subset is given, "
            f"got {validation_split!r}"
        )
    if subset not in SUBSETS:
        raise ValueError(
            f"image_dataset_from_directory: subset must be one of {SUBSETS} with validation_split, got {subset!r}"
        )
    if shuffle and seed is None:
        raise ValueError(
            "image_dataset_from_directory: give a seed with validation_split and shuffle=True, "
            "so training and validation never overlap"
        )


def list_image_files(path):
    """``(class_names, files, labels)`` for the image files under ``path``, in sorted order."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image_dataset_from_directory: {root} is not a directory")
    class_names = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not class_names:
        raise ValueError(f"image_dataset_from_directory: {root} has no class sub-directories")
    files, labels = [], []
    for label, class_name in enumerate(class_names):
        for file in sorted((root / class_name).rglob("*")):
            if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file():
                files.append(file)
                labels.append(label)
    if not files:
        raise ValueError(f"image_dataset_from_directory: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return class_names, files, np.asarray(labels, dtype=np.int32)


def read_image(file, image_size, color_mode):
    """Decode ``file`` as uint8 ``(H, W, C)`` RGB or grayscale, resized to ``image_size = (H, W)``.

    Returns None when OpenCV cannot decode it.
    """
    flag = cv2.IMREAD_GRAYSCALE if color_mode == "grayscale" else cv2.IMREAD_COLOR
    encoded = np.fromfile(os.fspath(file), dtype=np.uint8)  # imdecode: no trouble with non-ASCII paths
    image = cv2.imdecode(encoded, flag) if encoded.size else None
    if image is None:
        return None
    if color_mode == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    height, width = image_size
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image.reshape(height, width, COLOR_MODES[color_mode])


def read_images(files, labels, image_size, color_mode, on_error):
    """Decode every file; ``(images uint8 (N, H, W, C), labels)`` of the readable ones."""
    images, kept, unreadable = [], [], []
    for index, file in enumerate(files):
        image = read_image(file, image_size, color_mode)
        if image is None:
            if on_error == "raise":
                raise UnreadableImageError(f"image_dataset_from_directory: cannot decode image {file}")
            unreadable.append(str(file))
            continue
        images.append(image)
        kept.append(index)
    if unreadable:
        warnings.warn(
            f"image_dataset_from_directory: skipped {len(unreadable)} unreadable image(s): {', '.join(unreadable)}",
            stacklevel=3,
        )
    if not images:
        raise ValueError("image_dataset_from_directory: none of the image files could be decoded")
    return np.stack(images), labels[kept]
