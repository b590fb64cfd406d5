"""Layers that only change an array's shape."""

import math

from minidl.layers.base import Layer


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` in C order, so channels-last weights match Keras's."""

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training=False):
        """A reshape: ``(N, ...) -> (N, D)``."""
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        """The inverse reshape: ``(N, D) -> (N, ...)``."""
        return grad_out.reshape(self.x_shape)
