"""Fully connected layer."""

from minidl.backend import ops
from minidl.layers.kernel_layer import KernelLayer


class Dense(KernelLayer):
    """``y = f(x W + b)`` with ``W`` ``(D_in, units)`` and ``b`` ``(units,)``, as in Keras.

    Inputs must be ``(N, D_in)``; put a ``Flatten`` before a Dense that follows a conv layer.
    """

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

    def linear(self, x):
        """``z = x W``, without bias or activation.  ``x`` ``(N, D_in)`` -> ``z`` ``(N, units)``."""
        self.x = x
        return ops.matmul(x, self.params["kernel"])

    def linear_backward(self, grad_z):
        """From ``dL/dz`` ``(N, units)``::

            dL/dW = x^T dL/dz      (D_in, units)
            dL/dx = dL/dz W^T      (N, D_in)
        """
        self.grads["kernel"] = ops.matmul_tn(self.x, grad_z)
        if not self.input_grad_needed:
            return None
        return ops.matmul_nt(grad_z, self.params["kernel"])

    def get_config(self):
        return {**super().get_config(), "units": self.units}
