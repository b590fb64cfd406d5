"""The fast steps the passes put in a plan; each computes what its layers' own forward and backward
would, by other means.  Shapes: ``x`` ``(N, H, W, C_in)``, conv outputs ``z`` ``(N, OH, OW, F)``,
pooled ``(N, PH, PW, F)``."""

from minidl.backend import ops
from minidl.engine.plan import Step, needed_grads
from minidl.layers.activations import activate, activation_backward, rows_of_last_axis

#: Non-decreasing activations: for them ``max_window f(v) = f(max_window v)``.
MONOTONE_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")


def activation_and_bias_grads(layer, grad_out, y):
    """``dL/dz = dL/dy * f'(z)`` ``(..., F)`` of ``layer``'s activation from its output ``y``, and
    ``dL/db``, its sum over every axis but the last, into ``layer.grads`` (when there is a bias): both in
    one pass over the arrays (``ops.activation_bias_grad``), except under softmax."""
    if layer.use_bias and layer.activation != "softmax":
        grad_z, layer.grads["bias"] = ops.activation_bias_grad(rows_of_last_axis(grad_out), rows_of_last_axis(y),
                                                               layer.activation)
        return grad_z.reshape(y.shape)
    grad_z = activation_backward(grad_out, y, layer.activation)
    if layer.use_bias:
        layer.grads["bias"] = ops.bias_grad(rows_of_last_axis(grad_z))
    return grad_z


class MaxPoolWinners:
    """Max pooling with ``pool``'s window that keeps what its backward needs: the argmax after a
    training pass.  With ``maxima_alone`` an inference pass computes the maxima without the argmax
    (faster) and keeps its input instead, from which a later backward finds the argmax (a whole-model
    gradient check runs backward after an inference pass)."""

    def __init__(self, pool, maxima_alone=False):
        self.pool, self.maxima_alone = pool, maxima_alone

    def forward(self, x, training):
        """``(N, H, W, C) -> (N, OH, OW, C)``."""
        pool = self.pool
        self.x_shape, self.x = x.shape, None
        if training or not self.maxima_alone:
            y, self.argmax = ops.maxpool_forward(x, pool.pool_size, pool.strides, pool.pads)
            return y
        self.x, self.argmax = x, None
        return ops.maxpool_values(x, pool.pool_size, pool.strides, pool.pads)

    def backward(self, grad_out):
        """``dL/dy`` routed to each window's maximum.  ``(N, OH, OW, C) -> (N, H, W, C)``."""
        pool = self.pool
        if self.argmax is None:
            _, self.argmax = ops.maxpool_forward(self.x, pool.pool_size, pool.strides, pool.pads)
        return ops.maxpool_backward(grad_out, self.argmax, self.x_shape, pool.pool_size, pool.strides, pool.pads)


class MaxPoolStep(Step):
    """A MaxPooling2D through :class:`MaxPoolWinners`."""

    def __init__(self, pool, inputs, output, maxima_alone):
        super().__init__((pool,), inputs, output)
        self.winners = MaxPoolWinners(pool, maxima_alone)

    def forward(self, inputs, training):
        self.y = self.winners.forward(inputs[0], training)
        return self.y

    def backward(self, grad_out):
        return [self.winners.backward(grad_out)]


class ConvStep(Step):
    """A Conv2D whose ``z`` comes from a :class:`~minidl.engine.conv_methods.ConvLinear` (another
    algorithm, or chunks of images): ``y = f(z + b)``."""

    def __init__(self, conv, linear, inputs, output, input_grad_needed):
        super().__init__((conv,), inputs, output)
        self.conv, self.linear, self.input_grad_needed = conv, linear, input_grad_needed

    def forward(self, inputs, training):
        z = self.linear.forward(inputs[0], training)
        self.y = activate(z, self.conv.params.get("bias"), self.conv.activation)
        return self.y

    def backward(self, grad_out):
        grad_z = activation_and_bias_grads(self.conv, grad_out, self.y)
        return [self.linear.backward(grad_z, self.input_grad_needed)]

    def workspace_bytes(self, batch_size):
        return self.linear.workspace_bytes(batch_size)


