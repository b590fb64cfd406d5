"""Keras's ``ImageDataGenerator``: random rotations, shifts, shears, zooms and flips of image batches,
fed to ``fit`` as a data loader.

    from minidl.preprocessing.image import ImageDataGenerator
    datagen = ImageDataGenerator(rescale=1 / 255, rotation_range=10, width_shift_range=0.1,
                                 horizontal_flip=True, validation_split=0.1)
    model.fit(datagen.flow(x_train, y_train, batch_size=64, subset="training"),
              validation_data=datagen.flow(x_train, y_train, subset="validation"), epochs=5)

The arguments mean what they mean in Keras.  Each image gets its own draw: an angle in
``[-rotation_range, rotation_range]`` degrees, shifts in ``[-range, range]`` (a fraction of the width
or height when below 1, else pixels), a shear angle in ``[-shear_range, shear_range]`` degrees, zoom
factors ``zx``, ``zy`` in ``[1 - zoom_range, 1 + zoom_range]`` (above 1 zooms out, as in Keras), and
a left-right / up-down mirror with probability 1/2 each.  The warp is one OpenCV affine warp per image
(:func:`minidl.data.transforms.warp_each`) about the image centre, bilinear, with Keras's
``fill_mode`` for pixels from outside; flips are exact copies.  Then ``rescale`` multiplies.

Batches come from a :class:`minidl.data.DataLoader`, so they are seeded like every minidl loader:
epoch ``e``'s order and draws are a pure function of ``(seed, e)``.  The results follow Keras's
parameter meanings but are not Keras's pixels (its random stream and interpolation differ).
"""

import math

import cv2
import numpy as np

from minidl.data.image_folder import COLOR_MODES, list_image_files, read_images
from minidl.data.loader import DataLoader
from minidl.data.transforms import as_float_batch, warp_each

#: Keras's ``fill_mode`` names -> OpenCV border modes ('reflect' is ``abcd|dcba``, 'wrap' ``abcd|abcd``)
FILL_MODES = {"constant": cv2.BORDER_CONSTANT, "nearest": cv2.BORDER_REPLICATE,
              "reflect": cv2.BORDER_REFLECT, "wrap": cv2.BORDER_WRAP}
SUBSETS = (None, "training", "validation")
CLASS_MODES = ("categorical", "sparse", "binary", None)


