"""2-D convolution (cross-correlation, as in every DL framework), channels-last, via im2col + GEMM."""

import os

from kernels.shapes import output_hw
from minidl.backend import ops
from minidl.layers.base import normalize_padding, normalize_pair, window_output_shape
from minidl.layers.kernel_layer import KernelLayer

#: im2col scratch allowed per conv layer; larger batches are processed in chunks of images.
DEFAULT_WORKSPACE_BYTES = int(float(os.environ.get("MINIDL_WORKSPACE_MB", "256")) * 2**20)


class Conv2D(KernelLayer):
    """``y[n, i, j, o] = f(b[o] + sum_{p, q, c} x_pad[n, i*SH + p, j*SW + q, c] * W[p, q, c, o])``.

    Inputs ``(N, H, W, C_in)``, kernel ``W`` ``(KH, KW, C_in, filters)``, bias ``(filters,)``, outputs
    ``(N, OH, OW, filters)``; padding ``"valid"`` or ``"same"`` as in Keras.  The sum is one GEMM:
    ``im2col(x) (N*OH*OW, KH*KW*C_in) @ W.reshape(KH*KW*C_in, filters)``.  When the im2col matrix of a
    batch would exceed ``max_workspace_bytes`` the batch is processed in chunks of images and the
    chunks' columns are recomputed in backward instead of kept.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 max_workspace_bytes=DEFAULT_WORKSPACE_BYTES, **kwargs):
        super().__init__(activation=activation, **kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"{self.name}: filters must be a positive int, got {filters!r}")
        self.filters = filters
        self.kernel_size = normalize_pair(kernel_size, "kernel_size", self.name)
        self.strides = normalize_pair(strides, "strides", self.name)
        self.padding = normalize_padding(padding, self.name)
        self.max_workspace_bytes = int(max_workspace_bytes)

    def compute_output_shape(self, input_shape):
        self.pads, (out_h, out_w) = window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                                        self.padding)
        return out_h, out_w, self.filters

    def build(self, input_shape):
        super().build(input_shape)
        self.add_kernel_and_bias((*self.kernel_size, input_shape[2], self.filters))

    # ------------------------------------------------------------------------------ forward

    def forward(self, x, training=False):
        """``y = f(conv(x) + b)`` at every output position: ``(N, H, W, C_in) -> (N, OH, OW, F)``."""
        self.computed_pads = self.pads
        return super().forward(x, training)

    def forward_through_max_pooling(self, x, pool, training=False):
        """As :meth:`KernelLayer.forward_through_max_pooling`, computing only the outputs ``pool`` reads
        (:meth:`pads_read_by`): an ``11 x 11`` output under ``2 x 2`` pooling drops its last row and
        column, 17% of the convolution's work in both passes."""
        self.computed_pads = self.pads_read_by(pool)
        return super().forward_through_max_pooling(x, pool, training)

    def pads_read_by(self, pool):
        """``pads`` with the bottom and right paddings lowered by whole strides (below zero if need be)
        so that the output ends with the last row and column some window of ``pool`` reads.

        The dropped outputs never reach ``pool``'s output, so their gradient is zero and the input
        pixels only they read get a zero gradient from :func:`col2im`.
        """
        pads = []
        for axis in (0, 1):
            (before, after), out_size = self.pads[axis], self.output_shape[axis]
            (pool_before, _), pooled_size = pool.pads[axis], pool.output_shape[axis]
            read = (pooled_size - 1) * pool.strides[axis] + pool.pool_size[axis] - pool_before
            pads.append((before, after - max(0, out_size - read) * self.strides[axis]))
        return tuple(pads)

    def linear(self, x):
        """``z = im2col(x) @ W2d``, the convolution without bias or activation.

        ``x`` ``(N, H, W, C_in)`` -> ``z`` ``(N, OH, OW, F)``; keeps ``x`` and (one chunk) ``cols``.
        ``OH, OW`` are ``output_shape``'s, or fewer under :meth:`forward_through_max_pooling`.
        """
        self.x = x
        kernel2d = self.params["kernel"].reshape(-1, self.filters)  # (KH*KW*C_in, F)
        if self.images_per_chunk() >= x.shape[0]:
            self.cols = self.im2col(x)  # (N*OH*OW, KH*KW*C_in), kept for backward
            z = ops.matmul(self.cols, kernel2d)  # (N*OH*OW, F)
        else:
            self.cols = None
            z = self.chunked_matmul(x, kernel2d)
        return z.reshape(x.shape[0], *self.computed_hw(), self.filters)

    def computed_hw(self):
        """``(OH, OW)`` of the outputs the last forward pass computed."""
        return output_hw((None, *self.input_shape), self.kernel_size, self.strides, self.computed_pads)

    def im2col(self, x):
        return ops.im2col(x, self.kernel_size, self.strides, self.computed_pads)

    def chunked_matmul(self, x, kernel2d):
        """``im2col(x) @ W2d`` computed a chunk of images at a time: ``(N*OH*OW, F)``."""
        out_h, out_w = self.computed_hw()
        rows_per_image = out_h * out_w
        z = ops.zeros((x.shape[0] * rows_per_image, self.filters), self.dtype)
        for chunk in self.image_chunks(x.shape[0]):
            rows = slice(chunk.start * rows_per_image, chunk.stop * rows_per_image)
            z[rows] = ops.matmul(self.im2col(x[chunk]), kernel2d)
        return z

    # ----------------------------------------------------------------------------- backward

    def linear_backward(self, grad_z):
        """From ``dL/dz`` ``(N, OH, OW, F)``, with ``G = dL/dz`` as ``(N*OH*OW, F)``::

            dL/dW = im2col(x)^T G         (KH*KW*C_in, F) -> (KH, KW, C_in, F)
            dL/dx = col2im(G W2d^T)       (N*OH*OW, KH*KW*C_in) -> (N, H, W, C_in)
        """
        kernel2d = self.params["kernel"].reshape(-1, self.filters)
        grad_2d = grad_z.reshape(-1, self.filters)
        if self.cols is None:
            grad_kernel2d, grad_x = self.chunked_backward(grad_2d, kernel2d)
        else:
            grad_kernel2d = ops.matmul_tn(self.cols, grad_2d)
            grad_x = self.input_grad(ops.matmul_nt(grad_2d, kernel2d), self.x.shape) \
                if self.input_grad_needed else None
        self.grads["kernel"] = grad_kernel2d.reshape(self.params["kernel"].shape)
        return grad_x

    def chunked_backward(self, grad_2d, kernel2d):
        """The backward GEMMs a chunk of images at a time, recomputing each chunk's columns."""
        out_h, out_w = self.computed_hw()
        rows_per_image = out_h * out_w
        grad_kernel2d = ops.zeros(kernel2d.shape, self.dtype)
        grad_x = ops.zeros(self.x.shape, self.dtype) if self.input_grad_needed else None
        for chunk in self.image_chunks(self.x.shape[0]):
            x_chunk = self.x[chunk]
            grad_rows = grad_2d[chunk.start * rows_per_image: chunk.stop * rows_per_image]
            ops.accumulate(grad_kernel2d, ops.matmul_tn(self.im2col(x_chunk), grad_rows))
            if self.input_grad_needed:
                grad_x[chunk] = self.input_grad(ops.matmul_nt(grad_rows, kernel2d), x_chunk.shape)
        return grad_kernel2d, grad_x

    def input_grad(self, grad_cols, x_shape):
        """``dL/dx = col2im(dL/dcols)``: ``(n*OH*OW, KH*KW*C_in) -> (n, H, W, C_in)``."""
        return ops.col2im(grad_cols, x_shape, self.kernel_size, self.strides, self.computed_pads)

    # ---------------------------------------------------------------------------- workspace

    def cols_bytes_per_image(self):
        out_h, out_w, _ = self.output_shape
        return out_h * out_w * self.kernel_size[0] * self.kernel_size[1] * self.input_shape[2] \
            * self.dtype.itemsize

    def images_per_chunk(self):
        return max(1, self.max_workspace_bytes // self.cols_bytes_per_image())

    def image_chunks(self, batch_size):
        step = self.images_per_chunk()
        return [slice(start, min(start + step, batch_size)) for start in range(0, batch_size, step)]

    def workspace_bytes(self, batch_size):
        """im2col columns and their gradient for one chunk: ``2 * min(N, chunk) * OH*OW*KH*KW*C_in``
        elements."""
        return 2 * min(batch_size, self.images_per_chunk()) * self.cols_bytes_per_image()

    def get_config(self):
        config = {**super().get_config(), "filters": self.filters,
                  "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                  "padding": self.padding}
        if self.max_workspace_bytes != DEFAULT_WORKSPACE_BYTES:
            config["max_workspace_bytes"] = self.max_workspace_bytes
        return config
