"""``minidl grade FILE.py``: the autograder of the exercises in :mod:`minidl.teaching.scaffold`.

For each class of the scaffold that the student's file defines, in float64:

1. **shapes**: ``forward`` and ``backward`` return arrays of the documented shapes;
2. **forward values** against minidl's own layers (or its NumPy kernels);
3. **gradient check** of every gradient the class computes against central differences of the
   student's own ``forward`` (:func:`minidl.gradcheck.numerical_gradient`);
4. one test per layer where a gradient check cannot look: max pooling with tied maxima, softmax +
   cross-entropy on logits near 1000.

A wrong gradient is named with a hint when it is a typical mistake: off by the batch size, by 2,
by its sign, or the transpose of the right one.  Importing the file runs the student's code: grade
only files you trust.
"""

import importlib.util
import os
import traceback
from dataclasses import dataclass

import numpy as np

from minidl import gradcheck
from minidl.kernels import numpy_ref

TOLERANCE = 1e-6
EXERCISES = ("Dense", "Conv2D", "MaxPooling2D", "ReLU", "SoftmaxCrossEntropy")


@dataclass
class Finding:
    """What the grader found about one part (``"dW"``, ``"forward shape"``, ...) of one exercise."""

    exercise: str
    part: str
    passed: bool
    message: str

    def __str__(self):
        return f"  {'ok   ' if self.passed else 'WRONG'} {self.part}: {self.message}"


class NotWritten(Exception):
    """The student has not written this method yet (it raises NotImplementedError)."""


def load_student_module(path):
    """Import the student's file as a module; raises ``ValueError`` naming the file if it cannot."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location("student_layers", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise ValueError(f"{path} does not import: {type(error).__name__}: {error}") from None
    return module


def call(method, *args):
    """``method(*args)``; a ``NotImplementedError`` becomes :class:`NotWritten`."""
    try:
        return method(*args)
    except NotImplementedError:
        raise NotWritten(method.__qualname__) from None


def typical_mistake(analytic, numeric, batch_size):
    """Words for a wrong gradient that is a known multiple of the right one, or ``None``."""
    multiples = {batch_size: f"{batch_size} times too large (the batch size N): is a sum a mean?",
                 1 / batch_size: f"{batch_size} times too small (the batch size N): a mean where a sum "
                                 f"belongs, or a division by N too many",
                 2.0: "twice too large", 0.5: "half the right value: a factor 2 is missing",
                 -1.0: "the right size with the wrong sign"}
    for factor, words in multiples.items():
        if gradcheck.relative_error(analytic, factor * numeric) < TOLERANCE:
            return words
    return None


def gradient_finding(exercise, name, analytic, numeric, batch_size, hint):
    """Compare the student's ``analytic`` gradient ``name`` with the ``numeric`` one (same shape)."""
    expected = numeric.shape
    if analytic is None:
        return Finding(exercise, name, False, f"not set by backward; {hint}")
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != expected:
        transposed = analytic.ndim == 2 and analytic.shape == expected[::-1]
        words = "the transpose of the right one" if transposed else f"expected {expected}"
        return Finding(exercise, name, False, f"has shape {analytic.shape}, {words}; {hint}")
    error = gradcheck.relative_error(analytic, numeric)
    if not np.isfinite(analytic).all():
        return Finding(exercise, name, False, "holds NaN or inf")
    if error < TOLERANCE:
        return Finding(exercise, name, True, f"matches central differences (relative error {error:.1e})")
    mistake = typical_mistake(analytic, numeric, batch_size)
    words = mistake or f"differs from central differences of your forward (relative error {error:.1e})"
    return Finding(exercise, name, False, f"{words}; {hint}")


def numerical(objective, values):
    """Central differences of ``objective()`` w.r.t. every element of ``values`` (changed in place)."""
    return gradcheck.numerical_gradient(objective, values, np.arange(values.size), 1e-6).reshape(values.shape)


def shape_finding(exercise, what, got, expected):
    got_shape = np.shape(got)
    if got_shape == expected:
        return Finding(exercise, what, True, f"shape {expected}")
    return Finding(exercise, what, False, f"has shape {got_shape}, expected {expected}")


