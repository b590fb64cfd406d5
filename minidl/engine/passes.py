"""The planner: builds a model's plain plan, then lets each enabled pass make parts of it faster.

Every pass sees layer types, shapes and options only, never a particular network, and each is
switchable: ``compile(optimize={"conv_algorithm": False})``.  Each pass cites the decision in
``benchmarks/RESULTS.md`` that measured it (its id, e.g. ``[D3]``).  They run in the order of
:data:`PASSES`:

* ``softmax_cross_entropy``: under a cross-entropy loss, the model's last softmax keeps its logits and
  the loss starts from them.
* ``direct_conv_pool``: a first conv of one-channel images and its max pooling as one direct kernel.
* ``activation_after_max_pool``: a conv followed by max pooling pools before its bias and activation.
* ``activation_with_average_pool``: a conv followed by average pooling applies its bias and activation
  and pools in one pass over each image, and runs their backward passes in one more.
* ``crop_unread_outputs``: a conv fused with its pooling computes only the outputs some window reads.
* ``conv_algorithm``: each conv by the method measured fastest for its shape on this machine
  (im2col + GEMM over the batch or image by image, Winograd F(2x2, 3x3) or F(4x4, 3x3);
  :mod:`minidl.engine.conv_choice`).
* ``inference_conv_algorithm``: outside training each conv by the method measured fastest for a
  forward pass alone.
* ``workspace_chunking``: a conv whose scratch would pass ``max_workspace_bytes`` runs in chunks of images.
* ``inference_chunking``: outside training a conv runs in chunks of images whose scratch fits
  ``INFERENCE_WORKSPACE_BYTES`` and keeps nothing for backward.
* ``inference_maxima``: max pooling outside training computes the maxima without the argmax.
"""

import os

from minidl.engine.conv_choice import choose_method
from minidl.engine.conv_methods import ConvLinear, Im2colGemm, candidate_methods
from minidl.engine.plan import LayerStep, Plan
from minidl.engine.steps import (MONOTONE_ACTIVATIONS, ConvAvgPoolStep, ConvMaxPoolStep, ConvStep,
                                 DirectConvMaxPoolStep, MaxPoolStep, SoftmaxLogitsStep)
from minidl.layers.activations import Activation
from minidl.layers.conv import Conv2D
from minidl.layers.dense import Dense
from minidl.layers.pooling import AveragePooling2D, MaxPooling2D

#: Scratch (im2col columns or Winograd tiles) allowed per conv step before it runs in chunks of images.
DEFAULT_WORKSPACE_BYTES = int(float(os.environ.get("MINIDL_WORKSPACE_MB", "256")) * 2**20)

#: Scratch allowed per conv outside training (or ``max_workspace_bytes``, where smaller), where a chunk
#: of images costs no recomputation: nothing is kept for backward.  About the size of the L2 caches,
#: so that a chunk's unfolded input or tiles are still in cache when its GEMMs read them ([D9]).
INFERENCE_WORKSPACE_BYTES = int(float(os.environ.get("MINIDL_INFERENCE_WORKSPACE_MB", "2")) * 2**20)


def record_pass(step, name):
    """Note on ``step`` that pass ``name`` shaped it (listed in the order the passes run)."""
    step.passes = sorted({*step.passes, name}, key=list(PASSES).index)


class Draft:
    """A plan being rewritten: its steps, which steps read each node, and the planner's settings."""

    def __init__(self, steps, input_node, output_node, nodes_with_grads, max_workspace_bytes, softmax_loss):
        self.steps, self.input_node, self.output_node = steps, input_node, output_node
        self.nodes_with_grads, self.max_workspace_bytes = nodes_with_grads, max_workspace_bytes
        self.softmax_loss = softmax_loss

    def needs_input_grad(self, inputs):
        """Whether a step reading ``inputs`` must return their gradient: only where one of them is in
        :func:`nodes_with_grads`."""
        return any(node in self.nodes_with_grads for node in inputs)

    def sole_reader(self, step):
        """The only step that reads ``step``'s output, or ``None`` (several readers, or the model's output)."""
        if step.output == self.output_node:
            return None
        readers = [other for other in self.steps if step.output in other.inputs]
        return readers[0] if len(readers) == 1 else None

    def plain_steps(self, layer_type):
        return [step for step in self.steps if type(step) is LayerStep and isinstance(step.layer, layer_type)]

    def conv_then_pool(self, pool_type):
        """``(conv step, pool step)`` for every plain Conv2D whose output only a plain ``pool_type``
        (MaxPooling2D, AveragePooling2D) reads."""
        pairs = []
        for conv_step in self.plain_steps(Conv2D):
            reader = self.sole_reader(conv_step)
            if type(reader) is LayerStep and isinstance(reader.layer, pool_type):
                pairs.append((conv_step, reader))
        return pairs

    def replace(self, old_steps, new_step, pass_name):
        """Put ``new_step`` where the first of ``old_steps`` was and drop them all."""
        for name in [name for step in old_steps for name in step.passes] + [pass_name]:
            record_pass(new_step, name)
        position = self.steps.index(old_steps[0])
        for step in old_steps:
            self.steps.remove(step)
        self.steps.insert(position, new_step)

    def steps_with_conv_linear(self):
        return [step for step in self.steps if isinstance(step, (ConvStep, ConvMaxPoolStep, ConvAvgPoolStep))]


