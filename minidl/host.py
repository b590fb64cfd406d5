"""The host side of every layer: ``layer(x)`` on NumPy arrays, and its weights in and out as NumPy
arrays.

A layer computes on the active backend (:mod:`minidl.backend`): its ``forward`` and ``backward`` take
and return the backend's arrays, and its parameters live there.  The calls a user makes on a layer
by hand cross between the host and that backend here, and only here, so that a layer's own file
holds its math alone (``minidl/layers``).  Models cross once per batch (:mod:`minidl.training`).
"""

import numpy as np

from minidl.backend import ops


class HostArrays:
    """``__call__``, ``get_weights`` and ``set_weights`` of :class:`minidl.layers.base.Layer`, on
    host (NumPy) arrays."""

    def __call__(self, x, training=False):
        """Forward pass on a host array, building the layer from ``x`` if needed; on a symbolic
        tensor (``minidl.Input``), a node of a functional model (:mod:`minidl.functional`)."""
        from minidl import functional  # functional builds on the layers
        if functional.is_symbolic(x):
            return functional.call_on_symbols(self, x)
        x = np.asarray(x, dtype=self.dtype)
        if not self.built:
            self.build(x.shape[1:])
        self.check_input(x.shape)
        return self.forward_on_host(x, training)

    def forward_on_host(self, inputs, training):
        """``forward`` of a host array (or of a list of them, for a layer that takes several), its
        output brought back to the host."""
        on_backend = [ops.to_device(x) for x in inputs] if isinstance(inputs, list) else ops.to_device(inputs)
        return ops.to_host(self.forward(on_backend, training))

    def get_weights(self):
        """Host copies of the weights (parameters and state) in Keras's order and layouts."""
        return [ops.to_host(array).copy() for _, array in self.weights()]

    def set_weights(self, weights):
        """Replace every weight, in :meth:`get_weights`'s order, by host arrays of the same shapes (cast
        to the layer's dtype); a wrong count or shape is refused before any weight changes."""
        keys = [key for key, _ in self.weights()]
        if len(weights) != len(keys):
            raise ValueError(f"layer {self.name!r} has {len(keys)} weight arrays ({', '.join(keys)}), "
                             f"got {len(weights)}")
        new_values = {}
        for key, value in zip(keys, weights):
            value = np.asarray(value)
            expected = tuple(self.params.get(key, self.state.get(key)).shape)
            if value.shape != expected:
                raise ValueError(f"layer {self.name!r}: weight {key!r} must have shape {expected}, "
                                 f"got {value.shape}")
            new_values[key] = ops.to_device(value.astype(self.dtype))
        for key, value in new_values.items():
            (self.params if key in self.params else self.state)[key] = value
