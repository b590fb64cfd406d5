"""``minidl explain``: each layer's forward and backward equations with the live shapes of a batch,
what they cost (FLOPs, bytes moved) and which planner passes compute that layer otherwise.

Counts are per training step of a batch of ``N``, at the layer's own formulas: a multiply-add is 2
FLOPs, an addition, a comparison or an activation 1 per element.  "Bytes moved" adds, equation by
equation, every array it reads and writes once, at the model's dtype (argmaxes: int32): e.g.
``z = cols @ W2d`` moves ``cols``, ``W2d`` and ``z``.  Caches are ignored; it is the traffic a streaming
implementation of the formulas cannot avoid.
"""

import textwrap
from dataclasses import dataclass, field

from minidl.engine.conv_methods import WinogradByImage
from minidl.engine.passes import PASSES
from minidl.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Concatenate, Conv2D, Dense,
                           Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, LeakyReLU, MaxPooling2D,
                           Rescaling, Reshape, ZeroPadding2D)

WIDTH = 100
EQUATION_COLUMN = 36  # where the shape column starts after an equation

#: What each planner pass does to the layers it applies to, in one sentence.
PASS_EFFECTS = {
    "softmax_cross_entropy": "the softmax keeps its logits z and the cross-entropy loss starts from them: "
                             "dL/dz = (softmax(z) - t) / N",
    "direct_conv_pool": "the conv and its 2x2 max pooling run as one direct kernel that keeps only each "
                        "window's maximum; z is never stored and no input gradient is computed",
    "activation_after_max_pool": "max pooling runs on z before the bias and activation "
                                 "(max f(z + b) = f(max z + b) for non-decreasing f), so they touch "
                                 "a quarter of the values",
    "activation_with_average_pool": "the bias, activation and average pooling run in one pass over each "
                                    "image, and their backward passes and the bias gradient in one more",
    "crop_unread_outputs": "the conv computes only the outputs some pooling window reads",
    "conv_algorithm": "z is computed by the method timed fastest for this conv's shape on this machine "
                      "(cached on disk; MINIDL_CONV_CHOICE=model uses the cost model instead)",
    "inference_conv_algorithm": "outside training z is computed by the method timed fastest for a forward "
                                "pass alone (the training choice weighs the backward too)",
    "workspace_chunking": "the scratch (cols or tiles) is computed a chunk of images at a time when "
                          "the batch would need more than max_workspace_bytes",
    "inference_chunking": "outside training the conv runs a chunk of images at a time and keeps no "
                          "scratch for backward",
    "inference_maxima": "outside training, max pooling computes the maxima without the argmax",
}


@dataclass
class Explanation:
    """One layer's account: ``forward`` and ``backward`` are ``(equation, shapes)`` pairs."""

    forward: list = field(default_factory=list)
    backward: list = field(default_factory=list)
    forward_flops: int = 0
    backward_flops: int = 0
    forward_bytes: int = 0
    backward_bytes: int = 0
    notes: list = field(default_factory=list)


def shape_text(*dims):
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def batch_text(layer, n):
    """The batch's input shape, ``(N, H, W, C)``; for a layer of several inputs, each joined by ``, ``."""
    if layer.takes_several_inputs:
        return ", ".join(shape_text(n, *shape) for shape in layer.input_shape)
    return shape_text(n, *layer.input_shape)


def product(dims):
    total = 1
    for d in dims:
        total *= d
    return total


#: ``f'`` as the factor of ``dL/dy``, written with the output ``y`` as the layers compute it.
DERIVATIVES = {"linear": "", "relu": " * [y > 0]", "sigmoid": " * y (1 - y)", "tanh": " * (1 - y^2)",
               "softmax": " through softmax (p - t when fused with the loss)"}


def applied(activation, argument):
    return argument if activation == "linear" else f"{activation}({argument})"


def activation_lines(activation, out_shape):
    """The ``y = f(z + b)`` and ``G = dL/dy * f'`` equations of Dense and Conv2D."""
    return [(f"y = {applied(activation, 'z + b')}", shape_text(*out_shape)),
            (f"G = dL/dy{DERIVATIVES[activation]}", shape_text(*out_shape))]


