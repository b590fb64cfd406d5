"""Classification metrics against confusion matrices worked out by hand."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl
from minidl import layers, metrics

# 3 classes, 8 samples.  Hand count (rows = true, columns = predicted):
#   true 0: predicted 0, 0, 1      -> [2, 1, 0]
#   true 1: predicted 1, 1, 2      -> [0, 2, 1]
#   true 2: predicted 2, 0         -> [1, 0, 1]
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 2, 2, 0])
HAND_MATRIX = np.array([[2, 1, 0], [0, 2, 1], [1, 0, 1]])
# precision = diagonal / column sums, recall = diagonal / row sums
HAND_PRECISION = np.array([2 / 3, 2 / 3, 1 / 2])
HAND_RECALL = np.array([2 / 3, 2 / 3, 1 / 2])
HAND_F1 = np.array([2 / 3, 2 / 3, 1 / 2])


def probabilities_for(labels, num_classes=3):
    """Probabilities whose argmax is ``labels``: 0.6 on the label, the rest shared."""
    probs = np.full((len(labels), num_classes), 0.4 / (num_classes - 1))
    probs[np.arange(len(labels)), labels] = 0.6
    return probs


def one_hot(labels, num_classes=3):
    return np.eye(num_classes)[labels]


def test_confusion_matrix_matches_hand_count_from_labels_probabilities_and_one_hot():
    assert np.array_equal(metrics.confusion_matrix(Y_TRUE, Y_PRED), HAND_MATRIX)
    assert np.array_equal(metrics.confusion_matrix(one_hot(Y_TRUE), probabilities_for(Y_PRED)), HAND_MATRIX)


def test_per_class_precision_recall_f1_match_hand_values():
    assert np.allclose(metrics.precision(Y_TRUE, Y_PRED, average=None), HAND_PRECISION)
    assert np.allclose(metrics.recall(Y_TRUE, Y_PRED, average=None), HAND_RECALL)
    assert np.allclose(metrics.f1_score(Y_TRUE, Y_PRED, average=None), HAND_F1)


def test_asymmetric_matrix_separates_precision_from_recall():
    # true: [0, 0, 0, 0, 1], predicted: [0, 0, 0, 1, 1] -> C = [[3, 1], [0, 1]]
    y_true, y_pred = np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 1, 1])
    assert np.allclose(metrics.precision(y_true, y_pred, average=None), [3 / 3, 1 / 2])
    assert np.allclose(metrics.recall(y_true, y_pred, average=None), [3 / 4, 1 / 1])
    f1_class0 = 2 * 1 * 0.75 / 1.75
    f1_class1 = 2 * 0.5 * 1 / 1.5
    assert metrics.f1_score(y_true, y_pred) == pytest.approx((f1_class0 + f1_class1) / 2)
    assert metrics.recall(y_true, y_pred, average="weighted") == pytest.approx((4 * 0.75 + 1 * 1) / 5)
    assert metrics.precision(y_true, y_pred, average="micro") == pytest.approx(4 / 5)


def test_class_never_predicted_scores_zero_precision_not_nan():
    assert metrics.precision([0, 1, 2], [0, 1, 1], average=None)[2] == 0.0


def test_top_k_accuracy_counts_true_class_among_k_highest():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    labels = np.array([1, 0, 1])
    # sample 0: class 1 is 2nd; sample 1: class 0 is 3rd; sample 2: class 1 ties for 2nd
    assert metrics.top_k_accuracy(labels, probs, k=1) == 0
    assert metrics.top_k_accuracy(labels, probs, k=2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(labels, probs, k=3) == 1


def test_classification_report_has_per_class_rows_and_macro_average():
    report = metrics.classification_report(Y_TRUE, probabilities_for(Y_PRED), class_names=["a", "b", "c"])
    assert report["c"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["macro avg"]["f1"] == pytest.approx(HAND_F1.mean())
    assert report["accuracy"] == pytest.approx(5 / 8)
    text = str(report)
    assert "precision" in text and "macro avg" in text and text.splitlines()[1].strip().startswith("a")


def test_metric_objects_accumulate_batches_to_the_whole_set_score():
    targets, probs = one_hot(Y_TRUE), probabilities_for(Y_PRED)
    for metric, expected in ((metrics.Precision(), HAND_PRECISION.mean()),
                             (metrics.Recall(), HAND_RECALL.mean()),
                             (metrics.F1Score(), HAND_F1.mean())):
        metric.update(targets[:3], probs[:3])
        metric.update(targets[3:], probs[3:])
        assert metric.result() == pytest.approx(expected)
        metric.reset()
        assert np.isnan(metric.result())


def test_per_class_average_is_refused_for_compile_metrics():
    with pytest.raises(ValueError, match="classification_report"):
        metrics.Recall(average=None)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_micro_f1_equals_accuracy_and_matrix_sums_to_sample_count(pairs):
    y_true, y_pred = np.array(pairs).T
    matrix = metrics.confusion_matrix(y_true, y_pred, num_classes=4)
    assert matrix.sum() == len(pairs)
    assert metrics.f1_score(y_true, y_pred, average="micro", num_classes=4) == pytest.approx(
        np.mean(y_true == y_pred))


def test_compile_accepts_metric_names_and_instances_and_logs_them():
    rng = np.random.default_rng(0)
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy",
                  metrics=["accuracy", "precision", "recall", "f1", "top_k_accuracy",
                           metrics.Recall(average="weighted", name="weighted_recall")])
    x, y = rng.standard_normal((30, 4)).astype("float32"), rng.integers(0, 3, 30)
    history = model.fit(x, y, epochs=1, batch_size=10, verbose=0, validation_data=(x, y))
    logged = history.history
    for name in ("precision", "recall", "f1", "top_k_accuracy", "weighted_recall", "val_f1"):
        assert 0 <= logged[name][0] <= 1
    assert logged["top_k_accuracy"][0] == 1.0  # k=5 >= 3 classes
    probs = model.predict(x)
    assert logged["val_f1"][0] == pytest.approx(metrics.f1_score(y, probs))


def test_unknown_metric_name_lists_known_ones():
    with pytest.raises(ValueError, match="known names"):
        metrics.get("f2")
