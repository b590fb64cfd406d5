"""Activation functions: the helpers Dense and Conv2D apply after their GEMM, and activation layers.

Names: ``"linear"`` (or ``None``), ``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"softmax"`` (over the last
axis).  Each derivative is written in terms of the output ``y`` so backward needs no extra storage.
"""

from minidl.backend import ops
from minidl.layers.base import Layer

ACTIVATION_NAMES = ("linear", "relu", "sigmoid", "tanh", "softmax")


def check_activation(activation, layer_name):
    """Return the canonical activation name, ``None`` meaning ``"linear"``."""
    activation = "linear" if activation is None else activation
    if activation not in ACTIVATION_NAMES:
        raise ValueError(f"{layer_name}: unknown activation {activation!r}; known: {ACTIVATION_NAMES}")
    return activation


def rows_of_last_axis(a):
    """``(..., K) -> (M, K)``, a reshape (device arrays too, whose shapes take no negative index)."""
    *_, last = a.shape
    return a.reshape(-1, last)


def softmax_last_axis(z):
    """``softmax`` over the last axis of any-rank ``z``: ``(..., K) -> (..., K)``."""
    return ops.softmax(rows_of_last_axis(z)).reshape(z.shape)


def activate(z, bias, activation):
    """``y = f(z + bias)`` for ``z`` ``(..., C)`` and ``bias`` ``(C,)`` or ``None``; same shape out
    (``z`` itself for a linear activation without bias)."""
    if activation == "softmax":
        return softmax_last_axis(z if bias is None else ops.bias_activation(z, bias, "linear"))
    if activation == "linear" and bias is None:
        return z
    return ops.bias_activation(z, bias, activation)


def activation_backward(grad_out, y, activation):
    """``dL/dz = dL/dy * f'(z)`` from the output ``y``:
    relu ``[y > 0]``, sigmoid ``y (1 - y)``, tanh ``1 - y^2``, softmax ``y * (g - sum_k g_k y_k)``."""
    if activation == "softmax":
        flat = ops.softmax_grad(rows_of_last_axis(grad_out), rows_of_last_axis(y))
        return flat.reshape(y.shape)
    return ops.activation_grad(grad_out, y, activation)


class Activation(Layer):
    """Apply an activation elementwise (softmax: over the last axis); any input shape."""

    forward_keeps = ("y",)

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = check_activation(activation, self.name)

    def forward(self, x, training=False):
        """``y = f(x)``; ``(N, ...) -> (N, ...)``."""
        self.y = activate(x, None, self.activation)
        return self.y

    def backward(self, grad_out):
        """``dL/dx = dL/dy * f'(x)``; ``(N, ...) -> (N, ...)``."""
        return activation_backward(grad_out, self.y, self.activation)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


class _FixedActivation(Activation):
    fixed = None

    def __init__(self, **kwargs):
        super().__init__(self.fixed, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return config


class ReLU(_FixedActivation):
    """``y = max(0, x)``."""

    fixed = "relu"


class Sigmoid(_FixedActivation):
    """``y = 1 / (1 + e^-x)``."""

    fixed = "sigmoid"


class Tanh(_FixedActivation):
    """``y = tanh(x)``."""

    fixed = "tanh"


class Softmax(_FixedActivation):
    """``y_k = e^(x_k) / sum_j e^(x_j)`` over the last axis."""

    fixed = "softmax"


class LeakyReLU(Layer):
    """``y = x`` for ``x > 0``, else ``negative_slope * x`` (Keras 3 default slope 0.3; ``alpha`` is
    accepted as the Keras 2 name)."""

    forward_keeps = ("x",)

    def __init__(self, negative_slope=0.3, alpha=None, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = float(negative_slope if alpha is None else alpha)
        if self.negative_slope < 0:
            raise ValueError(f"{self.name}: negative_slope must be >= 0, got {self.negative_slope}")

    def forward(self, x, training=False):
        """``y = where(x > 0, x, a x)``; ``(N, ...) -> (N, ...)``."""
        self.x = x
        return ops.leaky_relu(x, self.negative_slope)

    def backward(self, grad_out):
        """``dL/dx = dL/dy`` where ``x > 0``, else ``a dL/dy``; ``(N, ...) -> (N, ...)``."""
        return ops.leaky_relu_grad(grad_out, self.x, self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}