class ConvMaxPoolStep(Step):
    """A Conv2D with a non-decreasing activation ``f``, then max pooling, pooling first::

        max_window f(z + b) = f(max_window z + b)

    (``b`` is constant per channel), so the bias and ``f`` run on the pooled tensor, a quarter of
    ``z``'s size under 2x2 pooling.  Backward, from ``dL/dy`` of the pooled ``y``::

        G_pooled = dL/dy * f'(pooled z + b)          (N, PH, PW, F)
        dL/db    = G_pooled summed over N, PH, PW    (F,)   every pooled value is one element of z
        dL/dz    = G_pooled routed to each window's maximum   (N, OH, OW, F)

    and the conv's backward from ``dL/dz``.  The argmax may differ from the layer-by-layer one only
    where ``f`` is flat over a whole window (ReLU's zeros), where the gradient is zero either way.

    Outside training, where the pooling keeps no argmax, the batch runs in chunks of images (the
    conv's inference chunks, and at most ``z_images_per_chunk`` images, whose ``z`` fits the inference
    bound, for a method that keeps no scratch per image), each chunk's ``z`` pooled as soon as it is
    computed (in cache), and the batch's ``z`` never exists; a backward after such a pass computes
    ``z`` and the argmax again.
    """

    def __init__(self, conv, pool, linear, inputs, output, input_grad_needed):
        super().__init__((conv, pool), inputs, output)
        self.conv, self.linear, self.input_grad_needed = conv, linear, input_grad_needed
        self.winners = MaxPoolWinners(pool)
        self.z_dropped = False
        self.z_images_per_chunk = None

    def pooled_chunks(self, batch_size, training):
        """The slices of the batch whose ``z`` is pooled one at a time: in a pass outside training that
        keeps no argmax, chunks of the fewest images of the conv's inference chunks and
        ``z_images_per_chunk``; else the whole batch."""
        bounds = [n for n in (self.linear.inference_images_per_chunk, self.z_images_per_chunk) if n is not None]
        if training or not self.winners.maxima_alone or not bounds:
            return [slice(0, batch_size)]
        return self.linear.chunks(batch_size, min(bounds))

    def z_bytes_per_image(self):
        """One image's ``z``: ``OH*OW*F`` values."""
        out_h, out_w = self.linear.output_hw()
        return out_h * out_w * self.conv.filters * self.conv.dtype.itemsize

    def forward(self, inputs, training):
        x = inputs[0]
        chunks = self.pooled_chunks(x.shape[0], training)
        self.z_dropped = len(chunks) > 1
        if self.z_dropped:
            pooled, kernel_matrix = None, self.linear.kernel_matrix_for(training)
            for chunk in chunks:
                part = self.winners.forward(self.linear.forward(x[chunk], training, kernel_matrix), training)
                if pooled is None:
                    pooled = ops.empty((x.shape[0], *part.shape[1:]), part.dtype)
                pooled[chunk] = part
            self.linear.x = x
        else:
            pooled = self.winners.forward(self.linear.forward(x, training), training)
        self.y = ops.bias_activation(pooled, self.conv.params.get("bias"), self.conv.activation)
        return self.y

    def backward(self, grad_out):
        if self.z_dropped:  # after a pass outside training that pooled chunk by chunk
            self.winners.forward(self.linear.forward(self.linear.x, training=True), training=True)
            self.z_dropped = False
        grad_pooled = activation_and_bias_grads(self.conv, grad_out, self.y)
        return [self.linear.backward(self.winners.backward(grad_pooled), self.input_grad_needed)]

    def workspace_bytes(self, batch_size):
        return self.linear.workspace_bytes(batch_size)


class ConvAvgPoolStep(Step):
    """A Conv2D read only by average pooling, its bias, activation and pooling in one pass over each
    image (``ops.bias_activation_avgpool``)::

        activated = f(z + b)                  (N, OH, OW, F)    kept: f' is written in terms of it
        y         = window means of activated (N, PH, PW, F)

    and backward, from ``dL/dy``, in one more (``ops.avgpool_activation_grad``)::

        dL/dz = dL/dy spread evenly over each window's real pixels, times f'(z)   (N, OH, OW, F)
        dL/db = dL/dz summed over N, OH, OW                                       (F,)

    then the conv's backward from ``dL/dz``.
    """

    def __init__(self, conv, pool, linear, inputs, output, input_grad_needed):
        super().__init__((conv, pool), inputs, output)
        self.conv, self.pool, self.linear, self.input_grad_needed = conv, pool, linear, input_grad_needed
        self.activated = None

    def forward(self, inputs, training):
        conv, pool = self.conv, self.pool
        z = self.linear.forward(inputs[0], training)
        self.activated, pooled = ops.bias_activation_avgpool(z, conv.params.get("bias"), conv.activation,
                                                             pool.pool_size, pool.strides, pool.pads)
        return pooled

    def backward(self, grad_out):
        conv, pool = self.conv, self.pool
        grad_z, grad_bias = ops.avgpool_activation_grad(grad_out, self.activated, conv.activation,
                                                        pool.pool_size, pool.strides, pool.pads)
        if conv.use_bias:
            conv.grads["bias"] = grad_bias
        return [self.linear.backward(grad_z, self.input_grad_needed)]

    def workspace_bytes(self, batch_size):
        return self.linear.workspace_bytes(batch_size)


