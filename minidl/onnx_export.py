"""Export a model as an ONNX graph (opset 17) that onnxruntime and other inference engines run.

minidl computes channels-last, ``(N, H, W, C)``; ONNX's ``Conv`` and pooling operators compute
channels-first, ``(N, C, H, W)``.  The graph keeps minidl's interface: it takes the ``(N, H, W, C)``
input ``model.predict`` takes and returns what ``predict`` returns.  Each tensor's layout is tracked
as the graph is built, and a ``Transpose`` is added only where an operator needs the other one: to
NCHW before a conv or pooling (consecutive ones stay NCHW), back to NHWC before ``Flatten`` (so the
flattened order, and with it the Dense weights, are minidl's) and before the output.

Weights: a conv kernel ``(KH, KW, C_in, F)`` becomes ONNX's ``(F, C_in, KH, KW)`` (a transpose); a
Dense kernel ``(D_in, units)`` is ``Gemm``'s ``B`` as it is.  Dropout is the identity at inference and
is left out; BatchNormalization uses its moving statistics.  Each layer class has one converter in :data:`ONNX_CONVERTERS`; the model is walked
through :meth:`layer_graph`, so a layer with several inputs (``Add``, ``Concatenate``) takes the
tensors of its input nodes.  Needs ``onnx`` (``pip install 'minidl[onnx]'``).
"""

import dataclasses
import os

import numpy as np

from minidl import layers
from minidl.backend import ops
from minidl.saving import require_built
from minidl.utils import atomic_write

OPSET = 17
#: IR version 8 is the oldest that carries opset 17, so older runtimes load the file too
IR_VERSION = 8
NHWC_TO_NCHW, NCHW_TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor of the graph: its name and layout, ``"NHWC"``, ``"NCHW"`` or ``"plain"`` (no image
    axes, e.g. ``(N, D)``: the same in both conventions)."""

    name: str
    layout: str


class GraphBuilder:
    """Collects the nodes and weights (initializers) of the graph, naming each uniquely."""

    def __init__(self, dtype):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.dtype = dtype
        self.nodes, self.initializers, self.names_used = [], [], set()

    def unique(self, hint):
        name, count = hint, 0
        while name in self.names_used:
            count += 1
            name = f"{hint}_{count}"
        self.names_used.add(name)
        return name

    def weight(self, hint, array):
        """An initializer holding ``array`` (a host or device array, or a number) in the model's dtype;
        returns its name."""
        return self.constant(hint, np.asarray(ops.to_host(array) if hasattr(array, "shape") else array,
                                              dtype=self.dtype))

    def constant(self, hint, array):
        """An initializer holding the NumPy ``array`` as it is (e.g. int64 shapes); returns its name."""
        name = self.unique(hint)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op_type, inputs, hint, layout, **attributes):
        """Add one ``op_type`` node reading ``inputs`` (names); returns its output as a Tensor."""
        output = self.unique(hint)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        return Tensor(output, layout)

    def in_layout(self, tensor, layout):
        """``tensor`` in ``layout`` (``"NHWC"`` or ``"NCHW"``), transposed if it is in the other."""
        if tensor.layout in (layout, "plain"):
            return tensor
        perm = NHWC_TO_NCHW if layout == "NCHW" else NCHW_TO_NHWC
        return self.node("Transpose", [tensor.name], f"{tensor.name}_{layout.lower()}", layout, perm=list(perm))


# ------------------------------------------------------------------------------ converters


def onnx_pads(layer):
    """minidl's ``((top, bottom), (left, right))`` as ONNX's ``[top, left, bottom, right]``."""
    (top, bottom), (left, right) = layer.pads
    return [top, left, bottom, right]


def activation_nodes(graph, tensor, activation, hint):
    """``f(tensor)`` for a minidl activation name; softmax runs over the channel axis."""
    if activation == "linear":
        return tensor
    if activation == "softmax":
        axis = 1 if tensor.layout == "NCHW" else -1
        return graph.node("Softmax", [tensor.name], hint, tensor.layout, axis=axis)
    op_type = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[activation]
    return graph.node(op_type, [tensor.name], hint, tensor.layout)


def conv2d_nodes(graph, layer, tensor):
    """``Conv`` on NCHW with the kernel as ``(F, C_in, KH, KW)``, then the activation."""
    tensor = graph.in_layout(tensor, "NCHW")
    weights = layer.get_weights()
    inputs = [tensor.name, graph.weight(f"{layer.name}_kernel", weights[0].transpose(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(graph.weight(f"{layer.name}_bias", weights[1]))
    z = graph.node("Conv", inputs, f"{layer.name}_z" if layer.activation != "linear" else layer.name, "NCHW",
                   kernel_shape=list(layer.kernel_size), strides=list(layer.strides), pads=onnx_pads(layer))
    return activation_nodes(graph, z, layer.activation, layer.name)


def max_pooling_nodes(graph, layer, tensor):
    """``MaxPool`` on NCHW (ONNX pads never win the max, as in minidl)."""
    tensor = graph.in_layout(tensor, "NCHW")
    return graph.node("MaxPool", [tensor.name], layer.name, "NCHW", kernel_shape=list(layer.pool_size),
                      strides=list(layer.strides), pads=onnx_pads(layer))


def average_pooling_nodes(graph, layer, tensor):
    """``AveragePool`` on NCHW over each window's real pixels (``count_include_pad=0``, as minidl)."""
    tensor = graph.in_layout(tensor, "NCHW")
    return graph.node("AveragePool", [tensor.name], layer.name, "NCHW", kernel_shape=list(layer.pool_size),
                      strides=list(layer.strides), pads=onnx_pads(layer), count_include_pad=0)


