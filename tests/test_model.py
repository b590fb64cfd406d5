"""Sequential: the Keras-shaped API, its errors, and that a failed call never changes the weights."""

import numpy as np
import pytest

import minidl
from minidl import layers, optimizers, training
from minidl.presets import seed_cnn


def blobs(n=240, seed=0):
    """Three well separated Gaussian blobs in 2-D: a problem any working optimizer solves."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    return (centers[labels] + rng.standard_normal((n, 2)) * 0.5).astype(np.float32), labels


def mlp(**compile_args):
    model = minidl.Sequential([layers.Input((2,)), layers.Dense(16, activation="tanh"),
                               layers.Dense(3, activation="softmax")])
    model.compile(**{"optimizer": optimizers.Adam(0.05), "loss": "sparse_categorical_crossentropy",
                     "metrics": ["accuracy"], **compile_args})
    return model


def test_seed_cnn_has_the_keras_parameter_counts():
    model = seed_cnn()
    assert [layer.count_params() for layer in model.layers] == [320, 0, 18496, 0, 0, 102464, 650]
    assert model.output_shape == (10,)
    lines = []
    model.summary(print_fn=lines.append)
    assert "Total params: 121,930" in lines[0] and "(None, 26, 26, 32)" in lines[0]
    assert "direct_conv_pool" in lines[0] and "conv_algorithm" in lines[0]  # the passes that apply


def test_fit_learns_separable_data_and_records_history(backend):
    minidl.utils.set_random_seed(1)
    x, y = blobs()
    model = mlp()
    history = model.fit(x, y, batch_size=16, epochs=8, validation_split=0.25, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == list(range(8))
    assert history.history["loss"][-1] < history.history["loss"][0] / 3
    assert history.history["val_accuracy"][-1] > 0.95
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert accuracy > 0.95 and loss == pytest.approx(model.evaluate(x, y, verbose=0, return_dict=True)["loss"])
    probabilities = model.predict(x[:7])
    assert probabilities.shape == (7, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop", "gd",
                                       optimizers.SGD(0.05, momentum=0.9, nesterov=True)])
def test_every_optimizer_alias_reduces_the_loss(optimizer):
    minidl.utils.set_random_seed(2)
    x, y = blobs()
    model = mlp(optimizer=optimizer)
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_validation_split_holds_out_the_last_samples_before_shuffling(monkeypatch):
    x, y = blobs(100)
    model = mlp()
    held_out = []
    monkeypatch.setattr(training, "evaluate_batches", lambda model, batches, **_: held_out.append(batches.x.copy()) or {"loss": 0.0})
    model.fit(x, y, epochs=1, validation_split=0.2, verbose=0)
    np.testing.assert_array_equal(held_out[0], x[80:])


def test_unshuffled_batches_are_slices_of_x_and_training_on_them_leaves_x_as_it_was():
    rng = np.random.default_rng(0)
    x = rng.random((20, 8, 8, 3), dtype=np.float32)
    y = rng.integers(0, 3, 20)
    x_before = x.copy()
    model = minidl.Sequential([layers.Input((8, 8, 3)), layers.Conv2D(4, (3, 3), activation="relu"),
                               layers.AveragePooling2D((2, 2)), layers.Flatten(), layers.Dropout(0.5),
                               layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    batches = training.ArrayBatches(model, *model.check_data(x, y), batch_size=8, shuffle=False)
    x_batches = [x_batch for x_batch, _ in batches.epoch(0)]
    assert [len(b) for b in x_batches] == [8, 8, 4] and all(np.shares_memory(b, x) for b in x_batches)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_array_equal(x, x_before)


def test_an_augment_function_that_writes_into_its_batch_leaves_x_as_it_was():
    x, y = blobs(40)
    x_before = x.copy()

    def augment_in_place(batch, rng):
        batch += 1.0
        return batch

    mlp().fit(x, y, batch_size=16, epochs=1, shuffle=False, augment=augment_in_place, verbose=0)
    np.testing.assert_array_equal(x, x_before)


def test_gd_takes_one_full_batch_step_per_epoch():
    x, y = blobs(50)
    model = mlp(optimizer="gd")
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert model.optimizer.iterations == 3


def test_seeded_runs_reproduce_bit_for_bit(backend):
    def train():
        minidl.utils.set_random_seed(123)
        model = seed_cnn(input_shape=(12, 12, 1), classes=3)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        model.fit(rng.random((64, 12, 12, 1), dtype=np.float32), rng.integers(0, 3, 64),
                  batch_size=16, epochs=2, verbose=0)
        return model.get_weights()

    for first, second in zip(train(), train()):
        np.testing.assert_array_equal(first, second)


def test_get_and_set_weights_use_keras_order_and_layouts():
    model = seed_cnn()
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (1600, 64), (64,),
                                          (64, 10), (10,)]
    new = [np.full_like(w, i) for i, w in enumerate(weights)]
    model.set_weights(new)
    for expected, actual in zip(new, model.get_weights()):
        np.testing.assert_array_equal(expected, actual)


def test_set_weights_with_a_wrong_shape_changes_nothing():
    model = seed_cnn()
    before = model.get_weights()
    bad = [np.zeros_like(w) for w in before]
    bad[4] = np.zeros((1600, 63), np.float32)
    with pytest.raises(ValueError, match=r"dense.*\(1600, 64\).*\(1600, 63\)"):
        model.set_weights(bad)
    for expected, actual in zip(before, model.get_weights()):
        np.testing.assert_array_equal(expected, actual)


def assert_weights_unchanged(model, before):
    for expected, actual in zip(before, model.get_weights()):
        np.testing.assert_array_equal(expected, actual)


@pytest.mark.parametrize("x, y, error, message", [
    (np.zeros((4, 28, 28)), np.zeros(4, int), ValueError,
     r"layer 'conv2d.*' \(Conv2D\) expected x of shape \(None, 28, 28, 1\), got \(4, 28, 28\); reshape"),
    (np.full((4, 28, 28, 1), np.nan), np.zeros(4, int), ValueError, "NaN or infinite"),
    (np.zeros((4, 28, 28, 1)), np.zeros(3, int), ValueError, "x has 4 samples but its targets have 3"),
    (np.zeros((4, 28, 28, 1)), np.array([0, 1, 10, 2]), ValueError, r"labels must be in \[0, 10\)"),
])
def test_bad_fit_inputs_are_clear_errors_and_leave_weights_alone(x, y, error, message):
    model = seed_cnn()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    with pytest.raises(error, match=message):
        model.fit(x, y, epochs=1, verbose=0)
    assert_weights_unchanged(model, before)


def test_fit_before_compile_and_unknown_aliases_are_errors():
    model = seed_cnn()
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(np.zeros((2, 28, 28, 1)), np.zeros(2, int), verbose=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        model.compile(optimizer="sgdd", loss="mse")
    with pytest.raises(ValueError, match="unknown loss"):
        model.compile(optimizer="sgd", loss="crossentropy")


def test_a_step_with_non_finite_gradients_raises_before_the_update(monkeypatch):
    x, y = blobs(32)
    model = mlp()
    model.fit(x, y, epochs=1, verbose=0)
    before = model.get_weights()

    def poisoned(y_pred, targets):
        loss, grad = model.loss.value_and_grad_from_logits(y_pred, targets)
        return loss, grad * np.nan

    monkeypatch.setattr(model, "loss_and_grad", lambda y_pred, targets: poisoned(model.plan.output_logits(), targets))
    with pytest.raises(FloatingPointError, match=r"non-finite gradient for dense.*kernel"):
        model.fit(x, y, epochs=1, verbose=0)
    assert_weights_unchanged(model, before)


def test_train_on_batch_and_builds_from_data_without_an_input_shape():
    model = minidl.Sequential([layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    x, labels = blobs(16)
    loss, accuracy = model.train_on_batch(x, np.eye(3)[labels])
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    assert model.input_shape == (2,)


def test_mse_regression_and_binary_accuracy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) > 0).astype(np.float32)[:, None]
    model = minidl.Sequential([layers.Input((3,)), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=optimizers.SGD(0.5), loss="binary_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=20, epochs=10, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
    regression = minidl.Sequential([layers.Input((3,)), layers.Dense(1)])
    regression.compile(optimizer=optimizers.SGD(0.1), loss="mse")
    targets = x @ np.array([[1.0], [-2.0], [0.5]])
    history = regression.fit(x, targets, batch_size=20, epochs=20, verbose=0)
    assert history.history["loss"][-1] < 1e-3


def test_keras_style_quickstart_runs_as_written():
    """The seed articles' model and calls, ported by changing the imports only."""
    from minidl import Sequential
    from minidl.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from minidl.optimizers import SGD

    model = Sequential()
    model.add(Conv2D(32, (3, 3), activation="relu", input_shape=(16, 16, 1)))
    model.add(MaxPooling2D((2, 2)))
    model.add(Conv2D(64, (3, 3), activation="relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(64, activation="relu"))
    model.add(Dense(10, activation="softmax"))
    model.compile(optimizer=SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 16, 16, 1), dtype=np.float32), np.eye(10)[rng.integers(0, 10, 40)]
    history = model.fit(x, y, epochs=1, batch_size=8, validation_split=0.2, verbose=0)
    assert len(history.history["val_accuracy"]) == 1
    assert len(model.evaluate(x, y, verbose=0)) == 2


def test_evaluate_can_return_a_per_class_report():
    x, y = blobs(120)
    model = mlp()
    model.fit(x, y, epochs=5, verbose=0)
    model.class_names = ["north", "east", "west"]
    (loss, accuracy), report = model.evaluate(x, y, verbose=0, report=True)
    assert loss == pytest.approx(model.evaluate(x, y, verbose=0)[0])
    assert set(["north", "east", "west"]) <= set(report)
    assert sum(report[name]["support"] for name in ("north", "east", "west")) == 120
    assert report["north"]["recall"] == pytest.approx(np.mean(model.predict(x[y == 0]).argmax(1) == 0))