class ImageDataGenerator:
    """Random geometric augmentation and rescaling of image batches, with Keras's arguments.

    ``rescale``: factor applied after the augmentation (``1/255`` maps 0..255 to 0..1).
    ``rotation_range`` and ``shear_range``: degrees.  ``width_shift_range`` / ``height_shift_range``:
    a fraction of the width / height (< 1) or pixels (>= 1).  ``zoom_range``: ``z`` for ``[1 - z, 1 + z]``
    or a pair ``(low, high)``.  ``fill_mode``: 'nearest', 'constant' (``cval``), 'reflect' or 'wrap'.
    ``validation_split``: the fraction that ``subset="validation"`` takes (the first samples of the
    arrays; the first files of each class folder), ``subset="training"`` takes the rest.
    """

    def __init__(self, rescale=None, rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0,
                 shear_range=0.0, zoom_range=0.0, horizontal_flip=False, vertical_flip=False,
                 fill_mode="nearest", cval=0.0, validation_split=0.0):
        for name, value in (("rotation_range", rotation_range), ("width_shift_range", width_shift_range),
                            ("height_shift_range", height_shift_range), ("shear_range", shear_range)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"ImageDataGenerator: {name} must be a finite number >= 0, got {value!r}")
        if fill_mode not in FILL_MODES:
            raise ValueError(f"ImageDataGenerator: fill_mode must be one of {sorted(FILL_MODES)}, got {fill_mode!r}")
        if not 0 <= validation_split < 1:
            raise ValueError(f"ImageDataGenerator: validation_split must be in [0, 1), got {validation_split!r}")
        self.rescale = rescale
        self.rotation_range, self.shear_range = float(rotation_range), float(shear_range)
        self.width_shift_range, self.height_shift_range = float(width_shift_range), float(height_shift_range)
        self.zoom_range = zoom_interval(zoom_range)
        self.horizontal_flip, self.vertical_flip = bool(horizontal_flip), bool(vertical_flip)
        self.fill_mode, self.cval = fill_mode, float(cval)
        self.validation_split = float(validation_split)

    # ------------------------------------------------------------------------------ one batch

    @property
    def warps(self):
        """True when some argument asks for a geometric warp (not only flips and rescaling)."""
        return bool(self.rotation_range or self.width_shift_range or self.height_shift_range
                    or self.shear_range or self.zoom_range != (1.0, 1.0))

    def __call__(self, batch, rng=None):
        """Augment then rescale a batch ``(N, H, W, C)`` (or ``(N, H, W)``); float32, same layout.

        Every random number comes from ``rng`` (a NumPy ``Generator``), so a seed fixes the batch."""
        rng = rng if rng is not None else np.random.default_rng()
        batch, is_grayscale_3d = as_float_batch(batch, "ImageDataGenerator")
        count, height, width = batch.shape[:3]
        if self.warps:
            matrices = [self.random_matrix(height, width, rng) for _ in range(count)]
            batch = warp_each(batch, matrices, self.cval, border_mode=FILL_MODES[self.fill_mode])
        else:
            batch = batch.copy()
        if self.horizontal_flip:
            mirrored = rng.random(count) < 0.5
            batch[mirrored] = batch[mirrored, :, ::-1]
        if self.vertical_flip:
            mirrored = rng.random(count) < 0.5
            batch[mirrored] = batch[mirrored, ::-1]
        if self.rescale is not None:
            batch *= np.float32(self.rescale)
        return batch[..., 0] if is_grayscale_3d else batch

    def random_transform(self, image, seed=None):
        """One image ``(H, W, C)`` augmented (not rescaled, as in Keras), drawn from ``seed``."""
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"ImageDataGenerator.random_transform: expected one image (H, W, C), "
                             f"got shape {image.shape}")
        rescale, self.rescale = self.rescale, None
        try:
            return self(image[np.newaxis], np.random.default_rng(seed))[0]
        finally:
            self.rescale = rescale

    def random_matrix(self, height, width, rng):
        """A 2x3 affine matrix taking input pixel coordinates ``(x, y)`` to output ones, about the
        centre ``c``: ``out = R(angle) Shear(shear) diag(1/zx, 1/zy) (in - c) + c + (tx, ty)``."""
        angle = math.radians(rng.uniform(-self.rotation_range, self.rotation_range))
        shift_x = rng.uniform(-self.width_shift_range, self.width_shift_range)
        shift_y = rng.uniform(-self.height_shift_range, self.height_shift_range)
        shift_x *= width if self.width_shift_range < 1 else 1
        shift_y *= height if self.height_shift_range < 1 else 1
        shear = math.radians(rng.uniform(-self.shear_range, self.shear_range))
        zoom_x, zoom_y = rng.uniform(*self.zoom_range, size=2)
        rotation = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
        shearing = np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
        linear = rotation @ shearing @ np.diag([1 / zoom_x, 1 / zoom_y])
        centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        offset = centre - linear @ centre + np.array([shift_x, shift_y])
        return np.hstack([linear, offset[:, np.newaxis]])

    # ---------------------------------------------------------------------------- iterators

    def flow(self, x, y=None, batch_size=32, shuffle=True, seed=None, subset=None):
        """Batches ``(x_batch, y_batch)`` of the arrays, augmented afresh each epoch; feeds ``fit``.

        ``x``: ``(N, H, W, C)`` (or ``(N, H, W)``), ``y``: ``(N, ...)`` targets as given, or None.
        ``subset``: 'training' or 'validation' with the generator's ``validation_split``.
        """
        x = np.asarray(x)
        if x.ndim not in (3, 4):
            raise ValueError(f"ImageDataGenerator.flow: x must be images (N, H, W, C) or (N, H, W), "
                             f"got shape {x.shape}")
        if y is not None and len(y) != len(x):
            raise ValueError(f"ImageDataGenerator.flow: x has {len(x)} samples but y has {len(y)}")
        rows = self.subset_rows(len(x), subset, "flow")
        y = None if y is None else np.asarray(y)[rows]
        return ImageBatches(x[rows], y, batch_size=batch_size, shuffle=shuffle, seed=seed, transform=self)

    def flow_from_directory(self, directory, target_size=(256, 256), color_mode="rgb", class_mode="categorical",
                            batch_size=32, shuffle=True, seed=None, subset=None):
        """Batches of the images under ``directory`` (one sub-folder per class, as
        :func:`minidl.data.image_dataset_from_directory` reads them), resized to ``target_size``.

        ``class_mode``: 'categorical' (one-hot rows), 'sparse' (class indices), 'binary' (0/1 for two
        classes) or None (images only).  The result has Keras's ``class_indices``, ``classes``,
        ``filenames`` and ``samples``, and ``class_names``.
        """
        if color_mode not in COLOR_MODES:
            raise ValueError(f"flow_from_directory: color_mode must be one of {sorted(COLOR_MODES)}, "
                             f"got {color_mode!r}")
        if class_mode not in CLASS_MODES:
            raise ValueError(f"flow_from_directory: class_mode must be one of {CLASS_MODES}, got {class_mode!r}")
        class_names, files, labels = list_image_files(directory)
        if class_mode == "binary" and len(class_names) != 2:
            raise ValueError(f"flow_from_directory: class_mode='binary' needs 2 class folders, "
                             f"{directory} has {len(class_names)}: {class_names}")
        chosen = np.concatenate([np.flatnonzero(labels == label)[self.subset_rows(int((labels == label).sum()),
                                                                                  subset, "flow_from_directory")]
                                 for label in range(len(class_names))])
        files, labels = [files[i] for i in chosen], labels[chosen]
        images, labels = read_images(files, labels, tuple(target_size), color_mode, on_error="raise")
        batches = ImageBatches(images, encode_labels(labels, len(class_names), class_mode),
                               batch_size=batch_size, shuffle=shuffle, seed=seed, transform=self)
        batches.class_names = class_names
        batches.class_indices = {name: index for index, name in enumerate(class_names)}
        batches.classes, batches.samples = labels, len(labels)
        batches.filenames = [str(file.relative_to(directory)) for file in files]
        return batches

    def subset_rows(self, count, subset, method):
        """The rows of ``count`` samples that ``subset`` takes: validation the first
        ``int(count * validation_split)``, training the rest (as Keras splits arrays)."""
        if subset not in SUBSETS:
            raise ValueError(f"ImageDataGenerator.{method}: subset must be one of {SUBSETS}, got {subset!r}")
        if subset is None:
            return slice(None)
        if not self.validation_split:
            raise ValueError(f"ImageDataGenerator.{method}: subset={subset!r} needs the generator's "
                             f"validation_split, e.g. ImageDataGenerator(validation_split=0.2)")
        split = int(count * self.validation_split)
        return slice(0, split) if subset == "validation" else slice(split, None)

    def __repr__(self):
        arguments = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"ImageDataGenerator({arguments})"