def flatten_nodes(graph, layer, tensor):
    """``Flatten`` of the NHWC tensor, so the features come in minidl's (and Keras's) order."""
    tensor = graph.in_layout(tensor, "NHWC")
    return graph.node("Flatten", [tensor.name], layer.name, "plain", axis=1)


def dense_nodes(graph, layer, tensor):
    """``Gemm``: ``x W + b`` with ``W`` ``(D_in, units)``, then the activation."""
    weights = layer.get_weights()
    inputs = [tensor.name, graph.weight(f"{layer.name}_kernel", weights[0])]
    if layer.use_bias:
        inputs.append(graph.weight(f"{layer.name}_bias", weights[1]))
    z = graph.node("Gemm", inputs, f"{layer.name}_z" if layer.activation != "linear" else layer.name, "plain")
    return activation_nodes(graph, z, layer.activation, layer.name)


def activation_layer_nodes(graph, layer, tensor):
    return activation_nodes(graph, tensor, layer.activation, layer.name)


def leaky_relu_nodes(graph, layer, tensor):
    return graph.node("LeakyRelu", [tensor.name], layer.name, tensor.layout, alpha=layer.negative_slope)


def dropout_nodes(graph, layer, tensor):
    """Nothing: dropout is the identity at inference."""
    return tensor


def batch_normalization_nodes(graph, layer, tensor):
    """``BatchNormalization`` (inference: the moving statistics) over the channels, which ONNX takes
    on axis 1: an image goes NCHW; ``gamma``/``beta`` switched off are ones/zeros."""
    tensor = graph.in_layout(tensor, "NCHW")
    weights = dict(layer.weights())
    channels = layer.input_shape[-1]
    gamma = weights["gamma"] if layer.scale else np.ones(channels)
    beta = weights["beta"] if layer.center else np.zeros(channels)
    inputs = [tensor.name] + [graph.weight(f"{layer.name}_{key}", value) for key, value in
                              (("gamma", gamma), ("beta", beta), ("moving_mean", weights["moving_mean"]),
                               ("moving_variance", weights["moving_variance"]))]
    return graph.node("BatchNormalization", inputs, layer.name, tensor.layout,
                      epsilon=layer.epsilon)


def global_pooling_nodes(op_type):
    """``GlobalAveragePool`` / ``GlobalMaxPool`` on NCHW, ``(N, C, 1, 1)``; without ``keepdims`` then
    flattened to ``(N, C)`` (with it, ``(N, C, 1, 1)`` is minidl's ``(N, 1, 1, C)`` in NCHW)."""
    def nodes(graph, layer, tensor):
        tensor = graph.in_layout(tensor, "NCHW")
        if layer.keepdims:
            return graph.node(op_type, [tensor.name], layer.name, "NCHW")
        pooled = graph.node(op_type, [tensor.name], f"{layer.name}_pooled", "NCHW")
        return graph.node("Flatten", [pooled.name], layer.name, "plain", axis=1)
    return nodes


