"""A plan: the steps that compute a model, in an order where every step's inputs are ready before it.

A model is a graph: numbered tensors (nodes) and layers that read some nodes and write one.  The plain
plan has one :class:`LayerStep` per layer, which calls the layer's own ``forward`` and ``backward``.
The passes in :mod:`minidl.engine.passes` replace steps by faster ones that compute the same numbers;
a step keeps its own state (argmax, pads, scratch) and writes only ``grads`` into its layers.
"""

from minidl.backend import ops
from minidl.layers.activations import activation_backward


class Step:
    """One unit of work: reads the nodes ``inputs``, writes the node ``output``.

    ``layers`` are the layers it computes, in order; ``passes`` names the passes that made it.
    ``forward(inputs, training)`` takes one array per input node and returns the output;
    ``backward(grad_out)`` returns one gradient per input node (``None`` where nobody needs it).
    After a forward pass ``y`` holds the output.  ``input_grad_needed`` is False where nobody reads
    the gradient of the step's inputs: the model's input, or what parameter-free layers made of it
    (:func:`minidl.engine.passes.nodes_with_grads`); ``computes_input_grad`` says whether ``backward``
    computes ``dL/dx`` even so.
    """

    input_grad_needed = True

    @property
    def computes_input_grad(self):
        """By default a step computes ``dL/dx`` exactly where it is needed."""
        return self.input_grad_needed

    def __init__(self, layers, inputs, output):
        self.layers, self.inputs, self.output = tuple(layers), tuple(inputs), output
        self.passes = []
        self.y = None

    def forward(self, inputs, training):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def workspace_bytes(self, batch_size):
        """Scratch memory beyond inputs and outputs for a batch of ``batch_size`` (0 unless said)."""
        return 0


class LayerStep(Step):
    """The plain path: the layer's own ``forward`` and ``backward``.  Without ``input_grad_needed``,
    for a layer whose parameter gradients come apart from ``dL/dx`` (Dense and Conv2D's
    ``linear_parameter_grads``) the step computes only those (:meth:`parameter_backward`); any other
    layer computes ``dL/dx`` and the step drops it."""

    def __init__(self, layer, inputs, output, input_grad_needed):
        super().__init__((layer,), inputs, output)
        self.layer, self.input_grad_needed = layer, input_grad_needed

    @property
    def computes_input_grad(self):
        return self.input_grad_needed or not hasattr(self.layer, "linear_parameter_grads")

    def forward(self, inputs, training):
        self.y = self.layer.forward(inputs if self.layer.takes_several_inputs else inputs[0], training)
        return self.y

    def backward(self, grad_out):
        if not self.computes_input_grad:
            self.parameter_backward(grad_out)
            return [None]
        grad_in = self.layer.backward(grad_out)
        return needed_grads(list(grad_in) if self.layer.takes_several_inputs else [grad_in], self.input_grad_needed)

    def parameter_backward(self, grad_out):
        """The layer's backward without ``dL/dx``: ``dL/dz = dL/dy * f'(z)`` from its kept output
        ``y``, then only its ``linear_parameter_grads`` (``dL/dW``, ``dL/db``)."""
        self.layer.linear_parameter_grads(activation_backward(grad_out, self.layer.y, self.layer.activation))


def needed_grads(grads, input_grad_needed):
    """``grads``, one per input node, or ``None`` for each where nobody needs them."""
    return grads if input_grad_needed else [None] * len(grads)


def summed(a, b):
    """``a + b`` as a fresh array: the gradient of a tensor that several steps read."""
    return ops.add(a, b)


class Plan:
    """``steps`` in a valid order over the nodes; ``input_node`` is the model's input, ``output_node``
    its output, ``nodes_with_grads`` the nodes whose gradient backward computes (the others come from
    parameter-free layers over the model's input, and their steps have no backward to run).
    ``forward`` runs the steps in order, ``backward`` in reverse, summing the gradients of a node that
    several steps read (fan-out)."""

    def __init__(self, steps, input_node, output_node, nodes_with_grads):
        self.steps, self.input_node, self.output_node = list(steps), input_node, output_node
        self.nodes_with_grads = frozenset(nodes_with_grads)
        self.output_step = next(step for step in self.steps if step.output == output_node)

    def forward(self, x, training):
        """The model's output for ``x`` (every step's output is kept on the step as ``y``)."""
        values = {self.input_node: x}
        for step in self.steps:
            values[step.output] = step.forward([values[node] for node in step.inputs], training)
        return values[self.output_node]

    def output_logits(self):
        """The logits of the last forward pass where the output step keeps them (a softmax the loss
        starts from, :func:`minidl.engine.passes.softmax_cross_entropy`), else ``None``."""
        return getattr(self.output_step, "logits", None)

    def backward(self, grad_output, from_logits=False, on_step_done=None):
        """Gradients from ``dL/d(output)`` (or, with ``from_logits``, ``dL/d(logits)`` of an output step
        that keeps them) back through every step; returns ``dL/d(input)``, or ``None`` when the plan
        computes no input gradient.
        ``on_step_done(step)`` is called once each step's layers hold their ``grads`` (distributed
        training starts sending them while backward goes on)."""
        grads = {self.output_node: grad_output}
        for step in reversed(self.steps):
            if step.output not in self.nodes_with_grads:
                continue
            grad_out = grads.pop(step.output)
            if from_logits and step.output == self.output_node:
                grads_in = step.backward_from_logits(grad_out)
            else:
                grads_in = step.backward(grad_out)
            for node, grad in zip(step.inputs, grads_in):
                if grad is not None:
                    grads[node] = summed(grads[node], grad) if node in grads else grad
            if on_step_done is not None:
                on_step_done(step)
        return grads.get(self.input_node)

    def step_of(self, layer):
        """The step that computes ``layer``."""
        return next(step for step in self.steps if layer in step.layers)
