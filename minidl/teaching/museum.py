"""The bug museum: known-wrong variants of minidl's own layers, losses and optimizers, each caught by
a numerical test.

Every exhibit is the real class with one thing changed (a subclass overriding the step that holds the
bug, the wrong line marked ``# the bug``).  Each exhibit runs the same test on the real class, which
must pass, and on the wrong one, which must fail:

* a **gradient check** (:mod:`minidl.gradcheck`, float64 central differences) where the bug makes
  backward disagree with forward;
* a **directional derivative** along a direction that keeps max pooling's ties, where a plain
  gradient check cannot look (at a tie the function has no derivative);
* an **expectation test** for dropout, whose wrong scaling is consistent with its own backward;
* a **constant-gradient test** for optimizers: under a gradient that never changes, SGD's and
  Adam's steps have closed forms.

``run_museum()`` (and ``minidl museum``) runs every exhibit on the NumPy kernels and reports the
relative error of the wrong and of the right variant.
"""

from dataclasses import dataclass

import numpy as np

from minidl import backend, gradcheck, layers, losses, optimizers, regularizers
from minidl.kernels import numpy_ref

GRADCHECK_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------- the wrong variants


class BiasMeanDense(layers.Dense):
    """Dense whose bias gradient is averaged over the batch instead of summed."""

    def linear_backward(self, grad_z):
        grad_in = super().linear_backward(grad_z)
        self.grads["bias"] = grad_z.mean(axis=0)  # the bug: dL/db = sum_n G[n]
        return grad_in


def transposed_im2col(x, kernel_size, strides, pads):
    """im2col whose row holds each patch transposed: column ``(j*KH + i)*C + c`` instead of ``(i*KW + j)*C + c``."""
    cols = numpy_ref.im2col(x, kernel_size, strides, pads)
    patches = cols.reshape(len(cols), *kernel_size, x.shape[3])
    return patches.transpose(0, 2, 1, 3).reshape(len(cols), -1)


class TransposedPatchConv2D(layers.Conv2D):
    """Conv2D unfolding its input with :func:`transposed_im2col`; backward still folds back with the
    real col2im, which is the adjoint of the real im2col only."""

    def product(self, x):
        self.x = x
        self.cols = transposed_im2col(x, self.kernel_size, self.strides, self.pads)  # the bug
        return (self.cols @ self.kernel_matrix()).reshape(x.shape[0], *self.output_shape)


