"""Layers that merge several tensors into one: ``Add`` and ``Concatenate``.

They are called on a list of inputs (``Add()([a, b])``, in a functional model on a list of symbolic
tensors), so ``build`` takes a list of per-sample shapes, ``forward`` a list of arrays and
``backward`` returns one gradient per input, in the same order.
"""

import numpy as np

from minidl import functional
from minidl.backend import ops
from minidl.layers.base import Layer


def batch_shapes(shapes):
    """``(None, *shape)`` for each per-sample shape, as an error message shows them."""
    return ", ".join(str((None, *shape)) for shape in shapes)


class Merge(Layer):
    """What every merge layer shares: a list of at least two inputs, built from their shapes."""

    takes_several_inputs = True

    def build(self, input_shapes):
        """Check the list of per-sample shapes and compute the output shape."""
        if isinstance(input_shapes, tuple) and all(isinstance(d, (int, np.integer)) for d in input_shapes):
            input_shapes = [input_shapes]
        shapes = [tuple(int(d) for d in shape) for shape in input_shapes]
        if len(shapes) < 2:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) merges a list of at least two "
                             f"inputs, got {len(shapes)}: {batch_shapes(shapes)}")
        self.output_shape = self.compute_output_shape(shapes)
        self.input_shape = tuple(shapes)
        self.built = True

    def __call__(self, inputs, training=False):
        """On a list of host arrays: the forward pass (building the layer from their shapes if
        needed); on a list of symbolic tensors: a node of a functional model."""
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(f"layer {self.name!r} ({type(self).__name__}) is called on a list of inputs, "
                            f"got {type(inputs).__name__}")
        if functional.is_symbolic(inputs):
            return super().__call__(inputs, training)
        arrays = [np.asarray(x, dtype=self.dtype) for x in inputs]
        if not self.built:
            self.build([x.shape[1:] for x in arrays])
        if tuple(x.shape[1:] for x in arrays) != self.input_shape or len({len(x) for x in arrays}) != 1:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) expected inputs of shapes "
                             f"{batch_shapes(self.input_shape)}, got {', '.join(str(x.shape) for x in arrays)}")
        return self.forward_on_host(arrays, training)


class Add(Merge):
    """The elementwise sum of inputs of one shape: ``y = x_1 + x_2 + ... + x_k``.

    Every input ``(N, *shape)``, the output too.  A residual block ends in ``Add()([x, f(x)])``.
    """

    def compute_output_shape(self, input_shapes):
        if len(set(input_shapes)) != 1:
            raise ValueError(f"layer {self.name!r} (Add) needs inputs of one shape, got "
                             f"{batch_shapes(input_shapes)}")
        return input_shapes[0]

    def forward(self, xs, training=False):
        """``y = sum_i x_i``: ``k`` arrays ``(N, *shape)`` -> ``(N, *shape)``."""
        total = ops.add(xs[0], xs[1])
        for x in xs[2:]:
            ops.accumulate(total, x)
        return total

    def backward(self, grad_out):
        """``dL/dx_i = dL/dy`` for every input (``dy/dx_i`` is the identity): ``(N, *shape)`` -> ``k``
        times the same array, which no backward writes (kernels write only their outputs)."""
        return [grad_out] * len(self.input_shape)


class Concatenate(Merge):
    """Inputs joined along ``axis`` (default -1, the channels): ``y = [x_1 | x_2 | ... | x_k]``.

    ``axis`` counts the batch axis, as in Keras, and may not be it.  The inputs have equal shapes
    except on ``axis``: ``(N, H, W, C_i) -> (N, H, W, C_1 + ... + C_k)`` for ``axis=-1``.
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or axis == 0:
            raise ValueError(f"{self.name}: axis must be a non-zero int (axis 0 is the batch), got {axis!r}")
        self.axis = int(axis)

    def batch_axis(self, rank):
        """``axis`` as an index into a batch of per-sample rank ``rank`` (so ``rank + 1`` axes)."""
        if not -(rank + 1) <= self.axis <= rank or self.axis in (0, -(rank + 1)):
            raise ValueError(f"layer {self.name!r} (Concatenate): axis {self.axis} is not a non-batch axis "
                             f"of inputs with {rank + 1} axes")
        return self.axis % (rank + 1)

    def compute_output_shape(self, input_shapes):
        rank = len(input_shapes[0])
        axis = self.batch_axis(rank) - 1
        others = {shape[:axis] + shape[axis + 1:] for shape in input_shapes}
        if len(others) != 1 or any(len(shape) != rank for shape in input_shapes):
            raise ValueError(f"layer {self.name!r} (Concatenate) needs inputs of equal shapes except on "
                             f"axis {self.axis}, got {batch_shapes(input_shapes)}")
        return input_shapes[0][:axis] + (sum(shape[axis] for shape in input_shapes),) + input_shapes[0][axis + 1:]

    def forward(self, xs, training=False):
        """``y = [x_1 | ... | x_k]`` along ``axis``: ``(N, ..., C_i, ...) -> (N, ..., sum C_i, ...)``."""
        return ops.concatenate(list(xs), self.batch_axis(len(self.output_shape)))

    def backward(self, grad_out):
        """``dL/dx_i`` is the slab of ``dL/dy`` that ``x_i`` filled: ``dL/dy`` cut along ``axis`` into
        pieces of sizes ``C_1, ..., C_k``: ``(N, ..., sum C_i, ...) -> [(N, ..., C_i, ...)]``."""
        axis = self.batch_axis(len(self.output_shape))
        return ops.split(grad_out, [shape[axis - 1] for shape in self.input_shape], axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
