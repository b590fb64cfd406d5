"""Batch normalization in plain NumPy, for the bug museum and lesson 7 (``docs/07-batchnorm.md``).

Over every axis but the last (the channels), for a batch ``x`` ``(N, ..., C)`` in training::

    mu  = mean(x)                 (C,)
    var = mean((x - mu)^2)        (C,)
    x^  = (x - mu) / sqrt(var + eps)
    y   = gamma x^ + beta         (N, ..., C)

and, with ``M`` the number of values averaged per channel and ``g = dL/dy``::

    dL/dbeta  = sum g
    dL/dgamma = sum g x^
    dL/dx     = gamma / sqrt(var + eps) * (g - mean(g) - x^ mean(g x^))

The two mean terms come from ``mu`` and ``var`` depending on every ``x``.  Outside training the moving
averages of ``mu`` and ``var`` replace the batch's (updated with Keras's ``momentum``).
"""

import numpy as np

from minidl.layers.base import Layer


class NumpyBatchNorm(Layer):
    """``y = gamma (x - mu) / sqrt(var + eps) + beta`` per channel (the last axis); any rank >= 2."""

    weight_order = ("gamma", "beta")

    def __init__(self, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape):
        super().build(input_shape)
        channels = (input_shape[-1],)
        self.params = {"gamma": np.ones(channels, self.dtype), "beta": np.zeros(channels, self.dtype)}
        self.moving_mean, self.moving_var = np.zeros(channels), np.ones(channels)

    def forward(self, x, training=False):
        """``y = gamma x^ + beta``; keeps ``x_hat`` ``(N, ..., C)`` and ``var`` ``(C,)`` for backward."""
        axes = tuple(range(x.ndim - 1))
        if training:
            mean, self.var = x.mean(axis=axes), x.var(axis=axes)
            self.moving_mean = self.momentum * self.moving_mean + (1 - self.momentum) * mean
            self.moving_var = self.momentum * self.moving_var + (1 - self.momentum) * self.var
        else:
            mean, self.var = self.moving_mean, self.moving_var
        self.x_hat = (x - mean) / np.sqrt(self.var + self.epsilon)
        return self.params["gamma"] * self.x_hat + self.params["beta"]

    def backward(self, grad_out):
        """``dL/dx = gamma / sqrt(var + eps) * (g - mean(g) - x^ mean(g x^))``; ``(N, ..., C)``."""
        axes = tuple(range(grad_out.ndim - 1))
        self.grads["beta"] = grad_out.sum(axis=axes)
        self.grads["gamma"] = (grad_out * self.x_hat).sum(axis=axes)
        scale = self.params["gamma"] / np.sqrt(self.var + self.epsilon)
        return scale * (grad_out - grad_out.mean(axis=axes) - self.x_hat * (grad_out * self.x_hat).mean(axis=axes))
