"""A toy image set drawn on the fly: filled circles, squares and triangles, no download needed."""

import math

import cv2
import numpy as np

SHAPE_NAMES = ("circle", "square", "triangle")
#: the smallest image side where a centre exists for every radius: 0.4 size + 1 <= size - 2 - 0.4 size
MIN_SIZE = 15


def make_shapes(n, size=28, seed=0, channels=1):
    """``n`` images of one filled shape each on a black background, and their labels.

    Returns ``x`` uint8 ``(n, size, size, channels)`` and ``y`` int64 ``(n,)`` with ``y[i]`` the index
    of the shape in :data:`SHAPE_NAMES` (0 circle, 1 square, 2 triangle).  Each shape has a random
    circumradius (20-40 % of ``size``), centre (the whole shape at least one pixel clear of the border),
    rotation and intensity
    (96-255; a random colour when ``channels == 3``).  Every shape is inscribed in a circle of its
    circumradius ``r``, so their areas are ``pi r^2``, ``2 r^2`` and ``(3 sqrt(3) / 4) r^2``.
    """
    if channels not in (1, 3):
        raise ValueError(f"make_shapes: channels must be 1 or 3, got {channels}")
    if size < MIN_SIZE:
        raise ValueError(f"make_shapes: size must be at least {MIN_SIZE} pixels (a shape of the largest "
                         f"radius, 40 % of size, must fit one pixel clear of the border), got {size}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPE_NAMES), size=n)
    images = np.zeros((n, size, size, channels), dtype=np.uint8)
    for image, label in zip(images, labels):
        radius = rng.uniform(0.2, 0.4) * size
        centre = rng.uniform(radius + 1, size - 2 - radius, size=2)
        rotation = rng.uniform(0.0, 2.0 * math.pi)
        colour = tuple(int(v) for v in rng.integers(96, 256, size=channels))
        draw_shape(image, SHAPE_NAMES[label], centre, radius, rotation, colour)
    return images, labels.astype(np.int64)


def polygon_vertices(centre, radius, rotation, sides):
    """Vertices ``(sides, 2)`` (x, y) of a regular polygon inscribed in a circle of ``radius``."""
    angles = rotation + 2.0 * math.pi * np.arange(sides) / sides
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)


def draw_shape(image, name, centre, radius, rotation, colour):
    """Fill the named shape into ``image`` ``(H, W, C)`` in place, with sub-pixel precision."""
    shift = 4  # OpenCV fixed-point coordinates: 4 fractional bits
    scale = 1 << shift
    canvas = image if image.shape[2] == 3 else image[:, :, 0]
    if name == "circle":
        centre_fixed = tuple(int(round(c * scale)) for c in centre)
        radius_fixed = int(round(radius * scale))
        cv2.circle(canvas, centre_fixed, radius_fixed, colour, thickness=-1, lineType=cv2.LINE_8, shift=shift)
    else:
        sides = 4 if name == "square" else 3
        vertices = np.round(polygon_vertices(centre, radius, rotation, sides) * scale).astype(np.int32)
        cv2.fillPoly(canvas, [vertices], colour, lineType=cv2.LINE_8, shift=shift)
