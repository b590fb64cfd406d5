"""Callbacks driven by scripted loss sequences, and through a real fit."""

import csv
import math
import re

import numpy as np
import pytest

import minidl
from minidl import callbacks, layers, schedules
from minidl.optimizers import SGD


def tiny_model(optimizer="sgd"):
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(3, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def tiny_data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype("float32"), rng.integers(0, 3, n)


def drive(callback, model, values, key="val_loss"):
    """Run ``callback`` through epochs whose logs hold ``values``; returns the epochs run."""
    callback.set_model(model)
    callback.set_params({"epochs": len(values), "steps": 1, "verbose": 0})
    model.stop_training = False
    callback.on_train_begin()
    epochs_run = 0
    for epoch, value in enumerate(values):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {key: value})
        epochs_run += 1
        if model.stop_training:
            break
    callback.on_train_end()
    return epochs_run


# ------------------------------------------------------------------------------ EarlyStopping


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    stopper = callbacks.EarlyStopping(patience=2)
    # best at epoch 1 (0.8); epochs 2 and 3 do not improve -> stop at epoch 3
    assert drive(stopper, tiny_model(), [1.0, 0.8, 0.9, 0.85, 0.1]) == 4
    assert stopper.stopped_epoch == 3 and stopper.best == 0.8


def test_early_stopping_min_delta_ignores_tiny_improvements():
    stopper = callbacks.EarlyStopping(patience=1, min_delta=0.05)
    assert drive(stopper, tiny_model(), [1.0, 0.97, 0.5]) == 2


def test_early_stopping_auto_mode_maximizes_accuracy():
    stopper = callbacks.EarlyStopping(monitor="val_accuracy", patience=1)
    assert drive(stopper, tiny_model(), [0.5, 0.6, 0.7, 0.65, 0.9], key="val_accuracy") == 4
    assert stopper.best == 0.7


def test_early_stopping_restores_weights_of_the_best_epoch():
    model = tiny_model()
    stopper = callbacks.EarlyStopping(patience=1, restore_best_weights=True)
    stopper.set_model(model)
    stopper.on_train_begin()
    weights_by_epoch = []
    for epoch, value in enumerate([1.0, 0.5, 0.7]):
        model.set_weights([w + epoch for w in model.get_weights()])
        weights_by_epoch.append(model.get_weights())
        stopper.on_epoch_end(epoch, {"val_loss": value})
    stopper.on_train_end()
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights_by_epoch[1]))


def test_early_stopping_warns_when_monitored_value_is_missing():
    with pytest.warns(RuntimeWarning, match="val_loss"):
        drive(callbacks.EarlyStopping(), tiny_model(), [1.0], key="loss")


def test_early_stopping_stops_a_real_fit():
    x, y = tiny_data()
    model = tiny_model(SGD(learning_rate=1e-9))  # the loss cannot improve by min_delta
    history = model.fit(x, y, epochs=20, verbose=0, callbacks=[
        callbacks.EarlyStopping(monitor="loss", patience=2, min_delta=1.0)])
    assert len(history.epoch) == 3


# ------------------------------------------------------------------------------ ReduceLROnPlateau


def test_reduce_lr_on_plateau_scales_rate_after_patience_and_respects_cooldown_and_min_lr():
    model = tiny_model(SGD(learning_rate=1.0))
    reducer = callbacks.ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2, min_lr=0.3)
    reducer.set_model(model)
    reducer.on_train_begin()
    rates, logged_rates = [], []
    for epoch in range(6):
        logs = {"val_loss": 1.0}
        reducer.on_epoch_end(epoch, logs)
        logged_rates.append(logs["learning_rate"])
        rates.append(model.optimizer.learning_rate)
    # epoch 1: plateau -> 0.5, then (as in Keras) the cooldown counter reaches 0 during epoch 3,
    # which counts again and floors the rate at min_lr
    assert rates == [1.0, 0.5, 0.5, 0.3, 0.3, 0.3]
    assert logged_rates == [1.0, 1.0, 0.5, 0.5, 0.3, 0.3]  # the rate the epoch trained with


def test_reduce_lr_on_plateau_refuses_a_schedule_with_a_clear_error():
    model = tiny_model(SGD(learning_rate=schedules.ExponentialDecay(0.1, 10, 0.9)))
    x, y = tiny_data()
    with pytest.raises(TypeError, match="ReduceLROnPlateau.*ExponentialDecay"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.ReduceLROnPlateau()])


# --------------------------------------------------------------------------- LearningRateScheduler


