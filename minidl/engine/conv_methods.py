"""Three ways to compute a convolution's sum ``z = conv(x, W)``, with the same results, and
:class:`ConvLinear`, which runs one of them for a Conv2D, over all of a batch or a chunk of images
at a time.

The methods work the same way: the kernel is turned into a matrix (or a stack of them) once per step,
the images are *unfolded* into the matrix the GEMMs read (kept for backward, or recomputed chunk by
chunk, or image by image), and the outputs are folded back from the products.  Shapes are for ``n`` images
``(n, H, W, C_in)``, a kernel ``(KH, KW, C_in, F)`` and outputs ``(n, OH, OW, F)``.

* :class:`Im2colGemm`: any window and strides; one GEMM of ``K = KH*KW*C_in`` per pass (the layer's
  own formula, :class:`minidl.layers.Conv2D`).
* :class:`Im2colByImage`: the same GEMM one image at a time, each image's ``cols`` made and
  multiplied in a cache-sized scratch, nothing kept for backward.
* :class:`Winograd`: 3x3 kernels at stride 1 only, F(2x2, 3x3) or F(4x4, 3x3); 16 or 36 GEMMs of
  ``K = C_in`` (forward), 2.25x or 4x fewer multiplications than im2col, paid for by the tile
  transforms (``minidl.kernels.winograd`` and ``minidl.kernels.numpy_ref`` explain them).
* :class:`WinogradByImage`: the same, one image at a time, nothing kept for backward.
"""

from minidl.kernels.shapes import output_hw, winograd_tiles_hw
from minidl.backend import ops


class Im2colGemm:
    """``z = im2col(x) @ W2d`` with ``W2d = W.reshape(KH*KW*C_in, F)``; backward::

        dL/dW2d = im2col(x)^T G          G = dL/dz as (n*OH*OW, F)
        dL/dx   = col2im(G W2d^T)
    """

    name = "im2col"

    def __init__(self, kernel_size, strides):
        self.kernel_size, self.strides = kernel_size, strides

    def kernel_matrix(self, kernel):
        """``(KH, KW, C_in, F) -> (KH*KW*C_in, F)``."""
        return kernel.reshape(-1, kernel.shape[3])

    def kernel_grad(self, grad_kernel_matrix, kernel_shape):
        """``dL/dW`` from ``dL/dW2d``: ``(KH*KW*C_in, F) -> (KH, KW, C_in, F)``."""
        return grad_kernel_matrix.reshape(kernel_shape)

    def unfold(self, x, pads):
        """``cols`` ``(n*OH*OW, KH*KW*C_in)``: every receptive field as a row."""
        return ops.im2col(x, self.kernel_size, self.strides, pads)

    def outputs(self, cols, kernel_matrix, out_shape, pads):
        """``z = cols @ W2d`` as ``out_shape`` ``(n, OH, OW, F)``."""
        return ops.matmul(cols, kernel_matrix).reshape(out_shape)

    def grads(self, cols, kernel_matrix, grad_z, x_shape, pads, input_grad_needed):
        """``(dL/dW2d, dL/dx or None)`` from ``grad_z = dL/dz`` ``(n, OH, OW, F)``."""
        grad_2d = grad_z.reshape(-1, kernel_matrix.shape[1])
        grad_kernel_matrix = ops.matmul_tn(cols, grad_2d)
        if not input_grad_needed:
            return grad_kernel_matrix, None
        grad_cols = ops.matmul_nt(grad_2d, kernel_matrix)
        return grad_kernel_matrix, ops.col2im(grad_cols, x_shape, self.kernel_size, self.strides, pads)

    def bytes_per_image(self, input_shape, output_hw, filters, itemsize):
        """Scratch one image needs in a forward pass: its ``cols`` rows."""
        (out_h, out_w), (kh, kw) = output_hw, self.kernel_size
        return out_h * out_w * kh * kw * input_shape[2] * itemsize


