"""The reference kernels, in plain NumPy: the readable oracle every other backend is tested against.

Every kernel module (``numpy_ref``, ``cpu``, ``cuda``) exposes the functions below with the same
signatures and results.  Layout is channels-last: images are ``(N, H, W, C)``, conv kernels
``(KH, KW, C_in, C_out)``.  ``pads`` is always explicit, ``((top, bottom), (left, right))``, as
computed by :func:`minidl.layers.base.window_geometry`.  A negative ``bottom`` or ``right`` drops that many
trailing rows or columns of the image, so a window's last outputs are not computed at all (a layer
does this for outputs nothing reads).

Arrays
    ``to_device(x)``, ``to_host(x)``, ``zeros(shape, dtype)``, ``zeros_like(x)``, ``add(a, b)``, ``multiply(a, b)``,
    ``accumulate(total, x)``, ``all_finite(x)``
Linear algebra
    ``matmul(a, b) = a @ b``, ``matmul_tn(a, b) = a.T @ b``, ``matmul_nt(a, b) = a @ b.T`` (also
    on stacks of matrices, ``(S, M, K)`` with ``(S, K, N)``, one product per slice),
    ``bias_grad(g) = g.sum(axis=0)``
Convolution
    ``im2col``, ``col2im``; Winograd F(2x2, 3x3) and F(4x4, 3x3): ``winograd_kernel``, ``winograd_tiles``,
    ``winograd_outputs`` and their adjoints ``winograd_kernel_grad``, ``winograd_tiles_grad``,
    ``winograd_outputs_grad``
Pooling
    ``maxpool_forward``, ``maxpool_values`` (the maxima without the argmax), ``maxpool_backward``,
    ``avgpool_forward``, ``avgpool_backward``
One-channel 3x3 convolution under 2x2 max pooling, in one pass
    ``conv3x3_maxpool``, ``conv3x3_maxpool_values``, ``conv3x3_maxpool_kernel_grad``
Activations
    ``bias_activation``, ``activation_grad`` (linear, relu, sigmoid, tanh), ``leaky_relu``,
    ``leaky_relu_grad``, ``softmax``, ``softmax_grad``
Losses
    ``softmax_cross_entropy``
Regularisation
    ``dropout``, ``regularize_grad``, ``regularization_penalty``
Optimizer updates (in place)
    ``sgd_update``, ``adam_update``, ``rmsprop_update``
Batch normalization
    ``channel_moments``, ``batch_norm``, ``batch_norm_backward``, ``moving_average_update`` (in place)
Padding and rescaling
    ``zero_pad``, ``zero_pad_grad``, ``scale_shift``
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .shapes import check_bias, concatenated_shape, pooled_grad_shape, split_shapes
from .shapes import (conv3x3_maxpool_grad_shape, conv3x3_maxpool_pads, conv3x3_maxpool_shape, output_hw,
                            winograd_tile_grid, winograd_tiles_hw)
from .winograd import tile_of_positions, winograd_matrices

__all__ = [
    "accumulate",
    "add",
    "activation_bias_grad",
    "activation_grad",
    "adam_update",
    "all_finite",
    "avgpool_activation_grad",
    "avgpool_backward",
    "avgpool_forward",
    "bias_activation",
    "bias_activation_avgpool",
    "bias_grad",
    "col2im",
    "conv_by_image",
    "conv_by_image_input_grad",
    "conv_by_image_kernel_grad",
    "conv3x3_maxpool",
    "conv3x3_maxpool_kernel_grad",
    "conv3x3_maxpool_values",
    "dropout",
    "dropout_counter",
    "dropout_hash_bits",
    "dropout_threshold",
    "empty",
    "im2col",
    "leaky_relu",
    "leaky_relu_grad",
    "matmul",
    "matmul_nt",
    "matmul_tn",
    "maxpool_backward",
    "maxpool_forward",
    "maxpool_values",
    "multiply",
    "regularization_penalty",
    "regularize_grad",
    "rmsprop_update",
    "sgd_update",
    "softmax",
    "softmax_cross_entropy",
    "softmax_grad",
    "to_device",
    "to_host",
    "winograd_by_image",
    "winograd_by_image_grads",
    "winograd_by_image_kernel_grad",
    "winograd_kernel",
    "winograd_kernel_grad",
    "winograd_outputs",
    "winograd_outputs_grad",
    "winograd_tiles",
    "winograd_tiles_grad",
    "zeros",
    "zeros_like",
    "channel_moments",
    "batch_norm",
    "batch_norm_backward",
    "moving_average_update",
    "zero_pad",
    "zero_pad_grad",
    "scale_shift",
    "check_activation",
    "concatenate",
    "split",
]

ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")


# ----------------------------------------------------------------------------------------- arrays


def to_device(x):
    """Make ``x`` an array this backend computes on (here: a C-contiguous NumPy array)."""
    return np.ascontiguousarray(x)


def to_host(x):
    """Return ``x`` as a NumPy array."""
    return np.asarray(x)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def empty(shape, dtype):
    """An array of ``shape`` and ``dtype`` whose values are unset (the caller writes every element)."""
    return np.empty(shape, dtype=dtype)


def zeros_like(x):
    return np.zeros_like(x)


def add(a, b):
    """Elementwise ``a + b`` of two arrays of the same shape."""
    return a + b


def multiply(a, b):
    """Elementwise ``a * b`` of two arrays of the same shape."""
    return a * b


def accumulate(total, x):
    """In place: ``total += x`` (same shapes)."""
    total += x


def all_finite(x):
    """``True`` when no element of ``x`` is NaN or infinite (a Python bool)."""
    return bool(np.isfinite(x).all())


# --------------------------------------------------------------------------------- linear algebra


def matmul(a, b):
    """``a @ b``: ``(M, K) @ (K, N) -> (M, N)``, or ``(S, M, K) @ (S, K, N) -> (S, M, N)``."""
    return a @ b


def matmul_tn(a, b):
    """``a.T @ b``: ``(K, M)^T @ (K, N) -> (M, N)``, or per slice ``(S, K, M)`` with ``(S, K, N)``."""
    return np.swapaxes(a, -1, -2) @ b


def matmul_nt(a, b):
    """``a @ b.T``: ``(M, K) @ (N, K)^T -> (M, N)``, or per slice ``(S, M, K)`` with ``(S, N, K)``."""
    return a @ np.swapaxes(b, -1, -2)


def bias_grad(grad_out):
    """Gradient of a bias broadcast over rows: ``grad_out.sum(axis=0)``, ``(M, N) -> (N,)``."""
    return grad_out.sum(axis=0)


# ------------------------------------------------------------------------------------ convolution


def _pad_images(x, pads, value=0.0):
    """``x`` padded by ``pads``; a negative bottom or right padding drops that many trailing rows or
    columns instead."""
    (top, bottom), (left, right) = pads
    padded = np.pad(x, ((0, 0), (top, max(bottom, 0)), (left, max(right, 0)), (0, 0)), constant_values=value)
    return padded[:, : x.shape[1] + top + bottom, : x.shape[2] + left + right]


def _padded_zeros(x_shape, pads, dtype):
    """Zeros the shape of ``x_shape`` images padded by ``pads`` (dropped rows and columns kept, so
    that slicing ``[top : top + H, left : left + W]`` gives the whole image)."""
    n, height, width, c = x_shape
    (top, bottom), (left, right) = pads
    return np.zeros((n, height + top + max(bottom, 0), width + left + max(right, 0), c), dtype)


def _windows(x_padded, window, strides):
    """View of every window: ``(N, Hp, Wp, C) -> (N, OH, OW, KH, KW, C)``, no copy."""
    n, hp, wp, c = x_padded.shape
    (kh, kw), (sh, sw) = window, strides
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s_n, s_h, s_w, s_c = x_padded.strides
    return as_strided(
        x_padded,
        shape=(n, oh, ow, kh, kw, c),
        strides=(s_n, s_h * sh, s_w * sw, s_h, s_w, s_c),
        writeable=False,
    )


def im2col(x, kernel_size, strides, pads):
    """Unfold every receptive field of ``x`` into one row.

    ``x`` ``(N, H, W, C)`` -> ``cols`` ``(N*OH*OW, KH*KW*C)``; row ``(n, oh, ow)`` holds
    ``x_padded[n, oh*SH + i, ow*SW + j, c]`` at column ``(i*KW + j)*C + c``.  A convolution is then
    ``cols @ kernel.reshape(KH*KW*C, C_out)``.
    """
    windows = _windows(_pad_images(x, pads), kernel_size, strides)
    n, oh, ow, kh, kw, c = windows.shape
    return windows.reshape(n * oh * ow, kh * kw * c)


def col2im(cols, x_shape, kernel_size, strides, pads):
    """Adjoint of :func:`im2col`: add every row of ``cols`` back onto the pixels it was read from.

    ``cols`` ``(N*OH*OW, KH*KW*C)`` -> ``(N, H, W, C)``; overlapping windows sum, padding is dropped.
    """
    n, height, width, c = x_shape
    (kh, kw), (sh, sw), ((top, bottom), (left, right)) = kernel_size, strides, pads
    hp, wp = height + top + bottom, width + left + right
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols6 = cols.reshape(n, oh, ow, kh, kw, c)
    x_padded = _padded_zeros(x_shape, pads, cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x_padded[:, i : i + sh * oh : sh, j : j + sw * ow : sw, :] += cols6[:, :, :, i, j, :]
    return x_padded[:, top : top + height, left : left + width, :]


def conv_by_image(x, kernel_matrix, kernel_size, strides, pads):
    """The convolution ``z = im2col(x) @ kernel_matrix`` with nothing kept for backward: ``x (N, H, W,
    C)``, ``kernel_matrix (KH*KW*C, F)`` (the kernel ``(KH, KW, C, F)`` reshaped) -> ``z (N, OH, OW,
    F)``.  The CPU backend unfolds and multiplies one image at a time."""
    out_h, out_w = output_hw(x.shape, kernel_size, strides, pads)
    return matmul(im2col(x, kernel_size, strides, pads), kernel_matrix).reshape(x.shape[0], out_h, out_w, -1)


def conv_by_image_kernel_grad(x, grad_out, kernel_size, strides, pads):
    """``dL/dkernel_matrix = im2col(x)^T @ G`` with ``G = grad_out`` ``(N, OH, OW, F)`` as
    ``(N*OH*OW, F)``: ``-> (KH*KW*C, F)``."""
    return matmul_tn(im2col(x, kernel_size, strides, pads), grad_out.reshape(-1, grad_out.shape[3]))


def conv_by_image_input_grad(grad_out, kernel_matrix, x_shape, kernel_size, strides, pads):
    """``dL/dx = col2im(G @ kernel_matrix^T)`` with ``G = grad_out`` as ``(N*OH*OW, F)``: ``-> x_shape``."""
    grad_cols = matmul_nt(grad_out.reshape(-1, kernel_matrix.shape[1]), kernel_matrix)
    return col2im(grad_cols, x_shape, kernel_size, strides, pads)


# ---------------------------------------------------------------------- Winograd F(m x m, 3 x 3)
#
# A 3x3 stride-1 convolution computed m x m outputs at a time from (m + 2) x (m + 2) input tiles
# (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015), m = ``tile`` = 2 or 4.
# For one tile ``d`` and one kernel ``g``:
#
#     y (m x m) = A^T [ (G g G^T) * (B^T d B) ] A      (* elementwise: 16 products instead of 36 for
#                                                        m = 2, 36 instead of 144 for m = 4)
#
# Over a batch, the elementwise product summed over input channels is P = (m + 2)^2 GEMMs, one per
# position ``(a, b)`` of the transformed tile: ``products[(m+2)a + b] = tiles[(m+2)a + b] @ kernel[...]``,
# with ``tiles (P, N*TH*TW, C_in)``, ``kernel (P, C_in, C_out)``, ``products (P, N*TH*TW, C_out)``.
# The matrices are in ``minidl.kernels.winograd``.  Every transform is linear, so each backward is its
# transpose (the ``_grad`` functions); those read ``m`` from the number of positions.


def winograd_kernel(kernel, tile=2):
    """``G g G^T`` for every ``(c_in, c_out)``: ``kernel (3, 3, C_in, C_out) -> (P, C_in, C_out)``."""
    _, g, _ = winograd_matrices(tile, kernel.dtype)
    return np.einsum("ap,pqco,bq->abco", g, kernel, g).reshape(-1, *kernel.shape[2:])


def winograd_kernel_grad(grad_kernel_tiles):
    """Adjoint of :func:`winograd_kernel`: ``G^T u G``, ``(P, C_in, C_out) -> (3, 3, C_in, C_out)``."""
    tile = tile_of_positions(grad_kernel_tiles.shape[0])
    _, g, _ = winograd_matrices(tile, grad_kernel_tiles.dtype)
    u = grad_kernel_tiles.reshape(tile + 2, tile + 2, *grad_kernel_tiles.shape[1:])
    return np.einsum("ap,abco,bq->pqco", g, u, g)


def winograd_tiles(x, pads, tile=2):
    """``B^T d B`` for every ``(m+2) x (m+2)`` tile ``d`` of ``x`` padded by ``pads`` (tiles at stride
    ``m``, in the order of :func:`im2col`'s rows): ``x (N, H, W, C) -> tiles (P, N*TH*TW, C)``.

    ``(TH, TW)`` come from :func:`kernels.shapes.winograd_tile_grid`; reads past the image are zeros.
    """
    _, tile_pads = winograd_tile_grid(x.shape, pads, tile)
    side = tile + 2
    d = im2col(x, (side, side), (tile, tile), tile_pads).reshape(-1, side, side, x.shape[3])
    b_t, _, _ = winograd_matrices(tile, x.dtype)
    return np.einsum("ap,tpqc,bq->abtc", b_t, d, b_t).reshape(side * side, -1, x.shape[3])


def winograd_tiles_grad(grad_tiles, x_shape, pads):
    """Adjoint of :func:`winograd_tiles`: ``B u B^T`` per tile, added back onto the pixels the tile
    was read from: ``(P, N*TH*TW, C) -> (N, H, W, C)``."""
    tile = tile_of_positions(grad_tiles.shape[0])
    _, tile_pads = winograd_tile_grid(x_shape, pads, tile)
    side = tile + 2
    b_t, _, _ = winograd_matrices(tile, grad_tiles.dtype)
    u = grad_tiles.reshape(side, side, -1, x_shape[3])
    d = np.einsum("ap,abtc,bq->tpqc", b_t, u, b_t)
    return col2im(d.reshape(d.shape[0], -1), x_shape, (side, side), (tile, tile), tile_pads)


def winograd_outputs(products, out_shape):
    """``A^T m A`` for every tile: ``products (P, N*TH*TW, C_out) -> y (N, OH, OW, C_out)``, the
    ``m x m`` output blocks laid side by side; where ``m`` does not divide ``OH`` or ``OW`` the last
    blocks' trailing rows or columns are dropped."""
    n, out_h, out_w, c_out = out_shape
    tile = tile_of_positions(products.shape[0])
    tiles_h, tiles_w = winograd_tiles_hw((out_h, out_w), tile)
    _, _, a_t = winograd_matrices(tile, products.dtype)
    m = products.reshape(tile + 2, tile + 2, n, tiles_h, tiles_w, c_out)
    blocks = np.einsum("ia,abnhwo,jb->nhiwjo", a_t, m, a_t)  # (N, TH, m, TW, m, C_out)
    return blocks.reshape(n, tile * tiles_h, tile * tiles_w, c_out)[:, :out_h, :out_w]


def winograd_outputs_grad(grad_out, tile=2):
    """Adjoint of :func:`winograd_outputs`: ``A g A^T`` for every ``m x m`` block of ``grad_out``
    (zeros for the dropped rows or columns): ``(N, OH, OW, C_out) -> (P, N*TH*TW, C_out)``."""
    n, out_h, out_w, c_out = grad_out.shape
    tiles_h, tiles_w = winograd_tiles_hw((out_h, out_w), tile)
    padded = np.zeros((n, tile * tiles_h, tile * tiles_w, c_out), grad_out.dtype)
    padded[:, :out_h, :out_w] = grad_out
    blocks = padded.reshape(n, tiles_h, tile, tiles_w, tile, c_out)
    _, _, a_t = winograd_matrices(tile, grad_out.dtype)
    return np.einsum("ia,nhiwjo,jb->abnhwo", a_t, blocks, a_t).reshape((tile + 2) ** 2, -1, c_out)


def winograd_by_image(x, kernel_tiles, pads):
    """The Winograd convolution with nothing kept for backward, ``z = winograd_outputs(V @ U)`` with
    ``V = winograd_tiles(x)`` and ``U = kernel_tiles`` per position: ``x (N, H, W, C)``, ``kernel_tiles
    (P, C, F)`` -> ``z (N, OH, OW, F)``.  The CPU backend computes it one image at a time."""
    tile = tile_of_positions(kernel_tiles.shape[0])
    out_shape = (x.shape[0], *output_hw(x.shape, (3, 3), (1, 1), pads), kernel_tiles.shape[2])
    return winograd_outputs(matmul(winograd_tiles(x, pads, tile), kernel_tiles), out_shape)


def winograd_by_image_kernel_grad(x, grad_out, pads, tile):
    """``dL/dU = V^T @ winograd_outputs_grad(grad_out)`` per position, ``V = winograd_tiles(x)``:
    ``x (N, H, W, C)``, ``grad_out (N, OH, OW, F)`` -> ``(P, C, F)``."""
    return matmul_tn(winograd_tiles(x, pads, tile), winograd_outputs_grad(grad_out, tile))


def winograd_by_image_grads(x, grad_out, kernel_tiles, pads):
    """Both gradients of :func:`winograd_by_image` from one ``dM = winograd_outputs_grad(grad_out)``:
    ``(dL/dU, dL/dx) = (V^T @ dM, winograd_tiles_grad(dM @ U^T))`` per position, ``V = winograd_tiles(x)``:
    ``x (N, H, W, C)``, ``grad_out (N, OH, OW, F)``, ``kernel_tiles (P, C, F)`` -> ``((P, C, F), (N, H, W,
    C))``."""
    tile = tile_of_positions(kernel_tiles.shape[0])
    grad_products = winograd_outputs_grad(grad_out, tile)
    return (matmul_tn(winograd_tiles(x, pads, tile), grad_products),
            winograd_tiles_grad(matmul_nt(grad_products, kernel_tiles), x.shape, pads))


# ---------------------------------------------------------------------------------------- pooling


def maxpool_forward(x, pool_size, strides, pads):
    """Max over each window, per channel.

    ``x`` ``(N, H, W, C)`` -> ``(out (N, OH, OW, C), argmax (N, OH, OW, C) int32)``; ``argmax`` is the
    flat index ``i*PW + j`` of the maximum inside its window (padding never wins: it is ``-inf``).
    """
    windows = _windows(_pad_images(x, pads, value=-np.inf), pool_size, strides)
    n, oh, ow, ph, pw, c = windows.shape
    flat = windows.reshape(n, oh, ow, ph * pw, c)
    argmax = flat.argmax(axis=3).astype(np.int32)
    out = np.take_along_axis(flat, argmax[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    return out, argmax


def maxpool_values(x, pool_size, strides, pads):
    """``maxpool_forward``'s ``out`` alone, for inference: ``x`` ``(N, H, W, C)`` -> ``(N, OH, OW, C)``."""
    return maxpool_forward(x, pool_size, strides, pads)[0]


def maxpool_backward(grad_out, argmax, x_shape, pool_size, strides, pads):
    """Route each output gradient to the input that was the window's maximum.

    ``grad_out``, ``argmax`` ``(N, OH, OW, C)`` -> ``grad_in`` ``(N, H, W, C)``;
    ``grad_in[n, oh*SH + i, ow*SW + j, c] += grad_out[n, oh, ow, c]`` where ``argmax == i*PW + j``.
    """
    _, height, width, _ = x_shape
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    oh, ow = grad_out.shape[1:3]
    grad_padded = _padded_zeros(x_shape, pads, grad_out.dtype)
    for i in range(ph):
        for j in range(pw):
            routed = np.where(argmax == i * pw + j, grad_out, 0)
            grad_padded[:, i : i + sh * oh : sh, j : j + sw * ow : sw, :] += routed
    return grad_padded[:, top : top + height, left : left + width, :]


def _window_counts(x_shape, pool_size, strides, pads, dtype):
    """How many real (unpadded) pixels each window covers: ``(1, OH, OW, 1)``."""
    ones = np.ones((1, x_shape[1], x_shape[2], 1), dtype=dtype)
    return _windows(_pad_images(ones, pads), pool_size, strides).sum(axis=(3, 4))


def avgpool_forward(x, pool_size, strides, pads):
    """Mean over each window of the real pixels it covers (padding is not counted, as in Keras).

    ``x`` ``(N, H, W, C)`` -> ``(N, OH, OW, C)``.
    """
    windows = _windows(_pad_images(x, pads), pool_size, strides)
    return windows.sum(axis=(3, 4)) / _window_counts(x.shape, pool_size, strides, pads, x.dtype)


def avgpool_backward(grad_out, x_shape, pool_size, strides, pads):
    """Spread each output gradient evenly over the real pixels of its window.

    ``grad_out`` ``(N, OH, OW, C)`` -> ``(N, H, W, C)``;
    ``grad_in[n, oh*SH + i, ow*SW + j, c] += grad_out[n, oh, ow, c] / count[oh, ow]``.
    """
    _, height, width, _ = x_shape
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    oh, ow = grad_out.shape[1:3]
    share = grad_out / _window_counts(x_shape, pool_size, strides, pads, grad_out.dtype)
    grad_padded = _padded_zeros(x_shape, pads, grad_out.dtype)
    for i in range(ph):
        for j in range(pw):
            grad_padded[:, i : i + sh * oh : sh, j : j + sw * ow : sw, :] += share
    return grad_padded[:, top : top + height, left : left + width, :]


# ------------------------------------------------- one-channel 3x3 convolution under 2x2 max pooling
#
# The first convolution of a grayscale network (one input channel, so im2col's rows are only K = 9
# long) followed by 2x2 max pooling, as one operation: the backends compute each pooling window's four
# convolution outputs directly from the 4x4 pixels under it and keep only the maximum, so neither the
# ``(N, OH, OW, F)`` outputs nor their gradient is ever stored.  Here it is the composition it stands
# for.  Outputs no window reads (an odd last row or column) are not computed
# (:func:`kernels.shapes.conv3x3_maxpool_pads`).

VALID = ((0, 0), (0, 0))


def conv3x3_maxpool(x, kernel):
    """``z = conv(x, kernel)`` (3x3, stride 1, no padding, no bias) under 2x2 max pooling at stride 2.

    ``x`` ``(N, H, W, 1)``, ``kernel`` ``(3, 3, 1, F)`` -> ``(pooled, argmax)``, both
    ``(N, PH, PW, F)`` with ``PH = (H - 2) // 2``, ``PW = (W - 2) // 2``::

        pooled[n, i, j, f] = max_{r, s in {0, 1}} z[n, 2i + r, 2j + s, f]

    and ``argmax`` the ``2r + s`` of that maximum (int32; ties and NaN as :func:`maxpool_forward`).
    """
    n, pooled_h, pooled_w, filters = conv3x3_maxpool_shape("conv3x3_maxpool", x.shape, kernel.shape)
    z = matmul(im2col(x, (3, 3), (1, 1), conv3x3_maxpool_pads(x.shape)), kernel.reshape(9, filters))
    return maxpool_forward(z.reshape(n, 2 * pooled_h, 2 * pooled_w, filters), (2, 2), (2, 2), VALID)


def conv3x3_maxpool_values(x, kernel):
    """:func:`conv3x3_maxpool`'s ``pooled`` alone, for inference: ``(N, H, W, 1) -> (N, PH, PW, F)``."""
    conv3x3_maxpool_shape("conv3x3_maxpool_values", x.shape, kernel.shape)
    return conv3x3_maxpool(x, kernel)[0]


def conv3x3_maxpool_kernel_grad(x, grad_pooled, argmax):
    """``dL/dkernel`` ``(3, 3, 1, F)`` of :func:`conv3x3_maxpool` from ``dL/dpooled`` and ``argmax``
    (both ``(N, PH, PW, F)``): each pooled gradient reaches the one output that won its window::

        dL/dkernel[p, q, 0, f] = sum_{n, i, j} dL/dpooled[n, i, j, f] * x[n, 2i + r + p, 2j + s + q, 0]

    with ``2r + s = argmax[n, i, j, f]``.
    """
    n, pooled_h, pooled_w, filters = conv3x3_maxpool_grad_shape("conv3x3_maxpool_kernel_grad", x.shape,
                                                                grad_pooled.shape, argmax.shape)
    cols = im2col(x, (3, 3), (1, 1), conv3x3_maxpool_pads(x.shape))
    grad_z = maxpool_backward(grad_pooled, argmax, (n, 2 * pooled_h, 2 * pooled_w, filters), (2, 2), (2, 2), VALID)
    return matmul_tn(cols, grad_z.reshape(-1, filters)).reshape(3, 3, 1, filters)


# ------------------------------------------------------------------------------------ activations


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def bias_activation(z, bias, activation):
    """``y = f(z + bias)``, bias broadcast over the last axis (``bias`` may be ``None``).

    ``f`` is ``linear`` (identity), ``relu`` ``max(0, v)``, ``sigmoid`` ``1 / (1 + e^-v)`` or
    ``tanh``.  Any shape ``(..., C)`` -> the same shape.
    """
    check_activation(activation)
    v = z if bias is None else z + bias
    if activation == "relu":
        return np.maximum(v, 0)
    if activation == "sigmoid":
        return _sigmoid(v)
    if activation == "tanh":
        return np.tanh(v)
    return v.copy() if v is z else v


def _sigmoid(v):
    """Logistic function, evaluated without overflow for large ``|v|``."""
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1 / (1 + e), e / (1 + e)).astype(v.dtype, copy=False)


def activation_grad(grad_out, y, activation):
    """``dL/dz = dL/dy * f'(z)``, with ``f'`` written in terms of the output ``y = f(z)``.

    relu: ``y > 0``; sigmoid: ``y (1 - y)``; tanh: ``1 - y^2``; linear: ``1``.  Same shape in and out.
    """
    check_activation(activation)
    if activation == "relu":
        return grad_out * (y > 0)
    if activation == "sigmoid":
        return grad_out * y * (1 - y)
    if activation == "tanh":
        return grad_out * (1 - y * y)
    return grad_out.copy()


def activation_bias_grad(grad_out, y, activation):
    """``(dL/dz, dL/db)``: :func:`activation_grad` and its :func:`bias_grad`, ``(M, C) -> ((M, C), (C,))``."""
    grad_z = activation_grad(grad_out, y, activation)
    return grad_z, bias_grad(grad_z)


def leaky_relu(z, alpha):
    """``y = z`` where ``z > 0``, else ``alpha * z``.  Same shape in and out."""
    return np.where(z > 0, z, alpha * z).astype(z.dtype, copy=False)


def leaky_relu_grad(grad_out, z, alpha):
    """``dL/dz = dL/dy`` where ``z > 0``, else ``alpha * dL/dy``.  Same shape in and out."""
    return np.where(z > 0, grad_out, alpha * grad_out).astype(grad_out.dtype, copy=False)


def softmax(z):
    """Row-wise softmax over the last axis, ``y_k = e^(z_k - max z) / sum_j e^(z_j - max z)``."""
    shifted = z - z.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_grad(grad_out, y):
    """Jacobian-vector product of softmax: ``dL/dz = y * (g - sum_k g_k y_k)`` per row."""
    return y * (grad_out - (grad_out * y).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------- activation under average pooling
#
# A conv's bias and activation and the average pooling after them, as one operation: the backends
# make ``y = f(z + b)`` and pool it while an image's ``y`` is still in cache, and backward spread the
# pooled gradient, multiply it by ``f'`` and sum the bias gradient in one pass.  ``y`` is kept: the
# derivative is written in terms of it.  Here it is the composition it stands for.


def bias_activation_avgpool(z, bias, activation, pool_size, strides, pads):
    """``(y, pooled)``: ``y = f(z + bias)`` for ``z`` ``(N, H, W, C)`` (``bias`` ``(C,)`` or ``None``)
    and ``pooled = avgpool_forward(y)`` ``(N, OH, OW, C)``."""
    check_bias("bias_activation_avgpool", bias, z.shape[-1])
    y = bias_activation(z, bias, activation)
    return y, avgpool_forward(y, pool_size, strides, pads)


def avgpool_activation_grad(grad_pooled, y, activation, pool_size, strides, pads):
    """``(grad_z, grad_bias)`` of :func:`bias_activation_avgpool` from ``dL/dpooled`` ``(N, OH, OW, C)``
    and ``y`` ``(N, H, W, C)``: ``grad_z = avgpool_backward(grad_pooled) * f'(z)`` (``f'`` from ``y``),
    ``grad_bias`` its sum over ``N, H, W``, ``(C,)``."""
    pooled_grad_shape("avgpool_activation_grad", grad_pooled.shape, y.shape, pool_size, strides, pads)
    grad_z = activation_grad(avgpool_backward(grad_pooled, y.shape, pool_size, strides, pads), y, activation)
    return grad_z, bias_grad(grad_z.reshape(-1, y.shape[3]))


# ----------------------------------------------------------------------------------------- losses


def softmax_cross_entropy(logits, targets):
    """Fused softmax + cross-entropy on logits, stable for any logits.

    ``logits``, ``targets`` ``(N, K)`` (targets one-hot or probabilities) ->
    ``(losses (N,), grad (N, K))`` with ``loss_n = -sum_k t_nk log softmax(z_n)_k`` and
    ``grad = (softmax(z) - t) / N``, the gradient of the mean loss (targets summing to one per row).
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum_exp = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_sum_exp
    losses = -(targets * log_probs).sum(axis=1)
    return losses, (np.exp(log_probs) - targets) / logits.shape[0]


# --------------------------------------------------------------------------------- regularisation


#: SplitMix64's increment and multipliers (Steele, Lea and Flood, "Fast splittable pseudorandom number
#: generators", 2014): the hash that decides, element by element, what dropout keeps.
SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
SPLITMIX_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))

#: Dropout compares the top this many bits of each element's hash with the rate.
DROPOUT_BITS = 24


def dropout_counter(seed):
    """Element ``i`` of a dropout with ``seed`` hashes the counter ``seed * 2^32 + i``: masks of
    different seeds (``0 <= seed < 2^31``) do not overlap for arrays under ``2^32`` elements."""
    if not 0 <= int(seed) < 2**31:
        raise ValueError(f"dropout: seed must be in [0, 2^31), got {seed!r}")
    return np.uint64(int(seed) << 32)


def dropout_threshold(rate):
    """Element ``i`` is dropped where the top :data:`DROPOUT_BITS` bits of its hash are below
    ``round(rate * 2^24)``: probability ``rate`` to within ``2^-25``."""
    if not 0 <= rate < 1:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate!r}")
    return np.uint64(round(rate * 2**DROPOUT_BITS))


def dropout_hash_bits(counters):
    """SplitMix64's output for ``counters`` (uint64, an array or one number), its top
    :data:`DROPOUT_BITS` bits; the CPU and CUDA backends compile this function for one counter."""
    z = counters * SPLITMIX_GAMMA
    z = (z ^ (z >> np.uint64(30))) * SPLITMIX_MULTIPLIERS[0]
    z = (z ^ (z >> np.uint64(27))) * SPLITMIX_MULTIPLIERS[1]
    z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(64 - DROPOUT_BITS)


def dropout(x, rate, seed):
    """Inverted dropout in one pass: ``(y, mask)`` with ``mask = 1 / (1 - rate)`` where element ``i``'s
    hash keeps it (probability ``1 - rate``), else ``0``, and ``y = x * mask``; both of ``x``'s shape
    and dtype.  The hash of ``(seed, i)`` decides, so the same seed gives the same mask on every
    backend."""
    counters = dropout_counter(seed) + np.arange(x.size, dtype=np.uint64)
    keep = dropout_hash_bits(counters) >= dropout_threshold(rate)
    mask = np.where(keep, x.dtype.type(1.0 / (1.0 - rate)), x.dtype.type(0)).reshape(x.shape)
    return x * mask, mask


def regularize_grad(grad, param, l1, l2):
    """In place: ``grad += l1 * sign(param) + 2 * l2 * param``, the gradient of
    ``l1 * sum|w| + l2 * sum w^2``."""
    if l1:
        grad += l1 * np.sign(param)
    if l2:
        grad += (2 * l2) * param


def regularization_penalty(param, l1, l2):
    """``l1 * sum|w| + l2 * sum w^2`` as a Python float."""
    return float(l1 * np.abs(param).sum() + l2 * (param * param).sum())


# -------------------------------------------------------------------------------- optimizer steps


def sgd_update(param, grad, velocity, lr, momentum, nesterov):
    """In place, Keras's SGD: ``v = momentum * v - lr * g``; ``w += v`` or, with Nesterov,
    ``w += momentum * v - lr * g``.  With ``momentum == 0`` this is ``w -= lr * g``."""
    velocity *= momentum
    velocity -= lr * grad
    if nesterov:
        param += momentum * velocity - lr * grad
    else:
        param += velocity


def adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, step):
    """In place, Keras's Adam at step ``t = step`` (1-based)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    """
    m *= beta_1
    m += (1 - beta_1) * grad
    v *= beta_2
    v += (1 - beta_2) * grad * grad
    lr_t = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    param -= (lr_t * m / (np.sqrt(v) + epsilon)).astype(param.dtype, copy=False)


def rmsprop_update(param, grad, mean_square, lr, rho, epsilon):
    """In place, Keras's RMSprop: ``s = rho s + (1 - rho) g^2``; ``w -= lr * g / sqrt(s + eps)``."""
    mean_square *= rho
    mean_square += (1 - rho) * grad * grad
    param -= (lr * grad / np.sqrt(mean_square + epsilon)).astype(param.dtype, copy=False)


# ------------------------------------------------------------------------- batch normalization
#
# Over ``x`` ``(M, C)``: every row one position (an image's pixel, or a sample), every column one
# channel; a layer reshapes ``(N, H, W, C)`` or ``(N, C)`` to it.


def channel_moments(x):
    """Per-column mean and (biased) variance: ``x`` ``(M, C)`` -> ``(mean (C,), variance (C,))``::

        mean[c]     = 1/M sum_m x[m, c]
        variance[c] = 1/M sum_m (x[m, c] - mean[c])^2
    """
    mean = x.mean(axis=0)
    return mean, ((x - mean) ** 2).mean(axis=0)


def batch_norm(x, mean, variance, gamma, beta, epsilon):
    """``y = gamma (x - mean) / sqrt(variance + epsilon) + beta`` per column: ``(M, C)`` -> ``(M, C)``,
    with ``mean``, ``variance``, ``gamma``, ``beta`` ``(C,)``."""
    inv_std = 1 / np.sqrt(variance + epsilon)
    return ((x - mean) * (gamma * inv_std) + beta).astype(x.dtype, copy=False)


def batch_norm_backward(grad_out, x, mean, variance, gamma, epsilon, batch_statistics):
    """Gradients of :func:`batch_norm` from ``g = dL/dy`` ``(M, C)``, with
    ``x_hat = (x - mean) / sqrt(variance + epsilon)``::

        dL/dbeta  = sum_m g                               (C,)
        dL/dgamma = sum_m g x_hat                         (C,)
        dL/dx     = gamma / sqrt(variance + epsilon) * g  (M, C)   mean and variance constants

    With ``batch_statistics`` the mean and variance are ``x``'s own (:func:`channel_moments`), so they
    depend on every row, and::

        dL/dx = gamma / sqrt(variance + epsilon) * (g - dL/dbeta / M - x_hat dL/dgamma / M)

    Returns ``(dL/dx, dL/dgamma, dL/dbeta)``.
    """
    inv_std = 1 / np.sqrt(variance + epsilon)
    x_hat = (x - mean) * inv_std
    grad_beta = grad_out.sum(axis=0)
    grad_gamma = (grad_out * x_hat).sum(axis=0)
    if batch_statistics:
        rows = x.shape[0]
        grad_x = (gamma * inv_std) * (grad_out - grad_beta / rows - x_hat * (grad_gamma / rows))
    else:
        grad_x = (gamma * inv_std) * grad_out
    return grad_x.astype(x.dtype, copy=False), grad_gamma, grad_beta


def moving_average_update(moving, value, momentum):
    """In place: ``moving = momentum * moving + (1 - momentum) * value`` (same shapes)."""
    moving *= momentum
    moving += (1 - momentum) * value


# ------------------------------------------------------------------------ padding and rescaling


def zero_pad(x, pads):
    """``x`` ``(N, H, W, C)`` inside a border of zeros ``pads = ((top, bottom), (left, right))``, all
    ``>= 0``: ``(N, top + H + bottom, left + W + right, C)``."""
    (top, bottom), (left, right) = pads
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def zero_pad_grad(grad_out, pads):
    """Adjoint of :func:`zero_pad`: the inner ``(N, H, W, C)`` of ``grad_out`` (the border read no input)."""
    (top, bottom), (left, right) = pads
    _, padded_h, padded_w, _ = grad_out.shape
    return grad_out[:, top : padded_h - bottom, left : padded_w - right].copy()


def scale_shift(x, scale, offset):
    """``y = x * scale + offset`` for numbers ``scale`` and ``offset``; same shape and dtype as ``x``."""
    return (x * x.dtype.type(scale) + x.dtype.type(offset)).astype(x.dtype, copy=False)
# ------------------------------------------------------------------------------ joining tensors


def concatenate(parts, axis):
    """``parts`` joined along ``axis``: shapes equal except on ``axis``, where they add up, e.g.
    ``(N, H, W, C_1), (N, H, W, C_2) -> (N, H, W, C_1 + C_2)``."""
    concatenated_shape("concatenate", [part.shape for part in parts], axis)
    return np.concatenate(parts, axis=axis)


def split(x, sizes, axis):
    """The inverse of :func:`concatenate` (and its gradient): ``x`` cut along ``axis`` into fresh
    arrays holding ``sizes[0], sizes[1], ...`` of it, e.g. ``(N, H, W, C_1 + C_2) -> [(N, H, W, C_1),
    (N, H, W, C_2)]``."""
    split_shapes("split", x.shape, sizes, axis)
    boundaries = np.cumsum(sizes)[:-1]
    return [np.ascontiguousarray(part).copy() for part in np.split(x, boundaries, axis=axis)]


