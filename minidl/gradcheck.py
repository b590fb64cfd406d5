"""Numerical gradient checks: every hand-written backward against central differences, in float64.

For a scalar objective ``L`` and one element ``w_i`` of a parameter or input::

    dL/dw_i ~ (L(w_i + eps) - L(w_i - eps)) / (2 eps)

and the check reports, per tensor, the relative error ``||g_analytic - g_numeric|| /
(||g_analytic|| + ||g_numeric||)`` (0 when both are 0).  Well-implemented layers give about 1e-9 in
float64; anything above 1e-6 is a bug.  A layer is checked with ``L = sum(y * R)`` for a fixed
random ``R``, so ``dL/dy = R``.
"""

from dataclasses import dataclass, field

import numpy as np

from minidl.backend import ops


@dataclass
class GradcheckReport:
    """Relative error per checked tensor: ``errors["kernel"]``, ``errors["input"]``, ..."""

    subject: str
    errors: dict = field(default_factory=dict)
    checked: dict = field(default_factory=dict)

    @property
    def max_error(self):
        return max(self.errors.values(), default=0.0)

    def passed(self, tolerance=1e-6):
        return self.max_error < tolerance

    def __str__(self):
        width = max((len(name) for name in self.errors), default=5) + 2
        lines = [f"gradient check of {self.subject}", f"{'tensor'.ljust(width)}elements  rel. error"]
        lines += [f"{name.ljust(width)}{self.checked[name]:>8}  {error:.2e}" for name, error in self.errors.items()]
        lines.append(f"max relative error {self.max_error:.2e}: {'PASS' if self.passed() else 'FAIL'}")
        return "\n".join(lines)


def relative_error(analytic, numeric):
    scale = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return 0.0 if scale == 0 else float(np.linalg.norm(analytic - numeric) / scale)


def numerical_gradient(objective, values, indices, eps):
    """Central differences of ``objective()`` w.r.t. ``values.flat[i]`` for each ``i`` in ``indices``;
    ``values`` (a float64 host array read by ``objective``) is restored afterwards."""
    flat = values.reshape(-1)
    grads = np.zeros(len(indices))
    for position, index in enumerate(indices):
        original = flat[index]
        flat[index] = original + eps
        loss_plus = objective()
        flat[index] = original - eps
        loss_minus = objective()
        flat[index] = original
        grads[position] = (loss_plus - loss_minus) / (2 * eps)
    return grads


def sample_indices(size, max_checks, rng):
    """All indices, or ``max_checks`` of them drawn at random for large tensors."""
    if max_checks is None or size <= max_checks:
        return np.arange(size)
    return np.sort(rng.choice(size, max_checks, replace=False))


def _check_params(report, layers_by_name, objective, analytic_grads, eps, max_checks, rng):
    """Compare ``analytic_grads[(name, key)]`` with central differences for each parameter."""
    for (name, key), analytic in analytic_grads.items():
        layer = layers_by_name[name]
        host_values = np.array(ops.to_host(layer.params[key]), dtype=np.float64)

        def objective_with_param():
            layer.params[key] = ops.to_device(host_values)
            return objective()

        indices = sample_indices(host_values.size, max_checks, rng)
        numeric = numerical_gradient(objective_with_param, host_values, indices, eps)
        layer.params[key] = ops.to_device(host_values)
        label = key if len(layers_by_name) == 1 else f"{name}.{key}"
        report.errors[label] = relative_error(np.ravel(analytic)[indices], numeric)
        report.checked[label] = len(indices)


