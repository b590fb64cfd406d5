"""Global average and max pooling: one value per channel of each image, over all its pixels.

Each is a pooling window as large as the image, so the window kernels of ``pooling.py`` compute it.
"""

from minidl.backend import ops
from minidl.layers.base import Layer

WHOLE_IMAGE_PADS = ((0, 0), (0, 0))


class _GlobalPooling2D(Layer):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported, got {data_format!r}")
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) expects inputs of shape "
                             f"(None, height, width, channels), got {(None, *input_shape)}")
        channels = input_shape[2]
        return (1, 1, channels) if self.keepdims else (channels,)

    def window(self):
        """The whole image, ``(H, W)``."""
        return self.input_shape[:2]

    def pooled_shape(self, batch_size):
        """``(N, *output_shape)`` of a batch's ``(N, 1, 1, C)`` window result."""
        return (batch_size, *self.output_shape)

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    """``y[n, c] = 1/(H W) sum_{i, j} x[n, i, j, c]``: ``(N, H, W, C) -> (N, C)`` (``(N, 1, 1, C)``
    with ``keepdims``)."""

    forward_keeps = ("x_shape",)

    def forward(self, x, training=False):
        """``y[n, c]`` = mean of channel ``c`` of image ``n``.  ``(N, H, W, C) -> (N, C)``."""
        self.x_shape = x.shape
        window = self.window()
        return ops.avgpool_forward(x, window, window, WHOLE_IMAGE_PADS).reshape(self.pooled_shape(x.shape[0]))

    def backward(self, grad_out):
        """Every pixel of a channel gets an equal share: ``dL/dx[n, i, j, c] = dL/dy[n, c] / (H W)``.
        ``(N, C) -> (N, H, W, C)``."""
        window = self.window()
        grad_windows = grad_out.reshape(self.x_shape[0], 1, 1, self.x_shape[3])
        return ops.avgpool_backward(grad_windows, self.x_shape, window, window, WHOLE_IMAGE_PADS)


class GlobalMaxPooling2D(_GlobalPooling2D):
    """``y[n, c] = max_{i, j} x[n, i, j, c]``: ``(N, H, W, C) -> (N, C)`` (``(N, 1, 1, C)`` with
    ``keepdims``)."""

    forward_keeps = ("x_shape", "argmax")

    def forward(self, x, training=False):
        """``y[n, c]`` = maximum of channel ``c`` of image ``n``.  ``(N, H, W, C) -> (N, C)``.

        Keeps which pixel won (``argmax`` ``(N, 1, 1, C)``) for backward.
        """
        self.x_shape = x.shape
        window = self.window()
        y, self.argmax = ops.maxpool_forward(x, window, window, WHOLE_IMAGE_PADS)
        return y.reshape(self.pooled_shape(x.shape[0]))

    def backward(self, grad_out):
        """``dL/dy[n, c]`` goes to the pixel that held the maximum, 0 elsewhere.
        ``(N, C) -> (N, H, W, C)``."""
        window = self.window()
        grad_windows = grad_out.reshape(self.x_shape[0], 1, 1, self.x_shape[3])
        return ops.maxpool_backward(grad_windows, self.argmax, self.x_shape, window, window, WHOLE_IMAGE_PADS)


GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