def test_learning_rate_scheduler_sets_rate_each_epoch_in_a_real_fit():
    x, y = tiny_data()
    model = tiny_model(SGD(learning_rate=0.1))
    seen = []

    def halve_after_first(epoch, lr):
        seen.append((epoch, lr))
        return lr if epoch == 0 else lr / 2

    logged = callbacks.History()  # after the scheduler, so it sees the rate it logs
    model.fit(x, y, epochs=3, verbose=0,
              callbacks=[callbacks.LearningRateScheduler(halve_after_first), logged])
    assert seen == [(0, 0.1), (1, 0.1), (2, 0.05)]
    assert logged.history["learning_rate"] == [0.1, 0.05, 0.025]


def test_learning_rate_scheduler_rejects_a_non_positive_rate():
    scheduler = callbacks.LearningRateScheduler(lambda epoch, lr: 0.0)
    scheduler.set_model(tiny_model())
    with pytest.raises(ValueError, match="positive"):
        scheduler.on_epoch_begin(0)


# ---------------------------------------------------------------------------------- CSVLogger


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_csv_logger_writes_header_and_rows_and_appends_without_a_second_header(tmp_path):
    path = tmp_path / "log.csv"
    model = tiny_model()
    drive(callbacks.CSVLogger(path), model, [1.0, 0.5], key="loss")
    drive(callbacks.CSVLogger(path, append=True), model, [0.25], key="loss")
    assert read_rows(path) == [["epoch", "loss"], ["0", "1.0"], ["1", "0.5"], ["0", "0.25"]]


def test_csv_logger_without_append_starts_a_new_file(tmp_path):
    path = tmp_path / "log.csv"
    drive(callbacks.CSVLogger(path), tiny_model(), [1.0], key="loss")
    drive(callbacks.CSVLogger(path), tiny_model(), [2.0], key="loss")
    assert read_rows(path) == [["epoch", "loss"], ["0", "2.0"]]


# --------------------------------------------------------------------------- TerminateOnNaN/NaNGuard


def test_terminate_on_nan_stops_at_the_first_non_finite_loss(capsys):
    model = tiny_model()
    terminator = callbacks.TerminateOnNaN()
    terminator.set_model(model)
    model.stop_training = False
    for batch, loss in enumerate([1.0, 0.9, math.inf]):
        terminator.on_train_batch_end(batch, {"loss": loss})
        assert model.stop_training == (batch == 2)
    assert "Batch 2" in capsys.readouterr().out


def fitted_conv_model():
    model = minidl.Sequential([layers.Input((6, 6, 1)), layers.Conv2D(2, 3, activation="relu"),
                               layers.Flatten(), layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 1)).astype("float32")
    model.fit(x, np.arange(4) % 3, epochs=1, verbose=0)
    return model


def guard_error(model, loss=0.5):
    guard = callbacks.NaNGuard()
    guard.set_model(model)
    with pytest.raises(FloatingPointError) as error:
        guard.on_train_batch_end(7, {"loss": loss})
    return str(error.value)


def test_nan_guard_names_the_layer_whose_forward_output_is_not_finite():
    model = fitted_conv_model()
    conv = model.layers[0]
    step = model.plan.step_of(conv)
    step.y = step.y.copy()
    step.y[0, 0, 0, 0] = np.inf
    message = guard_error(model)
    assert repr(conv.name) in message and "forward pass" in message and "batch 7" in message


def test_nan_guard_names_the_layer_whose_gradient_is_not_finite_in_the_backward_pass():
    model = fitted_conv_model()
    dense = model.layers[-1]
    dense.grads["bias"] = dense.grads["bias"].copy()
    dense.grads["bias"][1] = np.nan
    message = guard_error(model)
    assert repr(dense.name) in message and "backward pass" in message and "bias" in message


def test_nan_guard_reports_a_non_finite_loss_and_weights_sent_to_inf_by_the_update():
    model = fitted_conv_model()
    assert "loss" in guard_error(model, loss=math.nan)
    model.set_weights([w * np.inf for w in model.get_weights()])
    for layer in model.layers:
        layer.y = None
    assert "optimizer update" in guard_error(model)


def test_nan_guard_raises_in_a_real_fit_whose_update_overflows_the_weights():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4)).astype("float32") * 1e3, np.arange(8) % 3
    model = tiny_model(SGD(learning_rate=1e38))
    with np.errstate(over="ignore"), pytest.raises(FloatingPointError, match="NaNGuard.*optimizer update"):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callbacks.NaNGuard()])


def test_nan_guard_is_silent_on_a_healthy_fit():
    x, y = tiny_data()
    history = tiny_model().fit(x, y, epochs=2, verbose=0, callbacks=[callbacks.NaNGuard()])
    assert len(history.epoch) == 2


# ---------------------------------------------------------------------------------- ModelCheckpoint