class Im2colByImage(Im2colGemm):
    """The products of :class:`Im2colGemm`, one image at a time (``ops.conv_by_image`` and its
    gradients): each image's ``cols`` are made in a scratch of the thread's own and multiplied while
    they are in cache, and nothing is kept for backward, where the kernel gradient unfolds each
    image again.  It pays where a batch's ``cols`` outgrow the cache (a 3-channel first conv; [D13]
    in ``benchmarks/RESULTS.md``)::

        z[n]    = im2col(x[n]) @ W2d
        dL/dW2d = sum over n of im2col(x[n])^T G[n]
        dL/dx[n] = col2im(G[n] W2d^T)
    """

    name = "im2col_by_image"

    def unfold(self, x, pads):
        """``x`` itself: the images are unfolded inside the products."""
        return x

    def outputs(self, x, kernel_matrix, out_shape, pads):
        """``z`` ``out_shape`` ``(n, OH, OW, F)`` from the images ``x`` padded by ``pads``."""
        return ops.conv_by_image(x, kernel_matrix, self.kernel_size, self.strides, pads)

    def grads(self, x, kernel_matrix, grad_z, x_shape, pads, input_grad_needed):
        """``(dL/dW2d, dL/dx or None)`` from ``grad_z = dL/dz`` ``(n, OH, OW, F)``."""
        grad_kernel_matrix = ops.conv_by_image_kernel_grad(x, grad_z, self.kernel_size, self.strides, pads)
        if not input_grad_needed:
            return grad_kernel_matrix, None
        return grad_kernel_matrix, ops.conv_by_image_input_grad(grad_z, kernel_matrix, x_shape, self.kernel_size,
                                                                self.strides, pads)

    def bytes_per_image(self, input_shape, output_hw, filters, itemsize):
        """No scratch grows with the batch: each thread unfolds one image at a time."""
        return 0


class Winograd:
    """Winograd F(m x m, 3x3), ``m = tile`` (2 or 4): for each ``(m+2) x (m+2)`` input tile ``d`` and
    ``m x m`` output block, ``y = A^T [U * (B^T d B)] A`` with ``U = G W G^T``.  Per position ``p`` of the
    ``P = (m+2)^2`` in a transformed tile the sum over input channels is a GEMM::

        M[p] = V[p] @ U[p]        V = tiles (P, n*TH*TW, C_in), U (P, C_in, F), M (P, n*TH*TW, F)
        z    = winograd_outputs(M)

    Backward, with ``dM = winograd_outputs_grad(dL/dz)``::

        dL/dU[p] = V[p]^T dM[p]             dL/dW = winograd_kernel_grad(dL/dU)
        dL/dV[p] = dM[p] U[p]^T             dL/dx = winograd_tiles_grad(dL/dV)

    The larger tile does fewer multiplications and moves fewer transformed values per output, but
    computes whole ``4 x 4`` blocks (a 13x13 output costs as much as a 16x16 one) and rounds more.
    """

    NAMES = {2: "winograd", 4: "winograd_4x4"}

    def __init__(self, tile=2):
        self.tile, self.name = tile, self.NAMES[tile]

    @staticmethod
    def applies_to(conv):
        """Winograd computes 3x3 kernels at stride 1 (any padding)."""
        return conv.kernel_size == (3, 3) and conv.strides == (1, 1)

    def kernel_matrix(self, kernel):
        """``U = G W G^T``: ``(3, 3, C_in, F) -> (P, C_in, F)``."""
        return ops.winograd_kernel(kernel, self.tile)

    def kernel_grad(self, grad_kernel_matrix, kernel_shape):
        """``dL/dW`` from ``dL/dU``: ``(P, C_in, F) -> (3, 3, C_in, F)``."""
        return ops.winograd_kernel_grad(grad_kernel_matrix)

    def unfold(self, x, pads):
        """``V`` ``(P, n*TH*TW, C_in)``: every tile, transformed."""
        return ops.winograd_tiles(x, pads, self.tile)

    def outputs(self, tiles, kernel_matrix, out_shape, pads):
        """``z = winograd_outputs(V @ U)`` as ``out_shape`` ``(n, OH, OW, F)``."""
        return ops.winograd_outputs(ops.matmul(tiles, kernel_matrix), out_shape)

    def grads(self, tiles, kernel_matrix, grad_z, x_shape, pads, input_grad_needed):
        """``(dL/dU, dL/dx or None)`` from ``grad_z = dL/dz`` ``(n, OH, OW, F)``."""
        grad_products = ops.winograd_outputs_grad(grad_z, self.tile)
        grad_kernel_matrix = ops.matmul_tn(tiles, grad_products)
        if not input_grad_needed:
            return grad_kernel_matrix, None
        grad_tiles = ops.matmul_nt(grad_products, kernel_matrix)
        return grad_kernel_matrix, ops.winograd_tiles_grad(grad_tiles, x_shape, pads)

    def tiles(self, output_hw):
        """``TH * TW``: the tiles one image's ``(OH, OW)`` output takes."""
        tiles_h, tiles_w = winograd_tiles_hw(output_hw, self.tile)
        return tiles_h * tiles_w

    def bytes_per_image(self, input_shape, output_hw, filters, itemsize):
        """Scratch one image needs in a forward pass: its tiles ``V`` and products ``M``."""
        return (self.tile + 2) ** 2 * self.tiles(output_hw) * (input_shape[2] + filters) * itemsize


