"""Checks of what users hand to minidl: numbers, batch sizes, seeds, arrays, architectures.

Each check returns the value it accepted (converted where that is its job) or raises an error that
names the argument, what was expected and what was given.  They run before anything changes, so a
refused call leaves the model, its weights and its files as they were.
"""

import functools
import math

import numpy as np

#: the largest per-sample input a model may declare (2**28 values: 1 GiB of float32 per sample)
MAX_SAMPLE_SIZE = 2**28


# ------------------------------------------------------------------------------- numbers


def require_real(owner, name, value):
    """``value`` as a float; raises ``ValueError`` naming ``owner`` and ``name`` unless it is a finite
    real number (``bool`` is refused: ``True`` is not a learning rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{owner}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    return float(value)


def require_positive(owner, name, value):
    """A finite ``value > 0`` as a float."""
    value_as_float = require_real(owner, name, value)
    if value_as_float <= 0:
        raise ValueError(f"{owner}: {name} must be positive, got {value!r}")
    return value_as_float


def require_fraction(owner, name, value):
    """A ``value`` in ``[0, 1)`` as a float (decay factors: ``momentum``, ``beta_1``, ``rho``)."""
    value_as_float = require_real(owner, name, value)
    if not 0 <= value_as_float < 1:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {value!r}")
    return value_as_float


def batch_size(value, method, default=32):
    """``value`` (``None`` means ``default``) as a positive ``int``; ``bool`` and floats are refused."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{method}: batch_size must be a positive int, got {value!r}")
    return int(value)


def seed(value, method="fit"):
    """``None`` or a non-negative ``int`` seed (NumPy's generators take no negative seeds)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{method}: seed must be None or a non-negative int, got {value!r}")
    return int(value)


# -------------------------------------------------------------------------------- arrays


def require_real_numbers(x, what, model_name):
    """Refuse ``x`` unless it holds real numbers (not strings, objects, booleans or complex values)."""
    if np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{model_name}: {what} is complex ({x.dtype}); pass real values, e.g. "
                         f"{what}.real or np.abs({what})")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{model_name}: {what} must be numeric, got dtype {x.dtype}")


def as_finite(x, dtype, what, model_name):
    """``x`` cast to the model's ``dtype``, refused if any value is NaN or infinite after the cast
    (a float64 ``1e39`` is finite but overflows float32 to inf)."""
    with np.errstate(over="ignore", invalid="ignore"):
        x_cast = np.asarray(x, dtype=dtype)
    if not np.isfinite(x_cast).all():
        where = "" if np.isfinite(np.asarray(x)).all() else " (before any cast)"
        raise ValueError(f"{model_name}: {what} contains NaN or infinite values{where}, or values "
                         f"beyond the {np.dtype(dtype).name} range (|x| <= {np.finfo(dtype).max:.3g})")
    return x_cast


def require_samples(x, what, model_name):
    """Refuse an ``x`` without samples: there is nothing to train on or evaluate."""
    if len(x) == 0:
        raise ValueError(f"{model_name}: {what} has no samples (shape {np.shape(x)}); "
                         f"pass at least one sample")


def validation_pair(validation_data):
    """``(x_val, y_val)`` from ``validation_data``, which must be a pair (or a data loader)."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        got = (f"a {type(validation_data).__name__} of length {len(validation_data)}"
               if isinstance(validation_data, (tuple, list)) else type(validation_data).__name__)
        raise ValueError(f"fit: validation_data must be a pair (x_val, y_val) or a data loader, got {got}")
    return validation_data


# ------------------------------------------------------------------------------ structure


def require_new_layer(model, layer):
    """Refuse a layer instance that is already in ``model``: one instance keeps one input and one
    gradient, so a layer used twice would mix its two places' values."""
    if any(existing is layer for existing in model.layers):
        raise ValueError(f"{model.name}: layer {layer.name!r} is already in this model; a layer "
                         f"instance can appear only once (create a second layer, e.g. "
                         f"{type(layer).__name__}.from_config(layer.get_config()) with another name)")


