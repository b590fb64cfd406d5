"""Max and average pooling over 2-D windows, channels-last."""

from minidl.backend import ops
from minidl.layers.base import Layer, normalize_padding, normalize_pair, window_output_shape


class _Pooling2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = normalize_pair(pool_size, "pool_size", self.name)
        self.strides = self.pool_size if strides is None else normalize_pair(strides, "strides", self.name)
        self.padding = normalize_padding(padding, self.name)

    def compute_output_shape(self, input_shape):
        self.pads, (out_h, out_w) = window_output_shape(self, input_shape, self.pool_size, self.strides,
                                                        self.padding)
        return out_h, out_w, input_shape[2]

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size),
                "strides": list(self.strides), "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    """``y[n, i, j, c] = max_{p, q} x_pad[n, i*SH + p, j*SW + q, c]`` over a ``PH x PW`` window.

    ``(N, H, W, C) -> (N, OH, OW, C)``; strides default to the pool size; ``"same"`` padding never
    wins the max.
    """

    forward_keeps = ("x_shape", "argmax")

    def forward(self, x, training=False):
        """``y[n, i, j, c] = max_{p, q} x_pad[n, i*SH + p, j*SW + q, c]``.  ``(N, H, W, C) -> (N, OH, OW, C)``.

        Keeps which element of each window won (``argmax``, ``(N, OH, OW, C)``) for backward.
        """
        self.x_shape = x.shape
        y, self.argmax = ops.maxpool_forward(x, self.pool_size, self.strides, self.pads)
        return y

    def backward(self, grad_out):
        """``dL/dx`` is ``dL/dy`` at each window's maximum and 0 elsewhere (summed where windows
        overlap).  ``(N, OH, OW, C) -> (N, H, W, C)``."""
        return ops.maxpool_backward(grad_out, self.argmax, self.x_shape, self.pool_size, self.strides,
                                    self.pads)


class AveragePooling2D(_Pooling2D):
    """``y[n, i, j, c] = mean of x[n, i*SH + p, j*SW + q, c]`` over the window's real pixels
    (padding is not counted, as in Keras).  ``(N, H, W, C) -> (N, OH, OW, C)``."""

    forward_keeps = ("x_shape",)

    def forward(self, x, training=False):
        """``y[n, i, j, c]`` = mean of the window's real pixels.  ``(N, H, W, C) -> (N, OH, OW, C)``."""
        self.x_shape = x.shape
        return ops.avgpool_forward(x, self.pool_size, self.strides, self.pads)

    def backward(self, grad_out):
        """Each ``dL/dy`` is shared equally by the pixels of its window:
        ``dL/dx += dL/dy / count``.  ``(N, OH, OW, C) -> (N, H, W, C)``."""
        return ops.avgpool_backward(grad_out, self.x_shape, self.pool_size, self.strides, self.pads)


MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
