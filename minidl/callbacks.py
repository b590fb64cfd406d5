"""Callbacks: hooks ``fit`` calls at the start and end of training, of each epoch and of each batch.

``logs`` are dicts of floats: ``loss`` and the metrics (running means over the epoch so far), and at
epoch end the ``val_`` versions when there is validation data.  A callback can stop training by
setting ``self.model.stop_training = True``.

Callbacks that carry something from epoch to epoch (a best value, a patience counter) return it from
:meth:`Callback.get_state`; checkpoints store it, and a ``fit`` that resumes a loaded checkpoint
(``initial_epoch=model.initial_epoch``) hands it back to the callbacks of the same class, in the same
order, so the resumed run makes the same decisions as the uninterrupted one.
"""

import csv
import math
import os
import shutil
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from minidl.backend import ops
from minidl.utils import set_rng_state


class Callback:
    #: True for callbacks that save the model: their ``on_epoch_end`` runs after every other
    #: callback's, so the file holds the epoch's final state (a learning rate cut included)
    writes_checkpoints = False
    #: True for callbacks that write files: in distributed training only rank 0 runs them
    writes_files = False

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def get_state(self):
        """What this callback carries from one epoch to the next, as JSON data (lists of arrays
        allowed), for checkpoints; ``None`` when it carries nothing."""
        return None

    def set_state(self, state):
        """Continue from :meth:`get_state`'s ``state`` (called after ``on_train_begin`` on a resume)."""


