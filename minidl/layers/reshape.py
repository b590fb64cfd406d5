"""Layers that only change an array's shape."""

import math

from minidl.layers.base import Layer


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` in C order, so channels-last weights match Keras's."""

    forward_keeps = ("x_shape",)

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training=False):
        """A reshape: ``(N, ...) -> (N, D)``."""
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        """The inverse reshape: ``(N, D) -> (N, ...)``."""
        return grad_out.reshape(self.x_shape)


class Reshape(Layer):
    """``(N, *input_shape) -> (N, *target_shape)`` in C order, the same elements; one entry of
    ``target_shape`` may be ``-1``, inferred from the others (as in Keras)."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        target_shape = tuple(target_shape)
        if (not target_shape or not all(isinstance(d, int) and (d > 0 or d == -1) for d in target_shape)
                or target_shape.count(-1) > 1):
            raise ValueError(f"{self.name}: target_shape must be positive ints with at most one -1, "
                             f"got {target_shape!r}")
        self.target_shape = target_shape

    def compute_output_shape(self, input_shape):
        size, known = math.prod(input_shape), math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape and size % known == 0:
            return tuple(size // known if d == -1 else d for d in self.target_shape)
        if -1 not in self.target_shape and size == known:
            return self.target_shape
        raise ValueError(f"layer {self.name!r} (Reshape) cannot reshape inputs {(None, *input_shape)} "
                         f"({size} values per sample) to {(None, *self.target_shape)}")

    def forward(self, x, training=False):
        """A reshape: ``(N, *input_shape) -> (N, *output_shape)``."""
        return x.reshape(x.shape[0], *self.output_shape)

    def backward(self, grad_out):
        """The inverse reshape: ``(N, *output_shape) -> (N, *input_shape)``."""
        return grad_out.reshape(grad_out.shape[0], *self.input_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}