def zoom_interval(zoom_range):
    """``(low, high)`` zoom factors from Keras's ``zoom_range``: ``z`` -> ``(1 - z, 1 + z)`` or a pair."""
    if np.isscalar(zoom_range):
        low, high = 1 - float(zoom_range), 1 + float(zoom_range)
    else:
        low, high = map(float, zoom_range)
    if not 0 < low <= high or not np.isfinite(high):
        raise ValueError(f"ImageDataGenerator: zoom_range must give factors 0 < low <= high, got {zoom_range!r}")
    return low, high


def encode_labels(labels, num_classes, class_mode):
    """Targets for ``class_mode``: one-hot ``(N, K)``, indices ``(N,)``, 0/1 ``(N,)`` (float32) or None."""
    if class_mode is None:
        return None
    if class_mode == "categorical":
        return np.eye(num_classes, dtype=np.float32)[labels]
    return labels.astype(np.float32)


class ImageBatches(DataLoader):
    """The batches :meth:`ImageDataGenerator.flow` and ``flow_from_directory`` return: a
    :class:`~minidl.data.DataLoader` (``len()`` batches an epoch, ``fit`` takes it) that Keras code
    may also step through with ``next()``, epoch after epoch without end."""

    running_epoch = None

    def __next__(self):
        if self.running_epoch is None:
            self.running_epoch = self.epoch_batches(self.next_epoch)
            self.next_epoch += 1
        try:
            return next(self.running_epoch)
        except StopIteration:
            self.running_epoch = None
            return next(self)
