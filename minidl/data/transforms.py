"""Image transforms on whole batches, built on OpenCV and numpy.

Every transform is a callable ``transform(batch, rng=None)`` on a batch ``(N, H, W, C)`` (or a grayscale
batch ``(N, H, W)``, returned in the same layout).  Input may be uint8 (0..255) or float; the output is
always float32 with values on the input's scale (only :class:`Normalize` rescales).  Random transforms
draw everything from ``rng`` (a ``numpy.random.Generator``), so the same seed gives the same batch;
with ``rng=None`` they draw from a fresh, unseeded generator.

Geometry follows OpenCV: ``x`` is the column, ``y`` the row (pointing down), pixel centres sit at
integer coordinates, and a positive angle rotates counter-clockwise as the image is displayed.  Pixels
that come from outside the image are filled with ``fill_value``.

Where one OpenCV call can process many images (same size or same warp for all), the batch is stacked
along the channel axis and handed over in chunks; per-image random warps loop over the batch, each
call releasing the GIL.
"""

import math

import cv2
import numpy as np

# OpenCV 5 handles at most 128 channels per image in resize / warpAffine (OpenCV 4: 512).
MAX_CHANNELS_PER_CALL = 128

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


def as_float_batch(batch, name):
    """``batch`` as float32 ``(N, H, W, C)``, and whether it came without a channel axis."""
    batch = np.asarray(batch)
    if batch.ndim not in (3, 4):
        raise ValueError(f"{name}: expected a batch (N, H, W, C) or (N, H, W), got shape {batch.shape}")
    is_grayscale_3d = batch.ndim == 3
    if is_grayscale_3d:
        batch = batch[..., np.newaxis]
    return batch.astype(np.float32, copy=False), is_grayscale_3d


def restore_layout(batch, is_grayscale_3d):
    """Drop the channel axis again for a batch that arrived as ``(N, H, W)``."""
    return batch[..., 0] if is_grayscale_3d else batch


def pair(value, name):
    """``(height, width)`` from an int or a pair."""
    if isinstance(value, int):
        return value, value
    height, width = value
    if height < 1 or width < 1:
        raise ValueError(f"{name}: sizes must be positive, got {value}")
    return int(height), int(width)


def default_rng(rng):
    return rng if rng is not None else np.random.default_rng()


def map_stacked_channels(batch, per_image_op):
    """Apply ``per_image_op`` (an OpenCV call on one ``(H, W, K)`` image) to the whole batch at once.

    The batch ``(N, H, W, C)`` is laid out as images ``(H, W, N*C)`` of at most
    ``MAX_CHANNELS_PER_CALL`` channels; ``per_image_op`` must treat channels independently (resize, a
    shared warp).  Returns ``(N, H', W', C)``.
    """
    count, height, width, channels = batch.shape
    stacked = np.ascontiguousarray(batch.transpose(1, 2, 0, 3).reshape(height, width, count * channels))
    outputs = []
    for start in range(0, count * channels, MAX_CHANNELS_PER_CALL):
        out = per_image_op(np.ascontiguousarray(stacked[:, :, start:start + MAX_CHANNELS_PER_CALL]))
        outputs.append(out.reshape(out.shape[0], out.shape[1], -1))  # OpenCV drops a single channel axis
    result = np.concatenate(outputs, axis=2)
    return result.reshape(result.shape[0], result.shape[1], count, channels).transpose(2, 0, 1, 3)


def warp_each(batch, matrices, fill_value, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT):
    """Warp image ``i`` of ``batch`` ``(N, H, W, C)`` by the 2x3 affine ``matrices[i]``, which maps input
    pixel coordinates to output ones, keeping the size.  Pixels from outside the image follow OpenCV's
    ``border_mode`` (``fill_value`` for the constant one).  Returns ``(N, H, W, C)`` float32."""
    count, height, width, channels = batch.shape
    out = np.empty_like(batch)
    for index in range(count):
        warped = cv2.warpAffine(
            batch[index], matrices[index], (width, height), flags=interpolation,
            borderMode=border_mode, borderValue=(fill_value,) * 4,
        )
        out[index] = warped.reshape(height, width, channels)
    return out