def softmax_cross_entropy(draft):
    """[D10] Under a cross-entropy loss on probabilities, a model whose last layer (Dense, Conv2D or
    Activation) ends in softmax keeps that layer's logits (:class:`~minidl.engine.steps.SoftmaxLogitsStep`),
    and the loss and backward start from them: exact and finite where the probabilities underflow."""
    if not draft.softmax_loss:
        return
    last = next(step for step in draft.steps if step.output == draft.output_node)
    if (type(last) is LayerStep and isinstance(last.layer, (Dense, Conv2D, Activation))
            and last.layer.activation == "softmax"):
        step = SoftmaxLogitsStep(last.layer, last.inputs, last.output, draft.needs_input_grad(last.inputs))
        draft.replace([last], step, "softmax_cross_entropy")


def direct_conv_pool(draft):
    """[D5] A 3x3, stride-1, unpadded conv of one-channel images (a grayscale network's first conv,
    whose im2col rows are only ``K = 9`` long) with a non-decreasing activation, read only by a 2x2
    max pooling at stride 2, runs as one :class:`~minidl.engine.steps.DirectConvMaxPoolStep`.  The
    kernel has no input gradient, so nobody may need the gradient of what the conv reads: the model's
    input, or what parameter-free layers made of it (:func:`nodes_with_grads`)."""
    for conv_step, pool_step in draft.conv_then_pool(MaxPooling2D):
        conv, pool = conv_step.layer, pool_step.layer
        if (conv.kernel_size == (3, 3) and conv.strides == (1, 1) and conv.pads == ((0, 0), (0, 0))
                and conv.input_shape[2] == 1 and conv.activation in MONOTONE_ACTIVATIONS
                and not draft.needs_input_grad(conv_step.inputs)
                and pool.pool_size == (2, 2) and pool.strides == (2, 2) and pool.pads == ((0, 0), (0, 0))):
            fused = DirectConvMaxPoolStep(conv, pool, conv_step.inputs, pool_step.output)
            draft.replace([conv_step, pool_step], fused, "direct_conv_pool")


def activation_after_max_pool(draft):
    """[D1] A conv with a non-decreasing activation read only by max pooling pools first, then adds
    the bias and applies the activation on the pooled tensor (:class:`~minidl.engine.steps.ConvMaxPoolStep`)."""
    for conv_step, pool_step in draft.conv_then_pool(MaxPooling2D):
        conv, pool = conv_step.layer, pool_step.layer
        if conv.activation in MONOTONE_ACTIVATIONS:
            linear = ConvLinear(conv, Im2colGemm(conv.kernel_size, conv.strides))
            fused = ConvMaxPoolStep(conv, pool, linear, conv_step.inputs, pool_step.output,
                                    draft.needs_input_grad(conv_step.inputs))
            draft.replace([conv_step, pool_step], fused, "activation_after_max_pool")


def activation_with_average_pool(draft):
    """[D18] A conv read only by average pooling applies its bias and activation and pools in one pass
    over each image, and spreads the pooled gradient, multiplies it by the activation's derivative and
    sums the bias gradient in one more (:class:`~minidl.engine.steps.ConvAvgPoolStep`); softmax, over
    the channels, stays apart."""
    for conv_step, pool_step in draft.conv_then_pool(AveragePooling2D):
        conv, pool = conv_step.layer, pool_step.layer
        if conv.activation != "softmax":
            linear = ConvLinear(conv, Im2colGemm(conv.kernel_size, conv.strides))
            fused = ConvAvgPoolStep(conv, pool, linear, conv_step.inputs, pool_step.output,
                                    draft.needs_input_grad(conv_step.inputs))
            draft.replace([conv_step, pool_step], fused, "activation_with_average_pool")


