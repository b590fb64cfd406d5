"""The training loop: batches, ``fit``'s epochs, ``evaluate``, ``predict`` and one training step.

A training step is: forward through the model's plan, the loss and its gradient w.r.t. the output,
backward through the plan, weight penalties, one optimizer update.  Inputs are checked before any step
runs, and a step whose gradients are not finite raises before the update, so a failed call never
changes the weights.  :class:`minidl.model.Model`'s ``fit``, ``evaluate``, ``predict`` and
``train_on_batch`` call the functions here.
"""

import numpy as np

from minidl import metrics as metrics_module
from minidl import validation as checks
from minidl.backend import apply_process_settings, compile_kernels_if_cold, ops
from minidl.callbacks import CallbackList, History, ProgbarLogger, find_non_finite, format_logs
from minidl.utils import global_rng


def is_loader(data):
    """A data loader is anything iterable with a length that is not an array, list or tuple."""
    return (data is not None and hasattr(data, "__iter__") and hasattr(data, "__len__")
            and not isinstance(data, (np.ndarray, list, tuple)))


class ArrayBatches:
    """Batches of ``(x, encoded targets)`` from arrays; epoch ``e``'s order depends on ``(seed, e)``.
    Unshuffled and unaugmented, each batch is a slice of ``x``, not a copy: no step writes into its
    input (an ``augment`` function may, so it is given a copy)."""

    def __init__(self, model, x, targets, batch_size, shuffle, seed=0, augment=None):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model, self.x, self.targets = model, x, targets
        self.batch_size, self.shuffle, self.seed, self.augment = int(batch_size), shuffle, seed, augment

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def epoch(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.x)) if self.shuffle else None
        for start in range(0, len(self.x), self.batch_size):
            rows = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            x_batch = self.x[rows]
            if self.augment is not None:
                x_batch = self.augment(x_batch.copy() if order is None else x_batch, rng)
            yield np.asarray(x_batch, dtype=self.model.dtype), self.targets[rows]


class LoaderBatches:
    """Batches from a data loader, with each batch checked and its targets encoded."""

    def __init__(self, model, loader):
        self.model, self.loader = model, loader

    def __len__(self):
        return len(self.loader)

    def epoch(self, epoch):
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        for x_batch, y_batch in self.loader:
            x_batch, targets = self.model.check_data(x_batch, y_batch, what="loader batch")
            yield np.asarray(x_batch, dtype=self.model.dtype), targets


# ------------------------------------------------------------------------------------- one step


def trainable_params_and_grads(model):
    """``[(param, grad)]`` with weight-penalty gradients added; raises if any gradient is not finite."""
    pairs = []
    for layer in model.layers:
        if not layer.trainable:
            continue
        for key, param in layer.params.items():
            grad = layer.grads[key]
            if key in layer.regularizers:
                layer.regularizers[key].add_gradient(grad, param)
            if not ops.all_finite(grad):
                origin_layer, stage, what = find_non_finite(model)
                raise FloatingPointError(
                    f"non-finite gradient for {layer.name}.{key} at step {model.optimizer.iterations}; "
                    f"the first non-finite value is the {what} of {origin_layer} in the {stage}; "
                    f"the weights were left unchanged")
            pairs.append((param, grad))
    return pairs


def train_step(model, x_batch, targets, gradients=None):
    """One update from a batch on the backend; returns ``(loss, y_pred)``.  In distributed training
    ``gradients`` (:class:`minidl.distributed.GradientBuckets`) averages the gradients over the ranks,
    each bucket as soon as backward has produced it, before the update."""
    y_pred = model.forward(x_batch, training=True)
    loss, grad = model.loss_and_grad(y_pred, targets)
    model.backward(grad, on_step_done=None if gradients is None else gradients.step_done)
    if gradients is not None:
        gradients.finish()
    model.optimizer.apply_gradients(trainable_params_and_grads(model))
    return loss + model.regularization_penalty(), y_pred


def update_logs(model, loss_mean, loss, targets, y_pred):
    """Add a batch to the running loss and metrics; returns the logs so far."""
    loss_mean.update_value(loss, len(targets))
    if model.metrics:
        y_pred_host, targets_host = ops.to_host(y_pred), ops.to_host(targets)
        for metric in model.metrics:
            metric.update(targets_host, y_pred_host)
    return {"loss": loss_mean.result(), **{m.name: m.result() for m in model.metrics}}


