"""Zero padding around images, channels-last."""

import numpy as np

from minidl.backend import ops
from minidl.layers.base import Layer


def normalize_zero_padding(padding, layer_name):
    """``padding`` as ``((top, bottom), (left, right))``: an int pads all four sides, a pair
    ``(rows, cols)`` pads top and bottom by ``rows`` and left and right by ``cols``, a pair of pairs is
    taken as it is.  Every amount must be an int ``>= 0``."""
    def is_amount(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0

    if is_amount(padding):
        return (int(padding),) * 2, (int(padding),) * 2
    pairs = tuple(padding) if isinstance(padding, (tuple, list)) and len(padding) == 2 else None
    if pairs is not None and all(is_amount(v) for v in pairs):
        return (int(pairs[0]),) * 2, (int(pairs[1]),) * 2
    if pairs is not None and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(map(is_amount, p))
                                 for p in pairs):
        return tuple(tuple(int(v) for v in pair) for pair in pairs)
    raise ValueError(f"{layer_name}: padding must be an int >= 0, a pair of them (rows, cols) or a pair of "
                     f"pairs ((top, bottom), (left, right)), got {padding!r}")


class ZeroPadding2D(Layer):
    """``y[n, top + i, left + j, c] = x[n, i, j, c]``, zeros on the border.
    ``(N, H, W, C) -> (N, top + H + bottom, left + W + right, C)``."""

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported, got {data_format!r}")
        self.padding = normalize_zero_padding(padding, self.name)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"layer {self.name!r} (ZeroPadding2D) expects inputs of shape "
                             f"(None, height, width, channels), got {(None, *input_shape)}")
        (top, bottom), (left, right) = self.padding
        height, width, channels = input_shape
        return top + height + bottom, left + width + right, channels

    def forward(self, x, training=False):
        """``x`` inside a border of zeros.  ``(N, H, W, C) -> (N, H', W', C)``."""
        return ops.zero_pad(x, self.padding)

    def backward(self, grad_out):
        """The border read no input: ``dL/dx`` is the inner part of ``dL/dy``.
        ``(N, H', W', C) -> (N, H, W, C)``."""
        return ops.zero_pad_grad(grad_out, self.padding)

    def get_config(self):
        return {**super().get_config(), "padding": [list(pair) for pair in self.padding]}
