"""What Dense and Conv2D share: a kernel, an optional bias, an activation, and their options."""

from minidl import initializers, regularizers
from minidl.backend import ops
from minidl.layers.activations import activate, activation_backward, check_activation
from minidl.layers.base import Layer


class KernelLayer(Layer):
    """A layer computing ``y = f(z + b)`` with ``z`` linear in its input and ``kernel``.

    Subclasses implement :meth:`linear` (``z`` without the bias) and :meth:`linear_backward`, which
    fills the kernel's gradient and returns the input's from ``dL/dz``.
    """

    weight_order = ("kernel", "bias")

    def __init__(self, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.activation = check_activation(activation, self.name)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def add_kernel_and_bias(self, kernel_shape):
        """Create ``kernel`` of ``kernel_shape`` and, with ``use_bias``, a ``bias`` per output unit."""
        self.add_param("kernel", kernel_shape, self.kernel_initializer, self.kernel_regularizer)
        if self.use_bias:
            self.add_param("bias", (kernel_shape[-1],), self.bias_initializer, self.bias_regularizer)

    def linear(self, x):
        raise NotImplementedError

    def forward(self, x, training=False):
        """``y = f(z + b)`` with ``z = linear(x)``; keeps ``y`` (and, for softmax, the logits).

        ``x`` ``(N, ...)`` -> ``y`` ``(N, ..., units)``: ``(N, D_in) -> (N, units)`` for Dense,
        ``(N, H, W, C_in) -> (N, OH, OW, filters)`` for Conv2D.
        """
        self.y, self.logits = activate(self.linear(x), self.params.get("bias"), self.activation)
        return self.y

    def forward_through_max_pooling(self, x, pool, training=False):
        """This layer (with ReLU) and then ``pool`` (a ``MaxPooling2D``) in one pass, pooling first::

            max_window relu(z + b) = relu(max_window z + b)

        (``b`` is constant per channel and ReLU never decreases), so the bias and the ReLU run on the
        pooled tensor, a quarter of the size for 2x2 pools.  ``x`` ``(N, H, W, C_in)`` -> ``z``
        ``(N, OH, OW, F)`` -> pooled ``(N, PH, PW, F)``.  ``self.y`` and ``pool.y`` are the
        pooled activations; the argmax ``pool`` keeps may differ from the layer-by-layer one only in
        windows whose activations are all zero, where the gradient is zero either way.
        """
        pooled = self.pooled_linear(x, pool, training)
        self.y = pool.y = ops.bias_activation(pooled, self.params.get("bias"), "relu")
        self.logits = None
        return self.y

    def pooled_linear(self, x, pool, training):
        """``max_window z``: ``pool`` applied to :meth:`linear`'s ``z``.  ``(N, ...) -> (N, PH, PW, F)``."""
        return pool.forward(self.linear(x), training)

    def backward(self, grad_out):
        """``dL/dz = dL/dy * f'(z)`` (same shape as ``y``), then :meth:`backward_from_logits`, which
        returns ``dL/dx`` of ``x``'s shape."""
        return self.backward_from_logits(activation_backward(grad_out, self.y, self.activation))

    def backward_from_logits(self, grad_z):
        """From ``dL/d(z + b)`` ``(N, ..., units)``: ``dL/db`` is its sum over every axis but the last,
        then :meth:`linear_backward` gives ``dL/dW`` and returns ``dL/dx``."""
        self.add_bias_grad(grad_z)
        return self.linear_backward(grad_z)

    def backward_through_max_pooling(self, grad_out, pool):
        """Backward of :meth:`forward_through_max_pooling` from ``dL/dy`` of the pooled ``y``::

            dL/d(pooled z + b) = dL/dy * [y > 0]           (N, PH, PW, F)
            dL/db = its sum over N, PH, PW                 (F,)
            dL/dz = pool.backward(dL/d(pooled z + b))      (N, OH, OW, F)

        Every pooled value is exactly one element of ``z``, so the bias gradient sums the pooled
        tensor, a quarter of ``z``'s size under 2x2 pooling.
        """
        grad_pooled = ops.activation_grad(grad_out, self.y, "relu")
        self.add_bias_grad(grad_pooled)
        return self.pooled_linear_backward(grad_pooled, pool)

    def pooled_linear_backward(self, grad_pooled, pool):
        """Backward of :meth:`pooled_linear`: ``dL/dz = pool.backward(dL/dpooled)``, then
        :meth:`linear_backward` fills ``dL/dW`` and returns ``dL/dx``."""
        return self.linear_backward(pool.backward(grad_pooled))

    def add_bias_grad(self, grad_z):
        """``dL/db`` = ``grad_z`` ``(N, ..., units)`` summed over every axis but the last."""
        if self.use_bias:
            self.grads["bias"] = ops.bias_grad(grad_z.reshape(-1, self.params["bias"].size))

    def linear_backward(self, grad_z):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}