def prepare(model, verbose=0):
    """Before the engine runs: parameters on the active backend, the process settings applied, and
    on a first run the kernels compiled (announced in one line when ``verbose``)."""
    model.sync_backend()
    apply_process_settings()
    compile_kernels_if_cold(model.dtype, print_fn=print if verbose else lambda line: None)


# ------------------------------------------------------------------------------------------ fit


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None, validation_split=0.0,
        validation_data=None, shuffle=True, initial_epoch=0, seed=None, augment=None, strategy=None):
    """:meth:`minidl.model.Model.fit`; ``strategy`` a :class:`minidl.distributed.DataParallel`."""
    model.require_compiled("fit")
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    batch_size, seed = checks.batch_size(batch_size, "fit"), checks.seed(seed)
    ranks = strategy.ranks if strategy else 1  # a global batch is batch_size rows per rank
    validation = validation_batches(model, validation_data, (batch_size or 32) * ranks)
    if is_loader(x):
        if validation_split:
            raise ValueError("validation_split needs arrays; pass validation_data with a loader")
        train = LoaderBatches(model, x)
    else:
        x, targets = model.check_data(x, y)
        if validation_split and validation is None:  # validation_data wins, as in Keras
            n_val = int(len(x) * validation_split)
            if n_val == 0 or n_val == len(x):
                raise ValueError(f"validation_split={validation_split} leaves an empty set "
                                 f"for {len(x)} samples")
            validation = ArrayBatches(model, x[-n_val:], targets[-n_val:], (batch_size or 32) * ranks,
                                      shuffle=False)
            x, targets = x[:-n_val], targets[:-n_val]
        if model.optimizer.full_batch:
            batch_size = len(x)
        base_seed = int(global_rng().integers(2**31)) if seed is None else seed
        if strategy:
            base_seed = strategy.same_on_every_rank(base_seed)
        train = ArrayBatches(model, x, targets, (batch_size or 32) * ranks, shuffle, base_seed, augment)
    if strategy and not strategy.is_chief:  # rank 0 alone prints and writes files
        callbacks, verbose = [c for c in callbacks or [] if not c.writes_files], 0
    prepare(model, verbose)
    if strategy:
        train, validation = strategy.shards(train), strategy.shards(validation)
        strategy.start(model, verbose)
    model.history = History()
    # user callbacks first, so History records what they add to the logs (e.g. learning_rate)
    all_callbacks = list(callbacks or []) + [model.history] + ([ProgbarLogger(verbose)] if verbose else [])
    callback_list = CallbackList(all_callbacks, model, {"epochs": epochs, "steps": len(train),
                                                        "verbose": verbose})
    model.stop_training = False
    callback_list.on_train_begin()
    callback_list.resume_saved_run(initial_epoch)
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        logs = run_epoch(model, train.epoch(epoch), callback_list, strategy)
        if validation is not None:
            logs.update({f"val_{k}": v for k, v in evaluate_batches(model, validation, strategy=strategy).items()})
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end()
    return model.history


def run_epoch(model, batches, callback_list, strategy=None):
    """One pass over ``batches``; returns the epoch's logs (in distributed training, this rank's
    share of each batch, and the logs of all ranks' samples)."""
    loss_mean = metrics_module.Mean()
    for metric in model.metrics:
        metric.reset()
    logs = {}
    step_on = train_step if strategy is None else strategy.train_step
    for step, (x_batch, targets) in enumerate(batches):
        callback_list.on_train_batch_begin(step)
        loss, y_pred = step_on(model, ops.to_device(x_batch), ops.to_device(targets))
        if y_pred is not None:  # None: this rank had no rows of the batch
            logs = update_logs(model, loss_mean, loss, targets, y_pred)
        callback_list.on_train_batch_end(step, logs)
        if strategy is not None and strategy.any_rank(model.stop_training):
            model.stop_training = True
        if model.stop_training:
            break
    if strategy is not None:
        logs = strategy.summed_logs(loss_mean, model.metrics, model.output_shape[-1])
    return logs


