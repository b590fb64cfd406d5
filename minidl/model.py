"""``Model`` and ``Sequential``: layers with Keras's ``compile`` / ``fit`` / ``evaluate`` / ``predict``.

A model is the structure: its layers, their shapes and weights, its loss and optimizer.  ``Model``
holds everything a model does whatever its shape; ``Model(inputs, outputs)`` is a functional model,
a graph of layers traced from symbolic tensors (:mod:`minidl.functional`), and ``Sequential`` is a
``Model`` whose graph is a chain.  How the layers are computed is the *plan* (:mod:`minidl.engine`),
built from the graph and rebuilt when the layers or the ``optimize`` switches change; the training
loop that runs it lives in :mod:`minidl.training`.
"""

import contextlib
import textwrap

import numpy as np

from minidl import distributed as distributed_module
from minidl import engine, functional
from minidl import layers as layers_module
from minidl import losses as losses_module
from minidl import metrics as metrics_module
from minidl import optimizers as optimizers_module
from minidl import training
from minidl import validation as checks
from minidl.backend import get_backend, on_active_backend
from minidl.layers import Layer


class Model:
    """A functional model: the layers between ``inputs`` (a ``minidl.Input``) and ``outputs`` (the
    symbolic tensor a layer returned), in a graph where a tensor may feed several layers and merge
    layers (``Add``, ``Concatenate``) read several tensors::

        inputs = minidl.Input(shape=(28, 28, 1))
        x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        x = layers.Add()([x, layers.Conv2D(8, 3, padding="same")(x)])
        outputs = layers.Dense(10, activation="softmax")(layers.Flatten()(x))
        model = minidl.Model(inputs, outputs)

    One input and one output (given alone or as lists of one); several of either are refused.  A
    layer instance can be called once (no shared layers).  The layers are built by the calls, so the
    model is built at once.  :class:`Sequential` is the chain-shaped subclass.
    """

    def __init__(self, inputs=None, outputs=None, name="model"):
        self.init_state(name)
        if inputs is None or outputs is None:
            raise TypeError(f"{name}: Model(inputs, outputs) takes a minidl.Input and the tensor a layer "
                            f"returned; for a stack of layers use Sequential([...])")
        self.graph = functional.trace(inputs, outputs, name)
        self.layers = self.graph.layers
        self.input_shape = self.graph.input.sample_shape
        self.backend_of_params = get_backend()

    def init_state(self, name):
        """The attributes every model starts with: no layers, not compiled, never trained."""
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
        #: the planner's switches (see :meth:`compile`), and whether backward returns dL/d(input)
        self.optimize, self.max_workspace_bytes = True, engine.DEFAULT_WORKSPACE_BYTES
        self.input_grad_needed = False
        self.cached_plan = self.cached_plan_key = None

    # ----------------------------------------------------------------------------- building

    def build(self, input_shape):
        """A functional model is built by its layer calls: accept only its own input shape (per sample,
        or Keras's full shape with the batch axis)."""
        if self.per_sample_shape(input_shape) != self.input_shape:
            raise ValueError(f"{self.name}: the model was built for inputs {(None, *self.input_shape)} by its "
                             f"Input, got {tuple(input_shape)}")

    def per_sample_shape(self, input_shape):
        """``input_shape`` without its batch axis: a leading ``None`` (Keras's form) is dropped, and so
        is a batch size in front of the shape an ``Input`` declared; any other shape is per sample."""
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            return shape[1:]
        if self.input_shape is not None and shape[1:] == self.input_shape:
            return shape[1:]
        return shape

    def get_layer(self, name=None, index=None):
        """The layer called ``name``, or the one at position ``index`` (as in Keras, give one of them)."""
        if (name is None) == (index is None):
            raise ValueError(f"{self.name}: get_layer takes a layer name or an index, one of the two; "
                             f"got name={name!r}, index={index!r}")
        if index is not None:
            if not -len(self.layers) <= index < len(self.layers):
                raise ValueError(f"{self.name}: asked for the layer at index {index}, but the model has "
                                 f"{len(self.layers)} layers")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"{self.name}: no layer named {name!r}; the layers are "
                         f"{[layer.name for layer in self.layers]}")

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
        self.cached_plan = None
        return self

    # ---------------------------------------------------------------------------- compiling

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, optimize=True, max_workspace_bytes=None):
        """Choose the optimizer, loss and metrics (instances or Keras aliases).

        ``optimize`` switches the planner's passes (:mod:`minidl.engine.passes`): ``True`` (all, the
        default), ``False`` (the plain layer-by-layer path on the same kernels) or ``{"pass": bool}``
        (the passes not named stay on).  ``max_workspace_bytes`` bounds a conv's scratch memory before
        it runs in chunks of images (default ``MINIDL_WORKSPACE_MB``, 256 MiB).
        """
        if loss is None:
            raise ValueError(f"{self.name}: compile needs a loss, e.g. loss='categorical_crossentropy'")
        checks.refuse_during_fit(self, "compile")
        engine.enabled_passes(optimize)
        if max_workspace_bytes is not None and (not isinstance(max_workspace_bytes, int) or max_workspace_bytes < 1):
            raise ValueError(f"{self.name}: max_workspace_bytes must be a positive int, got {max_workspace_bytes!r}")
        self.optimizer = optimizers_module.get(optimizer).attach(self)
        self.loss = losses_module.get(loss)
        self.metric_names = list(metrics or [])
        self.metrics = []
        self.optimize = optimize
        self.max_workspace_bytes = max_workspace_bytes or engine.DEFAULT_WORKSPACE_BYTES
        if self.built:
            self.resolve_metrics()

    def resolve_metrics(self):
        self.metrics = [metrics_module.get(name, self.loss, self.output_shape) for name in self.metric_names]

    def require_compiled(self, method):
        if self.loss is None:
            raise RuntimeError(f"{self.name}: call compile(optimizer, loss, metrics) before {method}()")

    def loss_takes_probabilities(self):
        """True when the loss is a cross-entropy on probabilities: the planner may let it start from
        the logits of a last softmax (``softmax_cross_entropy``)."""
        return self.loss is not None and self.loss.is_cross_entropy and not self.loss.from_logits

    # -------------------------------------------------------------------------------- the plan

    def layer_graph(self):
        """The layers as ``(layer, input nodes, output node)``: node 0 is the input, and the layers
        are in an order where each one's inputs come first, the output layer last (node ``len(layers)``)."""
        return self.graph.nodes()

    @property
    def plan(self):
        """The :class:`minidl.engine.Plan` that computes this model, built on first use after a change."""
        key = (repr(self.optimize), self.input_grad_needed, self.max_workspace_bytes, self.loss_takes_probabilities())
        if self.cached_plan is None or self.cached_plan_key != key:
            self.cached_plan = engine.build_plan(self.layer_graph(), 0, len(self.layers), self.optimize,
                                                 self.input_grad_needed, self.max_workspace_bytes,
                                                 self.loss_takes_probabilities())
            self.cached_plan_key = key
        return self.cached_plan

    def forward(self, x, training):
        """The model's output for a batch on the backend, by the plan's steps in order."""
        return self.plan.forward(x, training)

    def backward(self, grad, on_step_done=None):
        """Backward from ``dL/d(output)``, or from ``dL/d(logits)`` when the plan's output step keeps
        them (:meth:`loss_and_grad` started there); returns ``dL/d(input)`` (``None`` unless
        ``input_grad_needed``).  ``on_step_done``: see :meth:`minidl.engine.Plan.backward`."""
        from_logits = self.plan.output_logits() is not None
        return self.plan.backward(grad, from_logits=from_logits, on_step_done=on_step_done)

    def loss_and_grad(self, y_pred, targets):
        logits = self.plan.output_logits()
        if logits is not None:
            return self.loss.value_and_grad_from_logits(logits, targets)
        return self.loss.value_and_grad(y_pred, targets)

    def regularization_penalty(self):
        return sum(regularizer.penalty(layer.params[key])
                   for layer in self.layers for key, regularizer in layer.regularizers.items())

    # --------------------------------------------------------------------------- checking

    def check_inputs(self, x, what="x"):
        """``x`` as an array of the model's dtype; builds the model from ``x`` if needed.

        Raises ``ValueError`` for a shape the first layer cannot take (naming it, with the expected
        and actual shapes) or for NaN/inf values.
        """
        x = np.asarray(x)
        checks.require_real_numbers(x, what, self.name)
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
        return checks.as_finite(x, self.dtype, what, self.name)

    def check_data(self, x, y, what="x"):
        x = self.check_inputs(x, what)
        checks.require_samples(x, what, self.name)
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
            layer.params, layer.state = on_active_backend(layer.params), on_active_backend(layer.state)
        if self.optimizer is not None and self.optimizer.slots:
            self.optimizer.set_state(self.optimizer.get_state())
        self.backend_of_params = get_backend()

    # --------------------------------------------------------------------- fit, evaluate, predict

    @checks.marks_fit_in_progress
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0, seed=None,
            augment=None, distributed=None):
        """Train for ``epochs`` passes over ``(x, y)``; returns a :class:`~minidl.callbacks.History`.

        ``x`` may also be a data loader yielding ``(x_batch, y_batch)``.  ``validation_split`` holds
        out the last fraction of the arrays (before shuffling, as Keras does) unless ``validation_data``
        is given.  ``seed`` makes each
        epoch's shuffle a function of ``(seed, epoch)``; ``augment`` is a transform applied to every
        training batch.

        ``distributed=True`` (or a :class:`minidl.distributed.DataParallel`) trains data-parallel
        over the MPI ranks this script was started on (``mpiexec -n N``): ``batch_size`` is then
        each rank's, and the update is that of one process at ``batch_size x N``.
        """
        strategy = distributed_module.strategy_for(distributed)
        with strategy.failures_stop_every_rank() if strategy else contextlib.nullcontext():
            return training.fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split,
                                validation_data, shuffle, initial_epoch, seed, augment, strategy)

    def evaluate(self, x=None, y=None, batch_size=32, verbose=1, return_dict=False, report=False,
                 distributed=None):
        """Loss (and metrics) on ``(x, y)``: a float, ``[loss, *metrics]``, or a dict.

        With ``report=True`` the result comes with a per-class report,
        ``(result, minidl.metrics.classification_report(...))``, its rows named by ``class_names``
        when the model has them.  ``distributed`` as in :meth:`fit`: each rank evaluates its share
        of every batch and every rank gets the totals.
        """
        strategy = distributed_module.strategy_for(distributed)
        with strategy.failures_stop_every_rank() if strategy else contextlib.nullcontext():
            return training.evaluate(self, x, y, batch_size, verbose, return_dict, report, strategy)

    def predict(self, x, batch_size=32, verbose=0):
        """Outputs for ``x`` ``(N, *input_shape)`` -> ``(N, *output_shape)`` as a NumPy array (an
        empty ``x`` gives an empty ``(0, *output_shape)`` result)."""
        return training.predict(self, x, batch_size)

    def train_on_batch(self, x, y):
        """One update from one batch; returns the loss, or ``[loss, *metrics]`` of that batch."""
        return training.train_on_batch(self, x, y)

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
        """The architecture as plain JSON data (no code): the input, then each layer's config with the
        names of the tensors it reads (the input's name or layers' names), in the graph's order."""
        graph = self.graph
        return {"class_name": "Model", "name": self.name,
                "input": {"name": graph.input.name, "shape": list(graph.input.sample_shape),
                          "dtype": graph.input.dtype.name},
                "layers": [{**layers_module.serialize(tensor.layer), "inbound": graph.inbound_names(tensor)}
                           for tensor in graph.tensors],
                "output": graph.output.name}

    @classmethod
    def from_config(cls, config):
        """Rebuild the graph of :meth:`get_config` by calling each layer on the tensors it names."""
        described = config["input"]
        tensors = {described["name"]: functional.Input(tuple(described["shape"]), name=described["name"],
                                                       dtype=described.get("dtype", "float32"))}
        for layer_config in config["layers"]:
            layer = layers_module.deserialize(layer_config)
            unknown = [name for name in layer_config["inbound"] if name not in tensors]
            if unknown:
                raise ValueError(f"{config['name']}: layer {layer.name!r} reads {unknown}, which no earlier "
                                 f"layer or input writes")
            inbound = [tensors[name] for name in layer_config["inbound"]]
            tensors[layer.name] = layer(inbound if layer.takes_several_inputs else inbound[0])
        if config["output"] not in tensors:
            raise ValueError(f"{config['name']}: the output {config['output']!r} is no layer of the model")
        return cls(tensors[described["name"]], tensors[config["output"]], name=config["name"])

    def summary(self, batch_size=32, print_fn=print):
        """Print each layer's output shape and parameter count and the scratch memory its step needs at
        ``batch_size`` (a functional model also lists its input and what each layer reads: "Connected
        to"), the totals, then which planner passes shape which layers."""
        if not self.built:
            raise ValueError(f"{self.name}: the model is not built yet; give the first layer "
                             f"input_shape=..., start with Input(shape=...), or call build()")
        plan = self.plan
        rows = [("Layer (type)", "Output Shape", "Param #", f"Workspace (batch {batch_size})", "Connected to")]
        rows += self.summary_input_rows()
        for layer in self.layers:
            step = plan.step_of(layer)
            workspace = step.workspace_bytes(batch_size) if layer is step.layers[0] else 0
            rows.append((f"{layer.name} ({type(layer).__name__})", str((None, *layer.output_shape)),
                         f"{layer.count_params():,}", f"{workspace / 2**20:.1f} MiB" if workspace else "",
                         self.connections(layer)))
        if not any(row[4] for row in rows[1:]):
            rows = [row[:4] for row in rows]
        widths = [max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0]))]
        rule = "=" * sum(widths)
        lines = [f'Model: "{self.name}"', rule]
        for index, row in enumerate(rows):
            lines.append("".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
            lines.append(rule if index == 0 else "-" * sum(widths))
        trainable = sum(layer.count_trainable_params() for layer in self.layers)
        lines += [f"Total params: {self.count_params():,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {self.count_params() - trainable:,}", *plan_lines(plan, self.optimize)]
        print_fn("\n".join(lines))

    def summary_input_rows(self):
        """:meth:`summary`'s row for the model's input."""
        graph_input = self.graph.input
        return [(f"{graph_input.name} (InputLayer)", str(graph_input.shape), "0", "", "-")]

    def connections(self, layer):
        """:meth:`summary`'s "Connected to": the tensors ``layer`` reads."""
        return ", ".join(self.graph.inbound_names(layer.symbolic_output))

    def explain(self, batch_size=32, layer=None, print_fn=print):
        """Each layer's forward and backward equations with the live shapes of a batch of
        ``batch_size``, their FLOPs and bytes moved, and the planner passes that apply (only the layer
        named ``layer`` if given); see :mod:`minidl.teaching.explain`.  Prints with ``print_fn``, or
        returns the text when ``print_fn`` is ``None``."""
        from minidl.teaching.explain import explain_model
        text = explain_model(self, batch_size, layer)
        if print_fn is None:
            return text
        print_fn(text)
        return None

    # ------------------------------------------------------------------------------ saving

    def save(self, path):
        """Save to one file: ``.keras`` / ``.h5`` in Keras's formats, any other suffix (``.minidl``)
        with everything needed to resume training; see :func:`minidl.saving.save_model`."""
        from minidl import saving  # saving imports this module
        saving.save_model(self, path)

    def export(self, path, format="onnx"):
        """Write the model for inference elsewhere; ``format="onnx"`` (the one supported) writes an
        ONNX graph; see :mod:`minidl.onnx_export`."""
        from minidl import onnx_export
        onnx_export.export(self, path, format)

    def save_weights(self, path):
        """Save only the weights; see :func:`minidl.saving.save_weights`."""
        from minidl import saving
        saving.save_weights(self, path)

    def load_weights(self, path):
        """Load weights saved by :meth:`save_weights` (Keras weights: use :meth:`set_weights`)."""
        from minidl import saving
        saving.load_weights(self, path)


class Sequential(Model):
    """A stack of layers, each reading the one before: a :class:`Model` whose graph is a chain.

    ``Sequential([Input(shape), layer, ...])`` or ``add`` one layer at a time; the layers are built as
    soon as the input shape is known (from an ``Input``, a first layer's ``input_shape``, ``build`` or
    the first data seen).
    """

    def __init__(self, layers=None, name="sequential"):
        self.init_state(name)
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        """Append a layer (or, first, an ``Input``); the layer is built at once if the shape is known."""
        if isinstance(layer, functional.SymbolicTensor):
            if layer.layer is not None:
                raise ValueError(f"{self.name}: add takes layers (or, first, an Input), got the output of "
                                 f"layer {layer.layer.name!r}; for a graph of layers use Model(inputs, outputs)")
            if self.layers or self.input_shape is not None:
                raise ValueError(f"{self.name}: Input must come first, before any layer")
            self.input_shape = layer.sample_shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"{self.name}: can only add minidl layers, got {type(layer).__name__}")
        if layer.takes_several_inputs:
            raise ValueError(f"{self.name}: layer {layer.name!r} ({type(layer).__name__}) merges several "
                             f"inputs, which a chain cannot give it; use Model(inputs, outputs)")
        checks.refuse_during_fit(self, "add")
        checks.require_new_layer(self, layer)
        if not self.layers and self.input_shape is None and layer.declared_input_shape is not None:
            self.input_shape = layer.declared_input_shape
        if self.input_shape is not None:
            self.build_layer(layer, self.output_shape)
        self.layers.append(layer)
        self.cached_plan = None

    def build_layer(self, layer, input_shape):
        if not layer.built:
            layer.build(input_shape)
        elif layer.input_shape != tuple(input_shape):
            raise ValueError(f"layer {layer.name!r} was built for inputs {(None, *layer.input_shape)} "
                             f"but receives {(None, *input_shape)}")

    def build(self, input_shape):
        """Build every layer for inputs of ``input_shape``: Keras's full shape with the batch axis,
        ``(None, 32, 32, 3)``, or the per-sample shape ``(32, 32, 3)``."""
        self.input_shape = self.per_sample_shape(input_shape)
        shape = self.input_shape
        for layer in self.layers:
            self.build_layer(layer, shape)
            shape = layer.output_shape
        self.backend_of_params = get_backend()
        self.cached_plan = None

    def layer_graph(self):
        """The layers as ``(layer, input nodes, output node)``: a chain from node 0 (the input)."""
        return [(layer, (index,), index + 1) for index, layer in enumerate(self.layers)]

    def get_config(self):
        """The architecture as plain JSON data (no code): name, input shape and each layer's config."""
        return {"name": self.name, "input_shape": list(self.input_shape or ()) or None,
                "layers": [layers_module.serialize(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config):
        model = cls(name=config["name"])
        if config.get("input_shape"):
            model.add(functional.Input(tuple(config["input_shape"])))
        for layer_config in config["layers"]:
            model.add(layers_module.deserialize(layer_config))
        return model

    def summary_input_rows(self):
        return []

    def connections(self, layer):
        return ""


def model_from_config(config):
    """A :class:`Model` or :class:`Sequential` from its ``get_config()`` (a config without
    ``"class_name"`` is a Sequential's, as every file before functional models holds)."""
    return (Model if config.get("class_name") == "Model" else Sequential).from_config(config)


def plan_lines(plan, optimize):
    """``summary()``'s account of the plan: the passes that shape each step, the rest plain."""
    lines = [f"Plan (optimize={optimize!r}): the passes of minidl.engine that apply, step by step"]
    for step in plan.steps:
        if step.passes:
            names = " + ".join(layer.name for layer in step.layers)
            lines += textwrap.wrap(", ".join(step.passes), width=100, initial_indent=f"  {names}: ",
                                   subsequent_indent="      ")
    if len(lines) == 1:
        lines.append("  none: every layer runs its own forward and backward")
    return lines
