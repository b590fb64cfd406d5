"""Batch normalization over the channels (the last axis), as in Keras.

Every channel ``c`` is normalized over the batch and, after a conv layer, over every pixel too: the
input ``(N, ..., C)`` is seen as rows ``(M, C)`` (``M = N`` after Dense, ``M = N*H*W`` after Conv2D).
"""

from minidl import initializers, regularizers
from minidl.backend import ops
from minidl.layers.activations import rows_of_last_axis
from minidl.layers.base import Layer


class BatchNormalization(Layer):
    """``y = gamma (x - mean) / sqrt(variance + epsilon) + beta`` per channel.

    Training (``training=True`` and a trainable layer): ``mean`` and ``variance`` are the batch's own,
    over the rows ``(M, C)``; after the step's update the moving statistics follow them::

        moving_mean     = momentum * moving_mean     + (1 - momentum) * mean
        moving_variance = momentum * moving_variance + (1 - momentum) * variance

    Inference (and a frozen layer, ``trainable=False``, as in Keras): ``mean`` and ``variance`` are the
    moving statistics.  Parameters ``gamma`` (with ``scale``) and ``beta`` (with ``center``) are
    ``(C,)``; ``moving_mean`` and ``moving_variance`` ``(C,)`` are non-trainable ``state``.  Weights in
    Keras's order: gamma, beta, moving_mean, moving_variance.  Any input ``(N, ..., C)``, same shape out.
    """

    forward_keeps = ("x_rows", "mean", "variance", "batch_statistics")

    weight_order = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None, gamma_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, int):
            raise ValueError(f"{self.name}: axis must be an int (the channels axis, -1), got {axis!r}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"{self.name}: momentum must be in [0, 1], got {momentum!r}")
        if not epsilon > 0:
            raise ValueError(f"{self.name}: epsilon must be > 0, got {epsilon!r}")
        self.axis, self.momentum, self.epsilon = axis, float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        #: ``(mean, variance)`` of the last training batch, until apply_state_updates commits them
        self.pending_statistics = None

    def compute_output_shape(self, input_shape):
        if self.axis not in (-1, len(input_shape)):
            raise ValueError(f"layer {self.name!r} (BatchNormalization) normalizes the channels, the last "
                             f"axis (-1 or {len(input_shape)} for inputs {(None, *input_shape)}), "
                             f"got axis={self.axis}")
        return input_shape

    def build(self, input_shape):
        super().build(input_shape)
        channels = (input_shape[-1],)
        if self.scale:
            self.add_param("gamma", channels, self.gamma_initializer, self.gamma_regularizer)
        if self.center:
            self.add_param("beta", channels, self.beta_initializer, self.beta_regularizer)
        self.add_state("moving_mean", channels, self.moving_mean_initializer)
        self.add_state("moving_variance", channels, self.moving_variance_initializer)

    def gamma_and_beta(self, channels):
        """``gamma`` and ``beta``, ones and zeros (made on the device) for those turned off."""
        gamma = self.params["gamma"] if self.scale else ops.scale_shift(ops.zeros((channels,), self.dtype), 0.0, 1.0)
        beta = self.params["beta"] if self.center else ops.zeros((channels,), self.dtype)
        return gamma, beta

    def forward(self, x, training=False):
        """``y = gamma (x - mean) / sqrt(variance + epsilon) + beta``; ``(N, ..., C) -> (N, ..., C)``.

        With batch statistics keeps them as ``pending_statistics`` for :meth:`apply_state_updates`;
        keeps the rows ``x`` ``(M, C)``, ``mean`` and ``variance`` for backward.
        """
        self.x_rows = rows_of_last_axis(x)                                       # (M, C)
        self.batch_statistics = training and self.trainable
        if self.batch_statistics:
            self.mean, self.variance = ops.channel_moments(self.x_rows)          # (C,), (C,)
            self.pending_statistics = (self.mean, self.variance)
        else:
            self.mean, self.variance = self.state["moving_mean"], self.state["moving_variance"]
        gamma, beta = self.gamma_and_beta(self.x_rows.shape[1])
        return ops.batch_norm(self.x_rows, self.mean, self.variance, gamma, beta, self.epsilon).reshape(x.shape)

    def backward(self, grad_out):
        """From ``g = dL/dy`` as rows ``(M, C)``, with ``x_hat = (x - mean) / sqrt(variance + epsilon)``::

            dL/dbeta  = sum_m g                                   (C,)
            dL/dgamma = sum_m g x_hat                             (C,)
            dL/dx     = gamma / sqrt(variance + epsilon)
                        * (g - dL/dbeta / M - x_hat dL/dgamma / M)  (M, C), as (N, ..., C)

        The two subtracted terms are the gradient through the batch's own mean and variance; with the
        moving statistics (inference, or a frozen layer) they are constants and the terms vanish.
        """
        gamma, _ = self.gamma_and_beta(self.x_rows.shape[1])
        grad_x, grad_gamma, grad_beta = ops.batch_norm_backward(
            rows_of_last_axis(grad_out), self.x_rows, self.mean, self.variance, gamma, self.epsilon,
            self.batch_statistics)
        if self.scale:
            self.grads["gamma"] = grad_gamma
        if self.center:
            self.grads["beta"] = grad_beta
        return grad_x.reshape(grad_out.shape)

    def apply_state_updates(self):
        """``moving = momentum * moving + (1 - momentum) * batch`` for the mean and the variance of the
        last training batch; nothing when no training forward pass ran since the last commit."""
        if self.pending_statistics is None:
            return
        mean, variance = self.pending_statistics
        ops.moving_average_update(self.state["moving_mean"], mean, self.momentum)
        ops.moving_average_update(self.state["moving_variance"], variance, self.momentum)
        self.pending_statistics = None

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer)}