def test_model_checkpoint_formats_epoch_and_logs_into_the_file_name(tmp_path):
    model = tiny_model()
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.2f}.minidl"))
    drive(checkpoint, model, [0.5, 0.25])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-01-0.50.minidl", "ckpt-02-0.25.minidl"]
    assert minidl.load_model(tmp_path / "ckpt-02-0.25.minidl").initial_epoch == 2


def test_model_checkpoint_names_a_file_name_field_missing_from_the_logs(tmp_path):
    with pytest.raises(KeyError, match="val_accuracy"):
        drive(callbacks.ModelCheckpoint(str(tmp_path / "{val_accuracy}.minidl")), tiny_model(), [0.5])


def test_model_checkpoint_save_best_only_writes_only_improvements(tmp_path):
    model = tiny_model()
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "w-{epoch}.weights"), save_best_only=True,
                                           save_weights_only=True)
    drive(checkpoint, model, [0.5, 0.7, 0.4, 0.4])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-1.weights", "w-3.weights"]
    model.load_weights(tmp_path / "w-3.weights")


def test_model_checkpoint_in_a_real_fit_leaves_no_temporary_files(tmp_path):
    x, y = tiny_data()
    tiny_model().fit(x, y, epochs=2, verbose=0, validation_split=0.25,
                     callbacks=[callbacks.ModelCheckpoint(str(tmp_path / "sub" / "best.minidl"),
                                                          save_best_only=True)])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["best.minidl"]


# ------------------------------------------------------------------- state across a resume


def every_builtin_callback(folder):
    """One of each built-in callback, configured so each one's state matters within 6 epochs."""
    return [
        callbacks.ModelCheckpoint(str(folder / "best.minidl"), monitor="val_loss", save_best_only=True),
        callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=0.01, cooldown=1),
        callbacks.EarlyStopping(monitor="val_loss", patience=10, min_delta=0.01, restore_best_weights=True),
        callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.9),
        callbacks.CSVLogger(str(folder / "log.csv"), append=True),
        callbacks.TerminateOnNaN(),
        callbacks.NaNGuard(),
        callbacks.ModelCheckpoint(str(folder / "last.minidl")),
    ]


def dropout_model():
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(8, activation="relu"), layers.Dropout(0.3),
                               layers.Dense(3, activation="softmax")])
    model.compile(SGD(learning_rate=0.5, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def run_with_every_callback(folder, epochs, initial_epoch=0, model=None):
    x, y = tiny_data(48, seed=1)
    folder.mkdir(exist_ok=True)
    if model is None:
        minidl.utils.set_random_seed(0)
        model = dropout_model()
    run_callbacks = every_builtin_callback(folder)
    model.fit(x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=8, seed=3, verbose=0,
              validation_split=0.25, callbacks=run_callbacks)
    return model, run_callbacks


def test_a_run_resumed_from_its_checkpoint_with_every_builtin_callback_ends_bit_exact(tmp_path):
    whole, whole_callbacks = run_with_every_callback(tmp_path / "whole", epochs=6)
    run_with_every_callback(tmp_path / "resumed", epochs=3)  # "killed" after epoch 3
    minidl.utils.set_random_seed(99)  # whatever happened in between
    checkpoint = minidl.load_model(tmp_path / "resumed" / "last.minidl")
    resumed, resumed_callbacks = run_with_every_callback(tmp_path / "resumed", 6, checkpoint.initial_epoch,
                                                         model=checkpoint)
    assert all(np.array_equal(a, b) for a, b in zip(resumed.get_weights(), whole.get_weights()))
    assert resumed.optimizer.learning_rate == whole.optimizer.learning_rate
    for before, after in zip(whole_callbacks, resumed_callbacks):
        state_before, state_after = before.get_state(), after.get_state()
        if state_before is not None and "best_weights" in state_before:
            assert all(np.array_equal(a, b) for a, b in zip(state_before.pop("best_weights"),
                                                             state_after.pop("best_weights")))
        assert state_before == state_after, type(before).__name__
    for name in ("best.minidl", "last.minidl"):
        whole_file = minidl.load_model(tmp_path / "whole" / name)
        resumed_file = minidl.load_model(tmp_path / "resumed" / name)
        assert whole_file.initial_epoch == resumed_file.initial_epoch
        assert all(np.array_equal(a, b) for a, b in zip(whole_file.get_weights(), resumed_file.get_weights()))
    assert read_rows(tmp_path / "whole" / "log.csv") == read_rows(tmp_path / "resumed" / "log.csv")


def test_the_checkpoint_holds_the_learning_rate_cut_at_the_end_of_its_epoch(tmp_path):
    model = tiny_model(SGD(learning_rate=1.0))
    x, y = tiny_data()
    checkpoint = callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch}.minidl"))
    reducer = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[checkpoint, reducer])  # checkpoint listed first
    # epoch 1 sets the first best value; epochs 2 and 3 do not improve by min_delta and cut the rate
    saved_rates = [minidl.load_model(tmp_path / f"ckpt-{epoch}.minidl").optimizer.learning_rate
                   for epoch in (1, 2, 3)]
    assert saved_rates == [1.0, 0.5, 0.25]


