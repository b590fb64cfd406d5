"""The functional API: symbolic tensors, layers called on them, and the graph a ``Model`` traces.

    inputs = minidl.Input(shape=(28, 28, 1))        # a symbolic tensor: a shape, no values
    x = layers.Conv2D(8, 3, padding="same")(inputs)  # builds the layer for (28, 28, 1), returns a new one
    y = layers.Add()([inputs, x])                    # merge layers take a list
    model = minidl.Model(inputs, y)

Calling a layer on a symbolic tensor builds it for the tensor's shape (a shape it cannot take fails
there, naming the layer and both shapes) and records the call as a node: the layer, the tensors it
reads and the tensor it writes.  :func:`trace` walks those nodes back from the model's output to its
input and numbers them in an order where every node's inputs come first, which is the node graph
:func:`minidl.engine.build_plan` takes.

Limits: a model has one input and one output; a layer instance is called once (it keeps one input
and one gradient, so sharing it between two calls would need weights shared between two steps,
which minidl does not do: create a second layer instead).
"""

from minidl.layers.base import float_dtype, unique_layer_name


class SymbolicTensor:
    """The batch of values a layer will produce, known by its shape alone.

    ``sample_shape`` is per sample; ``shape`` is ``(batch_size, *sample_shape)`` with ``batch_size``
    ``None`` unless the ``Input`` fixed it.  ``layer`` is the layer that writes it (``None`` for an
    ``Input``) and ``inputs`` the tensors that layer reads.
    """

    def __init__(self, sample_shape, dtype, name, layer=None, inputs=(), batch_size=None):
        self.sample_shape, self.dtype, self.name = tuple(sample_shape), dtype, name
        self.layer, self.inputs, self.batch_size = layer, tuple(inputs), batch_size

    @property
    def shape(self):
        return (self.batch_size, *self.sample_shape)

    def __repr__(self):
        source = "Input" if self.layer is None else f"{type(self.layer).__name__} {self.layer.name!r}"
        return f"<SymbolicTensor shape={self.shape} dtype={self.dtype.name} from {source}>"


def Input(shape, name=None, batch_size=None, dtype="float32"):  # noqa: N802 (Keras's name)
    """A model's input: a :class:`SymbolicTensor` of per-sample ``shape`` (without the batch axis).

    Call layers on it to build a functional ``Model``, or give it as the first entry of a
    ``Sequential`` to fix that model's input shape.  ``batch_size`` shows in ``shape`` only: a model
    takes batches of any size.  ``dtype`` (float32 or float64) is the input's; as in Keras, each
    layer computes in its own dtype (float32 unless given; ``model.cast("float64")`` converts all).
    """
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"Input: shape must be a tuple of positive ints, got {shape!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"Input: batch_size must be a positive int or None, got {batch_size!r}")
    name = name or unique_layer_name("InputLayer")
    return SymbolicTensor(shape, float_dtype(dtype, f"Input {name!r}"), name, batch_size=batch_size)