def value_finding(exercise, got, expected, formula):
    if np.shape(got) != np.shape(expected):
        return Finding(exercise, "forward", False, f"returns shape {np.shape(got)}, expected {np.shape(expected)}; "
                                                   f"{formula}")
    error = gradcheck.relative_error(np.asarray(got, dtype=np.float64), expected)
    if error < TOLERANCE:
        return Finding(exercise, "forward", True, f"equals minidl's (relative error {error:.1e})")
    return Finding(exercise, "forward", False, f"differs from minidl's (relative error {error:.1e}); {formula}")


# ----------------------------------------------------------------------------------- the layers


def grade_layer(exercise, make_layer, x, params, reference_forward, hints, formula):
    """Shapes, forward values and the gradient check of a layer ``make_layer(*params)`` on ``x``.

    ``params`` maps names (``"W"``, ``"b"``) to arrays; the gradient of ``W`` is read from
    ``layer.dW``.  ``hints[name]`` says how that gradient is computed.
    """
    rng = np.random.default_rng(0)
    expected_y = reference_forward(x, *params.values())
    projection = rng.standard_normal(expected_y.shape)
    layer = make_layer(*[value.copy() for value in params.values()])
    y = call(layer.forward, x.copy())
    findings = [shape_finding(exercise, "forward shape", y, expected_y.shape)]
    if not findings[-1].passed:
        return findings
    findings.append(value_finding(exercise, y, expected_y, formula))
    if not findings[-1].passed:
        return findings
    grad_x = call(layer.backward, projection.copy())

    def objective():
        return float((np.asarray(make_layer(*params.values()).forward(x)) * projection).sum())

    findings.append(gradient_finding(exercise, "dx", grad_x, numerical(objective, x), len(x), hints["dx"]))
    for name, values in params.items():
        analytic = getattr(layer, "d" + name, None)
        findings.append(gradient_finding(exercise, "d" + name, analytic, numerical(objective, values),
                                         len(x), hints["d" + name]))
    return findings


def reference_conv(x, kernel, bias):
    cols = numpy_ref.im2col(x, kernel.shape[:2], (1, 1), ((0, 0), (0, 0)))
    n, h, w, _ = x.shape
    out = cols @ kernel.reshape(-1, kernel.shape[-1]) + bias
    return out.reshape(n, h - kernel.shape[0] + 1, w - kernel.shape[1] + 1, -1)


def reference_maxpool(x):
    return numpy_ref.maxpool_values(x, (2, 2), (2, 2), ((0, 0), (0, 0)))


def grade_dense(cls):
    rng = np.random.default_rng(1)
    x, params = rng.standard_normal((4, 5)), {"W": rng.standard_normal((5, 3)), "b": rng.standard_normal(3)}
    hints = {"dx": "dL/dx = G W^T", "dW": "dL/dW = x^T G, shape (D, U)",
             "db": "dL/db = the sum of G over the batch axis, shape (U,)"}
    return grade_layer("Dense", cls, x, params, lambda x, W, b: x @ W + b, hints, "y = x W + b")


def grade_conv(cls):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 5, 2))
    params = {"W": rng.standard_normal((3, 3, 2, 3)), "b": rng.standard_normal(3)}
    hints = {"dx": "each output's gradient flows back to every input pixel of its window, times W, "
                   "and overlapping windows add up (col2im)",
             "dW": "dL/dW[p, q, c, f] = sum over n, i, j of x[n, i+p, j+q, c] G[n, i, j, f]",
             "db": "dL/db[f] = sum of G[..., f] over n, i, j"}
    return grade_layer("Conv2D", cls, x, params, reference_conv, hints,
                       "y[n, i, j, f] = b[f] + sum_{p, q, c} x[n, i+p, j+q, c] W[p, q, c, f]")


def grade_relu(cls):
    x = np.random.default_rng(3).standard_normal((3, 4, 5))
    hints = {"dx": "dL/dx = dL/dy where x > 0, else 0"}
    return grade_layer("ReLU", lambda: cls(), x, {}, lambda x: np.maximum(x, 0), hints, "y = max(0, x)")