class CallbackList(Callback):
    """Forwards every hook to each callback in order (checkpoint writers last at epoch end).

    At ``on_train_begin`` it becomes ``model.fit_callbacks``, whose :meth:`states` a saved model
    holds; :meth:`resume_saved_run` gives them back when a loaded checkpoint's run goes on.
    """

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        self.model = model
        for callback in self.callbacks:
            callback.set_model(model)
            callback.set_params(params)

    def _call_all(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def on_train_begin(self, logs=None):
        self.model.fit_callbacks = self
        self._call_all("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._call_all("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call_all("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        in_order = sorted(self.callbacks, key=lambda callback: callback.writes_checkpoints)
        for callback in in_order:
            callback.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call_all("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call_all("on_train_batch_end", batch, logs)

    def keyed_callbacks(self):
        """``{key: callback}``, the key being the class name and, from the second callback of a
        class on, its rank: ``"ModelCheckpoint"``, ``"ModelCheckpoint_1"``."""
        seen, keyed = {}, {}
        for callback in self.callbacks:
            name = type(callback).__name__
            rank = seen[name] = seen.get(name, -1) + 1
            keyed[name if rank == 0 else f"{name}_{rank}"] = callback
        return keyed

    def states(self):
        """``{key: state}`` of every callback that carries state (see :meth:`keyed_callbacks`)."""
        states = {key: callback.get_state() for key, callback in self.keyed_callbacks().items()}
        return {key: state for key, state in states.items() if state is not None}

    def resume_saved_run(self, initial_epoch):
        """When this ``fit`` continues the run of a loaded checkpoint (``initial_epoch`` equals its
        finished epochs), restore the global random generator and each callback's state as they were
        when it was saved.  Happens once per load: a later ``fit`` starts afresh."""
        saved = getattr(self.model, "saved_run", None)
        if saved is None or initial_epoch != self.model.initial_epoch:
            return
        self.model.saved_run = None
        set_rng_state(saved["rng_state"])
        for key, callback in self.keyed_callbacks().items():
            if key in saved["callbacks"]:
                callback.set_state(saved["callbacks"][key])


class History(Callback):
    """Records each epoch's logs: ``history.history["loss"][i]`` is epoch ``history.epoch[i]``'s loss."""

    def on_train_begin(self, logs=None):
        self.epoch, self.history = [], {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


def format_logs(logs):
    return " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


#: the widest the live bar gets, so that it fits a standard terminal
PROGRESS_BAR_COLUMNS = 80
#: the live bar's layout (tqdm's fields); ``{postfix}`` comes with a leading ", "
PROGRESS_BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}"
#: columns the bar itself keeps, at least
PROGRESS_BAR_MIN_COLUMNS = 10


def logs_that_fit(logs, width):
    """:func:`format_logs` of the first entries of ``logs`` that fit in ``width`` columns."""
    shown = {}
    for key, value in logs.items():
        if len(format_logs({**shown, key: value})) > width:
            break
        shown[key] = value
    return format_logs(shown)


class ProgbarLogger(Callback):
    """A live progress bar per epoch (``verbose=1``) or one line per epoch (``verbose=2``).

    The live bar is at most :data:`PROGRESS_BAR_COLUMNS` wide (less on a narrower terminal) and shows
    the running values that fit beside it; at the end of the epoch it gives way to the full line,
    ``Epoch 3/10 - 1875/1875 - 12s 6ms/step - loss: ... - val_accuracy: ...``, as Keras prints it.
    """

    def __init__(self, verbose=1):
        self.verbose = verbose
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.description = f"Epoch {epoch + 1}/{self.params['epochs']}"
        self.epoch_start = time.perf_counter()
        if self.verbose == 1:
            self.columns = min(shutil.get_terminal_size().columns, PROGRESS_BAR_COLUMNS)
            self.bar = tqdm(total=self.params["steps"], desc=self.description, unit="step",
                            ncols=self.columns, bar_format=PROGRESS_BAR_FORMAT, leave=False)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(logs_that_fit(logs or {}, self.postfix_columns()), refresh=False)

    def postfix_columns(self):
        """The columns left for the running values once the bar's fixed parts are laid out."""
        steps = len(str(self.params["steps"]))
        fixed = len(f"{self.description} {'9' * steps}/{'9' * steps} || 00:00<00:00, ")
        return self.columns - fixed - PROGRESS_BAR_MIN_COLUMNS

    def on_epoch_end(self, epoch, logs=None):
        self.close_bar()
        seconds = time.perf_counter() - self.epoch_start
        steps = self.params["steps"]
        timing = f"{steps}/{steps} - {seconds:.0f}s {1000 * seconds / max(steps, 1):.0f}ms/step"
        print(f"{self.description} - {timing} - {format_logs(logs or {})}", flush=True)

    def on_train_end(self, logs=None):
        self.close_bar()

    def close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------ monitoring a logged value

HIGHER_IS_BETTER = ("acc", "accuracy", "precision", "recall", "f1", "auc")


def monitor_direction(monitor, mode):
    """``"min"`` or ``"max"``: ``mode`` itself, or for ``"auto"`` ``"max"`` when the name looks like
    an accuracy-type score (``val_accuracy``, ``f1``, ...) and ``"min"`` otherwise (losses)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if any(word in monitor for word in HIGHER_IS_BETTER) else "min"


class MonitorImprovement:
    """Tracks the best value of one logged quantity; an improvement beats it by more than ``min_delta``."""

    def __init__(self, monitor, mode, min_delta):
        self.monitor, self.min_delta = monitor, abs(min_delta)
        self.direction = monitor_direction(monitor, mode)
        self.reset()

    def reset(self):
        self.best = math.inf if self.direction == "min" else -math.inf

    def is_improvement(self, value, reference=None):
        reference = self.best if reference is None else reference
        if self.direction == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def get_state(self):
        return {"monitor": self.monitor, "direction": self.direction, "best": self.best}

    def set_state(self, state, callback_name):
        """Take the saved best value; ``False`` (with a warning) when it tracked another quantity."""
        if (state["monitor"], state["direction"]) != (self.monitor, self.direction):
            warnings.warn(f"{callback_name}: the checkpoint's {callback_name} monitored "
                          f"{state['monitor']!r} ({state['direction']}), this one {self.monitor!r} "
                          f"({self.direction}); starting afresh", RuntimeWarning, stacklevel=4)
            return False
        self.best = float(state["best"])
        return True

    def value(self, logs, callback_name):
        """The monitored value from ``logs``, or ``None`` (with a warning) when it is missing."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"{callback_name}: the monitored quantity {self.monitor!r} is not in the logs "
                          f"(available: {sorted(logs or {})}); skipping", RuntimeWarning, stacklevel=3)
        return value


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    An improvement beats the best value so far by more than ``min_delta``.  With
    ``restore_best_weights`` the model ends training with the weights of its best epoch.
    ``baseline``: training also stops if the value never beats it within ``patience`` epochs.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        self.tracker = MonitorImprovement(monitor, mode, min_delta)
        self.monitor, self.patience, self.verbose = monitor, int(patience), verbose
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch = start_from_epoch

    def on_train_begin(self, logs=None):
        self.tracker.reset()
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best_weights = None

    @property
    def best(self):
        return self.tracker.best

    def get_state(self):
        return {**self.tracker.get_state(), "wait": self.wait, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def set_state(self, state):
        if self.tracker.set_state(state, "EarlyStopping"):
            self.wait, self.best_epoch = int(state["wait"]), int(state["best_epoch"])
            self.stopped_epoch = int(state["stopped_epoch"])
            self.best_weights = state["best_weights"]

    def on_epoch_end(self, epoch, logs=None):
        current = self.tracker.value(logs, "EarlyStopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self.tracker.is_improvement(current):
            self.tracker.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self.tracker.is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", flush=True)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring the weights of epoch {self.best_epoch + 1}", flush=True)
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (or only its weights) at the end of every epoch, or only when ``monitor``
    improves (``save_best_only``).

    ``filepath`` may contain ``{epoch}`` (1-based, e.g. ``"ckpt-{epoch:02d}.minidl"``) and any logged
    value (``{val_loss:.3f}``).  Each file is written atomically (a temporary file, fsync, rename), so
    a crash never leaves a half-written checkpoint.  A full checkpoint holds the optimizer state, the
    number of finished epochs and the random state: ``minidl.load_model`` + ``fit(initial_epoch=
    model.initial_epoch)`` resumes training exactly.  It writes after every other callback's
    ``on_epoch_end``, so the file holds the epoch's final state (e.g. a rate ``ReduceLROnPlateau``
    just cut) and every callback's state; with ``save_best_only`` the best value so far is part of
    that state, so a resumed run overwrites the best file only on a real improvement.
    """

    writes_checkpoints = True
    writes_files = True

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", initial_value_threshold=None):
        from minidl import saving  # saving imports the model, which imports this module
        saving.require_supported_suffix(filepath, "save_weights" if save_weights_only else "save_model")
        self.filepath = os.fspath(filepath)
        self.tracker = MonitorImprovement(monitor, mode, 0.0)
        self.monitor, self.verbose = monitor, verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.initial_value_threshold = initial_value_threshold

    def on_train_begin(self, logs=None):
        self.tracker.reset()
        if self.initial_value_threshold is not None:
            self.tracker.best = self.initial_value_threshold

    def get_state(self):
        return self.tracker.get_state() if self.save_best_only else None

    def set_state(self, state):
        self.tracker.set_state(state, "ModelCheckpoint")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = self.tracker.value(logs, "ModelCheckpoint")
            if current is None or not self.tracker.is_improvement(current):
                return
            self.tracker.best = current
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as error:
            raise KeyError(f"ModelCheckpoint: filepath {self.filepath!r} uses {{{error.args[0]}}}, which "
                           f"is not among epoch and the logged values {sorted(logs)}") from None
        self.save(path, epoch + 1)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved {'weights' if self.save_weights_only else 'model'} "
                  f"to {path}", flush=True)

    def save(self, path, epochs_done):
        from minidl import saving  # saving imports the model, which imports this module

        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self.save_weights_only:
            saving.save_weights(self.model, path)
        else:
            saving.save_model(self.model, path, epoch=epochs_done)


def require_float_learning_rate(optimizer, callback_name):
    if callable(optimizer.learning_rate):
        raise TypeError(f"{callback_name} sets the optimizer's learning rate, but "
                        f"{type(optimizer).__name__} has the schedule "
                        f"{type(optimizer.learning_rate).__name__} as learning_rate; pass a float "
                        f"learning_rate or drop the schedule")


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for ``patience``
    epochs, then wait ``cooldown`` epochs; never below ``min_lr``.  Logs ``learning_rate``.

    The optimizer's ``learning_rate`` must be a number: with a schedule training stops at once with
    a ``TypeError`` (the two would fight over the rate).
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self.tracker = MonitorImprovement(monitor, mode, min_delta)
        self.factor, self.patience, self.verbose = float(factor), int(patience), verbose
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)

    def on_train_begin(self, logs=None):
        require_float_learning_rate(self.model.optimizer, "ReduceLROnPlateau")
        self.tracker.reset()
        self.wait, self.cooldown_counter = 0, 0

    def get_state(self):
        return {**self.tracker.get_state(), "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state):
        if self.tracker.set_state(state, "ReduceLROnPlateau"):
            self.wait, self.cooldown_counter = int(state["wait"]), int(state["cooldown_counter"])

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if logs is not None:
            logs["learning_rate"] = float(optimizer.learning_rate)
        current = self.tracker.value(logs, "ReduceLROnPlateau")
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.tracker.is_improvement(current):
            self.tracker.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and optimizer.learning_rate > self.min_lr:
                optimizer.learning_rate = max(optimizer.learning_rate * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                          f"{optimizer.learning_rate:.4g}", flush=True)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (epoch 0-based,
    ``lr`` the current rate).  Logs ``learning_rate``.  Needs a float ``learning_rate``."""

    def __init__(self, schedule, verbose=0):
        self.schedule, self.verbose = schedule, verbose

    def on_train_begin(self, logs=None):
        require_float_learning_rate(self.model.optimizer, "LearningRateScheduler")

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        lr = self.schedule(epoch, float(optimizer.learning_rate))
        if not isinstance(lr, (int, float, np.floating, np.integer)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"LearningRateScheduler: schedule({epoch}, lr) must return a positive "
                             f"finite number, got {lr!r}")
        optimizer.learning_rate = float(lr)
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr:.4g}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class CSVLogger(Callback):
    """Append one row per epoch (``epoch`` then the logs in sorted order) to a CSV file.

    ``append=True`` keeps the existing rows, for resumed training; the header is written only into an
    empty file.  Each row is flushed at once, so a killed run keeps its finished epochs.
    """

    writes_files = True

    def __init__(self, filename, separator=",", append=False):
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self.file = self.writer = self.keys = None

    def on_train_begin(self, logs=None):
        has_rows = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self.file = open(self.filename, "a" if self.append else "w", newline="")
        self.write_header = not has_rows
        self.writer, self.keys = None, None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.writer is None:
            self.keys = sorted(logs)
            self.writer = csv.DictWriter(self.file, fieldnames=["epoch", *self.keys],
                                         delimiter=self.separator, extrasaction="ignore", restval="")
            if self.write_header:
                self.writer.writeheader()
        self.writer.writerow({"epoch": epoch, **logs})
        self.file.flush()

    def on_train_end(self, logs=None):
        if self.file is not None:
            self.file.close()
            self.file = None


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's loss is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss {loss}, terminating training", flush=True)
            self.model.stop_training = True


def find_non_finite(model, loss=None):
    """Where the first NaN/inf of the last training step is, as ``(layer name, where, what)``, or
    ``None`` when everything is finite.

    Checked in the order the values were computed: each step's output in the model's plan (forward
    pass, named by the step's last layer), then the loss, then each layer's ``grads`` from the last
    layer back (backward pass), then the parameters after the update.
    """
    for step in model.plan.steps:
        if step.y is not None and not ops.all_finite(step.y):
            return step.layers[-1].name, "forward pass", "output"
    if loss is not None and not math.isfinite(loss):
        return "loss", "forward pass", "value"
    for layer in reversed(model.layers):
        for key, grad in layer.grads.items():
            if not ops.all_finite(grad):
                return layer.name, "backward pass", f"gradient of {key}"
    for layer in model.layers:
        for key, param in layer.params.items():
            if not ops.all_finite(param):
                return layer.name, "optimizer update", f"parameter {key}"
    return None


class NaNGuard(Callback):
    """After every batch, check the loss, every layer's activations and gradients and the updated
    parameters for NaN/inf; on the first one raise ``FloatingPointError`` naming the layer and whether
    it appeared in the forward pass, the backward pass or the optimizer update.

    It costs one finiteness scan of every activation per batch: use it to debug a diverging run, not
    for every run.  (A non-finite gradient already stops ``fit`` before the update, naming the
    parameter; the guard catches what comes earlier: an activation or loss overflowing, or an update
    that sends the weights to inf.)
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        found = find_non_finite(self.model, loss)
        if found is not None:
            layer_name, where, what = found
            raise FloatingPointError(f"NaNGuard: non-finite {what} of {layer_name!r} in the {where} "
                                     f"at batch {batch} (optimizer step "
                                     f"{self.model.optimizer.iterations})")
