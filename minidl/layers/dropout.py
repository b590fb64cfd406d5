"""Inverted dropout."""

import numpy as np

from minidl.backend import ops
from minidl.layers.base import Layer
from minidl.utils import global_rng


class Dropout(Layer):
    """While training ``y = x * m`` with ``m = 1/(1-rate)`` with probability ``1 - rate``, else 0;
    at inference ``y = x``, so the expected activation is the same in both.  Any shape.

    ``seed`` fixes the mask sequence of this layer; otherwise masks draw from minidl's global
    generator (:func:`minidl.utils.set_random_seed`).
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"{self.name}: rate must be in [0, 1), got {rate!r}")
        self.rate, self.seed = float(rate), seed
        self.own_rng = None if seed is None else np.random.default_rng(seed)
        self.mask = None

    def forward(self, x, training=False):
        """``y = x * m`` when training (a fresh mask per call), else ``y = x``."""
        if not training or self.rate == 0:
            self.mask = None
            return x
        rng = global_rng() if self.own_rng is None else self.own_rng
        y, self.mask = ops.dropout(x, self.rate, int(rng.integers(2**31)))
        return y

    def backward(self, grad_out):
        """``dL/dx = dL/dy * m`` (the same mask), or ``dL/dy`` at inference."""
        return grad_out if self.mask is None else ops.multiply(grad_out, self.mask)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