def gemm_layer_costs(e, rows, k, f, itemsize, activation, x_bytes, unfolds):
    """FLOPs and bytes of ``y = f(A @ W + b)`` and its backward, with ``A`` ``(rows, k)`` the input
    itself (Dense) or its im2col (Conv2D: ``unfolds``, which writes and reads ``A`` once more each way).
    """
    gemm = 2 * rows * k * f
    out_bytes, weight_bytes, bias_bytes = rows * f * itemsize, k * f * itemsize, f * itemsize
    a_bytes = rows * k * itemsize if unfolds else x_bytes
    activation_pass = 0 if activation == "linear" else 1
    e.forward_flops = gemm + rows * f * (1 + activation_pass)
    e.forward_bytes = (x_bytes + a_bytes if unfolds else 0) + a_bytes + weight_bytes + out_bytes \
        + out_bytes + bias_bytes + out_bytes                                   # im2col, GEMM, f(z + b)
    e.backward_flops = rows * f * activation_pass + rows * f + gemm \
        + gemm + (rows * k if unfolds else 0)                                  # G, dL/db, dL/dW, dL/dx
    e.backward_bytes = 3 * out_bytes * activation_pass + out_bytes + bias_bytes + a_bytes + out_bytes \
        + weight_bytes + out_bytes + weight_bytes + a_bytes + (a_bytes + x_bytes if unfolds else 0)


def explain_conv(layer, n):
    (kh, kw), (_, _, c_in), f = layer.kernel_size, layer.input_shape, layer.filters
    oh, ow, _ = layer.output_shape
    rows, k = n * oh * ow, kh * kw * c_in
    rows_text = f"{n}*{oh}*{ow}={rows}"
    y_line, g_line = activation_lines(layer.activation, (n, oh, ow, f))
    e = Explanation()
    e.forward = [("cols = im2col(x)", f"({rows_text}, {kh}*{kw}*{c_in}={k})"),
                 ("z = cols @ W2d", f"({rows}, {k}) @ ({k}, {f}) -> ({rows}, {f})"), y_line]
    e.backward = [g_line, ("dL/db = sum of G's rows", shape_text(f)),
                  ("dL/dW2d = cols^T G", f"({k}, {rows}) @ ({rows}, {f}) -> ({k}, {f})")]
    x_bytes = n * product(layer.input_shape) * layer.dtype.itemsize
    gemm_layer_costs(e, rows, k, f, layer.dtype.itemsize, layer.activation, x_bytes, True)
    e.backward.append(("dL/dx = col2im(G W2d^T)", f"({rows}, {f}) @ ({f}, {k}) -> {shape_text(n, *layer.input_shape)}"))
    return e


def explain_dense(layer, n):
    (d_in,), u = layer.input_shape, layer.units
    y_line, g_line = activation_lines(layer.activation, (n, u))
    e = Explanation()
    e.forward = [("z = x @ W", f"({n}, {d_in}) @ ({d_in}, {u}) -> ({n}, {u})"), y_line]
    e.backward = [g_line, ("dL/db = sum_n G[n]", shape_text(u)),
                  ("dL/dW = x^T G", f"({d_in}, {n}) @ ({n}, {u}) -> ({d_in}, {u})")]
    x_bytes = n * d_in * layer.dtype.itemsize
    gemm_layer_costs(e, n, d_in, u, layer.dtype.itemsize, layer.activation, x_bytes, False)
    e.backward.append(("dL/dx = G W^T", f"({n}, {u}) @ ({u}, {d_in}) -> ({n}, {d_in})"))
    return e


