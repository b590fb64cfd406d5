"""A correct solution of the exercises in minidl/teaching/scaffold.py, as a student would write it;
the grader's tests break it one typical mistake at a time."""

import numpy as np


class Dense:
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, grad_out):
        self.dW = self.x.T @ grad_out
        self.db = grad_out.sum(axis=0)
        return grad_out @ self.W.T


class Conv2D:
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        kh, kw, _, f = self.W.shape
        n, h, w, _ = x.shape
        y = np.zeros((n, h - kh + 1, w - kw + 1, f))
        for i in range(h - kh + 1):
            for j in range(w - kw + 1):
                y[:, i, j, :] = np.tensordot(x[:, i:i + kh, j:j + kw, :], self.W, axes=3) + self.b
        return y

    def backward(self, grad_out):
        kh, kw, _, _ = self.W.shape
        grad_in = np.zeros_like(self.x)
        self.dW = np.zeros_like(self.W)
        self.db = grad_out.sum(axis=(0, 1, 2))
        for i in range(grad_out.shape[1]):
            for j in range(grad_out.shape[2]):
                window = self.x[:, i:i + kh, j:j + kw, :]
                self.dW += np.tensordot(window, grad_out[:, i, j, :], axes=(0, 0))
                grad_in[:, i:i + kh, j:j + kw, :] += np.tensordot(grad_out[:, i, j, :], self.W, axes=(1, 3))
        return grad_in


class MaxPooling2D:
    def forward(self, x):
        n, h, w, c = x.shape
        windows = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
        self.x_shape, self.argmax = x.shape, windows.argmax(axis=-1)
        return windows.max(axis=-1)

    def backward(self, grad_out):
        n, h, w, c = self.x_shape
        routed = np.zeros((*grad_out.shape, 4))
        np.put_along_axis(routed, self.argmax[..., None], grad_out[..., None], axis=-1)
        return routed.reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, h, w, c)


class ReLU:
    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)

    def backward(self, grad_out):
        return grad_out * (self.x > 0)


class SoftmaxCrossEntropy:
    def forward(self, logits, targets):
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self.probs, self.targets = np.exp(log_probs), targets
        return float(-(targets * log_probs).sum(axis=1).mean())

    def backward(self):
        return (self.probs - self.targets) / len(self.targets)
