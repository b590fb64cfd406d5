"""2-D convolution (cross-correlation, as in every DL framework), channels-last, as im2col + GEMM.

This file is the math.  How a model computes it fastest is decided by the planner in
:mod:`minidl.engine`, which computes these same formulas by other means and is tested against this layer.
"""

from minidl.backend import ops
from minidl.layers.activations import activate, activation_backward
from minidl.layers.base import normalize_padding, normalize_pair, window_output_shape
from minidl.layers.kernel_layer import KernelLayer


class Conv2D(KernelLayer):
    """``y[n, i, j, o] = f(b[o] + sum_{p, q, c} x_pad[n, i*SH + p, j*SW + q, c] * W[p, q, c, o])``.

    Inputs ``(N, H, W, C_in)``, kernel ``W`` ``(KH, KW, C_in, filters)``, bias ``(filters,)``, outputs
    ``(N, OH, OW, filters)``; padding ``"valid"`` or ``"same"`` as in Keras.

    With every receptive field unfolded into a row, ``cols = im2col(x_pad)`` ``(N*OH*OW, KH*KW*C_in)``,
    the whole sum is one matrix product with the kernel as a matrix ``W2d`` ``(KH*KW*C_in, filters)``::

        z = cols @ W2d          (N*OH*OW, filters), then reshaped to (N, OH, OW, filters)
    """

    forward_keeps = ("x", "cols", "y")

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None, **kwargs):
        super().__init__(activation=activation, **kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"{self.name}: filters must be a positive int, got {filters!r}")
        self.filters = filters
        self.kernel_size = normalize_pair(kernel_size, "kernel_size", self.name)
        self.strides = normalize_pair(strides, "strides", self.name)
        self.padding = normalize_padding(padding, self.name)

    def compute_output_shape(self, input_shape):
        """``(OH, OW, filters)``; also sets ``pads``, ``((top, bottom), (left, right))``."""
        self.pads, (out_h, out_w) = window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                                        self.padding)
        return out_h, out_w, self.filters

    def build(self, input_shape):
        super().build(input_shape)
        self.add_kernel_and_bias((*self.kernel_size, input_shape[2], self.filters))

    def kernel_matrix(self):
        """``W2d``: the kernel ``(KH, KW, C_in, F)`` as a ``(KH*KW*C_in, F)`` matrix (a reshape)."""
        return self.params["kernel"].reshape(-1, self.filters)

    def forward(self, x, training=False):
        """``y = f(im2col(x) @ W2d + b)``, the bias added and ``f`` applied in one pass over the product
        (:meth:`product`).  ``x`` ``(N, H, W, C_in)`` -> ``y`` ``(N, OH, OW, F)``.  Keeps ``x``, ``cols``
        and ``y`` for backward."""
        self.y = activate(self.product(x), self.params.get("bias"), self.activation)
        return self.y

    def linear(self, x):
        """``z = im2col(x) @ W2d + b``: ``(N, H, W, C_in) -> (N, OH, OW, F)``; keeps ``x`` and ``cols``."""
        return activate(self.product(x), self.params.get("bias"), "linear")

    def product(self, x):
        """``im2col(x) @ W2d``: ``(N, H, W, C_in) -> (N, OH, OW, F)``; keeps ``x`` and ``cols``."""
        self.x = x
        self.cols = ops.im2col(x, self.kernel_size, self.strides, self.pads)   # (N*OH*OW, KH*KW*C_in)
        z = ops.matmul(self.cols, self.kernel_matrix())                         # (N*OH*OW, F)
        return z.reshape(x.shape[0], *self.output_shape)                        # (N, OH, OW, F)

    def backward(self, grad_out):
        """``dL/dz = dL/dy * f'(z)``, then :meth:`linear_backward`.
        ``(N, OH, OW, F) -> (N, H, W, C_in)``."""
        return self.linear_backward(activation_backward(grad_out, self.y, self.activation))

    def linear_backward(self, grad_z):
        """From ``G = dL/dz`` ``(N, OH, OW, F)`` of ``z = im2col(x) @ W2d + b``, as ``G`` ``(N*OH*OW, F)``:
        the parameters' gradients (:meth:`linear_parameter_grads`), and::

            dL/dx   = col2im(G W2d^T)           (N, H, W, C_in), returned

        ``col2im`` adds each row of ``G W2d^T`` back onto the pixels its window read, so a pixel in
        several windows collects the gradient of each.
        """
        self.linear_parameter_grads(grad_z)
        grad_cols = ops.matmul_nt(grad_z.reshape(-1, self.filters), self.kernel_matrix())  # (N*OH*OW, KH*KW*C_in)
        return ops.col2im(grad_cols, self.x.shape, self.kernel_size, self.strides, self.pads)

    def linear_parameter_grads(self, grad_z):
        """From ``G = dL/dz`` ``(N, OH, OW, F)``, as ``G`` ``(N*OH*OW, F)``, into ``grads``::

            dL/db   = sum of G's rows           (F,)
            dL/dW2d = cols^T G                  (KH*KW*C_in, F), reshaped to W's (KH, KW, C_in, F)
        """
        grad_2d = grad_z.reshape(-1, self.filters)                              # G (N*OH*OW, F)
        if self.use_bias:
            self.grads["bias"] = ops.bias_grad(grad_2d)
        self.grads["kernel"] = ops.matmul_tn(self.cols, grad_2d).reshape(self.params["kernel"].shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding}