def explain_pooling(layer, n):
    (ph, pw), (sh, sw) = layer.pool_size, layer.strides
    in_shape, out_shape = (n, *layer.input_shape), (n, *layer.output_shape)
    outputs, itemsize = product(out_shape), layer.dtype.itemsize
    in_bytes, out_bytes = product(in_shape) * itemsize, outputs * itemsize
    window = f"{ph}x{pw} window, stride {sh}x{sw}"
    e = Explanation()
    if isinstance(layer, MaxPooling2D):
        e.forward = [(f"y = max over each {window}", f"{shape_text(*in_shape)} -> {shape_text(*out_shape)}"),
                     ("argmax = where each maximum is", f"{shape_text(*out_shape)} int32")]
        e.backward = [("dL/dx[argmax] += dL/dy, else 0", f"{shape_text(*out_shape)} -> {shape_text(*in_shape)}")]
        e.forward_flops, e.backward_flops = outputs * (ph * pw - 1), outputs
        e.forward_bytes = in_bytes + out_bytes + outputs * 4
        e.backward_bytes = out_bytes + outputs * 4 + in_bytes
    else:
        e.forward = [(f"y = mean over each {window}", f"{shape_text(*in_shape)} -> {shape_text(*out_shape)}")]
        e.backward = [("dL/dx += dL/dy / count, per window", f"{shape_text(*out_shape)} -> {shape_text(*in_shape)}")]
        e.forward_flops, e.backward_flops = outputs * ph * pw, outputs * ph * pw
        e.forward_bytes = e.backward_bytes = in_bytes + out_bytes
    return e


def explain_elementwise(layer, n):
    """Activation layers, LeakyReLU and Dropout: one pass over the values."""
    shape = shape_text(n, *layer.input_shape)
    size, itemsize = n * product(layer.input_shape), layer.dtype.itemsize
    if isinstance(layer, Dropout):
        forward = f"y = x * mask, mask = 1/(1-{layer.rate:g}) or 0 (training)"
        backward = "dL/dx = dL/dy * mask"
    elif isinstance(layer, LeakyReLU):
        forward = f"y = x if x > 0 else {layer.negative_slope:g} x"
        backward = f"dL/dx = dL/dy * (1 or {layer.negative_slope:g})"
    else:
        forward = f"y = {applied(layer.activation, 'x')}"
        backward = f"dL/dx = dL/dy{DERIVATIVES[layer.activation]}"
    e = Explanation(forward=[(forward, shape)], backward=[(backward, shape)])
    e.forward_flops = e.backward_flops = size
    e.forward_bytes = e.backward_bytes = 3 * size * itemsize
    return e


def explain_reshape(layer, n):
    """Flatten and Reshape: a view of the same values."""
    return Explanation(forward=[("y = x.reshape(N, *shape)", f"{batch_text(layer, n)} -> "
                                                             f"{shape_text(n, *layer.output_shape)}")],
                       backward=[("dL/dx = dL/dy.reshape(x.shape)", batch_text(layer, n))],
                       notes=["a reshape: no arithmetic, no copy"])


def explain_batch_norm(layer, n):
    """Per channel over ``M = N * (the other axes)`` values; the statistics are the batch's in training."""
    in_shape = (n, *layer.input_shape)
    channels, size, itemsize = in_shape[-1], product(in_shape), layer.dtype.itemsize
    values = f"over the {size // channels} values of each channel"
    e = Explanation()
    e.forward = [(f"mu, var = mean, variance {values}", f"({channels},), ({channels},)"),
                 ("x^ = (x - mu) / sqrt(var + eps)", shape_text(*in_shape)),
                 ("y = gamma x^ + beta", shape_text(*in_shape))]
    e.backward = [("dL/dbeta = sum g, dL/dgamma = sum g x^", f"({channels},), ({channels},)"),
                  ("dL/dx = gamma / sqrt(var + eps) (g - mean(g) - x^ mean(g x^))", shape_text(*in_shape))]
    e.forward_flops, e.backward_flops = 8 * size, 9 * size
    e.forward_bytes, e.backward_bytes = 3 * size * itemsize, 5 * size * itemsize
    e.notes.append("outside training mu and var are the moving averages, constants: dL/dx = gamma g / "
                   "sqrt(var + eps)")
    return e


