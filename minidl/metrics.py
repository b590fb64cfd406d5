"""Metrics accumulated over an epoch, with Keras's names.

A metric sees host arrays: the model's output ``y_pred`` ``(N, K)`` and the encoded targets of the
same shape (one-hot for class labels).  ``update`` adds a batch, ``result`` gives the value so far,
``reset`` starts over.  ``compile(metrics=["accuracy", "f1"])`` resolves names with :func:`get`.

The same scores work as plain functions on labels ``(N,)`` or probabilities ``(N, K)``:
:func:`confusion_matrix`, :func:`precision`, :func:`recall`, :func:`f1_score` (``average=None`` for
per-class values), :func:`top_k_accuracy` and :func:`classification_report`.
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

    def get_config(self):
        return {"name": self.name}


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

    def __init__(self, name="categorical_accuracy"):
        self.name = name
        super().__init__()

    def reset(self):
        self.correct, self.count = 0, 0

    def update(self, targets, y_pred):
        self.correct += int((y_pred.argmax(axis=-1) == targets.argmax(axis=-1)).sum())
        self.count += len(y_pred)

    def result(self):
        return self.correct / self.count if self.count else float("nan")


class SparseCategoricalAccuracy(CategoricalAccuracy):
    """Categorical accuracy for a model trained on integer labels: the loss has already encoded them
    one-hot, so the comparison is the same ``argmax p == argmax t``; only Keras's name differs."""

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name)


class BinaryAccuracy(CategoricalAccuracy):
    """Fraction of outputs on the right side of ``threshold`` (0.5 for probabilities)."""

    def __init__(self, threshold=0.5, name="binary_accuracy"):
        self.threshold = threshold
        super().__init__(name)

    def update(self, targets, y_pred):
        self.correct += int(((y_pred > self.threshold) == (targets > 0.5)).sum())
        self.count += y_pred.size

    def get_config(self):
        return {"threshold": self.threshold, "name": self.name}


# ------------------------------------------------------------------ classification metrics