def is_symbolic(value):
    """True for a symbolic tensor or a list of them (what a layer call in a functional model gets)."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(isinstance(item, SymbolicTensor) for item in value)
    return isinstance(value, SymbolicTensor)


def call_on_symbols(layer, inputs):
    """``layer(inputs)`` in a functional model: build ``layer`` for the inputs' shapes (or check the
    shapes it was built for) and return the symbolic tensor it writes."""
    kind = f"layer {layer.name!r} ({type(layer).__name__})"
    several = isinstance(inputs, (list, tuple))
    if several != layer.takes_several_inputs:
        wanted = "a list of inputs" if layer.takes_several_inputs else "one tensor, not a list"
        raise TypeError(f"{kind} is called on {wanted}")
    if layer.__dict__.get("symbolic_output") is not None:
        raise ValueError(f"{kind} is already called in a functional model; a layer instance can be called "
                         f"once (shared layers are not supported): create another "
                         f"{type(layer).__name__} for the second call")
    tensors = list(inputs) if several else [inputs]
    shapes = [tensor.sample_shape for tensor in tensors]
    given = tuple(shapes) if several else shapes[0]
    expected = layer.input_shape if layer.built else (None if several else layer.declared_input_shape)
    if expected is not None and tuple(expected) != given:
        raise ValueError(f"{kind} expects input of shape {batch_form(expected, several)}, "
                         f"but is called on {batch_form(given, several)}")
    if not layer.built:
        layer.build(list(shapes) if several else given)
    output = SymbolicTensor(layer.output_shape, layer.dtype, layer.name, layer, tensors, tensors[0].batch_size)
    layer.symbolic_output = output
    return output


def batch_form(shape, several):
    """A per-sample shape (or a tuple of them) as error messages show it, with the batch axis."""
    return ", ".join(str((None, *one)) for one in shape) if several else str((None, *shape))


def only_one(tensors, argument, model_name):
    """The single symbolic tensor of ``inputs`` / ``outputs`` (given alone or in a list of one)."""
    if isinstance(tensors, (list, tuple)):
        if len(tensors) != 1:
            raise ValueError(f"{model_name}: a minidl Model has exactly one input and one output; "
                             f"{argument} holds {len(tensors)}")
        tensors = tensors[0]
    if not isinstance(tensors, SymbolicTensor):
        raise TypeError(f"{model_name}: {argument} must be a symbolic tensor (from minidl.Input or a layer "
                        f"called on one), got {type(tensors).__name__}")
    return tensors


class Graph:
    """A traced model: ``input`` and ``output`` tensors, ``tensors`` written by layers in an order
    where each one's inputs come first (the output last), and each tensor's node number: the input
    is node 0 and ``tensors[i]`` is node ``i + 1``."""

    def __init__(self, input_tensor, output_tensor, tensors):
        self.input, self.output, self.tensors = input_tensor, output_tensor, tensors
        self.node_of = {id(input_tensor): 0, **{id(tensor): i + 1 for i, tensor in enumerate(tensors)}}

    @property
    def layers(self):
        return [tensor.layer for tensor in self.tensors]

    def nodes(self):
        """``[(layer, input node ids, output node id)]`` for :func:`minidl.engine.build_plan`."""
        return [(tensor.layer, tuple(self.node_of[id(source)] for source in tensor.inputs), self.node_of[id(tensor)])
                for tensor in self.tensors]

    def inbound_names(self, tensor):
        """The names of the tensors ``tensor``'s layer reads: the Input's name or layers' names."""
        return [source.name for source in tensor.inputs]


def trace(inputs, outputs, model_name):
    """The :class:`Graph` from ``inputs`` to ``outputs`` (one each); raises ``ValueError`` when the
    output depends on another ``Input`` or two of its layers share a name."""
    input_tensor = only_one(inputs, "inputs", model_name)
    output_tensor = only_one(outputs, "outputs", model_name)
    if input_tensor.layer is not None:
        raise ValueError(f"{model_name}: inputs must be a minidl.Input, got the output of layer "
                         f"{input_tensor.layer.name!r}")
    if output_tensor is input_tensor:
        raise ValueError(f"{model_name}: the output is the input itself; call at least one layer on it")
    ordered, seen = [], {id(input_tensor)}
    pending = [(output_tensor, False)]
    while pending:  # depth first, each tensor emitted after the tensors it reads
        tensor, inputs_done = pending.pop()
        if inputs_done:
            ordered.append(tensor)
            continue
        if id(tensor) in seen:
            continue
        if tensor.layer is None:
            raise ValueError(f"{model_name}: the output depends on Input {tensor.name!r}, which is not "
                             f"the model's input {input_tensor.name!r}")
        seen.add(id(tensor))
        pending.append((tensor, True))
        pending.extend((source, False) for source in reversed(tensor.inputs))
    names = [input_tensor.name] + [tensor.layer.name for tensor in ordered]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"{model_name}: layer names must be unique in a model, {duplicated} appear twice")
    return Graph(input_tensor, output_tensor, ordered)
