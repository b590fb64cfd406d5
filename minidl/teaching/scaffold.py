"""Exercises: write the forward and backward of five layers in NumPy, then grade them.

    minidl grade --new my_layers.py      # a copy of this file to work in
    minidl grade my_layers.py            # runs your classes through shape tests and gradient checks

The grader imports your file (it runs your code, so grade only files you trust) and, for each class
below that it finds, says in words what is wrong: a shape, a forward value, a gradient (with a hint
when the gradient has a typical mistake, such as being N times too small).  Everything is float64.
Shapes are channels-last, as in minidl: images ``(N, H, W, C)``, conv kernels ``(KH, KW, C, F)``.
The lessons in ``docs/`` derive every formula you need.
"""

import numpy as np


class Dense:
    """``y = x W + b``: ``x`` ``(N, D)``, ``W`` ``(D, U)``, ``b`` ``(U,)`` -> ``y`` ``(N, U)``."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        """Return ``y`` ``(N, U)``; keep what backward needs on ``self``."""
        raise NotImplementedError("Dense.forward")

    def backward(self, grad_out):
        """From ``G = dL/dy`` ``(N, U)``: set ``self.dW`` ``(D, U)`` and ``self.db`` ``(U,)``;
        return ``dL/dx`` ``(N, D)``."""
        raise NotImplementedError("Dense.backward")


class Conv2D:
    """Stride 1, no padding: ``y[n, i, j, f] = b[f] + sum_{p, q, c} x[n, i+p, j+q, c] W[p, q, c, f]``.

    ``x`` ``(N, H, W, C)``, ``W`` ``(KH, KW, C, F)``, ``b`` ``(F,)`` -> ``y`` ``(N, H-KH+1, W-KW+1, F)``.
    Plain loops are fine.
    """

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        raise NotImplementedError("Conv2D.forward")

    def backward(self, grad_out):
        """Set ``self.dW`` ``(KH, KW, C, F)`` and ``self.db`` ``(F,)``; return ``dL/dx`` ``(N, H, W, C)``."""
        raise NotImplementedError("Conv2D.backward")


class MaxPooling2D:
    """2x2 windows at stride 2: ``y[n, i, j, c] = max_{p, q < 2} x[n, 2i+p, 2j+q, c]``.

    ``x`` ``(N, H, W, C)`` with even ``H`` and ``W`` -> ``y`` ``(N, H/2, W/2, C)``.  When a window
    holds its maximum twice, the gradient goes to one of them only.
    """

    def forward(self, x):
        raise NotImplementedError("MaxPooling2D.forward")

    def backward(self, grad_out):
        """Return ``dL/dx`` ``(N, H, W, C)``."""
        raise NotImplementedError("MaxPooling2D.backward")


class ReLU:
    """``y = max(0, x)``, any shape."""

    def forward(self, x):
        raise NotImplementedError("ReLU.forward")

    def backward(self, grad_out):
        raise NotImplementedError("ReLU.backward")


class SoftmaxCrossEntropy:
    """The mean over the batch of ``-sum_k t_k log softmax(z)_k`` for logits ``z`` ``(N, K)`` and
    one-hot targets ``t`` ``(N, K)``.  Must stay finite for any logits (even 1000)."""

    def forward(self, logits, targets):
        """Return the loss, a float."""
        raise NotImplementedError("SoftmaxCrossEntropy.forward")

    def backward(self):
        """Return ``dL/dz`` ``(N, K)``."""
        raise NotImplementedError("SoftmaxCrossEntropy.backward")
