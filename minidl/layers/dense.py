"""Fully connected layer."""

from minidl.backend import ops
from minidl.layers.activations import activate, activation_backward
from minidl.layers.kernel_layer import KernelLayer


class Dense(KernelLayer):
    """``y = f(x W + b)`` with ``W`` ``(D_in, units)`` and ``b`` ``(units,)``, as in Keras.

    Inputs must be ``(N, D_in)``; put a ``Flatten`` before a Dense that follows a conv layer.
    """

    forward_keeps = ("x", "y")

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(activation=activation, **kwargs)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"{self.name}: units must be a positive int, got {units!r}")
        self.units = units

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"layer {self.name!r} (Dense) expects inputs of shape (None, features), "
                             f"got {(None, *input_shape)}; add a Flatten layer before it")
        return (self.units,)

    def build(self, input_shape):
        super().build(input_shape)
        self.add_kernel_and_bias((input_shape[0], self.units))

    def forward(self, x, training=False):
        """``y = f(x W + b)``, the bias added and ``f`` applied in one pass over ``x W`` (:meth:`product`).
        ``x`` ``(N, D_in)`` -> ``y`` ``(N, units)``.  Keeps ``x`` and ``y`` for backward."""
        self.y = activate(self.product(x), self.params.get("bias"), self.activation)
        return self.y

    def linear(self, x):
        """``z = x W + b``: ``(N, D_in) -> (N, units)``; keeps ``x``."""
        return activate(self.product(x), self.params.get("bias"), "linear")

    def product(self, x):
        """``x W``: ``(N, D_in) -> (N, units)``; keeps ``x``."""
        self.x = x
        return ops.matmul(x, self.params["kernel"])

    def backward(self, grad_out):
        """``dL/dz = dL/dy * f'(z)``, then :meth:`linear_backward`.  ``(N, units) -> (N, D_in)``."""
        return self.linear_backward(activation_backward(grad_out, self.y, self.activation))

    def linear_backward(self, grad_z):
        """From ``G = dL/dz`` ``(N, units)`` of ``z = x W + b``: the parameters' gradients
        (:meth:`linear_parameter_grads`), and ``dL/dx = G W^T`` ``(N, D_in)``, returned."""
        self.linear_parameter_grads(grad_z)
        return ops.matmul_nt(grad_z, self.params["kernel"])

    def linear_parameter_grads(self, grad_z):
        """From ``G = dL/dz`` ``(N, units)`` of ``z = x W + b``, into ``grads``::

            dL/db = sum_n G[n]      (units,)
            dL/dW = x^T G           (D_in, units)
        """
        if self.use_bias:
            self.grads["bias"] = ops.bias_grad(grad_z)
        self.grads["kernel"] = ops.matmul_tn(self.x, grad_z)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