def zero_padding_nodes(graph, layer, tensor):
    """``Pad`` with zeros on NCHW: ``[0, 0, top, left, 0, 0, bottom, right]``."""
    tensor = graph.in_layout(tensor, "NCHW")
    (top, bottom), (left, right) = layer.padding
    pads = graph.constant(f"{layer.name}_pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
    return graph.node("Pad", [tensor.name, pads], layer.name, "NCHW", mode="constant")


def rescaling_nodes(graph, layer, tensor):
    """``x * scale + offset`` (``Mul`` then ``Add`` by scalars); any layout."""
    scaled = graph.node("Mul", [tensor.name, graph.weight(f"{layer.name}_scale", layer.scale)],
                        f"{layer.name}_scaled", tensor.layout)
    return graph.node("Add", [scaled.name, graph.weight(f"{layer.name}_offset", layer.offset)], layer.name,
                      tensor.layout)


def reshape_nodes(graph, layer, tensor):
    """``Reshape`` of the NHWC tensor (minidl's order) to ``(N, *target_shape)``."""
    tensor = graph.in_layout(tensor, "NHWC")
    shape = graph.constant(f"{layer.name}_shape", np.array([-1, *layer.target_shape], np.int64))
    return graph.node("Reshape", [tensor.name, shape], layer.name, image_layout(layer.target_shape))


def common_layout(graph, tensors):
    """The tensors in one layout, the first one's (a merge adds or joins like with like)."""
    layout = next((tensor.layout for tensor in tensors if tensor.layout != "plain"), "plain")
    return [graph.in_layout(tensor, layout) for tensor in tensors], layout


def add_nodes(graph, layer, tensors):
    """``Sum`` of the inputs, brought to one layout."""
    tensors, layout = common_layout(graph, tensors)
    return graph.node("Sum", [tensor.name for tensor in tensors], layer.name, layout)


def concatenate_nodes(graph, layer, tensors):
    """``Concat`` along minidl's axis, renumbered where the tensors are NCHW."""
    tensors, layout = common_layout(graph, tensors)
    axis = layer.batch_axis(len(layer.output_shape))
    if layout == "NCHW":
        axis = NHWC_TO_NCHW.index(axis)
    return graph.node("Concat", [tensor.name for tensor in tensors], layer.name, layout, axis=axis)


#: one converter per layer class, ``(graph, layer, input tensor) -> output tensor``; subclasses
#: (``ReLU``, ``Softmax``, ...) use their base class's entry
ONNX_CONVERTERS = {
    layers.Conv2D: conv2d_nodes, layers.MaxPooling2D: max_pooling_nodes,
    layers.AveragePooling2D: average_pooling_nodes, layers.Flatten: flatten_nodes, layers.Dense: dense_nodes,
    layers.Activation: activation_layer_nodes, layers.LeakyReLU: leaky_relu_nodes, layers.Dropout: dropout_nodes,
    layers.BatchNormalization: batch_normalization_nodes,
    layers.GlobalAveragePooling2D: global_pooling_nodes("GlobalAveragePool"),
    layers.GlobalMaxPooling2D: global_pooling_nodes("GlobalMaxPool"), layers.ZeroPadding2D: zero_padding_nodes,
    layers.Rescaling: rescaling_nodes, layers.Reshape: reshape_nodes, layers.Add: add_nodes,
    layers.Concatenate: concatenate_nodes,
}


def converter_of(layer):
    for cls in type(layer).__mro__:
        if cls in ONNX_CONVERTERS:
            return ONNX_CONVERTERS[cls]
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no ONNX converter; exportable: "
                     f"{sorted(cls.__name__ for cls in ONNX_CONVERTERS)}")


# ------------------------------------------------------------------------------ the model


def image_layout(shape):
    return "NHWC" if len(shape) == 3 else "plain"


def onnx_model(model):
    """The ``onnx.ModelProto`` of ``model``: input ``(N, *input_shape)``, output ``(N, *output_shape)``."""
    from onnx import TensorProto, helper
    elem_type = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}[model.dtype.name]
    graph = GraphBuilder(model.dtype)
    input_name = graph.unique("input")
    tensors = {0: Tensor(input_name, image_layout(model.input_shape))}
    layer_graph = model.layer_graph()
    for layer, input_nodes, output_node in layer_graph:
        inputs = [tensors[node] for node in input_nodes]
        tensors[output_node] = converter_of(layer)(graph, layer, inputs if layer.takes_several_inputs else inputs[0])
    last = graph.in_layout(tensors[layer_graph[-1][2]], "NHWC")
    output_name = graph.unique("output")
    graph.nodes.append(helper.make_node("Identity", [last.name], [output_name], name=output_name))
    onnx_graph = helper.make_graph(
        graph.nodes, model.name,
        [helper.make_tensor_value_info(input_name, elem_type, ["N", *model.input_shape])],
        [helper.make_tensor_value_info(output_name, elem_type, ["N", *model.output_shape])],
        graph.initializers)
    proto = helper.make_model(onnx_graph, producer_name="minidl",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    return proto


def export(model, path, format="onnx"):
    """Write ``model`` to ``path`` as an ONNX graph that passes ``onnx.checker`` (atomically: a
    failure leaves the old file).  The graph computes in the model's dtype; onnxruntime's CPU
    provider has no float64 ``Conv``, so export a float64 CNN after ``model.cast("float32")``."""
    if format != "onnx":
        raise ValueError(f"export: format {format!r} is not supported; minidl exports format='onnx' "
                         f"(use model.save for .keras, .h5 and .minidl files)")
    require_built(model, "export")
    try:
        import onnx
    except ImportError:
        raise ImportError(f"{os.fspath(path)}: exporting ONNX needs onnx: pip install 'minidl[onnx]'") from None
    proto = onnx_model(model)
    onnx.checker.check_model(proto, full_check=True)
    with atomic_write(path) as file:
        file.write(proto.SerializeToString())