def marks_fit_in_progress(fit):
    """Decorate ``fit`` so that ``model.fit_in_progress`` is true while it runs (callbacks included)."""

    @functools.wraps(fit)
    def fit_marked(model, *args, **kwargs):
        previous = getattr(model, "fit_in_progress", False)
        model.fit_in_progress = True
        try:
            return fit(model, *args, **kwargs)
        finally:
            model.fit_in_progress = previous

    return fit_marked


def refuse_during_fit(model, method):
    """Refuse ``method`` (``compile``, ``add``) from a callback while ``fit`` runs: the loop would go on
    with a loss, optimizer or layer list it did not start with."""
    if getattr(model, "fit_in_progress", False):
        raise RuntimeError(f"{model.name}: {method}() was called while fit() is running (from a "
                           f"callback?); call it before or after fit")


def architecture(config, source):
    """Check an architecture (``Sequential.get_config()`` output) read from ``source`` before any layer
    is made: a dict with a ``"name"``, a ``"layers"`` list of ``{"class_name", "config"}`` dicts and an
    optional ``"input_shape"`` of positive ints with at most :data:`MAX_SAMPLE_SIZE` values."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: an architecture is a JSON object (Sequential.get_config()), "
                         f"got {type(config).__name__}")
    missing = [key for key in ("name", "layers") if key not in config]
    if missing:
        raise ValueError(f"{source}: the architecture has no {' or '.join(map(repr, missing))}; expected "
                         f"Sequential.get_config() output with keys 'name', 'layers' and optionally "
                         f"'input_shape', got keys {sorted(config)}")
    if not isinstance(config["name"], str):
        raise ValueError(f"{source}: the architecture's 'name' must be a string, got {config['name']!r}")
    layers = config["layers"]
    if not isinstance(layers, list) or not all(
            isinstance(layer, dict) and isinstance(layer.get("class_name"), str)
            and isinstance(layer.get("config"), dict) for layer in layers):
        raise ValueError(f"{source}: 'layers' must be a list of {{\"class_name\": ..., \"config\": {{...}}}} "
                         f"objects")
    input_shape = config.get("input_shape")
    if input_shape is not None:
        input_shape_within_limits(input_shape, f"{source}: 'input_shape'")
    for index, layer in enumerate(layers):
        declared = layer["config"].get("input_shape")
        if declared is not None:
            input_shape_within_limits(declared, f"{source}: layer {index} 'input_shape'")
    if config.get("class_name") == "Model":
        graph_architecture(config, source)
    return config


def graph_architecture(config, source):
    """Check what a functional model's architecture (``Model.get_config()``) adds: an ``"input"``
    with a string ``"name"`` and a ``"shape"``, each layer's ``"inbound"`` list of tensor names and
    the ``"output"`` name."""
    described = config.get("input")
    if not isinstance(described, dict) or not isinstance(described.get("name"), str):
        raise ValueError(f"{source}: a functional model's architecture needs an 'input' object with a "
                         f"string 'name' and a 'shape', got {described!r}")
    input_shape_within_limits(described.get("shape"), f"{source}: the input's 'shape'")
    for index, layer in enumerate(config["layers"]):
        inbound = layer.get("inbound")
        if not isinstance(inbound, list) or not inbound or not all(isinstance(name, str) for name in inbound):
            raise ValueError(f"{source}: layer {index} needs an 'inbound' list of the names of the tensors "
                             f"it reads, got {inbound!r}")
    if not isinstance(config.get("output"), str):
        raise ValueError(f"{source}: a functional model's architecture needs the 'output' layer's name, "
                         f"got {config.get('output')!r}")


def input_shape_within_limits(shape, what):
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ValueError(f"{what} must be a list of positive ints, got {shape!r}")
    if math.prod(shape) > MAX_SAMPLE_SIZE:
        raise ValueError(f"{what} {shape} has {math.prod(shape):,} values per sample, more than the "
                         f"{MAX_SAMPLE_SIZE:,} a model may take")