class WinogradByImage(Winograd):
    """The products of :class:`Winograd`, one image at a time (``ops.winograd_by_image`` and its
    gradients): each image's tiles, products and outputs are made in a scratch of the thread's own
    and nothing is kept for backward, which makes each image's tiles again.  It pays where a batch's
    tiles and products pass the caches but one image's fit a core's L2 ([D23] in
    ``benchmarks/RESULTS.md``)::

        z[n]  = winograd_outputs(V[n] @ U)          V[n] = winograd_tiles(x[n])
        dL/dU = sum over n of V[n]^T dM[n]          dM[n] = winograd_outputs_grad(dL/dz[n])
        dL/dx[n] = winograd_tiles_grad(dM[n] U^T)
    """

    NAMES = {2: "winograd_by_image", 4: "winograd_4x4_by_image"}

    def unfold(self, x, pads):
        """``x`` itself: the tiles are made inside the products."""
        return x

    def outputs(self, x, kernel_matrix, out_shape, pads):
        """``z`` ``out_shape`` ``(n, OH, OW, F)`` from the images ``x`` padded by ``pads``."""
        return ops.winograd_by_image(x, kernel_matrix, pads)

    def grads(self, x, kernel_matrix, grad_z, x_shape, pads, input_grad_needed):
        """``(dL/dU, dL/dx or None)`` from ``grad_z = dL/dz`` ``(n, OH, OW, F)``; both from one ``dM`` per
        image where ``dL/dx`` is needed."""
        if not input_grad_needed:
            return ops.winograd_by_image_kernel_grad(x, grad_z, pads, self.tile), None
        return ops.winograd_by_image_grads(x, grad_z, kernel_matrix, pads)

    def bytes_per_image(self, input_shape, output_hw, filters, itemsize):
        """No scratch grows with the batch: each thread transforms one image at a time."""
        return 0


def candidate_methods(conv):
    """``{name: method}`` of every method that can compute ``conv``: im2col + GEMM over the batch
    or image by image always, Winograd F(2x2, 3x3) and F(4x4, 3x3), over the batch or image by
    image, where they apply."""
    methods = {method.name: method for method in (Im2colGemm(conv.kernel_size, conv.strides),
                                                  Im2colByImage(conv.kernel_size, conv.strides))}
    if Winograd.applies_to(conv):
        methods.update({method.name: method for method in (Winograd(2), Winograd(4), WinogradByImage(2),
                                                           WinogradByImage(4))})
    return methods


