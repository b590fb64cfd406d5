"""Fully connected layer."""

from minidl import initializers, regularizers
from minidl.backend import ops
from minidl.layers.activations import activate, activation_backward, check_activation
from minidl.layers.base import Layer


class Dense(Layer):
    """``y = f(x W + b)`` with ``W`` ``(D_in, units)`` and ``b`` ``(units,)``, as in Keras.

    Inputs must be ``(N, D_in)``; put a ``Flatten`` before a Dense that follows a conv layer.
    """

    weight_order = ("kernel", "bias")

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"{self.name}: units must be a positive int, got {units!r}")
        self.units = units
        self.activation = check_activation(activation, self.name)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"layer {self.name!r} (Dense) expects inputs of shape (None, features), "
                             f"got {(None, *input_shape)}; add a Flatten layer before it")
        return (self.units,)

    def build(self, input_shape):
        super().build(input_shape)
        self.add_param("kernel", (input_shape[0], self.units), self.kernel_initializer,
                       self.kernel_regularizer)
        if self.use_bias:
            self.add_param("bias", (self.units,), self.bias_initializer, self.bias_regularizer)

    def forward(self, x, training=False):
        """``z = x W + b``, ``y = f(z)``.  ``x`` ``(N, D_in)`` -> ``y`` ``(N, units)``."""
        self.x = x
        z = ops.matmul(x, self.params["kernel"])  # (N, units)
        self.y, self.logits = activate(z, self.params.get("bias"), self.activation)
        return self.y

    def backward(self, grad_out):
        """``dL/dz = dL/dy * f'(z)``, then :meth:`backward_from_logits`."""
        return self.backward_from_logits(activation_backward(grad_out, self.y, self.activation))

    def backward_from_logits(self, grad_z):
        """From ``dL/dz`` ``(N, units)``::

            dL/dW = x^T dL/dz      (D_in, units)
            dL/db = sum_n dL/dz    (units,)
            dL/dx = dL/dz W^T      (N, D_in)
        """
        self.grads["kernel"] = ops.matmul_tn(self.x, grad_z)
        if self.use_bias:
            self.grads["bias"] = ops.bias_grad(grad_z)
        if not self.input_grad_needed:
            return None
        return ops.matmul_nt(grad_z, self.params["kernel"])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}
