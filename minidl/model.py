"""``Sequential``: a stack of layers with Keras's ``compile`` / ``fit`` / ``evaluate`` / ``predict``.

A training step is: forward through every layer, the loss and its gradient w.r.t. the output,
backward through every layer in reverse, weight penalties, one optimizer update.  Inputs are checked
before any step runs, and a step whose gradients are not finite raises before the update, so a failed
call never changes the weights.
"""

import numpy as np

from minidl import losses as losses_module
from minidl import metrics as metrics_module
from minidl import optimizers as optimizers_module
from minidl.backend import get_backend, ops
from minidl.callbacks import CallbackList, History, ProgbarLogger, find_non_finite, format_logs
from minidl import layers as layers_module
from minidl.layers import Input, Layer, MaxPooling2D
from minidl.layers.kernel_layer import KernelLayer
from minidl.utils import global_rng


class Sequential:
    def __init__(self, layers=None, name="sequential"):
        self.name = name
        self.layers = []
        self.input_shape = None
        self.optimizer = self.loss = None
        self.metrics = []
        self.stop_training = False
        self.history = None
        self.backend_of_params = None
        self.initial_epoch = 0  # epochs finished before this model was saved (set by load_model)
        self.class_names = None
        for layer in layers or []:
            self.add(layer)

    # ----------------------------------------------------------------------------- building

    def add(self, layer):
        """Append a layer (or, first, an ``Input``); the layer is built at once if the shape is known."""
        if isinstance(layer, Input):
            if self.layers or self.input_shape is not None:
                raise ValueError(f"{self.name}: Input must come first, before any layer")
            self.input_shape = layer.shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"{self.name}: can only add minidl layers, got {type(layer).__name__}")
        if not self.layers and self.input_shape is None and layer.declared_input_shape is not None:
            self.input_shape = layer.declared_input_shape
        if self.input_shape is not None:
            self.build_layer(layer, self.output_shape)
        layer.input_grad_needed = bool(self.layers)
        self.layers.append(layer)

    def build_layer(self, layer, input_shape):
        if not layer.built:
            layer.build(input_shape)
        elif layer.input_shape != tuple(input_shape):
            raise ValueError(f"layer {layer.name!r} was built for inputs {(None, *layer.input_shape)} "
                             f"but receives {(None, *input_shape)}")

    def build(self, input_shape):
        """Build every layer for per-sample inputs of ``input_shape``."""
        self.input_shape = tuple(input_shape)
        shape = self.input_shape
        for layer in self.layers:
            self.build_layer(layer, shape)
            shape = layer.output_shape
        self.backend_of_params = get_backend()

    @property
    def built(self):
        return self.input_shape is not None and all(layer.built for layer in self.layers)

    @property
    def output_shape(self):
        return self.layers[-1].output_shape if self.layers else self.input_shape

    @property
    def dtype(self):
        return self.layers[0].dtype if self.layers else np.dtype("float32")

    def cast(self, dtype):
        """Convert every parameter to ``dtype`` (float64 for gradient checks); returns the model."""
        for layer in self.layers:
            layer.cast(dtype)
        return self

    # ---------------------------------------------------------------------------- compiling

    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer, loss and metrics (instances or Keras aliases)."""
        if loss is None:
            raise ValueError(f"{self.name}: compile needs a loss, e.g. loss='categorical_crossentropy'")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = losses_module.get(loss)
        self.metric_names = list(metrics or [])
        self.metrics = []
        if self.built:
            self.resolve_metrics()

    def resolve_metrics(self):
        self.metrics = [metrics_module.get(name, self.loss, self.output_shape) for name in self.metric_names]

    def require_compiled(self, method):
        if self.loss is None:
            raise RuntimeError(f"{self.name}: call compile(optimizer, loss, metrics) before {method}()")

    def softmax_fused_into_loss(self):
        """True when the loss is a cross-entropy on probabilities and the last layer ends in softmax:
        then the loss starts from that layer's logits (exact, stable gradient)."""
        last = self.layers[-1]
        return (self.loss.is_cross_entropy and not self.loss.from_logits
                and getattr(last, "activation", None) == "softmax")

    # ---------------------------------------------------------------------------- one step

    def forward(self, x, training):
        """Every layer in turn; a ReLU kernel layer followed by max pooling runs as one step that
        pools before the bias and ReLU (:meth:`KernelLayer.forward_through_max_pooling`)."""
        index = 0
        while index < len(self.layers):
            layer = self.layers[index]
            if index + 1 < len(self.layers) and relu_feeds_max_pooling(layer, self.layers[index + 1]):
                x = layer.forward_through_max_pooling(x, self.layers[index + 1], training)
                index += 2
            else:
                x = layer.forward(x, training)
                index += 1
        return x

    def backward(self, grad):
        """Backward from ``dL/d(output)``, or from ``dL/d(logits)`` when softmax is fused; returns
        ``dL/d(input)`` (``None`` unless the first layer's ``input_grad_needed`` is set).

        A ReLU followed by max pooling is differentiated on the pooled side
        (:meth:`KernelLayer.backward_through_max_pooling`): the ReLU's derivative at each window's
        maximum is ``[pooled > 0]``, so masking the small pooled gradient and skipping the ReLU's
        full-size pass gives the same numbers.
        """
        layers = list(self.layers)
        if self.softmax_fused_into_loss():
            grad = layers.pop().backward_from_logits(grad)
        index = len(layers) - 1
        while index >= 0:
            layer = layers[index]
            if index > 0 and relu_feeds_max_pooling(layers[index - 1], layer):
                grad = layers[index - 1].backward_through_max_pooling(grad, layer)
                index -= 2
            else:
                grad = layer.backward(grad)
                index -= 1
        return grad

    def loss_and_grad(self, y_pred, targets):
        if self.softmax_fused_into_loss():
            return self.loss.value_and_grad_from_logits(self.layers[-1].logits, targets)
        return self.loss.value_and_grad(y_pred, targets)

    def regularization_penalty(self):
        return sum(regularizer.penalty(layer.params[key])
                   for layer in self.layers for key, regularizer in layer.regularizers.items())

    def trainable_params_and_grads(self):
        """``[(param, grad)]`` with weight-penalty gradients added; raises if any gradient is not finite."""
        pairs = []
        for layer in self.layers:
            if not layer.trainable:
                continue
            for key, param in layer.params.items():
                grad = layer.grads[key]
                if key in layer.regularizers:
                    layer.regularizers[key].add_gradient(grad, param)
                if not ops.all_finite(grad):
                    origin_layer, stage, what = find_non_finite(self)
                    raise FloatingPointError(
                        f"non-finite gradient for {layer.name}.{key} at step {self.optimizer.iterations}; "
                        f"the first non-finite value is the {what} of {origin_layer} in the {stage}; "
                        f"the weights were left unchanged")
                pairs.append((param, grad))
        return pairs

    def train_step(self, x_batch, targets):
        """One update from a batch on the backend; returns ``(loss, y_pred)``."""
        y_pred = self.forward(x_batch, training=True)
        loss, grad = self.loss_and_grad(y_pred, targets)
        self.backward(grad)
        self.optimizer.apply_gradients(self.trainable_params_and_grads())
        return loss + self.regularization_penalty(), y_pred

    # --------------------------------------------------------------------------- checking

    def check_inputs(self, x, what="x"):
        """``x`` as an array of the model's dtype; builds the model from ``x`` if needed.

        Raises ``ValueError`` for a shape the first layer cannot take (naming it, with the expected
        and actual shapes) or for NaN/inf values.
        """
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{self.name}: {what} must be numeric, got dtype {x.dtype}")
        if not self.layers:
            raise ValueError(f"{self.name}: the model has no layers")
        if not self.built:
            self.build(x.shape[1:])
            if self.loss is not None:
                self.resolve_metrics()
        expected = (None, *self.input_shape)
        if x.shape[1:] != self.input_shape:
            hint = ""
            if x.ndim >= 1 and int(np.prod(x.shape[1:])) == int(np.prod(self.input_shape)):
                hint = f"; reshape it, e.g. {what}.reshape(-1, {', '.join(map(str, self.input_shape))})"
            first = self.layers[0]
            raise ValueError(f"layer {first.name!r} ({type(first).__name__}) expected {what} of shape "
                             f"{expected}, got {x.shape}{hint}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError(f"{self.name}: {what} contains NaN or infinite values")
        return x

    def check_data(self, x, y, what="x"):
        x = self.check_inputs(x, what)
        if y is None:
            raise ValueError(f"{self.name}: targets y are required with array inputs")
        if len(x) != len(y):
            raise ValueError(f"{self.name}: {what} has {len(x)} samples but its targets have {len(y)}")
        return x, self.loss.encode_targets(y, self.output_shape, self.dtype)

    def sync_backend(self):
        """Move parameters and optimizer state onto the backend that is active now."""
        if self.backend_of_params == get_backend():
            return
        for layer in self.layers:
            layer.to_active_backend()
        if self.optimizer is not None and self.optimizer.slots:
            self.optimizer.set_state(self.optimizer.get_state())
        self.backend_of_params = get_backend()

    # -------------------------------------------------------------------------------- fit

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0, seed=None,
            augment=None):
        """Train for ``epochs`` passes over ``(x, y)``; returns a :class:`~minidl.callbacks.History`.

        ``x`` may also be a data loader yielding ``(x_batch, y_batch)``.  ``validation_split`` holds
        out the last fraction of the arrays (before shuffling, as Keras does) unless ``validation_data``
        is given.  ``seed`` makes each
        epoch's shuffle a function of ``(seed, epoch)``; ``augment`` is a transform applied to every
        training batch.
        """
        self.require_compiled("fit")
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        validation = self.validation_batches(validation_data, batch_size or 32)
        if is_loader(x):
            if validation_split:
                raise ValueError("validation_split needs arrays; pass validation_data with a loader")
            train = LoaderBatches(self, x)
        else:
            x, targets = self.check_data(x, y)
            if validation_split and validation is None:  # validation_data wins, as in Keras
                n_val = int(len(x) * validation_split)
                if n_val == 0 or n_val == len(x):
                    raise ValueError(f"validation_split={validation_split} leaves an empty set "
                                     f"for {len(x)} samples")
                validation = ArrayBatches(self, x[-n_val:], targets[-n_val:], batch_size or 32, shuffle=False)
                x, targets = x[:-n_val], targets[:-n_val]
            if self.optimizer.full_batch:
                batch_size = len(x)
            base_seed = int(global_rng().integers(2**31)) if seed is None else seed
            train = ArrayBatches(self, x, targets, batch_size or 32, shuffle, base_seed, augment)
        self.sync_backend()
        self.history = History()
        # user callbacks first, so History records what they add to the logs (e.g. learning_rate)
        all_callbacks = list(callbacks or []) + [self.history] + ([ProgbarLogger(verbose)] if verbose else [])
        callback_list = CallbackList(all_callbacks, self, {"epochs": epochs, "steps": len(train),
                                                           "verbose": verbose})
        self.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            logs = self.run_epoch(train.epoch(epoch), callback_list)
            if validation is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate_batches(validation).items()})
            callback_list.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        callback_list.on_train_end()
        return self.history

    def run_epoch(self, batches, callback_list):
        loss_mean = metrics_module.Mean()
        for metric in self.metrics:
            metric.reset()
        logs = {}
        for step, (x_batch, targets) in enumerate(batches):
            callback_list.on_train_batch_begin(step)
            loss, y_pred = self.train_step(ops.to_device(x_batch), ops.to_device(targets))
            logs = self.update_logs(loss_mean, loss, targets, y_pred)
            callback_list.on_train_batch_end(step, logs)
            if self.stop_training:
                break
        return logs

    def update_logs(self, loss_mean, loss, targets, y_pred):
        loss_mean.update_value(loss, len(targets))
        if self.metrics:
            y_pred_host, targets_host = ops.to_host(y_pred), ops.to_host(targets)
            for metric in self.metrics:
                metric.update(targets_host, y_pred_host)
        return {"loss": loss_mean.result(), **{m.name: m.result() for m in self.metrics}}

    def validation_batches(self, validation_data, batch_size):
        if validation_data is None:
            return None
        if is_loader(validation_data):
            return LoaderBatches(self, validation_data)
        x_val, targets_val = self.check_data(*validation_data[:2], what="validation x")
        return ArrayBatches(self, x_val, targets_val, batch_size, shuffle=False)

    # --------------------------------------------------------------------- evaluate/predict

    def evaluate_batches(self, batches, keep_outputs=False):
        """Mean loss and metrics over every batch, in inference mode.  With ``keep_outputs`` also
        returns every batch's ``(targets, predictions)`` as host arrays."""
        loss_mean = metrics_module.Mean()
        for metric in self.metrics:
            metric.reset()
        logs, outputs = {}, []
        penalty = self.regularization_penalty()  # the weights do not change while evaluating
        for x_batch, targets in batches.epoch(0):
            targets = ops.to_device(targets)
            y_pred = self.forward(ops.to_device(x_batch), training=False)
            loss, _ = self.loss_and_grad(y_pred, targets)
            logs = self.update_logs(loss_mean, loss + penalty, targets, y_pred)
            if keep_outputs:
                outputs.append((ops.to_host(targets), ops.to_host(y_pred)))
        return (logs, outputs) if keep_outputs else logs

    def evaluate(self, x=None, y=None, batch_size=32, verbose=1, return_dict=False, report=False):
        """Loss (and metrics) on ``(x, y)``: a float, ``[loss, *metrics]``, or a dict.

        With ``report=True`` the result comes with a per-class report,
        ``(result, minidl.metrics.classification_report(...))``, its rows named by ``class_names``
        when the model has them.
        """
        self.require_compiled("evaluate")
        if is_loader(x):
            batches = LoaderBatches(self, x)
        else:
            x, targets = self.check_data(x, y)
            batches = ArrayBatches(self, x, targets, batch_size, shuffle=False)
        self.sync_backend()
        logs, outputs = self.evaluate_batches(batches, keep_outputs=True) if report \
            else (self.evaluate_batches(batches), None)
        if verbose:
            print(format_logs(logs), flush=True)
        result = logs if return_dict else logs["loss"] if len(logs) == 1 else list(logs.values())
        if not report:
            return result
        targets_all = np.concatenate([t for t, _ in outputs])
        predictions_all = np.concatenate([p for _, p in outputs])
        return result, metrics_module.classification_report(targets_all, predictions_all, self.class_names)

    def predict(self, x, batch_size=32, verbose=0):
        """Outputs for ``x`` ``(N, *input_shape)`` -> ``(N, *output_shape)`` as a NumPy array."""
        if is_loader(x):
            batches = (x_batch for x_batch, _ in x)
        else:
            x = self.check_inputs(x)
            batches = (x[start:start + batch_size] for start in range(0, len(x), batch_size))
        self.sync_backend()
        outputs = [ops.to_host(self.forward(ops.to_device(np.asarray(b, self.dtype)), training=False))
                   for b in batches]
        return np.concatenate(outputs) if outputs else np.zeros((0, *self.output_shape), self.dtype)

    def train_on_batch(self, x, y):
        """One update from one batch; returns the loss, or ``[loss, *metrics]`` of that batch."""
        self.require_compiled("train_on_batch")
        x, targets = self.check_data(x, y)
        self.sync_backend()
        for metric in self.metrics:
            metric.reset()
        targets = ops.to_device(targets)
        loss, y_pred = self.train_step(ops.to_device(x.astype(self.dtype)), targets)
        logs = self.update_logs(metrics_module.Mean(), loss, targets, y_pred)
        return logs["loss"] if len(logs) == 1 else list(logs.values())

    # ----------------------------------------------------------------------------- weights

    def get_weights(self):
        """Every layer's weights in order, each layer's in Keras's order (kernel, bias)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Inverse of :meth:`get_weights`; shapes are checked for every layer before any is set."""
        weights = list(weights)
        expected = sum(len(layer.get_weights()) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"{self.name}: expected {expected} weight arrays, got {len(weights)}")
        snapshot = self.get_weights()
        position = 0
        try:
            for layer in self.layers:
                count = len(layer.get_weights())
                layer.set_weights(weights[position:position + count])
                position += count
        except ValueError:
            self.set_weights(snapshot)
            raise

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def get_config(self):
        """The architecture as plain JSON data (no code): name, input shape and each layer's config."""
        return {"name": self.name, "input_shape": list(self.input_shape or ()) or None,
                "layers": [layers_module.serialize(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config):
        model = cls(name=config["name"])
        if config.get("input_shape"):
            model.add(Input(tuple(config["input_shape"])))
        for layer_config in config["layers"]:
            model.add(layers_module.deserialize(layer_config))
        return model

    def summary(self, batch_size=32, print_fn=print):
        """Print each layer's output shape and parameter count (and a conv's workspace at ``batch_size``
        and its method: im2col, winograd, or direct with the pooling after it), then the totals."""
        if not self.built:
            raise ValueError(f"{self.name}: the model is not built yet; give the first layer "
                             f"input_shape=..., start with Input(shape=...), or call build()")
        rows = [("Layer (type)", "Output Shape", "Param #", f"Workspace (batch {batch_size})")]
        for index, layer in enumerate(self.layers):
            following = self.layers[index + 1] if index + 1 < len(self.layers) else None
            pool = following if relu_feeds_max_pooling(layer, following) else None
            rows.append((f"{layer.name} ({type(layer).__name__})", str((None, *layer.output_shape)),
                         f"{layer.count_params():,}", layer.workspace_summary(batch_size, pool)))
        widths = [max(len(row[i]) for row in rows) + 2 for i in range(4)]
        rule = "=" * sum(widths)
        lines = [f'Model: "{self.name}"', rule]
        for index, row in enumerate(rows):
            lines.append("".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
            lines.append(rule if index == 0 else "-" * sum(widths))
        trainable = sum(layer.count_params() for layer in self.layers if layer.trainable)
        lines += [f"Total params: {self.count_params():,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {self.count_params() - trainable:,}"]
        print_fn("\n".join(lines))

    # ------------------------------------------------------------------------------ saving

    def save(self, path):
        """Save everything needed to resume training to one file; see :mod:`minidl.saving`."""
        from minidl import saving  # saving imports this module
        saving.save_model(self, path)

    def save_weights(self, path):
        """Save only the weights; see :func:`minidl.saving.save_weights`."""
        from minidl import saving
        saving.save_weights(self, path)

    def load_weights(self, path):
        """Load weights saved by :meth:`save_weights` (Keras weights: use :meth:`set_weights`)."""
        from minidl import saving
        saving.load_weights(self, path)


def relu_feeds_max_pooling(layer, next_layer):
    """``layer`` is a Dense or Conv2D ending in a ReLU and ``next_layer`` is a max pooling."""
    return (isinstance(layer, KernelLayer) and layer.activation == "relu"
            and isinstance(next_layer, MaxPooling2D))


def is_loader(data):
    """A data loader is anything iterable with a length that is not an array, list or tuple."""
    return (data is not None and hasattr(data, "__iter__") and hasattr(data, "__len__")
            and not isinstance(data, (np.ndarray, list, tuple)))


class ArrayBatches:
    """Batches of ``(x, encoded targets)`` from arrays; epoch ``e``'s order depends on ``(seed, e)``."""

    def __init__(self, model, x, targets, batch_size, shuffle, seed=0, augment=None):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model, self.x, self.targets = model, x, targets
        self.batch_size, self.shuffle, self.seed, self.augment = int(batch_size), shuffle, seed, augment

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def epoch(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            x_batch = self.x[rows]
            if self.augment is not None:
                x_batch = self.augment(x_batch, rng)
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