class DirectConvMaxPoolStep(Step):
    """A 3x3, stride-1, unpadded Conv2D of one-channel images, with a non-decreasing activation, under
    2x2 max pooling at stride 2, as one direct kernel (``ops.conv3x3_maxpool``): each pooling window's
    four outputs are computed from the pixels under it and only the maximum is kept, so ``z`` is never
    stored.  Then ``y = f(pooled + b)`` as in :class:`ConvMaxPoolStep`.  The kernel has no input
    gradient: the conv must read a tensor whose gradient nobody needs (the model's input, or what
    parameter-free layers made of it).

    With ``maxima_alone`` an inference pass skips the argmax; a later backward recomputes it.
    """

    input_grad_needed = False

    def __init__(self, conv, pool, inputs, output, maxima_alone=False):
        super().__init__((conv, pool), inputs, output)
        self.conv, self.maxima_alone = conv, maxima_alone

    def forward(self, inputs, training):
        self.x = x = inputs[0]
        kernel = self.conv.params["kernel"]
        if training or not self.maxima_alone:
            pooled, self.argmax = ops.conv3x3_maxpool(x, kernel)
        else:
            pooled, self.argmax = ops.conv3x3_maxpool_values(x, kernel), None
        self.y = ops.bias_activation(pooled, self.conv.params.get("bias"), self.conv.activation)
        return self.y

    def backward(self, grad_out):
        """``dL/dW`` straight from the pooled gradient and the winners' pixels
        (``ops.conv3x3_maxpool_kernel_grad``); no input gradient."""
        grad_pooled = activation_and_bias_grads(self.conv, grad_out, self.y)
        if self.argmax is None:
            _, self.argmax = ops.conv3x3_maxpool(self.x, self.conv.params["kernel"])
        self.conv.grads["kernel"] = ops.conv3x3_maxpool_kernel_grad(self.x, grad_pooled, self.argmax)
        return [None]


class SoftmaxLogitsStep(Step):
    """A model's last layer ending in softmax, ``y = softmax(z)``, under a cross-entropy loss on
    probabilities: keeps the logits ``z`` so the loss computes ``-sum_k t_k log softmax(z)_k`` and
    ``dL/dz = (softmax(z) - t) / N`` from them, exact and finite where ``y`` underflows to 0.

    ``z`` is the layer's own :meth:`linear` (``x W + b`` for Dense, the conv for Conv2D; the input
    itself for a softmax ``Activation``), and ``backward_from_logits`` its ``linear_backward``.
    """


    def __init__(self, layer, inputs, output, input_grad_needed):
        super().__init__((layer,), inputs, output)
        self.layer, self.logits, self.input_grad_needed = layer, None, input_grad_needed

    def forward(self, inputs, training):
        """``z`` ``(N, ..., K)`` -> ``y = softmax(z)`` over the last axis."""
        x = inputs[0]
        self.logits = self.layer.linear(x) if hasattr(self.layer, "linear") else x
        self.y = activate(self.logits, None, "softmax")
        return self.y

    def backward(self, grad_out):
        """``dL/dz = y * (g - sum_k g_k y_k)`` for ``g = dL/dy``, then :meth:`backward_from_logits`."""
        return self.backward_from_logits(activation_backward(grad_out, self.y, "softmax"))

    def backward_from_logits(self, grad_logits):
        """From ``dL/dz``: the layer's parameter gradients and ``dL/dx`` (``None`` unless needed)."""
        if not hasattr(self.layer, "linear_backward"):
            return needed_grads([grad_logits], self.input_grad_needed)
        if not self.input_grad_needed:
            self.layer.linear_parameter_grads(grad_logits)
            return [None]
        return [self.layer.linear_backward(grad_logits)]