def explain_merge(layer, n):
    """Add and Concatenate over several inputs."""
    out_shape = (n, *layer.output_shape)
    size, itemsize, count = product(out_shape), layer.dtype.itemsize, len(layer.input_shape)
    if isinstance(layer, Add):
        e = Explanation(forward=[("y = " + " + ".join(f"x{i}" for i in range(count)), shape_text(*out_shape))],
                        backward=[("dL/dx_i = dL/dy, for every input", shape_text(*out_shape))])
        e.forward_flops, e.forward_bytes = (count - 1) * size, (count + 1) * size * itemsize
        e.notes.append("backward hands the same array to every input: no arithmetic, no copy")
        return e
    inputs = ", ".join(f"x{i}" for i in range(count))
    e = Explanation(forward=[(f"y = concatenate({inputs}; axis {layer.axis})", shape_text(*out_shape))],
                    backward=[("dL/dx_i = dL/dy's slice of x_i", batch_text(layer, n))])
    e.forward_bytes = e.backward_bytes = 2 * size * itemsize
    return e


def explain_global_pooling(layer, n):
    height, width, channels = layer.input_shape
    in_shape, out_shape = (n, *layer.input_shape), (n, *layer.output_shape)
    size, itemsize = product(in_shape), layer.dtype.itemsize
    if isinstance(layer, GlobalMaxPooling2D):
        e = Explanation(forward=[(f"y = max over the {height}x{width} pixels", f"{shape_text(*in_shape)} -> "
                                                                               f"{shape_text(*out_shape)}")],
                        backward=[("dL/dx[argmax] = dL/dy, else 0", shape_text(*in_shape))])
        e.forward_flops, e.backward_flops = size, n * channels
    else:
        e = Explanation(forward=[(f"y = mean over the {height}x{width} pixels", f"{shape_text(*in_shape)} -> "
                                                                                f"{shape_text(*out_shape)}")],
                        backward=[(f"dL/dx = dL/dy / {height * width}, at every pixel", shape_text(*in_shape))])
        e.forward_flops, e.backward_flops = size, size
    e.forward_bytes = e.backward_bytes = (size + n * channels) * itemsize
    return e


def explain_zero_padding(layer, n):
    (top, bottom), (left, right) = layer.padding
    in_shape, out_shape = (n, *layer.input_shape), (n, *layer.output_shape)
    itemsize = layer.dtype.itemsize
    e = Explanation(forward=[(f"y = x with zeros: {top} top, {bottom} bottom, {left} left, {right} right",
                              f"{shape_text(*in_shape)} -> {shape_text(*out_shape)}")],
                    backward=[("dL/dx = dL/dy cropped to x", shape_text(*in_shape))])
    e.forward_bytes = e.backward_bytes = (product(in_shape) + product(out_shape)) * itemsize
    return e


def explain_rescaling(layer, n):
    shape, size = batch_text(layer, n), n * product(layer.input_shape)
    e = Explanation(forward=[(f"y = {layer.scale:g} x + {layer.offset:g}", shape)],
                    backward=[(f"dL/dx = {layer.scale:g} dL/dy", shape)])
    e.forward_flops, e.backward_flops = 2 * size, size
    e.forward_bytes = e.backward_bytes = 2 * size * layer.dtype.itemsize
    return e


def explain_other(layer, n):
    """A layer this module has no equations for: its shapes, and where to read its math."""
    module = type(layer).__module__
    return Explanation(forward=[("y = forward(x)", f"{batch_text(layer, n)} -> "
                                                   f"{shape_text(n, *layer.output_shape)}")],
                       backward=[("dL/dx = backward(dL/dy)", batch_text(layer, n))],
                       notes=[f"FLOPs and bytes not counted; the formulas are in {module}"])


EXPLAINERS = ((Conv2D, explain_conv), (Dense, explain_dense), (MaxPooling2D, explain_pooling),
              (AveragePooling2D, explain_pooling), (Flatten, explain_reshape), (Reshape, explain_reshape),
              (Dropout, explain_elementwise), (LeakyReLU, explain_elementwise),
              (Activation, explain_elementwise), (BatchNormalization, explain_batch_norm),
              (Add, explain_merge), (Concatenate, explain_merge), (GlobalAveragePooling2D, explain_global_pooling),
              (GlobalMaxPooling2D, explain_global_pooling), (ZeroPadding2D, explain_zero_padding),
              (Rescaling, explain_rescaling))