def test_a_resumed_save_best_only_checkpoint_keeps_the_best_value_of_the_first_run(tmp_path):
    model, path = tiny_model(), tmp_path / "best.minidl"
    checkpoint = callbacks.ModelCheckpoint(str(path), monitor="val_loss", save_best_only=True)
    callback_list = callbacks.CallbackList([checkpoint], model, {"epochs": 2, "steps": 1, "verbose": 0})
    callback_list.on_train_begin()
    callback_list.on_epoch_end(0, {"val_loss": 0.3})
    saved_bytes = path.read_bytes()
    resumed = minidl.load_model(path)
    fresh_checkpoint = callbacks.ModelCheckpoint(str(path), monitor="val_loss", save_best_only=True)
    resumed_list = callbacks.CallbackList([fresh_checkpoint], resumed, {"epochs": 2, "steps": 1, "verbose": 0})
    resumed_list.on_train_begin()
    resumed_list.resume_saved_run(resumed.initial_epoch)
    resumed_list.on_epoch_end(1, {"val_loss": 0.4})  # worse than 0.3: the best file stays
    assert fresh_checkpoint.get_state()["best"] == 0.3 and path.read_bytes() == saved_bytes


def test_a_restored_callback_that_monitors_another_quantity_warns_and_starts_afresh():
    reducer = callbacks.ReduceLROnPlateau(monitor="val_accuracy")
    reducer.set_model(tiny_model())
    reducer.on_train_begin()
    saved = {"monitor": "val_loss", "direction": "min", "best": 0.1, "wait": 3, "cooldown_counter": 0}
    with pytest.warns(RuntimeWarning, match="'val_loss'.*'val_accuracy'"):
        reducer.set_state(saved)
    assert reducer.wait == 0 and reducer.tracker.best == -math.inf


# --------------------------------------------------------------------------------- progress bar


@pytest.mark.parametrize("terminal_columns, widest", [(200, 80), (80, 80), (60, 60)])
def test_progress_bar_fits_the_terminal_and_the_epoch_line_shows_every_value(monkeypatch, capsys,
                                                                             terminal_columns, widest):
    monkeypatch.setenv("COLUMNS", str(terminal_columns))
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy", "precision", "recall"])
    model.fit(x, y, epochs=2, batch_size=8, validation_split=0.25, verbose=1, seed=0)
    captured = capsys.readouterr()
    bar_lines = [line for line in re.split(r"[\r\n]", captured.err) if line.strip()]
    assert bar_lines and max(len(line.rstrip()) for line in bar_lines) <= widest
    epoch_lines = captured.out.splitlines()
    assert [line.split(" - ")[0] for line in epoch_lines] == ["Epoch 1/2", "Epoch 2/2"]
    for line in epoch_lines:
        assert re.search(r" - 6/6 - \d+s \d+ms/step - loss: [0-9.]+ - accuracy: ", line)
        assert all(f"{key}: " in line for key in ("val_loss", "val_accuracy", "val_precision", "val_recall"))


def test_the_live_bar_shows_the_running_values_that_fit_in_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")
    logger = callbacks.ProgbarLogger(verbose=1)
    logger.params = {"epochs": 100, "steps": 1875}
    logger.on_epoch_begin(9)
    logger.on_train_batch_end(0, {"loss": 0.31234, "accuracy": 0.8812, "precision": 0.87, "recall": 0.86,
                                  "f1": 0.865})
    logger.bar.refresh()
    logger.close_bar()
    rendered = [line.rstrip() for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]
    assert "Epoch 10/100 1/1875 |" in rendered[-1] and "loss: 0.3123 - accuracy: 0.8812" in rendered[-1]
    assert max(len(line) for line in rendered) <= 80


def test_logs_that_fit_keeps_whole_entries_in_order():
    logs = {"loss": 0.5, "accuracy": 0.75, "val_loss": 0.25}
    assert callbacks.logs_that_fit(logs, 100) == "loss: 0.5000 - accuracy: 0.7500 - val_loss: 0.2500"
    assert callbacks.logs_that_fit(logs, 33) == "loss: 0.5000 - accuracy: 0.7500"
    assert callbacks.logs_that_fit(logs, 5) == ""
