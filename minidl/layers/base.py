"""The layer contract every minidl layer follows.

* ``__init__`` validates and stores the arguments (Keras names).
* ``build(input_shape)`` creates the parameters once the per-sample input shape is known.
* ``forward(x, training)`` returns the output and keeps on ``self`` what ``backward`` needs (named in
  ``forward_keeps``, so a backward before any forward says that forward must run first).
* ``backward(grad_out)`` fills ``self.grads`` (same keys as ``self.params``) and returns ``dL/dx``.

Weights are of two kinds: ``params``, which the optimizer trains from ``grads``, and ``state``, the
non-trainable weights a layer updates itself (BatchNormalization's moving statistics).  A training
forward pass only computes a state update; the model commits it through :meth:`Layer.apply_state_updates`
once the step's parameter update has succeeded, so a failed step changes no weight of either kind.
Both kinds are in ``weight_order``, saved, loaded and exchanged by ``get_weights``/``set_weights``.

Shapes given to ``build`` and ``compute_output_shape`` are per sample, without the batch axis.
``layer(x)``, ``get_weights`` and ``set_weights`` on NumPy arrays come from :mod:`minidl.host`.
A layer computes in float32 (the default) or float64; no other dtype is accepted.
"""

import collections

import numpy as np

from minidl import initializers
from minidl.host import HostArrays
from minidl.utils import global_rng

_names_used = collections.Counter()

FLOAT_DTYPES = ("float32", "float64")