def overwriting_col2im(cols, x_shape, kernel_size, strides, pads):
    """col2im that assigns each window's gradient instead of adding it: where windows overlap, the
    last window wins."""
    n, height, width, c = x_shape
    (kh, kw), (sh, sw), ((top, bottom), (left, right)) = kernel_size, strides, pads
    oh, ow = (height + top + bottom - kh) // sh + 1, (width + left + right - kw) // sw + 1
    cols6 = cols.reshape(n, oh, ow, kh, kw, c)
    x_padded = np.zeros((n, height + top + bottom, width + left + right, c), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x_padded[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] = cols6[:, :, :, i, j, :]  # the bug: +=
    return x_padded[:, top:top + height, left:left + width, :]


class OverwritingCol2imConv2D(layers.Conv2D):
    """Conv2D whose input gradient is folded back by :func:`overwriting_col2im`."""

    def linear_backward(self, grad_z):
        super().linear_backward(grad_z)
        grad_cols = grad_z.reshape(-1, self.filters) @ self.kernel_matrix().T
        return overwriting_col2im(grad_cols, self.x.shape, self.kernel_size, self.strides, self.pads)  # the bug


class EveryTieMaxPooling2D(layers.MaxPooling2D):
    """Max pooling that routes each window's gradient to every element equal to its maximum."""

    def forward(self, x, training=False):
        self.x = x
        return super().forward(x, training)

    def backward(self, grad_out):
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        y = numpy_ref.maxpool_values(self.x, self.pool_size, self.strides, self.pads)
        grad_in = np.zeros_like(self.x)
        for i in range(ph):
            for j in range(pw):
                window_corner = self.x[:, i:i + sh * y.shape[1]:sh, j:j + sw * y.shape[2]:sw]
                grad_in[:, i:i + sh * y.shape[1]:sh, j:j + sw * y.shape[2]:sw] += \
                    np.where(window_corner == y, grad_out, 0)  # the bug: every tie, not the argmax alone
        return grad_in


class UnshiftedSoftmaxCrossentropy(losses.CategoricalCrossentropy):
    """Softmax + cross-entropy computed as written on paper, without subtracting each row's max."""

    def value_and_grad_from_logits(self, logits, targets):
        e = np.exp(logits)  # the bug: np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = e / e.sum(axis=1, keepdims=True)
        losses_per_row = -(targets * np.log(probabilities)).sum(axis=1)
        return float(losses_per_row.mean()), (probabilities - targets) / len(logits)


class UnscaledDropout(layers.Dropout):
    """Dropout whose kept units pass unchanged instead of scaled by ``1 / (1 - rate)``."""

    def forward(self, x, training=False):
        y = super().forward(x, training)
        if self.mask is None:
            return y
        self.mask = self.mask * (1 - self.rate)  # the bug: the mask must be 1 / (1 - rate) where kept
        return x * self.mask


class UncorrectedAdam(optimizers.Adam):
    """Adam without bias correction: its first steps are far too long (or short)."""

    def update(self, param, grad, slot, lr):
        slot["m"] *= self.beta_1
        slot["m"] += (1 - self.beta_1) * grad
        slot["v"] *= self.beta_2
        slot["v"] += (1 - self.beta_2) * grad * grad
        param -= lr * slot["m"] / (np.sqrt(slot["v"]) + self.epsilon)  # the bug: no sqrt(1-b2^t)/(1-b1^t)


class FlippedMomentumSGD(optimizers.SGD):
    """SGD whose velocity decays with the wrong sign: ``v = -momentum v - lr g``."""

    def update(self, param, grad, slot, lr):
        numpy_ref.sgd_update(param, grad, slot["velocity"], lr, -self.momentum, self.nesterov)  # the bug


class HalfGradientL2(regularizers.L2):
    """The L2 penalty ``l2 * sum w^2`` with gradient ``l2 * w``, missing its factor 2."""

    def add_gradient(self, grad, param):
        grad += self.l2 * param  # the bug: 2 * l2 * w


def mean_terms_dropped(bn_class):
    """``bn_class`` whose input gradient lacks the terms from the batch mean and variance:
    ``gamma g / sqrt(var + eps)``, as if ``mu`` and ``var`` were constants."""

    class MeanTermsDroppedBatchNorm(bn_class):
        def forward(self, x, training=False):
            self.x_in = x
            return super().forward(x, training)

        def backward(self, grad_out):
            super().backward(grad_out)
            var = self.x_in.var(axis=tuple(range(self.x_in.ndim - 1)))
            return self.params["gamma"] * grad_out / np.sqrt(var + self.epsilon)  # the bug

    return MeanTermsDroppedBatchNorm


# ----------------------------------------------------------------------------------- the tests


def finite_or_inf(error):
    """An error that overflowed to NaN counts as infinitely wrong."""
    return error if np.isfinite(error) else float("inf")


def layer_gradcheck(input_shape, training=False):
    """A test: the worst relative error of :func:`minidl.gradcheck.check_layer` on ``input_shape``."""
    def test(layer):
        return gradcheck.check_layer(layer, input_shape, seed=1, training=training).max_error
    return test


def tied_max_pool_derivative(pool):
    """Max pooling's derivative along directions that keep every window's ties: each input moved by
    one random amount per window (2x2 windows at stride 2 tile the input).  The inputs take 3 values,
    so most windows hold ties; along these directions the output is differentiable.  The direction and
    the projection are positive, so that extra gradient on a tie cannot cancel out in the sum."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, (2, 4, 4, 3)).astype(np.float64)
    projection = rng.uniform(0.5, 1.5, (2, 2, 2, 3))
    direction = rng.uniform(0.5, 1.5, (2, 2, 2, 3)).repeat(2, axis=1).repeat(2, axis=2)
    pool.dtype = np.dtype(np.float64)
    pool.build(x.shape[1:])

    def objective(t):
        return float((pool.forward(x + t * direction, training=True) * projection).sum())

    eps = 1e-6
    numeric = (objective(eps) - objective(-eps)) / (2 * eps)
    objective(0.0)
    analytic = float((pool.backward(projection) * direction).sum())
    return gradcheck.relative_error(np.array([analytic]), np.array([numeric]))


def softmax_ce_gradcheck(loss):
    """The fused loss's gradient check on logits near 800, where ``exp`` overflows float64."""
    rng = np.random.default_rng(3)
    logits = 800 + rng.standard_normal((4, 5))
    targets = np.eye(5)[rng.integers(0, 5, 4)]
    with np.errstate(over="ignore", invalid="ignore"):
        return finite_or_inf(gradcheck.check_loss(loss, logits, targets, from_logits=True).max_error)


def dropout_expectation(dropout):
    """Relative error between the mean training-time output over many masks and the inference
    output (which is ``x``): inverted dropout keeps the expectation."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0.5, 1.5, (64, 32))
    dropout.build(x.shape[1:])
    mean_training = np.mean([dropout.forward(x, training=True).mean() for _ in range(50)])
    inference = dropout.forward(x, training=False).mean()
    return gradcheck.relative_error(np.array([mean_training]), np.array([inference]))


CONSTANT_GRADIENT_STEPS = 5


def displacement_under_constant_gradient(optimizer, gradient):
    """How far ``CONSTANT_GRADIENT_STEPS`` updates move a parameter from 0 when the gradient is always
    ``gradient``."""
    param = np.zeros_like(gradient)
    for _ in range(CONSTANT_GRADIENT_STEPS):
        optimizer.apply_gradients([(param, gradient.copy())])
    return param


def adam_constant_gradient(optimizer):
    """With a constant ``g`` the bias-corrected moments are exactly ``g`` and ``g^2``, so step ``t``
    is ``-lr g / (|g| + eps / sqrt(1 - b2^t))``: compare the sum of those with the optimizer's steps."""
    g = np.random.default_rng(5).standard_normal(8)
    lr, b2, eps = optimizer.learning_rate, optimizer.beta_2, optimizer.epsilon
    expected = -sum(lr * g / (np.abs(g) + eps / np.sqrt(1 - b2 ** t)) for t in range(1, CONSTANT_GRADIENT_STEPS + 1))
    return gradcheck.relative_error(displacement_under_constant_gradient(optimizer, g), expected)


def sgd_constant_gradient(optimizer):
    """With a constant ``g``, momentum ``m`` makes step ``t`` the geometric sum
    ``-lr g (1 - m^t) / (1 - m)``: compare the sum of those with the optimizer's steps."""
    g = np.random.default_rng(6).standard_normal(8)
    lr, m = optimizer.learning_rate, optimizer.momentum
    expected = -sum(lr * g * (1 - m ** t) / (1 - m) for t in range(1, CONSTANT_GRADIENT_STEPS + 1))
    return gradcheck.relative_error(displacement_under_constant_gradient(optimizer, g), expected)


def penalty_gradcheck(regularizer):
    """The penalty's gradient (:meth:`add_gradient` on zeros) against central differences of
    :meth:`penalty`."""
    w = np.random.default_rng(7).standard_normal((4, 3))
    analytic = np.zeros_like(w)
    regularizer.add_gradient(analytic, w)
    numeric = gradcheck.numerical_gradient(lambda: regularizer.penalty(w), w, np.arange(w.size), 1e-6)
    return gradcheck.relative_error(analytic.ravel(), numeric)


# --------------------------------------------------------------------------------- the exhibits


@dataclass
class Exhibit:
    """A bug: ``make_right()`` and ``make_wrong()`` build the real and the wrong subject, ``test``
    measures a relative error, which must stay below ``tolerance`` for the real one only."""

    title: str
    test_name: str
    make_right: object
    make_wrong: object
    test: object
    tolerance: float = GRADCHECK_TOLERANCE


EXHIBITS = [
    Exhibit("Dense: the bias gradient averaged over the batch, not summed", "gradient check",
            lambda: layers.Dense(3), lambda: BiasMeanDense(3), layer_gradcheck((4, 5))),
    Exhibit("Conv2D: im2col unfolds each patch transposed", "gradient check",
            lambda: layers.Conv2D(2, 3), lambda: TransposedPatchConv2D(2, 3), layer_gradcheck((2, 5, 5, 2))),
    Exhibit("Conv2D: col2im overwrites where windows overlap instead of adding", "gradient check",
            lambda: layers.Conv2D(2, 3), lambda: OverwritingCol2imConv2D(2, 3), layer_gradcheck((2, 5, 5, 2))),
    Exhibit("MaxPooling2D: the gradient goes to every tied maximum", "derivative along ties",
            lambda: layers.MaxPooling2D(2), lambda: EveryTieMaxPooling2D(2), tied_max_pool_derivative),
    Exhibit("softmax + cross-entropy without subtracting the max: exp overflows", "gradient check at 800",
            lambda: losses.CategoricalCrossentropy(from_logits=True), lambda: UnshiftedSoftmaxCrossentropy(True),
            softmax_ce_gradcheck),
    Exhibit("Dropout without the 1/(1-p) scaling of the kept units", "expectation over 50 masks",
            lambda: layers.Dropout(0.5, seed=0), lambda: UnscaledDropout(0.5, seed=0), dropout_expectation,
            tolerance=0.02),
    Exhibit("Adam without bias correction", "constant-gradient steps",
            lambda: optimizers.Adam(0.01), lambda: UncorrectedAdam(0.01), adam_constant_gradient),
    Exhibit("SGD: momentum with its sign flipped", "constant-gradient steps",
            lambda: optimizers.SGD(0.1, momentum=0.9), lambda: FlippedMomentumSGD(0.1, momentum=0.9),
            sgd_constant_gradient),
    Exhibit("L2 penalty: its gradient misses the factor 2", "gradient check",
            lambda: regularizers.L2(0.01), lambda: HalfGradientL2(0.01), penalty_gradcheck),
    Exhibit("BatchNormalization: backward misses the mean and variance terms", "gradient check (training)",
            lambda: layers.BatchNormalization(), lambda: mean_terms_dropped(layers.BatchNormalization)(),
            layer_gradcheck((6, 4), training=True)),
]


@dataclass
class Result:
    exhibit: Exhibit
    wrong_error: float
    right_error: float

    @property
    def caught(self):
        return not self.wrong_error < self.exhibit.tolerance

    @property
    def right_passes(self):
        return self.right_error < self.exhibit.tolerance


def visit(exhibit):
    """Run ``exhibit``'s test on the wrong and the right subject (on the NumPy kernels)."""
    previous = backend.get_backend()
    backend.set_backend("numpy")
    try:
        return Result(exhibit, exhibit.test(exhibit.make_wrong()), exhibit.test(exhibit.make_right()))
    finally:
        backend.set_backend(previous)


def result_lines(number, result):
    verdict = "caught" if result.caught else "ESCAPED"
    right = "passes" if result.right_passes else "FAILS"
    return [f"{number:>2}. {result.exhibit.title}",
            f"    {result.exhibit.test_name} (tolerance {result.exhibit.tolerance:g}): "
            f"wrong {result.wrong_error:.2e} {verdict}; right {result.right_error:.2e} {right}"]


def run_museum(print_fn=print):
    """Visit every exhibit, printing each as it is measured; returns the :class:`Result` list."""
    results = []
    for number, exhibit in enumerate(EXHIBITS, 1):
        results.append(visit(exhibit))
        print_fn("\n".join(result_lines(number, results[-1])))
    caught = sum(result.caught for result in results)
    passing = sum(result.right_passes for result in results)
    print_fn(f"{caught} of {len(results)} bugs caught; {passing} of {len(results)} correct versions pass")
    return results
