"""Losses: values from their formulas, float64 gradient checks, fused softmax path, target checks."""

import numpy as np
import pytest

from minidl import gradcheck, losses

RNG = np.random.default_rng(0)
PROBS = RNG.dirichlet(np.ones(4), size=5)
ONE_HOT = np.eye(4)[[0, 3, 1, 1, 2]]


@pytest.mark.parametrize("loss, y_pred, y_true, from_logits", [
    (losses.MeanSquaredError(), RNG.random((5, 4)), RNG.random((5, 4)), False),
    (losses.MeanAbsoluteError(), RNG.random((5, 4)), RNG.random((5, 4)), False),
    (losses.CategoricalCrossentropy(), PROBS, ONE_HOT, False),
    (losses.CategoricalCrossentropy(from_logits=True), RNG.standard_normal((5, 4)), ONE_HOT, False),
    (losses.CategoricalCrossentropy(), RNG.standard_normal((5, 4)) * 30, ONE_HOT, True),
    (losses.SparseCategoricalCrossentropy(), PROBS, [0, 3, 1, 1, 2], False),
    (losses.SparseCategoricalCrossentropy(), RNG.standard_normal((5, 4)), [0, 3, 1, 1, 2], True),
    (losses.BinaryCrossentropy(), RNG.uniform(0.05, 0.95, (5, 2)), RNG.integers(0, 2, (5, 2)), False),
    (losses.BinaryCrossentropy(from_logits=True), RNG.standard_normal((5, 1)) * 5, RNG.integers(0, 2, 5),
     False),
])
def test_loss_gradients_match_central_differences(backend, loss, y_pred, y_true, from_logits):
    report = gradcheck.check_loss(loss, y_pred, y_true, from_logits=from_logits)
    assert report.passed(1e-6), str(report)


def test_values_follow_the_keras_formulas():
    p, t = RNG.random((3, 2)), RNG.random((3, 2))
    assert losses.MeanSquaredError()(t, p) == pytest.approx(np.mean((p - t) ** 2))
    assert losses.MeanAbsoluteError()(t, p) == pytest.approx(np.mean(np.abs(p - t)))
    expected = -np.mean(np.log(PROBS[np.arange(5), [0, 3, 1, 1, 2]]))
    assert losses.CategoricalCrossentropy()(ONE_HOT, PROBS) == pytest.approx(expected)
    assert losses.SparseCategoricalCrossentropy()([0, 3, 1, 1, 2], PROBS) == pytest.approx(expected)
    assert losses.SparseCategoricalCrossentropy(from_logits=True)(
        [0, 3, 1, 1, 2], np.log(PROBS)) == pytest.approx(expected)
    q, b = np.array([[0.9], [0.2]]), np.array([1, 0])
    assert losses.BinaryCrossentropy()(b, q) == pytest.approx(-np.mean([np.log(0.9), np.log(0.8)]))


def test_fused_cross_entropy_is_finite_for_extreme_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    assert np.isfinite(loss([1, 1], logits))
    assert loss([1, 1], logits) == pytest.approx(1e4)


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 4], r"labels must be in \[0, 4\).*got values in \[0, 4\]"),
    ([0, -1, 2], r"labels must be in \[0, 4\)"),
    ([0.5, 1, 2], "labels must be integers"),
])
def test_sparse_labels_out_of_range_or_fractional_are_rejected(labels, message):
    with pytest.raises(ValueError, match=message):
        losses.SparseCategoricalCrossentropy().encode_targets(labels, (4,), np.float32)


def test_targets_of_the_wrong_shape_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(None, 4\).*\(5, 3\)"):
        losses.CategoricalCrossentropy().encode_targets(np.zeros((5, 3)), (4,), np.float32)


def test_unknown_alias_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'cross_entropy'"):
        losses.get("cross_entropy")