def float_dtype(dtype, layer_name):
    """``dtype`` as a NumPy float dtype; anything but float32/float64 is refused (an integer layer
    would round every activation and gradient)."""
    try:
        checked = np.dtype(dtype)
    except TypeError:
        checked = None
    if checked is None or checked.name not in FLOAT_DTYPES:
        raise ValueError(f"{layer_name}: dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    return checked


def unique_layer_name(class_name):
    """Keras-style default names: ``conv2d``, ``conv2d_1``, ``conv2d_2``, ..."""
    prefix = "".join("_" + c.lower() if c.isupper() and i and class_name[i - 1].islower() else c.lower()
                     for i, c in enumerate(class_name))
    count = _names_used[prefix]
    _names_used[prefix] += 1
    return prefix if count == 0 else f"{prefix}_{count}"


def normalize_pair(value, argument, layer_name):
    """An int or a pair of ints -> a pair of positive ints (``kernel_size``, ``strides``, ...)."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"{layer_name}: {argument} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def normalize_padding(padding, layer_name):
    padding = padding.lower() if isinstance(padding, str) else padding
    if padding not in ("valid", "same"):
        raise ValueError(f"{layer_name}: padding must be 'valid' or 'same', got {padding!r}")
    return padding


def padding_amounts(size, kernel, stride, padding):
    """``(before, after)`` padding of one axis of ``size`` pixels under a window of ``kernel`` pixels at
    ``stride``, as Keras pads: none for ``"valid"``; for ``"same"``, what gives ``ceil(size / stride)``
    outputs, split with the smaller half before (TensorFlow's rule)."""
    if padding == "valid":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def window_geometry(input_hw, window, strides, padding):
    """``(pads, (OH, OW))`` of a 2-D window ``(KH, KW)`` at ``strides`` ``(SH, SW)`` over ``(H, W)``
    images, ``pads = ((top, bottom), (left, right))`` from :func:`padding_amounts`::

        OH = (H + top + bottom - KH) // SH + 1,   OW = (W + left + right - KW) // SW + 1

    Raises ``ValueError`` when the window does not fit (an output of size zero)."""
    (height, width), (kh, kw), (sh, sw) = input_hw, window, strides
    pads = (padding_amounts(height, kh, sh, padding), padding_amounts(width, kw, sw, padding))
    out_h = (height + sum(pads[0]) - kh) // sh + 1
    out_w = (width + sum(pads[1]) - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a {kh}x{kw} window with strides {strides} and padding {padding!r} does not fit "
                         f"an input of height x width {height}x{width}")
    return pads, (out_h, out_w)


def window_output_shape(layer, input_shape, window, strides, padding):
    """``(pads, (OH, OW))`` of a 2-D window sliding over ``layer``'s ``(H, W, C)`` inputs; raises
    ``ValueError`` naming the layer for another rank or a window that does not fit."""
    kind = type(layer).__name__
    if len(input_shape) != 3:
        raise ValueError(f"layer {layer.name!r} ({kind}) expects inputs of shape "
                         f"(None, height, width, channels), got {(None, *input_shape)}")
    try:
        return window_geometry(input_shape[:2], window, strides, padding)
    except ValueError as error:
        raise ValueError(f"layer {layer.name!r} ({kind}): {error}") from None


class Layer(HostArrays):
    """The contract above."""

    #: names of the parameters in Keras's ``get_weights`` order
    weight_order = ()
    #: True for layers that combine several tensors (``forward`` takes a list, ``backward`` returns one)
    takes_several_inputs = False
    #: what ``forward`` keeps on ``self`` for ``backward`` (a backward before any forward names them)
    forward_keeps = ()

    def __init__(self, name=None, input_shape=None, dtype=None, trainable=True):
        self.name = name or unique_layer_name(type(self).__name__)
        self.declared_input_shape = None if input_shape is None else tuple(input_shape)
        self.dtype = float_dtype(dtype or "float32", self.name)
        self.trainable = trainable
        self.params, self.grads, self.regularizers = {}, {}, {}
        #: non-trainable weights, updated by the layer itself in apply_state_updates (see above)
        self.state = {}
        self.input_shape = self.output_shape = None
        self.built = False

    # ------------------------------------------------------------------------------- lifecycle

    def build(self, input_shape):
        """Create parameters for per-sample inputs of ``input_shape``; validates it first."""
        input_shape = tuple(int(d) for d in input_shape)
        self.output_shape = self.compute_output_shape(input_shape)
        self.input_shape = input_shape
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def new_weight(self, shape, initializer, rng=None):
        """An array of ``shape`` from ``initializer`` (:func:`minidl.initializers.initial_weight`)."""
        return initializers.initial_weight(initializer, shape, self.dtype, rng if rng is not None else global_rng())

    def add_param(self, key, shape, initializer, regularizer=None, rng=None):
        """A trainable weight: updated by the optimizer from ``grads[key]``."""
        self.params[key] = self.new_weight(shape, initializer, rng)
        if regularizer is not None:
            self.regularizers[key] = regularizer

    def add_state(self, key, shape, initializer):
        """A non-trainable weight: updated by the layer's own :meth:`apply_state_updates`."""
        self.state[key] = self.new_weight(shape, initializer)

    def apply_state_updates(self):
        """Commit the ``state`` update the last training forward pass computed; the optimizer calls
        it for every layer of its model after a successful update.  Most layers have no state."""

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def __getattr__(self, attribute):
        """Reached only for an attribute the layer lacks.  One of ``forward_keeps`` is missing because
        forward has not run yet: say so, naming the layer."""
        if attribute in type(self).forward_keeps and "name" in self.__dict__:
            raise AttributeError(f"layer {self.name!r} ({type(self).__name__}): backward() needs {attribute!r}, "
                                 f"which forward() keeps; call forward(x, training=True) before backward()")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attribute!r}")

    def check_input(self, batch_shape):
        """Raise ``ValueError`` naming this layer unless ``batch_shape == (N, *input_shape)``."""
        if tuple(batch_shape[1:]) != self.input_shape:
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) expected input of shape "
                f"{(None, *self.input_shape)}, got {tuple(batch_shape)}"
            )

    # -------------------------------------------------------------------------------- weights

    def weights(self):
        """``[(key, array)]`` of every weight, ``params`` and ``state``, in ``weight_order``."""
        every = {**self.params, **self.state}
        return [(key, every[key]) for key in self.weight_order if key in every]

    def cast(self, dtype):
        """Convert the weights (and future inputs) to ``dtype``, e.g. float64 for gradient checks: the
        weights are read and set again, and :meth:`set_weights` stores them as the layer's dtype."""
        new_dtype = float_dtype(dtype, self.name)
        weights = self.get_weights()
        self.dtype = new_dtype
        self.set_weights(weights)

    def count_params(self):
        """Every weight's element count, the non-trainable ``state`` included (as Keras counts)."""
        return int(sum(np.prod(value.shape) for value in [*self.params.values(), *self.state.values()]))

    def count_trainable_params(self):
        """The element count of the ``params`` the optimizer trains (0 for a frozen layer)."""
        return int(sum(np.prod(value.shape) for value in self.params.values())) if self.trainable else 0

    # ------------------------------------------------------------------------------- config

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype.name}
        if self.declared_input_shape is not None:
            config["input_shape"] = list(self.declared_input_shape)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"

