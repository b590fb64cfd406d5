"""Metrics accumulated over an epoch, with Keras's names.

A metric sees host arrays: the model's output ``y_pred`` ``(N, K)`` and the encoded targets of the
same shape (one-hot for class labels).  ``update`` adds a batch, ``result`` gives the value so far,
``reset`` starts over.  ``compile(metrics=["accuracy"])`` resolves names with :func:`get`.
"""

import numpy as np


class Metric:
    name = None

    def __init__(self):
        self.reset()

    def reset(self):
        raise NotImplementedError

    def update(self, targets, y_pred):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError


class Mean(Metric):
    """Sample-weighted running mean of per-batch values (used for the loss)."""

    name = "mean"

    def reset(self):
        self.total, self.count = 0.0, 0

    def update_value(self, value, count):
        self.total += float(value) * count
        self.count += count

    def result(self):
        return self.total / self.count if self.count else float("nan")


class CategoricalAccuracy(Metric):
    """Fraction of samples whose highest output is the target class: ``argmax p == argmax t``."""

    name = "accuracy"

    def reset(self):
        self.correct, self.count = 0, 0

    def update(self, targets, y_pred):
        self.correct += int((y_pred.argmax(axis=-1) == targets.argmax(axis=-1)).sum())
        self.count += len(y_pred)

    def result(self):
        return self.correct / self.count if self.count else float("nan")


class BinaryAccuracy(CategoricalAccuracy):
    """Fraction of outputs on the right side of ``threshold`` (0.5 for probabilities)."""

    def __init__(self, threshold=0.5):
        self.threshold = threshold
        super().__init__()

    def update(self, targets, y_pred):
        self.correct += int(((y_pred > self.threshold) == (targets > 0.5)).sum())
        self.count += y_pred.size


def get(identifier, loss=None, output_shape=None):
    """A metric from an instance or a name; ``"accuracy"``/``"acc"`` picks binary or categorical
    accuracy from the output shape and loss, as Keras does."""
    if isinstance(identifier, Metric):
        return identifier
    if identifier in ("accuracy", "acc"):
        single_output = output_shape is not None and output_shape[-1] == 1
        if single_output or (loss is not None and loss.name == "binary_crossentropy"):
            metric = BinaryAccuracy(threshold=0.0 if getattr(loss, "from_logits", False) else 0.5)
        else:
            metric = CategoricalAccuracy()
        metric.name = identifier
        return metric
    if identifier == "categorical_accuracy":
        return CategoricalAccuracy()
    if identifier == "binary_accuracy":
        return BinaryAccuracy()
    raise ValueError(f"unknown metric {identifier!r}")