def rotation_matrices(angles_deg, height, width):
    """2x3 matrices ``(N, 2, 3)`` rotating by ``angles_deg`` (counter-clockwise, as displayed) about the
    image centre ``(cx, cy)``: ``[[cos, sin, (1 - cos) cx - sin cy], [-sin, cos, sin cx + (1 - cos) cy]]``
    (OpenCV's ``getRotationMatrix2D``, for the whole batch at once)."""
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    radians = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cos, sin = np.cos(radians), np.sin(radians)
    return np.stack(
        [
            np.stack([cos, sin, (1 - cos) * centre_x - sin * centre_y], axis=-1),
            np.stack([-sin, cos, sin * centre_x + (1 - cos) * centre_y], axis=-1),
        ],
        axis=1,
    )


class Transform:
    """Base of the transforms: ``repr`` shows the arguments a transform holds."""

    def __repr__(self):
        arguments = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({arguments})"


class Compose(Transform):
    """Apply ``transforms`` in order, passing the same ``rng`` to each."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, batch, rng=None):
        rng = default_rng(rng)
        for transform in self.transforms:
            batch = transform(batch, rng)
        return batch


class Resize(Transform):
    """Resize every image to ``size = (height, width)`` with OpenCV (``interpolation``: 'bilinear',
    'nearest', 'bicubic' or 'area')."""

    def __init__(self, size, interpolation="bilinear"):
        self.size = pair(size, "Resize")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"Resize: interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        self.interpolation = interpolation

    def __call__(self, batch, rng=None):
        batch, is_3d = as_float_batch(batch, "Resize")
        height, width = self.size
        flag = INTERPOLATIONS[self.interpolation]
        resized = map_stacked_channels(batch, lambda image: cv2.resize(image, (width, height), interpolation=flag))
        return restore_layout(resized, is_3d)


class CenterCrop(Transform):
    """Cut the central ``size = (height, width)`` window out of every image."""

    def __init__(self, size):
        self.size = pair(size, "CenterCrop")

    def __call__(self, batch, rng=None):
        batch, is_3d = as_float_batch(batch, "CenterCrop")
        height, width = self.size
        full_height, full_width = batch.shape[1:3]
        if height > full_height or width > full_width:
            raise ValueError(f"CenterCrop: crop {self.size} is larger than the images {full_height}x{full_width}")
        top, left = (full_height - height) // 2, (full_width - width) // 2
        return restore_layout(batch[:, top:top + height, left:left + width].copy(), is_3d)


class RandomCrop(Transform):
    """Pad every image by ``padding`` pixels of ``fill_value`` on each side, then cut a ``size`` window
    at a random offset (one per image).  ``RandomCrop(28, padding=4)`` on 28x28 images shifts them by up
    to 4 pixels."""

    def __init__(self, size, padding=0, fill_value=0.0):
        self.size = pair(size, "RandomCrop")
        self.padding = int(padding)
        self.fill_value = float(fill_value)

    def __call__(self, batch, rng=None):
        rng = default_rng(rng)
        batch, is_3d = as_float_batch(batch, "RandomCrop")
        pad = self.padding
        padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=self.fill_value)
        height, width = self.size
        count, padded_height, padded_width, _ = padded.shape
        if height > padded_height or width > padded_width:
            raise ValueError(
                f"RandomCrop: crop {self.size} is larger than the padded images {padded_height}x{padded_width}"
            )
        tops = rng.integers(0, padded_height - height + 1, size=count)
        lefts = rng.integers(0, padded_width - width + 1, size=count)
        # windows: (N, H_pad - h + 1, W_pad - w + 1, C, h, w); pick one window per image.
        windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(1, 2))
        crops = windows[np.arange(count), tops, lefts]  # (N, C, h, w)
        return restore_layout(np.ascontiguousarray(crops.transpose(0, 2, 3, 1)), is_3d)


class Rotate(Transform):
    """Rotate every image by the same ``angle`` degrees (counter-clockwise, as displayed) about its
    centre, keeping the size; corners that come from outside get ``fill_value``."""

    def __init__(self, angle, fill_value=0.0, interpolation="bilinear"):
        self.angle = float(angle)
        self.fill_value = float(fill_value)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"Rotate: interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        self.interpolation = interpolation

    def __call__(self, batch, rng=None):
        batch, is_3d = as_float_batch(batch, "Rotate")
        height, width = batch.shape[1:3]
        (matrix,) = rotation_matrices([self.angle], height, width)
        rotated = map_stacked_channels(
            batch,
            lambda image: cv2.warpAffine(
                image, matrix, (width, height), flags=INTERPOLATIONS[self.interpolation],
                borderMode=cv2.BORDER_CONSTANT, borderValue=(self.fill_value,) * 4,
            ),
        )
        return restore_layout(rotated, is_3d)


class Grayscale(Transform):
    """RGB ``(N, H, W, 3)`` to luminance ``(N, H, W, 1)``: ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601,
    OpenCV's weights).  A one-channel batch passes through as float32."""

    WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

    def __call__(self, batch, rng=None):
        batch, is_3d = as_float_batch(batch, "Grayscale")
        if batch.shape[-1] == 1:
            return restore_layout(batch, is_3d)
        if batch.shape[-1] != 3:
            raise ValueError(f"Grayscale: expected 1 or 3 channels (RGB), got shape {batch.shape}")
        return batch @ self.WEIGHTS[:, np.newaxis]