def pads_read_by(conv, pool):
    """``conv.pads`` with the bottom and right paddings lowered by whole strides (below zero if need
    be) so that the conv's output ends with the last row and column some window of ``pool`` reads.

    The dropped outputs never reach ``pool``'s output, so their gradient is zero and the input pixels
    only they read get no gradient (under Winograd, one of rounding size).
    """
    pads = []
    for axis in (0, 1):
        (before, after), out_size = conv.pads[axis], conv.output_shape[axis]
        (pool_before, _), pooled_size = pool.pads[axis], pool.output_shape[axis]
        read = (pooled_size - 1) * pool.strides[axis] + pool.pool_size[axis] - pool_before
        pads.append((before, after - max(0, out_size - read) * conv.strides[axis]))
    return tuple(pads)


def crop_unread_outputs(draft):
    """[D2] A conv fused with its pooling (max or average) computes only the outputs the pooling
    reads: an 11 x 11 output under 2 x 2 pooling drops its last row and column, 17% of the conv's work."""
    for step in draft.steps:
        if isinstance(step, (ConvMaxPoolStep, ConvAvgPoolStep)):
            conv, pool = step.layers
            cropped = pads_read_by(conv, pool)
            if cropped != conv.pads:
                step.linear.pads = cropped
                record_pass(step, "crop_unread_outputs")


def conv_algorithm(draft):
    """[D7] Every conv computes its sum by the method :func:`~minidl.engine.conv_choice.choose_method`
    finds fastest for its shape (its own pads, input gradient or not) on this machine: timed on
    first use and cached on disk, or by the cost model under ``MINIDL_CONV_CHOICE=model``.  A plain
    conv keeps its own im2col + GEMM where that wins."""
    for step in draft.steps_with_conv_linear():
        name = choose_method(step.conv, step.linear.pads, step.input_grad_needed)
        if name != step.linear.method.name:
            step.linear.method = candidate_methods(step.conv)[name]
            record_pass(step, "conv_algorithm")
    for conv_step in draft.plain_steps(Conv2D):
        conv, input_grad_needed = conv_step.layer, draft.needs_input_grad(conv_step.inputs)
        name = choose_method(conv, conv.pads, input_grad_needed)
        if name != Im2colGemm.name:
            linear = ConvLinear(conv, candidate_methods(conv)[name])
            draft.replace([conv_step], ConvStep(conv, linear, conv_step.inputs, conv_step.output, input_grad_needed),
                          "conv_algorithm")


def inference_conv_algorithm(draft):
    """[D14] Outside training (``predict``, ``evaluate``) every conv computes its sum by the method
    :func:`~minidl.engine.conv_choice.choose_method` finds fastest for a forward pass alone in the
    inference chunks of :func:`inference_chunking`, where that differs from its training method: the
    training choice weighs the backward too, and a near-tie there can give a predict the method that
    does 4x the multiplications."""
    bound = inference_bound(draft)
    for step in convs_with_linear(draft, "inference_conv_algorithm"):
        name = choose_method(step.conv, step.linear.pads, False, inference_bytes=bound)
        if name != step.linear.method.name:
            step.linear.inference_method = candidate_methods(step.conv)[name]
            record_pass(step, "inference_conv_algorithm")


def inference_bound(draft):
    """The scratch a conv may use per inference chunk: ``min(INFERENCE_WORKSPACE_BYTES, max_workspace_bytes)``."""
    return min(INFERENCE_WORKSPACE_BYTES, draft.max_workspace_bytes)


def convs_with_linear(draft, pass_name):
    """Every conv step of ``draft`` with a :class:`ConvLinear` whose chunks can be set: a plain Conv2D
    becomes a :class:`ConvStep` by its own im2col + GEMM, shaped by ``pass_name``."""
    for conv_step in draft.plain_steps(Conv2D):
        conv = conv_step.layer
        linear = ConvLinear(conv, Im2colGemm(conv.kernel_size, conv.strides))
        step = ConvStep(conv, linear, conv_step.inputs, conv_step.output, draft.needs_input_grad(conv_step.inputs))
        draft.replace([conv_step], step, pass_name)
    return draft.steps_with_conv_linear()


def workspace_chunking(draft):
    """[D4] A conv whose batch would need more than ``max_workspace_bytes`` of scratch (im2col
    columns, Winograd tiles) computes that many bytes' worth of images at a time; one whose method
    keeps no scratch per image (image by image) runs whole."""
    for step in convs_with_linear(draft, "workspace_chunking"):
        step.linear.images_per_chunk = step.linear.images_within(draft.max_workspace_bytes)
        if step.linear.images_per_chunk is not None:
            record_pass(step, "workspace_chunking")


