"""2-D convolution (cross-correlation, as in every DL framework), channels-last, via im2col + GEMM
or Winograd F(2x2, 3x3) (:mod:`minidl.layers.conv_algorithms`), or, for a grayscale first conv under
max pooling, one direct kernel that pools as it convolves (:meth:`Conv2D.pools_directly`)."""

import os

from minidl.kernels.shapes import output_hw
from minidl.backend import ops
from minidl.layers.base import normalize_padding, normalize_pair, window_output_shape
from minidl.layers.conv_algorithms import Im2colGemm, WinogradF2x2
from minidl.layers.kernel_layer import KernelLayer

#: Scratch (im2col columns or Winograd tiles) allowed per conv layer; larger batches are processed in
#: chunks of images.
DEFAULT_WORKSPACE_BYTES = int(float(os.environ.get("MINIDL_WORKSPACE_MB", "256")) * 2**20)

ALGORITHMS = ("auto", "im2col", "winograd")

#: ``algorithm="auto"`` picks Winograd for 3x3 stride-1 kernels with at least this many input channels:
#: the seed CNN's second conv, where it was measured (``benchmarks/ab_step.py --decision winograd``).
WINOGRAD_MIN_CHANNELS = 32


class Conv2D(KernelLayer):
    """``y[n, i, j, o] = f(b[o] + sum_{p, q, c} x_pad[n, i*SH + p, j*SW + q, c] * W[p, q, c, o])``.

    Inputs ``(N, H, W, C_in)``, kernel ``W`` ``(KH, KW, C_in, filters)``, bias ``(filters,)``, outputs
    ``(N, OH, OW, filters)``; padding ``"valid"`` or ``"same"`` as in Keras.

    ``algorithm`` says how the sum is computed (:mod:`minidl.layers.conv_algorithms`):
    ``"im2col"`` is one GEMM, ``im2col(x) (N*OH*OW, KH*KW*C_in) @ W.reshape(KH*KW*C_in, filters)``;
    ``"winograd"`` (3x3 kernels, stride 1) needs 2.25x fewer multiplications; ``"auto"`` picks
    Winograd for those kernels from ``WINOGRAD_MIN_CHANNELS`` input channels on (its GEMMs have
    ``K = C_in``; thinner ones were not measured to pay for the transforms) and im2col otherwise.
    Under ``"auto"``, a 3x3 conv of one-channel images followed by 2x2 max pooling runs with the
    pooling as one direct kernel when it is the first layer (:meth:`pools_directly`).

    When a batch's scratch would exceed ``max_workspace_bytes`` it is processed in chunks of images,
    and each chunk's unfolded input is recomputed in backward instead of kept.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 max_workspace_bytes=DEFAULT_WORKSPACE_BYTES, algorithm="auto", **kwargs):
        super().__init__(activation=activation, **kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"{self.name}: filters must be a positive int, got {filters!r}")
        self.filters = filters
        self.kernel_size = normalize_pair(kernel_size, "kernel_size", self.name)
        self.strides = normalize_pair(strides, "strides", self.name)
        self.padding = normalize_padding(padding, self.name)
        self.max_workspace_bytes = int(max_workspace_bytes)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"{self.name}: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if algorithm == "winograd" and not self.winograd_applies():
            raise ValueError(f"{self.name}: algorithm 'winograd' needs a 3x3 kernel at stride 1, got kernel_size "
                             f"{self.kernel_size} and strides {self.strides}")
        self.algorithm = algorithm

    def winograd_applies(self):
        return self.kernel_size == (3, 3) and self.strides == (1, 1)

    def compute_output_shape(self, input_shape):
        self.pads, (out_h, out_w) = window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                                        self.padding)
        return out_h, out_w, self.filters

    def build(self, input_shape):
        super().build(input_shape)
        self.add_kernel_and_bias((*self.kernel_size, input_shape[2], self.filters))
        self.method = WinogradF2x2() if self.uses_winograd() else Im2colGemm(self.kernel_size, self.strides)

    def uses_winograd(self):
        """Whether ``algorithm`` resolves to Winograd for this layer's input channels."""
        if self.algorithm == "auto":
            return self.winograd_applies() and self.input_shape[2] >= WINOGRAD_MIN_CHANNELS
        return self.algorithm == "winograd"

    # ------------------------------------------------------------------------------ forward

    def forward(self, x, training=False):
        """``y = f(conv(x) + b)`` at every output position: ``(N, H, W, C_in) -> (N, OH, OW, F)``."""
        self.computed_pads = self.pads
        return super().forward(x, training)

    def pooled_linear(self, x, pool, training):
        """``pool`` over the convolution ``z``, computing only the outputs ``pool`` reads
        (:meth:`pads_read_by`): an ``11 x 11`` output under ``2 x 2`` pooling drops its last row and
        column, 17% of the convolution's work in both passes.

        Where :meth:`pools_directly` holds, one direct kernel (``ops.conv3x3_maxpool``) computes each
        pooling window's four outputs from the pixels under it and keeps the maximum, so ``z``
        ``(N, OH, OW, F)`` is never stored.  ``x`` ``(N, H, W, C_in)`` -> ``(N, PH, PW, F)``.
        """
        self.pooled_directly = self.pools_directly(pool)
        if not self.pooled_directly:
            self.computed_pads = self.pads_read_by(pool)
            return super().pooled_linear(x, pool, training)
        self.x, self.unfolded = x, None
        if training:
            pooled, self.pooled_argmax = ops.conv3x3_maxpool(x, self.params["kernel"])
        else:
            pooled, self.pooled_argmax = ops.conv3x3_maxpool_values(x, self.params["kernel"]), None
        return pooled

    def pools_directly(self, pool):
        """Whether this layer and ``pool`` run as ``ops.conv3x3_maxpool``: a 3x3, stride-1, unpadded
        convolution of one-channel images (a grayscale network's first conv, whose im2col rows are only
        ``K = 9`` long) under 2x2 max pooling at stride 2, with ``algorithm="auto"`` and no input
        gradient wanted (that kernel has no input gradient)."""
        return (self.algorithm == "auto" and self.kernel_size == (3, 3) and self.strides == (1, 1)
                and self.pads == ((0, 0), (0, 0)) and self.input_shape[2] == 1 and not self.input_grad_needed
                and pool.pool_size == (2, 2) and pool.strides == (2, 2) and pool.pads == ((0, 0), (0, 0)))

    def pads_read_by(self, pool):
        """``pads`` with the bottom and right paddings lowered by whole strides (below zero if need be)
        so that the output ends with the last row and column some window of ``pool`` reads.

        The dropped outputs never reach ``pool``'s output, so their gradient is zero and the input
        pixels only they read get no gradient (under Winograd, one of rounding size).
        """
        pads = []
        for axis in (0, 1):
            (before, after), out_size = self.pads[axis], self.output_shape[axis]
            (pool_before, _), pooled_size = pool.pads[axis], pool.output_shape[axis]
            read = (pooled_size - 1) * pool.strides[axis] + pool.pool_size[axis] - pool_before
            pads.append((before, after - max(0, out_size - read) * self.strides[axis]))
        return tuple(pads)

    def linear(self, x):
        """``z``, the convolution without bias or activation, by ``self.method``.

        ``x`` ``(N, H, W, C_in)`` -> ``z`` ``(N, OH, OW, F)``; keeps ``x``, the kernel matrix and (for
        a single chunk) the unfolded input.  ``OH, OW`` are ``output_shape``'s, or fewer under
        :meth:`pooled_linear`.
        """
        self.x = x
        self.kernel_matrix = self.method.kernel_matrix(self.params["kernel"])
        out_shape = (x.shape[0], *self.computed_hw(), self.filters)
        if self.images_per_chunk() >= x.shape[0]:
            self.unfolded = self.method.unfold(x, self.computed_pads)
            return self.method.outputs(self.unfolded, self.kernel_matrix, out_shape)
        self.unfolded = None
        z = ops.zeros(out_shape, self.dtype)
        for chunk in self.image_chunks(x.shape[0]):
            unfolded = self.method.unfold(x[chunk], self.computed_pads)
            z[chunk] = self.method.outputs(unfolded, self.kernel_matrix, (chunk.stop - chunk.start, *out_shape[1:]))
        return z

    def computed_hw(self):
        """``(OH, OW)`` of the outputs the last forward pass computed."""
        return output_hw((None, *self.input_shape), self.kernel_size, self.strides, self.computed_pads)

    # ----------------------------------------------------------------------------- backward

    def pooled_linear_backward(self, grad_pooled, pool):
        """Backward of :meth:`pooled_linear` from ``dL/dpooled`` ``(N, PH, PW, F)``.  After the direct
        kernel, ``dL/dW`` comes straight from the pooled gradient and the winners' pixels
        (``ops.conv3x3_maxpool_kernel_grad``) and no ``dL/dx`` is returned."""
        if not self.pooled_directly:
            return super().pooled_linear_backward(grad_pooled, pool)
        if self.pooled_argmax is None:  # the forward pass was an inference pass (a whole-model gradient check)
            _, self.pooled_argmax = ops.conv3x3_maxpool(self.x, self.params["kernel"])
        self.grads["kernel"] = ops.conv3x3_maxpool_kernel_grad(self.x, grad_pooled, self.pooled_argmax)
        return None

    def linear_backward(self, grad_z):
        """From ``dL/dz`` ``(N, OH, OW, F)``: ``dL/dW`` ``(KH, KW, C_in, F)`` into ``grads``, and
        ``dL/dx`` ``(N, H, W, C_in)`` returned (``None`` unless ``input_grad_needed``); the formulas
        are ``self.method``'s."""
        if self.unfolded is None:
            grad_kernel_matrix, grad_x = self.chunked_backward(grad_z)
        else:
            grad_kernel_matrix, grad_x = self.method.grads(self.unfolded, self.kernel_matrix, grad_z, self.x.shape,
                                                           self.computed_pads, self.input_grad_needed)
        self.grads["kernel"] = self.method.kernel_grad(grad_kernel_matrix, self.params["kernel"].shape)
        return grad_x

    def chunked_backward(self, grad_z):
        """The backward GEMMs a chunk of images at a time, unfolding each chunk again."""
        grad_kernel_matrix = ops.zeros(self.kernel_matrix.shape, self.dtype)
        grad_x = ops.zeros(self.x.shape, self.dtype) if self.input_grad_needed else None
        for chunk in self.image_chunks(self.x.shape[0]):
            x_chunk = self.x[chunk]
            unfolded = self.method.unfold(x_chunk, self.computed_pads)
            grad_chunk_matrix, grad_x_chunk = self.method.grads(unfolded, self.kernel_matrix, grad_z[chunk],
                                                                x_chunk.shape, self.computed_pads,
                                                                self.input_grad_needed)
            ops.accumulate(grad_kernel_matrix, grad_chunk_matrix)
            if self.input_grad_needed:
                grad_x[chunk] = grad_x_chunk
        return grad_kernel_matrix, grad_x

    # ---------------------------------------------------------------------------- workspace

    def bytes_per_image(self):
        """Scratch one image needs in a forward pass (``self.method``'s im2col columns or Winograd
        tiles and products), at the full ``output_shape``."""
        return self.method.bytes_per_image(self.input_shape, self.output_shape[:2], self.filters, self.dtype.itemsize)

    def images_per_chunk(self):
        return max(1, self.max_workspace_bytes // self.bytes_per_image())

    def image_chunks(self, batch_size):
        step = self.images_per_chunk()
        return [slice(start, min(start + step, batch_size)) for start in range(0, batch_size, step)]

    def workspace_bytes(self, batch_size):
        """One chunk's scratch and its gradient: ``2 * min(N, chunk) * bytes_per_image()``."""
        return 2 * min(batch_size, self.images_per_chunk()) * self.bytes_per_image()

    def workspace_summary(self, batch_size, pool=None):
        """The workspace and the method it is for, e.g. ``"1.7 MiB (winograd)"``; ``"none (direct, with
        pooling)"`` when this layer runs with ``pool`` as one direct kernel (:meth:`pools_directly`)."""
        if pool is not None and self.pools_directly(pool):
            return "none (direct, with pooling)"
        return f"{super().workspace_summary(batch_size)} ({self.method.name})"

    def get_config(self):
        config = {**super().get_config(), "filters": self.filters,
                  "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                  "padding": self.padding}
        if self.max_workspace_bytes != DEFAULT_WORKSPACE_BYTES:
            config["max_workspace_bytes"] = self.max_workspace_bytes
        if self.algorithm != "auto":
            config["algorithm"] = self.algorithm
        return config
