"""Rescaling of inputs by a constant factor and offset, e.g. pixels from [0, 255] to [0, 1]."""

import math

from minidl.backend import ops
from minidl.layers.base import Layer


class Rescaling(Layer):
    """``y = x * scale + offset`` elementwise, for numbers ``scale`` and ``offset``; any shape.

    ``Rescaling(1 / 255)`` maps pixels to [0, 1], ``Rescaling(1 / 127.5, offset=-1)`` to [-1, 1].
    """

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        for argument, value in (("scale", scale), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{self.name}: {argument} must be a finite number, got {value!r}")
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x, training=False):
        """``y = x * scale + offset``; ``(N, ...) -> (N, ...)``."""
        return ops.scale_shift(x, self.scale, self.offset)

    def backward(self, grad_out):
        """``dL/dx = dL/dy * scale``; ``(N, ...) -> (N, ...)``."""
        return ops.scale_shift(grad_out, self.scale, 0.0)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}