def check_layer(layer, input_shape, seed=0, eps=1e-6, max_checks=None, training=False):
    """Check ``layer``'s backward for inputs of batch shape ``input_shape`` (e.g. ``(2, 7, 7, 3)``;
    for a layer that takes several inputs, a list of them, e.g. ``[(2, 4, 4, 3), (2, 4, 4, 5)]``).

    The layer is built (or cast) in float64.  Returns a :class:`GradcheckReport` with the error of
    every parameter's gradient and of the input gradient (``input_0``, ``input_1``, ... for several).
    """
    rng = np.random.default_rng(seed)
    several = layer.takes_several_inputs
    batch_shapes = [tuple(shape) for shape in input_shape] if several else [tuple(input_shape)]
    if layer.built:
        layer.cast(np.float64)
    else:
        layer.dtype = np.dtype(np.float64)
        sample_shapes = [shape[1:] for shape in batch_shapes]
        layer.build(sample_shapes if several else sample_shapes[0])
    xs = [rng.standard_normal(shape) for shape in batch_shapes]
    projection = rng.standard_normal((batch_shapes[0][0], *layer.output_shape))

    def objective():
        device_xs = [ops.to_device(x) for x in xs]
        y = ops.to_host(layer.forward(device_xs if several else device_xs[0], training))
        return float((y * projection).sum())

    objective()
    grad_inputs = layer.backward(ops.to_device(projection))
    grad_inputs = [ops.to_host(grad) for grad in (grad_inputs if several else [grad_inputs])]
    analytic = {(layer.name, key): ops.to_host(grad).copy() for key, grad in layer.grads.items()}
    shapes_text = ", ".join(map(str, batch_shapes))
    report = GradcheckReport(f"{layer.name} ({type(layer).__name__}) on input {shapes_text}")
    _check_params(report, {layer.name: layer}, objective, analytic, eps, max_checks, rng)
    for index, (x, grad_input) in enumerate(zip(xs, grad_inputs)):
        label = f"input_{index}" if several else "input"
        indices = sample_indices(x.size, max_checks, rng)
        report.errors[label] = relative_error(grad_input.ravel()[indices],
                                              numerical_gradient(objective, x, indices, eps))
        report.checked[label] = len(indices)
    return report


def check_loss(loss, y_pred, y_true, eps=1e-6, from_logits=False):
    """Check a loss's gradient w.r.t. the predictions ``y_pred`` ``(N, K)`` (or, with
    ``from_logits=True``, its fused softmax path w.r.t. the logits)."""
    y_pred = np.array(y_pred, dtype=np.float64)
    targets = ops.to_device(loss.encode_targets(y_true, y_pred.shape[1:], np.float64))
    value_and_grad = loss.value_and_grad_from_logits if from_logits else loss.value_and_grad

    def objective():
        return value_and_grad(ops.to_device(y_pred), targets)[0]

    analytic = ops.to_host(value_and_grad(ops.to_device(y_pred), targets)[1])
    indices = np.arange(y_pred.size)
    report = GradcheckReport(f"{type(loss).__name__}{' (fused softmax)' if from_logits else ''}")
    report.errors["y_pred"] = relative_error(analytic.ravel(),
                                             numerical_gradient(objective, y_pred, indices, eps))
    report.checked["y_pred"] = y_pred.size
    return report


def check_model(model, x, y, eps=1e-6, max_checks=30, seed=0, check_input=True):
    """Check a compiled model end to end (loss, weight penalties, every layer) on one batch.

    The model runs in float64 for the check and gets its weights and dtype back afterwards; at most
    ``max_checks`` random elements of each tensor are perturbed.  ``check_input=False`` leaves out the
    input's gradient, which training never computes, so the model runs its training-time plan (where a
    grayscale first conv may pool in the same kernel: the ``direct_conv_pool`` pass).
    """
    rng = np.random.default_rng(seed)
    original_dtype, original_weights = model.dtype, model.get_weights()
    x, targets = model.check_data(x, y)
    model.cast(np.float64)
    x = np.asarray(x, dtype=np.float64)
    targets = ops.to_device(targets.astype(np.float64))
    input_grad_needed, model.input_grad_needed = model.input_grad_needed, check_input
    try:
        def objective():
            y_pred = model.forward(ops.to_device(x), training=False)
            return model.loss_and_grad(y_pred, targets)[0] + model.regularization_penalty()

        y_pred = model.forward(ops.to_device(x), training=False)
        grad = model.loss_and_grad(y_pred, targets)[1]
        grad_input = model.backward(grad)
        analytic = {}
        for layer in model.layers:
            for key, param in layer.params.items():
                if key in layer.regularizers:
                    layer.regularizers[key].add_gradient(layer.grads[key], param)
                analytic[(layer.name, key)] = ops.to_host(layer.grads[key]).copy()
        report = GradcheckReport(f"model {model.name!r} on a batch of {len(x)}")
        _check_params(report, {layer.name: layer for layer in model.layers}, objective, analytic, eps,
                      max_checks, rng)
        if check_input:
            indices = sample_indices(x.size, max_checks, rng)
            report.errors["input"] = relative_error(ops.to_host(grad_input).ravel()[indices],
                                                    numerical_gradient(objective, x, indices, eps))
            report.checked["input"] = len(indices)
    finally:
        model.input_grad_needed = input_grad_needed
        model.cast(original_dtype)
        model.set_weights(original_weights)
    return report