class Normalize(Transform):
    """``(x - mean) / std`` per channel, or ``x * scale`` (``Normalize(scale=1/255)`` maps 0..255 to 0..1).

    ``mean`` and ``std`` are scalars or one value per channel.
    """

    def __init__(self, mean=None, std=None, scale=None):
        if (scale is None) == (mean is None and std is None):
            raise ValueError("Normalize: give either mean and std, or scale")
        if scale is None and (mean is None or std is None):
            raise ValueError(f"Normalize: mean and std go together, got mean={mean!r}, std={std!r}")
        if std is not None and np.any(np.asarray(std) == 0):
            raise ValueError(f"Normalize: std must be non-zero, got {std!r}")
        self.scale = None if scale is None else np.float32(scale)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.std = None if std is None else np.asarray(std, dtype=np.float32)

    def __call__(self, batch, rng=None):
        batch, is_3d = as_float_batch(batch, "Normalize")
        if self.scale is not None:
            return restore_layout(batch * self.scale, is_3d)
        return restore_layout((batch - self.mean) / self.std, is_3d)


class RandomFlip(Transform):
    """Mirror each image with probability ``probability``: ``mode`` is 'horizontal' (left-right),
    'vertical' (up-down) or 'horizontal_and_vertical' (each axis drawn independently)."""

    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal", probability=0.5):
        if mode not in self.MODES:
            raise ValueError(f"RandomFlip: mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.probability = float(probability)

    def __call__(self, batch, rng=None):
        rng = default_rng(rng)
        batch, is_3d = as_float_batch(batch, "RandomFlip")
        out = batch.copy()
        if self.mode in ("horizontal", "horizontal_and_vertical"):
            flip = rng.random(len(out)) < self.probability
            out[flip] = out[flip, :, ::-1]
        if self.mode in ("vertical", "horizontal_and_vertical"):
            flip = rng.random(len(out)) < self.probability
            out[flip] = out[flip, ::-1]
        return restore_layout(out, is_3d)


class RandomRotation(Transform):
    """Rotate each image by an angle drawn uniformly from ``[-degrees, degrees]`` (or from the pair
    ``degrees = (low, high)``) about its centre."""

    def __init__(self, degrees, fill_value=0.0):
        self.degrees = (-float(degrees), float(degrees)) if np.isscalar(degrees) else tuple(map(float, degrees))
        self.fill_value = float(fill_value)

    def __call__(self, batch, rng=None):
        rng = default_rng(rng)
        batch, is_3d = as_float_batch(batch, "RandomRotation")
        angles = rng.uniform(*self.degrees, size=len(batch))
        matrices = rotation_matrices(angles, *batch.shape[1:3])
        return restore_layout(warp_each(batch, matrices, self.fill_value), is_3d)


class RandomAffine(Transform):
    """A random affine warp per image about its centre: rotation in ``[-degrees, degrees]``, shift of up
    to ``translate = (fraction of height, fraction of width)``, zoom factor in ``scale = (low, high)``
    and shear along x of up to ``shear`` degrees.

    Matrix (output = A @ input about the centre): ``A = T(shift) @ R(angle) @ S(zoom) @ Shear``.
    """

    def __init__(self, degrees=0.0, translate=(0.0, 0.0), scale=(1.0, 1.0), shear=0.0, fill_value=0.0):
        self.degrees = float(degrees)
        self.translate = tuple(map(float, translate))
        self.scale = tuple(map(float, scale))
        self.shear = float(shear)
        self.fill_value = float(fill_value)

    def matrix(self, angle_deg, shift_yx, zoom, shear_deg, centre_xy):
        """The 2x3 affine matrix taking input pixel coordinates to output ones."""
        angle, shear = math.radians(angle_deg), math.radians(shear_deg)
        rotation = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
        shearing = np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
        linear = rotation @ (zoom * shearing)
        centre = np.asarray(centre_xy)
        offset = centre - linear @ centre + np.array([shift_yx[1], shift_yx[0]])
        return np.hstack([linear, offset[:, np.newaxis]])

    def __call__(self, batch, rng=None):
        rng = default_rng(rng)
        batch, is_3d = as_float_batch(batch, "RandomAffine")
        count, height, width = batch.shape[:3]
        angles = rng.uniform(-self.degrees, self.degrees, size=count)
        shifts = rng.uniform(-1.0, 1.0, size=(count, 2)) * np.array(self.translate) * np.array([height, width])
        zooms = rng.uniform(*self.scale, size=count)
        shears = rng.uniform(-self.shear, self.shear, size=count)
        centre = ((width - 1) / 2.0, (height - 1) / 2.0)
        matrices = [self.matrix(*params, centre) for params in zip(angles, shifts, zooms, shears)]
        return restore_layout(warp_each(batch, matrices, self.fill_value), is_3d)


class ElasticDeformation(Transform):
    """Elastic distortion (Simard et al., 2003): each pixel is displaced by a random field, uniform in
    ``[-1, 1]``, smoothed by a Gaussian of standard deviation ``sigma`` pixels and scaled by ``alpha``
    pixels; the image is resampled at ``(x + dx, y + dy)`` with bilinear interpolation."""

    def __init__(self, alpha=8.0, sigma=3.0, fill_value=0.0):
        self.alpha = float(alpha)
        self.sigma = float(sigma)
        self.fill_value = float(fill_value)

    def displacement_fields(self, count, height, width, rng):
        """Smoothed random displacements ``(N, H, W, 2)``, ``[..., 0]`` along x, ``[..., 1]`` along y."""
        noise = rng.uniform(-1.0, 1.0, size=(count, height, width, 2)).astype(np.float32)
        smoothed = map_stacked_channels(noise, lambda image: cv2.GaussianBlur(image, (0, 0), self.sigma))
        return self.alpha * smoothed

    def __call__(self, batch, rng=None):
        rng = default_rng(rng)
        batch, is_3d = as_float_batch(batch, "ElasticDeformation")
        count, height, width, channels = batch.shape
        grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
        fields = self.displacement_fields(count, height, width, rng)
        out = np.empty_like(batch)
        for index in range(count):
            warped = cv2.remap(
                batch[index], grid_x + fields[index, ..., 0], grid_y + fields[index, ..., 1],
                interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                borderValue=(self.fill_value,) * 4,
            )
            out[index] = warped.reshape(height, width, channels)
        return restore_layout(out, is_3d)


class RandomBrightnessContrast(Transform):
    """Per image: ``y = clip((x - mean(x)) * c + mean(x) + b * max_value, 0, max_value)`` with contrast
    ``c`` uniform in ``[1 - contrast, 1 + contrast]`` and brightness ``b`` uniform in
    ``[-brightness, brightness]``; ``max_value`` is the top of the pixel scale (255, or 1 after
    ``Normalize(scale=1/255)``)."""

    def __init__(self, brightness=0.2, contrast=0.2, max_value=255.0):
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.max_value = float(max_value)

    def __call__(self, batch, rng=None):
        rng = default_rng(rng)
        batch, is_3d = as_float_batch(batch, "RandomBrightnessContrast")
        count = len(batch)
        factors = rng.uniform(1 - self.contrast, 1 + self.contrast, size=count).astype(np.float32)
        offsets = rng.uniform(-self.brightness, self.brightness, size=count).astype(np.float32) * self.max_value
        means = batch.mean(axis=(1, 2, 3), keepdims=True)
        adjusted = (batch - means) * factors[:, None, None, None] + means + offsets[:, None, None, None]
        return restore_layout(np.clip(adjusted, 0.0, self.max_value, out=adjusted), is_3d)