class ConvLinear:
    """``z = conv(x, W)`` of ``conv`` (no bias, no activation) by ``method`` over ``pads``; outside
    training by ``inference_method`` where one is set (a forward pass alone may favour another).

    ``pads`` are the layer's own, or smaller ones that leave out trailing outputs nobody reads
    (:func:`minidl.engine.passes.crop_unread_outputs`).  With ``images_per_chunk`` set, a larger batch
    is computed that many images at a time, and each chunk's unfolded input is recomputed in backward
    instead of kept, which bounds the scratch memory.  With ``inference_images_per_chunk`` set, a
    forward pass outside training runs in chunks of that many images and keeps nothing for backward
    (a backward after it unfolds the input again).
    """

    def __init__(self, conv, method, pads=None, images_per_chunk=None, inference_images_per_chunk=None,
                 inference_method=None):
        self.conv, self.method, self.inference_method = conv, method, inference_method
        self.pads = conv.pads if pads is None else pads
        self.images_per_chunk, self.inference_images_per_chunk = images_per_chunk, inference_images_per_chunk

    def output_hw(self):
        """``(OH, OW)`` of the outputs computed (fewer than the layer's when ``pads`` crop)."""
        return output_hw((None, *self.conv.input_shape), self.conv.kernel_size, self.conv.strides, self.pads)

    def method_for(self, training):
        """The method of a training pass, or of a pass outside training."""
        return self.method if training or self.inference_method is None else self.inference_method

    def bytes_per_image(self, training=True):
        """Scratch one image needs in a forward pass (im2col rows, or Winograd tiles and products) by
        the method of a training pass, or of one outside training."""
        return self.method_for(training).bytes_per_image(self.conv.input_shape, self.output_hw(), self.conv.filters,
                                                         self.conv.dtype.itemsize)

    def images_within(self, bound, training=True):
        """Images whose scratch fits ``bound`` bytes (at least one), or ``None`` for a method that keeps
        no scratch per image."""
        per_image = self.bytes_per_image(training)
        return max(1, bound // per_image) if per_image else None

    def chunks(self, batch_size, images_per_chunk=None):
        """Slices of the batch, each at most ``images_per_chunk`` images (default: the training
        chunks; one slice without chunking)."""
        step = images_per_chunk or self.images_per_chunk or batch_size
        return [slice(start, min(start + step, batch_size)) for start in range(0, batch_size, step)]

    def workspace_bytes(self, batch_size):
        """One chunk's scratch and its gradient."""
        images = batch_size if self.images_per_chunk is None else min(batch_size, self.images_per_chunk)
        return 2 * images * self.bytes_per_image()

    def forward(self, x, training=True, kernel_matrix=None):
        """``z`` ``(N, OH, OW, F)`` from ``x`` ``(N, H, W, C_in)``; keeps ``x``, the kernel matrix and
        (for a single chunk by the training method, unless an inference pass runs in its own chunks)
        the unfolded input.  ``kernel_matrix``: the method's, where a caller that passes the batch
        in parts made it once (:meth:`kernel_matrix_for`)."""
        method = self.method_for(training)
        self.x = x
        if kernel_matrix is None:
            kernel_matrix = self.kernel_matrix_for(training)
        self.kernel_matrix = kernel_matrix if method is self.method else None
        out_shape = (x.shape[0], *self.output_hw(), self.conv.filters)
        inference_chunks = not training and self.inference_images_per_chunk is not None
        chunks = self.chunks(x.shape[0], self.inference_images_per_chunk if inference_chunks else None)
        if len(chunks) == 1:
            unfolded = method.unfold(x, self.pads)
            self.unfolded = None if inference_chunks or method is not self.method else unfolded
            return method.outputs(unfolded, kernel_matrix, out_shape, self.pads)
        self.unfolded = None
        z = ops.empty(out_shape, self.conv.dtype)
        for chunk in chunks:
            unfolded = method.unfold(x[chunk], self.pads)
            z[chunk] = method.outputs(unfolded, kernel_matrix, (chunk.stop - chunk.start, *out_shape[1:]), self.pads)
        return z

    def kernel_matrix_for(self, training):
        """The kernel as the method of a training pass, or of one outside training, multiplies it
        (``W2d``, or Winograd's kernel tiles)."""
        return self.method_for(training).kernel_matrix(self.conv.params["kernel"])

    def backward(self, grad_z, input_grad_needed):
        """From ``dL/dz`` ``(N, OH, OW, F)``: ``dL/dW`` into the layer's ``grads``; returns ``dL/dx``
        ``(N, H, W, C_in)``, or ``None`` unless ``input_grad_needed``."""
        if self.kernel_matrix is None:  # the forward ran by the inference method
            self.kernel_matrix = self.method.kernel_matrix(self.conv.params["kernel"])
        if self.unfolded is None:
            grad_kernel_matrix, grad_x = self.chunked_backward(grad_z, input_grad_needed)
        else:
            grad_kernel_matrix, grad_x = self.method.grads(self.unfolded, self.kernel_matrix, grad_z, self.x.shape,
                                                           self.pads, input_grad_needed)
        self.conv.grads["kernel"] = self.method.kernel_grad(grad_kernel_matrix, self.conv.params["kernel"].shape)
        return grad_x

    def chunked_backward(self, grad_z, input_grad_needed):
        """The backward GEMMs a chunk of images at a time, unfolding each chunk again."""
        grad_kernel_matrix = ops.zeros(self.kernel_matrix.shape, self.conv.dtype)
        grad_x = ops.empty(self.x.shape, self.conv.dtype) if input_grad_needed else None
        for chunk in self.chunks(self.x.shape[0]):
            x_chunk = self.x[chunk]
            unfolded = self.method.unfold(x_chunk, self.pads)
            grad_chunk_matrix, grad_x_chunk = self.method.grads(unfolded, self.kernel_matrix, grad_z[chunk],
                                                                x_chunk.shape, self.pads, input_grad_needed)
            ops.accumulate(grad_kernel_matrix, grad_chunk_matrix)
            if input_grad_needed:
                grad_x[chunk] = grad_x_chunk
        return grad_kernel_matrix, grad_x
