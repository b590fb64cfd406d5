"""Losses with Keras's names.  Each reduces to the mean over the batch.

A loss takes the model's output ``y_pred`` ``(N, K)`` and encoded targets of the same shape, and
returns ``(loss, dL/dy_pred)``.  The cross-entropies also work from logits: when the model ends in a
softmax, ``Sequential`` hands them the pre-softmax logits and the fused kernel returns
``(softmax(z) - t) / N``, exact and stable for any logits.
"""

import numpy as np

from minidl.kernels import numpy_ref
from minidl.backend import ops

EPSILON = 1e-7  # Keras's clip for probabilities


class Loss:
    name = None
    is_cross_entropy = False  # categorical cross-entropy, which fuses with a final softmax
    from_logits = False

    # ----------------------------------------------------------------------------- targets

    def encode_targets(self, y_true, output_shape, dtype):
        """Check ``y_true`` against the model's per-sample output shape and return float targets
        of shape ``(N, *output_shape)``.  Raises ``ValueError`` naming the loss and the shapes."""
        y_true = np.asarray(y_true)
        expected = (len(y_true), *output_shape)
        if y_true.shape != expected and y_true.reshape(len(y_true), -1).shape != expected:
            raise ValueError(f"{self.name}: targets must have shape {(None, *output_shape)} to match "
                             f"the model's output, got {y_true.shape}")
        if not np.issubdtype(y_true.dtype, np.number) or not np.isfinite(y_true).all():
            raise ValueError(f"{self.name}: targets must be finite numbers")
        return y_true.reshape(expected).astype(dtype)

    # ------------------------------------------------------------------------------ values

    def value_and_grad(self, y_pred, targets):
        """``(mean loss as float, dL/dy_pred)`` for backend arrays of the same shape."""
        y_pred_host = ops.to_host(y_pred)
        losses, grad = self.host_value_and_grad(y_pred_host, ops.to_host(targets))
        return float(losses.mean()), ops.to_device(grad.astype(y_pred_host.dtype))

    def host_value_and_grad(self, y_pred, targets):
        """``(per-sample losses (N,), dL/dy_pred of the mean loss)`` on NumPy arrays."""
        raise NotImplementedError

    def __call__(self, y_true, y_pred):
        """The mean loss of host arrays, Keras's argument order."""
        y_pred = np.asarray(y_pred, dtype=np.float64)
        targets = self.encode_targets(y_true, y_pred.shape[1:], y_pred.dtype)
        return float(self.host_value_and_grad(y_pred, targets)[0].mean())

    def get_config(self):
        return {}


class LogitsOrProbabilitiesLoss(Loss):
    """A loss that takes probabilities, or logits with ``from_logits=True``."""

    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)

    def get_config(self):
        return {"from_logits": self.from_logits}


def _sigmoid(z):
    """``1 / (1 + e^-z)`` without overflow."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _mean_over_features(values):
    return values.reshape(len(values), -1).mean(axis=1)


class MeanSquaredError(Loss):
    """``L = mean_n mean_k (p_nk - t_nk)^2``; ``dL/dp = 2 (p - t) / (N K)``."""

    name = "mean_squared_error"

    def host_value_and_grad(self, y_pred, targets):
        diff = y_pred - targets
        return _mean_over_features(diff * diff), 2 * diff / diff.size


class MeanAbsoluteError(Loss):
    """``L = mean_n mean_k |p_nk - t_nk|``; ``dL/dp = sign(p - t) / (N K)``."""

    name = "mean_absolute_error"

    def host_value_and_grad(self, y_pred, targets):
        diff = y_pred - targets
        return _mean_over_features(np.abs(diff)), np.sign(diff) / diff.size


class CategoricalCrossentropy(LogitsOrProbabilitiesLoss):
    """``L = -mean_n sum_k t_nk log p_nk`` with one-hot (or probability) targets ``(N, K)``.

    From probabilities ``p`` (clipped to ``[eps, 1 - eps]``): ``dL/dp = -t / (N p)``.  From logits
    ``z``: ``p = softmax(z)`` and ``dL/dz = (p - t) / N``.
    """

    name = "categorical_crossentropy"
    is_cross_entropy = True

    def value_and_grad(self, y_pred, targets):
        if self.from_logits:
            return self.value_and_grad_from_logits(y_pred, targets)
        return super().value_and_grad(y_pred, targets)

    def value_and_grad_from_logits(self, logits, targets):
        """The fused, stable softmax + cross-entropy on logits ``(N, K)``."""
        losses, grad = ops.softmax_cross_entropy(logits, targets)
        return float(ops.to_host(losses).mean()), grad

    def host_value_and_grad(self, y_pred, targets):
        if self.from_logits:
            return numpy_ref.softmax_cross_entropy(y_pred, targets)
        clipped = np.clip(y_pred, EPSILON, 1 - EPSILON)
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        return -(targets * np.log(clipped)).sum(axis=1), -targets / clipped * inside / len(y_pred)


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Categorical cross-entropy with integer class labels ``(N,)`` in ``[0, K)`` as targets."""

    name = "sparse_categorical_crossentropy"

    def encode_targets(self, y_true, output_shape, dtype):
        """Integer labels ``(N,)`` (or ``(N, 1)``) -> one-hot ``(N, K)``; out-of-range labels raise."""
        labels = np.asarray(y_true)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        num_classes = output_shape[-1]
        if labels.ndim != 1 or len(output_shape) != 1:
            raise ValueError(f"{self.name}: targets must be integer labels of shape (N,) for an "
                             f"output of shape (None, classes); got targets {np.shape(y_true)} and "
                             f"output {(None, *output_shape)}")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.issubdtype(labels.dtype, np.floating) or not np.all(labels == np.round(labels)):
                raise ValueError(f"{self.name}: labels must be integers, got dtype {labels.dtype}")
            labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{self.name}: labels must be in [0, {num_classes}) for a "
                             f"{num_classes}-class output, got values in "
                             f"[{labels.min()}, {labels.max()}]")
        one_hot = np.zeros((len(labels), num_classes), dtype=dtype)
        one_hot[np.arange(len(labels)), labels] = 1
        return one_hot


class BinaryCrossentropy(LogitsOrProbabilitiesLoss):
    """``L = -mean_n mean_k [t log p + (1 - t) log(1 - p)]`` for sigmoid outputs.

    From probabilities (clipped): ``dL/dp = (p - t) / (p (1 - p) N K)``.  From logits ``z``:
    ``L = max(z, 0) - z t + log(1 + e^-|z|)`` and ``dL/dz = (sigmoid(z) - t) / (N K)``.
    """

    name = "binary_crossentropy"

    def host_value_and_grad(self, y_pred, targets):
        if self.from_logits:
            z = y_pred
            losses = np.maximum(z, 0) - z * targets + np.log1p(np.exp(-np.abs(z)))
            return _mean_over_features(losses), (_sigmoid(z) - targets) / z.size
        p = np.clip(y_pred, EPSILON, 1 - EPSILON)
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        losses = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
        return _mean_over_features(losses), (p - targets) / (p * (1 - p)) * inside / p.size

LOSSES = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
}


def get(identifier):
    """A loss from an instance or a Keras alias (``"mse"``, ``"categorical_crossentropy"``, ...)."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier in LOSSES:
        return LOSSES[identifier]()
    raise ValueError(f"unknown loss {identifier!r}; known aliases: {sorted(LOSSES)}")


def serialize(loss):
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(config):
    classes = {cls.__name__: cls for cls in LOSSES.values()}
    return classes[config["class_name"]](**config["config"])