def validation_batches(model, validation_data, batch_size):
    if validation_data is None:
        return None
    if is_loader(validation_data):
        return LoaderBatches(model, validation_data)
    x_val, targets_val = model.check_data(*checks.validation_pair(validation_data), what="validation x")
    return ArrayBatches(model, x_val, targets_val, batch_size, shuffle=False)


# ----------------------------------------------------------------------------- evaluate, predict


def evaluate_batches(model, batches, keep_outputs=False, strategy=None):
    """Mean loss and metrics over every batch, in inference mode.  With ``keep_outputs`` also
    returns every batch's ``(targets, predictions)`` as host arrays.  With a ``strategy`` the
    batches are this rank's shares, and the results those of every rank's."""
    loss_mean = metrics_module.Mean()
    for metric in model.metrics:
        metric.reset()
    logs, outputs = {}, []
    penalty = model.regularization_penalty()  # the weights do not change while evaluating
    for x_batch, targets in batches.epoch(0):
        if not len(targets):
            continue
        targets = ops.to_device(targets)
        y_pred = model.forward(ops.to_device(x_batch), training=False)
        loss, _ = model.loss_and_grad(y_pred, targets)
        logs = update_logs(model, loss_mean, loss + penalty, targets, y_pred)
        if keep_outputs:
            outputs.append((ops.to_host(targets), ops.to_host(y_pred)))
    if strategy is not None:
        logs = strategy.summed_logs(loss_mean, model.metrics, model.output_shape[-1])
        outputs = strategy.gathered(outputs) if keep_outputs else outputs
    return (logs, outputs) if keep_outputs else logs


def evaluate(model, x=None, y=None, batch_size=32, verbose=1, return_dict=False, report=False, strategy=None):
    """:meth:`minidl.model.Model.evaluate`; ``strategy`` a :class:`minidl.distributed.DataParallel`."""
    model.require_compiled("evaluate")
    batch_size = checks.batch_size(batch_size, "evaluate")
    if is_loader(x):
        batches = LoaderBatches(model, x)
    else:
        x, targets = model.check_data(x, y)
        batches = ArrayBatches(model, x, targets, batch_size * (strategy.ranks if strategy else 1), shuffle=False)
    if strategy:
        batches, verbose = strategy.shards(batches), verbose if strategy.is_chief else 0
    prepare(model, verbose)
    if strategy:
        strategy.broadcast_model(model)
    logs, outputs = evaluate_batches(model, batches, keep_outputs=True, strategy=strategy) if report \
        else (evaluate_batches(model, batches, strategy=strategy), None)
    if verbose:
        print(format_logs(logs), flush=True)
    result = logs if return_dict else logs["loss"] if len(logs) == 1 else list(logs.values())
    if not report:
        return result
    targets_all = np.concatenate([t for t, _ in outputs])
    predictions_all = np.concatenate([p for _, p in outputs])
    return result, metrics_module.classification_report(targets_all, predictions_all, model.class_names)


def predict(model, x, batch_size=32):
    """:meth:`minidl.model.Model.predict`."""
    batch_size = checks.batch_size(batch_size, "predict")
    if is_loader(x):
        batches = (x_batch for x_batch, _ in x)
    else:
        x = model.check_inputs(x)
        batches = (x[start:start + batch_size] for start in range(0, len(x), batch_size))
    prepare(model)
    outputs = [ops.to_host(model.forward(ops.to_device(np.asarray(b, model.dtype)), training=False))
               for b in batches]
    return np.concatenate(outputs) if outputs else np.zeros((0, *model.output_shape), model.dtype)


def train_on_batch(model, x, y):
    """:meth:`minidl.model.Model.train_on_batch`."""
    model.require_compiled("train_on_batch")
    x, targets = model.check_data(x, y)
    prepare(model)
    for metric in model.metrics:
        metric.reset()
    targets = ops.to_device(targets)
    loss, y_pred = train_step(model, ops.to_device(x.astype(model.dtype)), targets)
    logs = update_logs(model, metrics_module.Mean(), loss, targets, y_pred)
    return logs["loss"] if len(logs) == 1 else list(logs.values())