def to_labels(y, threshold=0.5):
    """Class labels ``(N,)`` from labels ``(N,)``, one-hot targets or probabilities ``(N, K)`` (the
    argmax), or single sigmoid outputs ``(N, 1)`` (1 where above ``threshold``)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y.astype(np.int64)
    if y.ndim == 2 and y.shape[1] == 1:
        return (y[:, 0] > threshold).astype(np.int64)
    if y.ndim == 2:
        return y.argmax(axis=1)
    raise ValueError(f"expected class labels (N,) or per-class scores (N, K), got shape {y.shape}")


def count_classes(*arrays):
    """``K`` from the widest per-class array among ``arrays``, else from the largest label."""
    widths = [np.shape(a)[1] for a in arrays if np.ndim(a) == 2 and np.shape(a)[1] > 1]
    if widths:
        return max(widths)
    if any(np.ndim(a) == 2 for a in arrays):
        return 2
    return int(max((np.max(a) for a in arrays if np.size(a)), default=0)) + 1


def confusion_matrix(y_true, y_pred, num_classes=None):
    """``C[i, j]`` = number of samples of true class ``i`` predicted as class ``j``; ``(K, K)`` ints.

    ``y_true`` and ``y_pred`` may each be labels ``(N,)`` or per-class scores ``(N, K)``.
    """
    true_labels, pred_labels = to_labels(y_true), to_labels(y_pred)
    if len(true_labels) != len(pred_labels):
        raise ValueError(f"confusion_matrix: y_true has {len(true_labels)} samples, y_pred "
                         f"{len(pred_labels)}")
    k = num_classes or count_classes(y_true, y_pred)
    for what, labels in (("y_true", true_labels), ("y_pred", pred_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"confusion_matrix: {what} has labels in [{labels.min()}, {labels.max()}], "
                             f"outside [0, {k})")
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (true_labels, pred_labels), 1)
    return matrix


def _safe_divide(numerator, denominator):
    """``numerator / denominator`` with 0 where the denominator is 0 (a class never predicted/seen)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def scores_from_confusion(matrix):
    """Per-class ``(precision, recall, f1, support)`` from a confusion matrix ``(K, K)``:

    precision_k = C[k, k] / sum_i C[i, k],  recall_k = C[k, k] / sum_j C[k, j],
    f1_k = 2 precision_k recall_k / (precision_k + recall_k)  (0 where undefined).
    """
    true_positives = np.diag(matrix)
    precision = _safe_divide(true_positives, matrix.sum(axis=0))
    recall = _safe_divide(true_positives, matrix.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1, matrix.sum(axis=1)


AVERAGES = (None, "macro", "micro", "weighted")


def average_scores(per_class, matrix, average, score_name):
    """Reduce per-class scores: ``None`` keeps them, ``"macro"`` is the plain mean over classes,
    ``"weighted"`` weights by support, ``"micro"`` is the score of the pooled counts (= accuracy for
    single-label classification)."""
    if average is None:
        return per_class
    if average == "macro":
        return float(per_class.mean())
    if average == "weighted":
        support = matrix.sum(axis=1)
        return float((per_class * support).sum() / support.sum()) if support.sum() else 0.0
    if average == "micro":
        return float(np.trace(matrix) / matrix.sum()) if matrix.sum() else 0.0
    raise ValueError(f"{score_name}: average must be one of {AVERAGES}, got {average!r}")


def _score(index, score_name):
    def score(y_true, y_pred, average="macro", num_classes=None):
        matrix = confusion_matrix(y_true, y_pred, num_classes)
        return average_scores(scores_from_confusion(matrix)[index], matrix, average, score_name)
    score.__name__ = score_name
    score.__doc__ = (f"{score_name.capitalize()} of labels/scores ``y_pred`` against ``y_true``; "
                     f"``average=None`` gives one value per class ``(K,)``, else a float "
                     f"(``\"macro\"``, ``\"micro\"``, ``\"weighted\"``).")
    return score


precision = _score(0, "precision")
recall = _score(1, "recall")
f1_score = _score(2, "f1_score")


def top_k_accuracy(y_true, y_prob, k=5):
    """Fraction of samples whose true class is among the ``k`` highest scores of ``y_prob`` ``(N, K)``."""
    y_prob = np.asarray(y_prob)
    true_labels = to_labels(y_true)
    if y_prob.ndim != 2 or len(y_prob) != len(true_labels):
        raise ValueError(f"top_k_accuracy: y_prob must be (N, K) with N={len(true_labels)}, "
                         f"got {y_prob.shape}")
    true_scores = y_prob[np.arange(len(y_prob)), true_labels]
    # rank of the true class = how many classes score strictly higher; ties count in its favour
    rank = (y_prob > true_scores[:, None]).sum(axis=1)
    return float((rank < k).mean()) if len(y_prob) else float("nan")


class TopKCategoricalAccuracy(Metric):
    """Fraction of samples whose target class is among the ``k`` highest outputs."""

    def __init__(self, k=5, name="top_k_accuracy"):
        self.k, self.name = int(k), name
        super().__init__()

    def reset(self):
        self.hits, self.count = 0.0, 0

    def update(self, targets, y_pred):
        self.hits += top_k_accuracy(targets, y_pred, self.k) * len(y_pred)
        self.count += len(y_pred)

    def result(self):
        return self.hits / self.count if self.count else float("nan")

    def get_config(self):
        return {"k": self.k, "name": self.name}


class ConfusionMatrixMetric(Metric):
    """Accumulates the confusion matrix of an epoch; subclasses reduce it to one number."""

    score_index = None

    def __init__(self, average="macro", name=None):
        if average not in AVERAGES[1:]:
            raise ValueError(f"{type(self).__name__}: average must be 'macro', 'micro' or 'weighted' "
                             f"(per-class values come from minidl.metrics.classification_report), "
                             f"got {average!r}")
        self.average = average
        self.name = name or self.default_name
        super().__init__()

    def reset(self):
        self.matrix = None

    def update(self, targets, y_pred):
        batch_matrix = confusion_matrix(targets, y_pred, count_classes(targets, y_pred))
        self.matrix = batch_matrix if self.matrix is None else self.matrix + batch_matrix

    def result(self):
        if self.matrix is None:
            return float("nan")
        per_class = scores_from_confusion(self.matrix)[self.score_index]
        return average_scores(per_class, self.matrix, self.average, self.name)

    def get_config(self):
        return {"average": self.average, "name": self.name}


class Precision(ConfusionMatrixMetric):
    """Precision over the epoch: of the samples predicted as class k, the fraction that are k."""

    score_index, default_name = 0, "precision"


class Recall(ConfusionMatrixMetric):
    """Recall over the epoch: of the samples of class k, the fraction predicted as k."""

    score_index, default_name = 1, "recall"


class F1Score(ConfusionMatrixMetric):
    """F1 over the epoch: the harmonic mean of each class's precision and recall."""

    score_index, default_name = 2, "f1"


class ClassificationReport(dict):
    """``{class_name: {"precision", "recall", "f1", "support"}, ..., "accuracy": float,
    "macro avg": {...}, "weighted avg": {...}}``; ``str()`` is a table."""

    def __str__(self):
        rows = [(name, scores) for name, scores in self.items() if isinstance(scores, dict)]
        width = max(len(str(name)) for name, _ in rows) + 2
        lines = [" " * width + f"{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
        for name, scores in rows:
            if name == "macro avg":
                lines.append(f"{'accuracy'.rjust(width)}{'':>20}{self['accuracy']:>10.4f}"
                             f"{scores['support']:>10}")
            lines.append(f"{str(name).rjust(width)}{scores['precision']:>10.4f}{scores['recall']:>10.4f}"
                         f"{scores['f1']:>10.4f}{scores['support']:>10}")
        return "\n".join(lines)


def classification_report(y_true, y_pred_probs, class_names=None):
    """Per-class precision, recall, F1 and support plus accuracy and macro/weighted averages.

    ``y_true``: labels ``(N,)`` or one-hot ``(N, K)``; ``y_pred_probs``: probabilities ``(N, K)``
    (or labels).  ``class_names`` (``K`` strings) name the rows; by default they are ``"0"``, ``"1"``...
    """
    k = count_classes(y_true, y_pred_probs) if class_names is None else len(class_names)
    matrix = confusion_matrix(y_true, y_pred_probs, k)
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    precision_k, recall_k, f1_k, support = scores_from_confusion(matrix)
    report = ClassificationReport()
    for index, name in enumerate(names):
        report[name] = {"precision": float(precision_k[index]), "recall": float(recall_k[index]),
                        "f1": float(f1_k[index]), "support": int(support[index])}
    report["accuracy"] = float(np.trace(matrix) / matrix.sum()) if matrix.sum() else 0.0
    for average in ("macro", "weighted"):
        report[f"{average} avg"] = {
            score_name: average_scores(values, matrix, average, score_name)
            for score_name, values in (("precision", precision_k), ("recall", recall_k), ("f1", f1_k))}
        report[f"{average} avg"]["support"] = int(support.sum())
    return report


#: names ``compile(metrics=[...])`` accepts besides ``"accuracy"``/``"acc"``; each metric logs under
#: the name it was asked by (the history keys Keras gives)
METRICS_BY_NAME = {
    "categorical_accuracy": CategoricalAccuracy, "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "precision": Precision, "recall": Recall, "f1": F1Score, "f1_score": F1Score,
    "top_k_accuracy": TopKCategoricalAccuracy, "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": TopKCategoricalAccuracy,
}
METRIC_CLASSES = {cls.__name__: cls for cls in (CategoricalAccuracy, SparseCategoricalAccuracy, BinaryAccuracy,
                                                Precision, Recall, F1Score, TopKCategoricalAccuracy)}


def get(identifier, loss=None, output_shape=None):
    """A metric from an instance or a name; ``"accuracy"``/``"acc"`` picks binary or categorical
    accuracy from the output shape and loss, as Keras does.  Other names: ``"precision"``,
    ``"recall"``, ``"f1"`` (macro averages), ``"top_k_accuracy"`` (k=5) and Keras's
    ``"categorical_accuracy"``, ``"sparse_categorical_accuracy"``, ``"binary_accuracy"``,
    ``"top_k_categorical_accuracy"``, ``"sparse_top_k_categorical_accuracy"``."""
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
    if identifier in METRICS_BY_NAME:
        return METRICS_BY_NAME[identifier](name=identifier)
    known = sorted(["accuracy", "acc", *METRICS_BY_NAME])
    raise ValueError(f"unknown metric {identifier!r}; known names: {known}")


def serialize(metric):
    """A metric name stays a name; a metric instance becomes ``{"class_name", "config"}``."""
    if isinstance(metric, str):
        return metric
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def deserialize(config):
    """Inverse of :func:`serialize`; only minidl's metric classes are accepted."""
    if isinstance(config, str):
        return config
    class_name = config.get("class_name")
    if class_name not in METRIC_CLASSES:
        raise ValueError(f"unknown metric class {class_name!r}; known: {sorted(METRIC_CLASSES)}")
    metric = METRIC_CLASSES[class_name](**{k: v for k, v in config["config"].items() if k != "name"})
    metric.name = config["config"].get("name", metric.name)
    return metric