def explain_layer(layer, batch_size):
    for layer_type, explainer in EXPLAINERS:
        if isinstance(layer, layer_type):
            return explainer(layer, batch_size)
    return explain_other(layer, batch_size)


def amount(value, unit):
    """``13.3 MFLOP``, ``2.1 kB``: three significant figures with a decimal prefix."""
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value} {unit}"


def wrapped(text, indent, hanging):
    return textwrap.wrap(text, width=WIDTH, initial_indent=indent, subsequent_indent=hanging)


def equation_lines(label, equations):
    lines = []
    for index, (equation, shapes) in enumerate(equations):
        head = f"  {label if index == 0 else '':<10}{equation}"
        if len(head) >= EQUATION_COLUMN:
            lines.append(head)
            head = ""
        lines += wrapped(shapes, head.ljust(EQUATION_COLUMN), " " * (EQUATION_COLUMN + 2))
    return lines


def method_detail(step, batch_size):
    """The method ``conv_algorithm`` chose for ``step``; for Winograd and image by image, the live
    shapes of its GEMMs."""
    if step.linear.method.name.startswith("winograd"):
        return winograd_detail(step, batch_size)
    if step.linear.method.name == "im2col_by_image":
        return by_image_detail(step, batch_size)
    return f"method: {step.linear.method.name}"


def by_image_detail(step, batch_size):
    """The live shapes of an image-by-image step's GEMMs: one per image, on a scratch of its thread."""
    conv = step.conv
    out_h, out_w = step.linear.output_hw()
    depth = conv.kernel_size[0] * conv.kernel_size[1] * conv.input_shape[2]
    return (f"method: im2col image by image, {batch_size} GEMMs cols[n] ({out_h * out_w}, {depth}) @ "
            f"({depth}, {conv.filters}), each image's cols unfolded into its thread's scratch and kept "
            f"for no backward (the kernel gradient unfolds again)")


def winograd_detail(step, batch_size):
    """The live shapes of a Winograd step's GEMMs (one per tile position) and its FLOPs beside im2col's."""
    conv, method = step.conv, step.linear.method
    out_h, out_w = step.linear.output_hw()
    tiles, positions, m = batch_size * method.tiles((out_h, out_w)), (method.tile + 2) ** 2, method.tile
    c_in, f = conv.input_shape[2], conv.filters
    winograd_flops = 2 * positions * tiles * c_in * f
    im2col_flops = 2 * batch_size * out_h * out_w * 9 * c_in * f
    flops = (f"forward {amount(winograd_flops, 'FLOP')} against im2col's {amount(im2col_flops, 'FLOP')} "
             f"on the {out_h}x{out_w} outputs computed")
    if isinstance(method, WinogradByImage):
        per_image = tiles // batch_size
        return (f"method: Winograd F({m}x{m}, 3x3) image by image, {positions} GEMMs per image V[n] "
                f"({positions}, {per_image}, {c_in}) @ U ({positions}, {c_in}, {f}), each image's tiles made in "
                f"its thread's scratch and kept for no backward (the kernel gradient makes them again): {flops}")
    return (f"method: Winograd F({m}x{m}, 3x3), {positions} GEMMs V ({positions}, {tiles}, {c_in}) @ "
            f"U ({positions}, {c_in}, {f}): {flops}")