def tied_windows_finding(cls):
    """A window holding its maximum four times must pass its gradient to one element only: the sum
    of ``dL/dx`` over each window equals that window's ``dL/dy``."""
    x = np.zeros((1, 4, 4, 2))
    grad_out = np.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    layer = cls()
    call(layer.forward, x)
    grad_in = np.asarray(call(layer.backward, grad_out.copy()), dtype=np.float64)
    per_window = grad_in.reshape(1, 2, 2, 2, 2, 2).sum(axis=(2, 4))
    if gradcheck.relative_error(per_window, grad_out) < TOLERANCE:
        return Finding("MaxPooling2D", "ties", True, "a tied maximum gets the window's gradient once")
    times = per_window.sum() / grad_out.sum()
    return Finding("MaxPooling2D", "ties", False, f"a window whose maximum appears 4 times passes on {times:g} "
                   f"times its gradient; route it to one element (the first maximum, like argmax)")


def grade_maxpool(cls):
    x = np.random.default_rng(4).standard_normal((2, 4, 4, 3))
    hints = {"dx": "dL/dy goes to the input that was its window's maximum, 0 to the others"}
    findings = grade_layer("MaxPooling2D", lambda: cls(), x, {}, reference_maxpool, hints,
                           "y = the max of each 2x2 window at stride 2")
    if all(finding.passed for finding in findings):
        findings.append(tied_windows_finding(cls))
    return findings


def grade_softmax_ce(cls):
    rng = np.random.default_rng(5)
    logits, targets = rng.standard_normal((4, 5)), np.eye(5)[rng.integers(0, 5, 4)]
    expected = float(numpy_ref.softmax_cross_entropy(logits, targets)[0].mean())
    loss = cls()
    value = call(loss.forward, logits.copy(), targets)
    findings = [value_finding("SoftmaxCrossEntropy", np.float64(value), np.float64(expected),
                              "L = mean over the batch of -sum_k t_k log softmax(z)_k")]
    if not findings[-1].passed:
        return findings
    grad = call(loss.backward)
    numeric = numerical(lambda: float(cls().forward(logits, targets)), logits)
    findings.append(gradient_finding("SoftmaxCrossEntropy", "dz", grad, numeric, len(logits),
                                     "dL/dz = (softmax(z) - t) / N"))
    with np.errstate(all="ignore"):
        large = cls()
        large_value = call(large.forward, logits + 1000, targets)
        large_grad = np.asarray(call(large.backward), dtype=np.float64)
    if np.isfinite(large_value) and np.isfinite(large_grad).all():
        findings.append(Finding("SoftmaxCrossEntropy", "stability", True, "finite for logits near 1000"))
    else:
        findings.append(Finding("SoftmaxCrossEntropy", "stability", False,
                                "NaN or inf for logits near 1000: exp overflows; subtract each row's max "
                                "before exp (softmax(z) = softmax(z - max z))"))
    return findings


GRADERS = {"Dense": grade_dense, "Conv2D": grade_conv, "MaxPooling2D": grade_maxpool, "ReLU": grade_relu,
           "SoftmaxCrossEntropy": grade_softmax_ce}


def grade_exercise(name, cls):
    """The findings for one class, with a not-yet-written method or an exception as one finding."""
    try:
        return GRADERS[name](cls)
    except NotWritten as missing:
        return [Finding(name, str(missing), False, "not written yet (it raises NotImplementedError)")]
    except Exception as error:
        where = traceback.extract_tb(error.__traceback__)[-1]
        return [Finding(name, "error", False, f"{type(error).__name__}: {error} "
                                              f"(line {where.lineno}, in {where.name})")]


def grade_file(path, print_fn=print):
    """Grade every scaffold class that the file at ``path`` defines; returns ``{name: findings}``."""
    module = load_student_module(path)
    present = [name for name in EXERCISES if isinstance(getattr(module, name, None), type)]
    if not present:
        raise ValueError(f"{path} defines none of the exercise classes {', '.join(EXERCISES)}")
    results = {}
    for name in present:
        results[name] = grade_exercise(name, getattr(module, name))
        passed = all(finding.passed for finding in results[name])
        print_fn(f"{name}: {'passed' if passed else 'not yet right'}")
        print_fn("\n".join(str(finding) for finding in results[name]))
    missing = [name for name in EXERCISES if name not in present]
    if missing:
        print_fn(f"not in {os.path.basename(path)}: {', '.join(missing)}")
    return results
