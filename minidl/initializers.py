"""Weight initializers with Keras's names and formulas.

``fan_in`` / ``fan_out`` follow Keras: a Dense kernel ``(in, out)`` has ``fan_in = in``,
``fan_out = out``; a conv kernel ``(KH, KW, C_in, C_out)`` has ``fan_in = KH*KW*C_in`` and
``fan_out = KH*KW*C_out``.  Every initializer is called as ``init(shape, dtype, rng)``.
"""

import contextlib
import contextvars
import math

import numpy as np

from minidl.backend import ops

_placeholders = contextvars.ContextVar("weight_placeholders", default=False)


def compute_fans(shape):
    """``(fan_in, fan_out)`` of a weight shape (vectors count as ``fan_in = fan_out = len``)."""
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _truncated_normal(rng, stddev, shape):
    """Normal(0, stddev) redrawn until within two standard deviations, as Keras does."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2
    while outside.any():
        values[outside] = rng.standard_normal(outside.sum())
        outside = np.abs(values) > 2
    return values * stddev


class Initializer:
    name = None

    def __call__(self, shape, dtype, rng):
        return self.sample(tuple(shape), rng).astype(dtype)

    def sample(self, shape, rng):
        raise NotImplementedError

    def get_config(self):
        return {}


class Zeros(Initializer):
    name = "zeros"

    def sample(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    name = "ones"

    def sample(self, shape, rng):
        return np.ones(shape)


class GlorotUniform(Initializer):
    """Uniform on ``[-l, l]`` with ``l = sqrt(6 / (fan_in + fan_out))``."""

    name = "glorot_uniform"

    def sample(self, shape, rng):
        fan_in, fan_out = compute_fans(shape)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)


class GlorotNormal(Initializer):
    """Truncated normal with ``stddev = sqrt(2 / (fan_in + fan_out))``."""

    name = "glorot_normal"

    def sample(self, shape, rng):
        fan_in, fan_out = compute_fans(shape)
        return _truncated_normal(rng, math.sqrt(2.0 / (fan_in + fan_out)), shape)


class HeNormal(Initializer):
    """Truncated normal with ``stddev = sqrt(2 / fan_in)``."""

    name = "he_normal"

    def sample(self, shape, rng):
        return _truncated_normal(rng, math.sqrt(2.0 / compute_fans(shape)[0]), shape)


class HeUniform(Initializer):
    """Uniform on ``[-l, l]`` with ``l = sqrt(6 / fan_in)``."""

    name = "he_uniform"

    def sample(self, shape, rng):
        limit = math.sqrt(6.0 / compute_fans(shape)[0])
        return rng.uniform(-limit, limit, shape)


class RandomNormal(Initializer):
    name = "random_normal"

    def __init__(self, mean=0.0, stddev=0.05):
        self.mean, self.stddev = mean, stddev

    def sample(self, shape, rng):
        return rng.normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev}


INITIALIZERS = {cls.name: cls for cls in
                (Zeros, Ones, GlorotUniform, GlorotNormal, HeNormal, HeUniform, RandomNormal)}


def get(identifier):
    """An initializer from an instance, a Keras name (``"he_normal"``) or a config dict."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, dict):
        return INITIALIZERS[identifier["class_name"]](**identifier.get("config", {}))
    if identifier in INITIALIZERS:
        return INITIALIZERS[identifier]()
    raise ValueError(f"unknown initializer {identifier!r}; known: {sorted(INITIALIZERS)}")


def serialize(initializer):
    return {"class_name": initializer.name, "config": initializer.get_config()}


@contextlib.contextmanager
def placeholders():
    """Weights made inside this block by :func:`initial_weight` are read-only zero placeholders, which
    take no memory whatever their shape (``np.broadcast_to`` of one zero) and draw nothing from the
    random generator.  Loading a file builds its architecture so, checks every parameter's shape
    against the file's arrays, then sets the real weights."""
    token = _placeholders.set(True)
    try:
        yield
    finally:
        _placeholders.reset(token)


def initial_weight(initializer, shape, dtype, rng):
    """``initializer(shape, dtype, rng)`` on the active backend, or a placeholder inside
    :func:`placeholders`."""
    if _placeholders.get():
        return np.broadcast_to(np.zeros((), dtype), shape)
    return ops.to_device(initializer(shape, dtype, rng))