def pass_lines(layer, plan, batch_size):
    step = plan.step_of(layer)
    if not step.passes:
        return ["  planner   none: the layer's own forward and backward run"]
    if layer is not step.layers[0]:
        return wrapped(f"computed in one step with {step.layers[0].name} ({', '.join(step.passes)}); "
                       f"see there", "  planner   ", " " * 12)
    partners = [other.name for other in step.layers[1:]]
    together = f" (one step with {', '.join(partners)})" if partners else ""
    lines = wrapped(f"{', '.join(step.passes)}{together}", "  planner   ", " " * 12)
    for name in step.passes:
        effect = PASS_EFFECTS.get(name) or (PASSES[name].__doc__ or name).split(".")[0]
        lines += wrapped(f"{name}: {effect}", " " * 12 + "- ", " " * 14)
        if name == "conv_algorithm":
            lines += wrapped(method_detail(step, batch_size), " " * 14, " " * 14)
        if name == "inference_conv_algorithm" and step.linear.inference_method is not None:
            lines += wrapped(f"method outside training: {step.linear.inference_method.name}", " " * 14, " " * 14)
    return lines


def input_grad_note(step, plan):
    """What the plan does with ``dL/dx`` where nobody before the layer reads it; ``None`` elsewhere."""
    if step.input_grad_needed:
        return None
    if step.output not in plan.nodes_with_grads:
        return "no backward runs: the layer holds no parameters, and nothing before it needs a gradient"
    if step.computes_input_grad:
        return "dL/dx is computed by the layer's backward and dropped: nothing before this layer reads it"
    return "dL/dx is not computed: nothing before this layer needs it"


def layer_section(layer, plan, batch_size):
    e = explain_layer(layer, batch_size)
    step = plan.step_of(layer)
    note = input_grad_note(step, plan)
    if note and layer is step.layers[0]:
        e.notes.append(note)
    params = ", ".join(f"{key} {shape_text(*value.shape)}" for key, value in layer.params.items())
    header = f"{layer.name} ({type(layer).__name__})  {batch_text(layer, batch_size)} -> " \
             f"{shape_text(batch_size, *layer.output_shape)}"
    lines = wrapped(header + (f"  params: {params}" if params else ""), "", "    ")
    lines += equation_lines("forward", e.forward) + equation_lines("backward", e.backward)
    for note in e.notes:
        lines += wrapped(note, " " * 12, " " * 12)
    if e.forward_flops or e.forward_bytes:
        lines += wrapped(f"forward {amount(e.forward_flops, 'FLOP')}, {amount(e.forward_bytes, 'B')} moved; "
                         f"backward {amount(e.backward_flops, 'FLOP')}, {amount(e.backward_bytes, 'B')} moved",
                         "  cost      ", " " * 12)
        lines += wrapped("(by the layer's own formulas; the planner's steps below may do less)",
                         " " * 12, " " * 12) if plan.step_of(layer).passes else []
    return lines + pass_lines(layer, plan, batch_size)


def explain_model(model, batch_size=32, layer=None):
    """The text of ``minidl explain``: every layer of the built ``model`` (or only the one named
    ``layer``) at ``batch_size``, in lines of at most 100 characters.

    Raises ``ValueError`` for a model that is not built, a batch size below 1 or an unknown layer name.
    """
    if not model.built:
        raise ValueError(f"{model.name}: the model is not built yet; give it an Input or call build()")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"explain: batch_size must be a positive int, got {batch_size!r}")
    names = [each.name for each in model.layers]
    if layer is not None and layer not in names:
        raise ValueError(f"{model.name} has no layer named {layer!r}; its layers: {', '.join(names)}")
    plan = model.plan
    chosen = [each for each in model.layers if layer is None or each.name == layer]
    lines = wrapped(f'Model "{model.name}", batch {batch_size}, {model.dtype.name}; one training step '
                    f"(optimize={model.optimize!r}). Shapes: x input, z = linear part, y output, "
                    f"G = dL/dz, W2d = the kernel as a matrix.", "", "")
    total_forward = total_backward = 0
    for each in chosen:
        e = explain_layer(each, batch_size)
        total_forward, total_backward = total_forward + e.forward_flops, total_backward + e.backward_flops
        lines += ["", *layer_section(each, plan, batch_size)]
    if layer is None:
        lines += ["", f"total: forward {amount(total_forward, 'FLOP')}, backward {amount(total_backward, 'FLOP')} "
                      f"per step of {batch_size}"]
    return "\n".join(lines)
