"""Whole-model gradient checks, and that the checker itself catches a wrong backward."""

import numpy as np

import minidl
from minidl import gradcheck, layers, regularizers
from minidl.presets import seed_cnn


def test_whole_seed_cnn_passes(backend):
    model = seed_cnn(input_shape=(10, 10, 1), classes=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    report = gradcheck.check_model(model, rng.standard_normal((3, 10, 10, 1)), [0, 2, 1], max_checks=15)
    assert report.passed(1e-6), str(report)
    assert model.dtype == np.float32  # the check gives the model its dtype back


def test_mlp_with_weight_penalties_mse_and_tanh_passes(backend):
    model = minidl.Sequential([layers.Input((4,)),
                               layers.Dense(5, activation="tanh", kernel_regularizer=regularizers.L1L2(0.01, 0.02)),
                               layers.Dense(2, bias_regularizer=regularizers.L2(0.1))])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(1)
    assert gradcheck.check_model(model, rng.standard_normal((5, 4)), rng.standard_normal((5, 2))).passed()


def test_a_wrong_backward_is_caught():
    class BrokenDense(layers.Dense):
        def linear_backward(self, grad_z):
            grad_in = super().linear_backward(grad_z)
            self.grads["kernel"] = self.grads["kernel"] * 1.01
            return grad_in

    report = gradcheck.check_layer(BrokenDense(3), (4, 5))
    assert not report.passed() and report.errors["kernel"] > 1e-3
    assert "FAIL" in str(report)
