"""Optimizer updates against values computed by hand for two steps, and schedules."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl import optimizers, regularizers, schedules

W0 = np.array([1.0, -2.0])
G1, G2 = np.array([0.5, 1.0]), np.array([-1.0, 0.25])


def two_steps(optimizer, grads=(G1, G2)):
    w = W0.copy()
    for g in grads:
        optimizer.apply_gradients([(w, g.copy())])
    return w


def test_plain_sgd(backend):
    np.testing.assert_allclose(two_steps(optimizers.SGD(0.1)), W0 - 0.1 * G1 - 0.1 * G2)


def test_sgd_momentum_by_hand(backend):
    v1 = -0.1 * G1
    v2 = 0.9 * v1 - 0.1 * G2
    np.testing.assert_allclose(two_steps(optimizers.SGD(0.1, momentum=0.9)), W0 + v1 + v2)


def test_sgd_nesterov_by_hand(backend):
    v1 = -0.1 * G1
    w1 = W0 + 0.9 * v1 - 0.1 * G1
    v2 = 0.9 * v1 - 0.1 * G2
    w2 = w1 + 0.9 * v2 - 0.1 * G2
    np.testing.assert_allclose(two_steps(optimizers.SGD(0.1, momentum=0.9, nesterov=True)), w2)


def test_adam_bias_correction_by_hand(backend):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-7
    m1, v1 = (1 - b1) * G1, (1 - b2) * G1**2
    w1 = W0 - lr * math.sqrt(1 - b2) / (1 - b1) * m1 / (np.sqrt(v1) + eps)
    m2, v2 = b1 * m1 + (1 - b1) * G2, b2 * v1 + (1 - b2) * G2**2
    w2 = w1 - lr * math.sqrt(1 - b2**2) / (1 - b1**2) * m2 / (np.sqrt(v2) + eps)
    np.testing.assert_allclose(two_steps(optimizers.Adam(lr)), w2, rtol=1e-12)
    # the first Adam step moves every weight by about lr, whatever the gradient's scale
    np.testing.assert_allclose(np.abs(w1 - W0), lr, rtol=1e-4)


def test_rmsprop_by_hand(backend):
    s1 = 0.1 * G1**2
    w1 = W0 - 0.01 * G1 / np.sqrt(s1 + 1e-7)
    s2 = 0.9 * s1 + 0.1 * G2**2
    w2 = w1 - 0.01 * G2 / np.sqrt(s2 + 1e-7)
    np.testing.assert_allclose(two_steps(optimizers.RMSprop(0.01)), w2, rtol=1e-12)


def test_l2_decay_adds_two_lambda_w_to_the_gradient(backend):
    reg = regularizers.L2(0.05)
    w = W0.copy()
    for g in (G1, G2):
        grad = g.copy()
        reg.add_gradient(grad, w)
        optimizers.SGD(0.1).apply_gradients([(w, grad)])
    w1 = W0 - 0.1 * (G1 + 0.1 * W0)
    np.testing.assert_allclose(w, w1 - 0.1 * (G2 + 0.1 * w1))
    assert reg.penalty(W0) == pytest.approx(0.05 * 5.0)


def test_l1_penalty_and_gradient(backend):
    reg = regularizers.L1L2(l1=0.1, l2=0.0)
    grad = np.zeros(2)
    reg.add_gradient(grad, W0)
    np.testing.assert_allclose(grad, [0.1, -0.1])
    assert reg.penalty(W0) == pytest.approx(0.3)


def test_schedule_is_evaluated_at_the_step_count(backend):
    schedule = schedules.StepDecay(0.1, step_size=1, factor=0.5)
    w = two_steps(optimizers.SGD(schedule))
    np.testing.assert_allclose(w, W0 - 0.1 * G1 - 0.05 * G2)


@pytest.mark.parametrize("schedule, expected", [
    (schedules.ExponentialDecay(1.0, decay_steps=10, decay_rate=0.5), [1.0, 0.5**0.5, 0.5, 0.25]),
    (schedules.ExponentialDecay(1.0, 10, 0.5, staircase=True), [1.0, 1.0, 0.5, 0.25]),
    (schedules.StepDecay(1.0, step_size=10, factor=0.1), [1.0, 1.0, 0.1, 0.01]),
    (schedules.CosineDecay(1.0, decay_steps=20, alpha=0.0), [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0]),
    (schedules.PiecewiseConstantDecay([5, 15], [1.0, 0.5, 0.1]), [1.0, 1.0, 0.5, 0.1]),
])
def test_schedules_follow_their_formulas(schedule, expected):
    np.testing.assert_allclose([schedule(t) for t in (0, 5, 10, 20)], expected)


def test_gd_is_full_batch_and_unknown_aliases_fail():
    assert optimizers.get("gd").full_batch and not optimizers.get("sgd").full_batch
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'"):
        optimizers.get("adamw")


def test_state_round_trip_continues_identically(backend):
    first, second = optimizers.Adam(0.01), optimizers.Adam(0.01)
    w_first = W0.copy()
    first.apply_gradients([(w_first, G1.copy())])
    second.set_state(first.get_state())
    w_second = w_first.copy()
    first.apply_gradients([(w_first, G2.copy())])
    second.apply_gradients([(w_second, G2.copy())])
    np.testing.assert_array_equal(w_first, w_second)


# ---------------------------------------------------------------------- settings refused up front


not_finite_positive = st.one_of(st.floats(max_value=0), st.just(math.inf), st.just(math.nan),
                                st.booleans(), st.text(max_size=2), st.just([0.1]))
not_a_fraction = st.one_of(st.floats(min_value=1), st.floats(max_value=-1e-12), st.just(math.nan),
                           st.booleans(), st.text(max_size=2))


@given(value=not_finite_positive, name=st.sampled_from(["SGD", "GD", "Adam", "RMSprop"]))
@settings(max_examples=60, deadline=None)
def test_a_learning_rate_that_is_not_a_positive_finite_number_is_refused(value, name):
    with pytest.raises(ValueError, match=f"{name}: learning_rate must be"):
        getattr(optimizers, name)(value)


@given(value=not_a_fraction, setting=st.sampled_from([("SGD", "momentum"), ("Adam", "beta_1"),
                                                       ("Adam", "beta_2"), ("RMSprop", "rho")]))
@settings(max_examples=60, deadline=None)
def test_a_decay_factor_outside_zero_to_one_is_refused(value, setting):
    name, argument = setting
    with pytest.raises(ValueError, match=f"{name}: {argument} must be"):
        getattr(optimizers, name)(**{argument: value})


@pytest.mark.parametrize("name", ["Adam", "RMSprop"])
@pytest.mark.parametrize("epsilon", [0.0, -1e-7, math.inf, math.nan])
def test_an_epsilon_that_is_not_positive_and_finite_is_refused(name, epsilon):
    with pytest.raises(ValueError, match=f"{name}: epsilon must be"):
        getattr(optimizers, name)(epsilon=epsilon)


def test_setting_the_learning_rate_later_is_checked_too():
    optimizer = optimizers.SGD()
    with pytest.raises(ValueError, match="learning_rate must be finite"):
        optimizer.learning_rate = math.inf
    assert optimizer.learning_rate == 0.01


def test_a_schedule_value_that_is_not_positive_is_refused_at_its_step_before_any_update():
    optimizer = optimizers.SGD(lambda step: 0.1 if step == 0 else -1.0)
    w = W0.copy()
    optimizer.apply_gradients([(w, G1.copy())])
    after_first = w.copy()
    with pytest.raises(ValueError, match="gave learning_rate -1.0 at step 1"):
        optimizer.apply_gradients([(w, G2.copy())])
    assert np.array_equal(w, after_first) and optimizer.iterations == 1


@pytest.mark.parametrize("make, message", [
    (lambda: schedules.ExponentialDecay(math.inf, 10, 0.9), "initial_learning_rate must be finite"),
    (lambda: schedules.ExponentialDecay(0.1, 10, -0.5), "decay_rate must be positive"),
    (lambda: schedules.StepDecay(0.1, 10, factor=0), "factor must be positive"),
    (lambda: schedules.PiecewiseConstantDecay([10], [0.1, math.nan]), "every value must be finite"),
    (lambda: schedules.CosineDecay(0.1, 100, alpha=2), r"alpha must be in \[0, 1\]"),
])
def test_a_schedule_that_can_only_give_a_bad_rate_is_refused_when_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------------- the lr= alias


@pytest.mark.parametrize("name", ["SGD", "GD", "Adam", "RMSprop"])
def test_lr_is_a_deprecated_alias_of_learning_rate_in_every_optimizer(name):
    with pytest.warns(DeprecationWarning, match=f"{name}: lr is deprecated, use learning_rate"):
        optimizer = getattr(optimizers, name)(lr=0.05)
    assert optimizer.learning_rate == 0.05 and optimizer.get_config()["learning_rate"] == 0.05


def test_the_seed_programs_sgd_with_lr_works_as_written():
    with pytest.warns(DeprecationWarning):
        optimizer = optimizers.SGD(lr=0.01, momentum=0.9, nesterov=True)
    assert (optimizer.learning_rate, optimizer.momentum, optimizer.nesterov) == (0.01, 0.9, True)


@pytest.mark.parametrize("name", ["SGD", "GD", "Adam", "RMSprop"])
def test_giving_both_learning_rate_and_lr_is_an_error(name):
    with pytest.raises(TypeError, match=f"{name}: got both learning_rate=0.1 and its deprecated alias lr=0.2"):
        getattr(optimizers, name)(learning_rate=0.1, lr=0.2)


def test_the_default_learning_rates_are_keras_s():
    assert [optimizers.SGD().learning_rate, optimizers.GD().learning_rate, optimizers.Adam().learning_rate,
            optimizers.RMSprop().learning_rate] == [0.01, 0.01, 0.001, 0.001]