def inference_chunking(draft):
    """[D9] Outside training (``predict``, ``evaluate``) a conv computes
    ``min(INFERENCE_WORKSPACE_BYTES, max_workspace_bytes)`` bytes' worth of images at a time and keeps
    no unfolded input: without a backward to feed, a chunk costs no recomputation, a predict's
    scratch stays a few chunks' worth instead of the batch's, and a chunk small enough to stay in
    cache is read by its GEMMs from there.  [D24] A :class:`~minidl.engine.steps.ConvMaxPoolStep`
    pools each chunk's output as it is computed, in chunks whose output also fits the bound, even by
    a method that keeps no scratch per image ([D25])."""
    for step in convs_with_linear(draft, "inference_chunking"):
        step.linear.inference_images_per_chunk = step.linear.images_within(inference_bound(draft), training=False)
        if isinstance(step, ConvMaxPoolStep):
            step.z_images_per_chunk = max(1, inference_bound(draft) // step.z_bytes_per_image())
        if step.linear.inference_images_per_chunk is not None or isinstance(step, ConvMaxPoolStep):
            record_pass(step, "inference_chunking")


def inference_maxima(draft):
    """[D6] Max pooling outside training computes the maxima alone (``maxpool_values``), without
    the argmax that only backward needs."""
    for pool_step in draft.plain_steps(MaxPooling2D):
        step = MaxPoolStep(pool_step.layer, pool_step.inputs, pool_step.output, maxima_alone=True)
        draft.replace([pool_step], step, "inference_maxima")
    for step in draft.steps:
        if isinstance(step, ConvMaxPoolStep):
            step.winners.maxima_alone = True
        elif isinstance(step, DirectConvMaxPoolStep):
            step.maxima_alone = True
        else:
            continue
        record_pass(step, "inference_maxima")


#: Every pass, in the order the planner runs them.
PASSES = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "direct_conv_pool": direct_conv_pool,
    "activation_after_max_pool": activation_after_max_pool,
    "activation_with_average_pool": activation_with_average_pool,
    "crop_unread_outputs": crop_unread_outputs,
    "conv_algorithm": conv_algorithm,
    "inference_conv_algorithm": inference_conv_algorithm,
    "workspace_chunking": workspace_chunking,
    "inference_chunking": inference_chunking,
    "inference_maxima": inference_maxima,
}


def enabled_passes(optimize):
    """``optimize`` (``True``, ``False`` or ``{pass name: bool}``, unnamed passes on) -> the names of
    the passes to run; raises ``ValueError`` naming an unknown pass or a value that is not a bool."""
    if isinstance(optimize, bool):
        return list(PASSES) if optimize else []
    if not isinstance(optimize, dict):
        raise ValueError(f"optimize must be True, False or a dict of pass names to bools, got {optimize!r}")
    unknown = sorted(set(optimize) - set(PASSES))
    if unknown:
        raise ValueError(f"optimize: unknown pass {unknown[0]!r}; the passes are {list(PASSES)}")
    not_bool = {name: value for name, value in optimize.items() if not isinstance(value, bool)}
    if not_bool:
        raise ValueError(f"optimize: each pass is switched by True or False, got {not_bool}")
    return [name for name in PASSES if optimize.get(name, True)]


def nodes_with_grads(nodes, input_node, input_grad_needed):
    """The nodes whose gradient backward must compute: the output of every layer that holds parameters
    or reads such a node, and the model's input where ``input_grad_needed``.  Other nodes come only from
    parameter-free layers (``Rescaling``, ``Flatten``, ...) over the model's input, so nobody reads their
    gradient, and the layer after them need not compute its ``dL/dx``."""
    with_grads = {input_node} if input_grad_needed else set()
    for layer, inputs, output in nodes:
        if layer.params or any(node in with_grads for node in inputs):
            with_grads.add(output)
    return with_grads


def build_plan(nodes, input_node, output_node, optimize=True, input_grad_needed=False,
               max_workspace_bytes=DEFAULT_WORKSPACE_BYTES, softmax_loss=False):
    """The plan of a built model given as ``nodes``: ``(layer, input node ids, output node id)`` in an
    order where each layer's inputs are written first.

    ``optimize`` switches the passes (:func:`enabled_passes`); ``input_grad_needed`` asks ``backward``
    for the gradient of the model's input (a gradient check does; training does not);
    ``softmax_loss`` says the loss is a cross-entropy on probabilities (:func:`softmax_cross_entropy`).
    """
    passes = enabled_passes(optimize)
    grad_nodes = nodes_with_grads(nodes, input_node, input_grad_needed)
    steps = [LayerStep(layer, inputs, output, any(node in grad_nodes for node in inputs))
             for layer, inputs, output in nodes]
    draft = Draft(steps, input_node, output_node, grad_nodes, max_workspace_bytes, softmax_loss)
    for name in passes:
        PASSES[name](draft)
    return Plan(draft.steps, input_node, output_node, grad_nodes)
