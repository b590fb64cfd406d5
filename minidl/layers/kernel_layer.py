"""What Dense and Conv2D share: a kernel, an optional bias, an activation, and their options.

Each subclass writes its own ``forward`` and ``backward`` (the math a reader looks for lives in
``dense.py`` and ``conv.py``); this class holds the arguments and parameters they have in common.
"""

from minidl import initializers, regularizers
from minidl.layers.activations import check_activation
from minidl.layers.base import Layer


class KernelLayer(Layer):
    """A layer computing ``y = f(z + b)`` with ``z`` linear in its input and ``kernel``."""

    weight_order = ("kernel", "bias")

    def __init__(self, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.activation = check_activation(activation, self.name)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def add_kernel_and_bias(self, kernel_shape):
        """Create ``kernel`` of ``kernel_shape`` and, with ``use_bias``, a ``bias`` per output unit."""
        self.add_param("kernel", kernel_shape, self.kernel_initializer, self.kernel_regularizer)
        if self.use_bias:
            self.add_param("bias", (kernel_shape[-1],), self.bias_initializer, self.bias_regularizer)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}
