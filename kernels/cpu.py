"""The reference kernels made fast with Numba: same names, signatures and results as ``numpy_ref``.

Every loop kernel is an ``@numba.njit(cache=True)`` function over C-contiguous arrays, compiled once
per dtype (float32, float64) and cached on disk, so a second process starts warm (:func:`warmup`
compiles or loads them all and reports the seconds each took).  The public functions are thin
wrappers that resolve shapes (``kernels.shapes``), allocate the fresh output and call the kernel.
Every returned array is a fresh array the caller may keep, C-contiguous except :func:`im2col`'s (see
there and ``minidl.kernels.contract``); the optimizer updates and
:func:`regularize_grad` work in place and need C-contiguous targets.

Loops whose size is an activation tensor (im2col, col2im, pooling, activations, ...) are compiled
``parallel=True`` over images, rows or elements, as are the optimizer updates; loops over a batch of
logits are serial.
Division follows IEEE rules as in NumPy (``x / 0`` is ``inf``), which also lets loops vectorise.

GEMMs
-----
:func:`matmul`, :func:`matmul_tn` and :func:`matmul_nt` split each product across Numba's threads,
each part a call of the BLAS library's own single-threaded GEMM (``kernels.blas``, found by
:func:`apply_thread_policy`); transposed operands are passed as BLAS flags, never copied.  Before the
policy runs, or where no such library is found, NumPy's ``@`` runs them.  A direct Numba loop for the
thin products of a grayscale first conv (``K = 9``) lost to BLAS on every shape tried
(``benchmarks/RESULTS.md``), once fresh outputs stopped paying page faults (see Memory).

Memory
------
:func:`memory.retain_freed_memory` makes glibc keep freed blocks for reuse, so the same large arrays
allocated every step do not page-fault; ``minidl.backend.apply_process_settings`` applies it where a
model first runs (``benchmarks/RESULTS.md`` [P1]; ``python benchmarks/kernel_step.py --default-malloc``
shows the difference).  The process then keeps its peak heap instead of returning it to the OS.

Threads
-------
Policy (:func:`apply_thread_policy`): one pool of threads runs the whole step.  NumPy's BLAS is set to
one thread, and the GEMMs are split across Numba's threads (above), which run every other kernel too:
``MINIDL_NUM_THREADS`` of them (default: every thread Numba has, one per core), or
:func:`set_num_threads` (for the calling thread: Numba's rule).  With two pools, BLAS's idle threads
spin on the cores between GEMMs and the Numba kernels could not use them ([P2]); with one, the
Winograd transforms, unfolds and elementwise kernels run on every core as well ([P3];
``benchmarks/RESULTS.md`` holds both).  Where no BLAS library is found, the [P2] policy holds: BLAS on
its own threads, the Numba kernels on one, ``OMP_WAIT_POLICY=PASSIVE`` unless set.
"""

import functools
import os
import time

import numba  # noqa: E402
import numpy as np  # noqa: E402

from . import blas, numpy_ref  # noqa: E402
from .numpy_ref import ACTIVATIONS, empty, to_device, to_host, zeros, zeros_like  # noqa: E402
from .shapes import (conv3x3_maxpool_grad_shape, conv3x3_maxpool_shape, output_hw,  # noqa: E402
                            winograd_tile_grid, winograd_tiles_hw)
from .winograd import check_tile, tile_of_positions, winograd_matrices  # noqa: E402
from .shapes import as_three_axes, check_bias, concatenated_shape, pooled_grad_shape, split_shapes  # noqa: E402

__all__ = [
    "to_device", "to_host", "zeros", "zeros_like", "empty", "add", "multiply", "accumulate", "all_finite",
    "matmul", "matmul_tn", "matmul_nt", "bias_grad", "im2col", "col2im",
    "conv_by_image", "conv_by_image_kernel_grad", "conv_by_image_input_grad",
    "winograd_kernel", "winograd_kernel_grad", "winograd_tiles", "winograd_tiles_grad",
    "winograd_by_image", "winograd_by_image_kernel_grad", "winograd_by_image_grads",
    "winograd_outputs", "winograd_outputs_grad",
    "maxpool_forward", "maxpool_values", "maxpool_backward", "avgpool_forward", "avgpool_backward",
    "conv3x3_maxpool", "conv3x3_maxpool_values", "conv3x3_maxpool_kernel_grad",
    "bias_activation", "activation_grad", "activation_bias_grad", "leaky_relu", "leaky_relu_grad", "softmax",
    "softmax_grad",
    "bias_activation_avgpool", "avgpool_activation_grad",
    "softmax_cross_entropy", "dropout", "regularize_grad", "regularization_penalty",
    "sgd_update", "adam_update", "rmsprop_update",
    "channel_moments", "batch_norm", "batch_norm_backward", "moving_average_update",
    "zero_pad", "zero_pad_grad", "scale_shift",
    "apply_thread_policy", "cache_report", "check_available", "set_num_threads", "thread_policy", "warmup",
    "concatenate",
    "split",
]

LINEAR, RELU, SIGMOID, TANH = (ACTIVATIONS.index(name) for name in ("linear", "relu", "sigmoid", "tanh"))

# Rows each parallel task of a column sum adds up before the partial sums are combined.
SUM_CHUNK_ROWS = 1024

# Values each parallel task of a bias + activation loop takes: whole rows of about this many.
ACTIVATION_CHUNK = 16384

# Inputs with fewer channels than this get the transposed im2col layout (see im2col).
FEW_CHANNELS = 4

# error_model="numpy": division by zero gives inf/nan as in NumPy instead of raising, which also
# lets LLVM vectorise loops that divide.
jit = numba.njit(cache=True, error_model="numpy")
jit_parallel = numba.njit(cache=True, error_model="numpy", parallel=True)
#: for a loop that must compile inside its caller: there LLVM sees the scratch arrays the caller made,
#: which cannot overlap its other arrays, and vectorises (as an argument, a scratch array might)
jit_inline = numba.njit(cache=True, error_model="numpy", inline="always")


# ------------------------------------------------------------------------------- helpers (Python)


def _activation_code(function, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"{function}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    return ACTIVATIONS.index(activation)


def _flat(x):
    """``x`` as a 1-D C-contiguous array (a view when ``x`` is already contiguous)."""
    return np.ascontiguousarray(x).reshape(-1)


def _flat_inplace(function, name, x):
    """A 1-D view of ``x`` for an in-place update; refuses arrays a view cannot cover."""
    if not x.flags.c_contiguous:
        raise ValueError(f"{function}: {name} must be C-contiguous to be updated in place")
    return x.reshape(-1)


def _check_same_shape(function, a_name, a, b_name, b):
    if a.shape != b.shape:
        raise ValueError(f"{function}: {a_name} has shape {a.shape} but {b_name} has shape {b.shape}")


# ------------------------------------------------------------------------------------ arrays


@jit_parallel
def _add_kernel(a, b, out):
    """``out[i] = a[i] + b[i]`` over flat arrays (``out`` may be ``a``)."""
    for i in numba.prange(a.size):
        out[i] = a[i] + b[i]


@jit_parallel
def _multiply_kernel(a, b, out):
    """``out[i] = a[i] * b[i]`` over flat arrays."""
    for i in numba.prange(a.size):
        out[i] = a[i] * b[i]


def add(a, b):
    """Elementwise ``a + b`` of two arrays of the same shape (a fresh array, in one pass)."""
    _check_same_shape("add", "a", a, "b", b)
    out = np.empty(a.shape, dtype=np.result_type(a, b))
    _add_kernel(_flat(a), _flat(b), out.reshape(-1))
    return out


def multiply(a, b):
    """Elementwise ``a * b`` of two arrays of the same shape (a fresh array)."""
    _check_same_shape("multiply", "a", a, "b", b)
    out = np.empty(a.shape, dtype=np.result_type(a, b))
    _multiply_kernel(_flat(a), _flat(b), out.reshape(-1))
    return out


def accumulate(total, x):
    """In place: ``total += x`` (same shapes; ``total`` C-contiguous), across the threads."""
    _check_same_shape("accumulate", "total", total, "x", x)
    flat_total = _flat_inplace("accumulate", "total", total)
    _add_kernel(flat_total, _flat(x), flat_total)


@jit
def _all_finite_kernel(x):
    """``False`` at the first NaN or infinity of the flat array ``x``, else ``True``."""
    for i in range(x.size):
        if not np.isfinite(x[i]):
            return False
    return True


def all_finite(x):
    """``True`` when no element of ``x`` is NaN or infinite (a Python bool); stops at the first."""
    return bool(_all_finite_kernel(_flat(x)))


# --------------------------------------------------------------------------------- linear algebra


def _check_matmul(function, a, b, a_axis, b_axis):
    """Both 2-D, or both stacks ``(S, ., .)`` of as many matrices; ``a_axis`` and ``b_axis`` (0 or 1)
    pick each matrix's inner dimension."""
    same_stack = a.ndim == b.ndim == 2 or (a.ndim == b.ndim == 3 and a.shape[0] == b.shape[0])
    if not same_stack or a.shape[a_axis - 2] != b.shape[b_axis - 2]:
        raise ValueError(f"{function}: cannot multiply shapes {a.shape} and {b.shape}")


# Under the one-pool policy (see "Threads") a GEMM is split across Numba's threads, each calling the
# BLAS library's single-threaded ``?gemm`` (``kernels.blas``) on one part: a slice of a stack, a block
# of output rows or columns or, where the output is too small to split, a share of the inner
# dimension whose partial products are then added.  Below the sizes here, splitting costs more than it saves.

#: the BLAS library whose GEMMs run on Numba's threads, set by :func:`apply_thread_policy`; while it
#: is ``None``, NumPy's ``@`` runs them on the library's own threads
GEMM_LIBRARY = None
#: fewest output rows (or columns) of a block, fewest inner-dimension terms of a share, fewest
#: multiply-adds of a product worth splitting
MIN_PART_ROWS, MIN_PART_DEPTH, MIN_SPLIT_WORK = 16, 256, 2**16


@jit_parallel
def _gemm_by_blocks(gemm, a, b, trans_a, trans_b, row_blocks, col_blocks, c):
    """``c[s, rows, cols] = op(a[s])[rows] @ op(b[s])[:, cols]`` for each slice ``s`` and each of
    ``row_blocks x col_blocks`` blocks of the output: one BLAS call per (slice, block), the calls
    spread across the threads.  ``op`` transposes where ``trans_a`` / ``trans_b`` say: ``a (S, M, K)``
    or ``(S, K, M)``, ``b (S, K, N)`` or ``(S, N, K)``, ``c (S, M, N)``, all C-contiguous."""
    slices, rows, cols = c.shape
    depth = a.shape[1] if trans_a else a.shape[2]
    lda, ldb, size = a.shape[2], b.shape[2], c.itemsize
    op_a, op_b = blas.TRANS if trans_a else blas.NO_TRANS, blas.TRANS if trans_b else blas.NO_TRANS
    blocks = row_blocks * col_blocks
    for part in numba.prange(slices * blocks):
        s, row_block, col_block = part // blocks, part % blocks // col_blocks, part % col_blocks
        first_row, last_row = row_block * rows // row_blocks, (row_block + 1) * rows // row_blocks
        first_col, last_col = col_block * cols // col_blocks, (col_block + 1) * cols // col_blocks
        a_start = s * a.shape[1] * lda + (first_row if trans_a else first_row * lda)
        b_start = s * b.shape[1] * ldb + (first_col * ldb if trans_b else first_col)
        gemm(blas.ROW_MAJOR, op_a, op_b, last_row - first_row, last_col - first_col, depth, 1.0,
             a.ctypes.data + a_start * size, lda, b.ctypes.data + b_start * size, ldb,
             0.0, c.ctypes.data + ((s * rows + first_row) * cols + first_col) * size, cols)


@jit_parallel
def _gemm_by_depth(gemm, a, b, trans_a, trans_b, partials):
    """``partials[p, s] = op(a[s])[:, ks] @ op(b[s])[ks, :]`` for each of ``P`` consecutive shares
    ``ks`` of the inner dimension, one BLAS call per (share, slice), so that ``partials.sum(0)`` is
    the product; shapes as in :func:`_gemm_by_blocks`, ``partials (P, S, M, N)``."""
    shares, slices, rows, cols = partials.shape
    depth = a.shape[1] if trans_a else a.shape[2]
    lda, ldb, size = a.shape[2], b.shape[2], partials.itemsize
    op_a, op_b = blas.TRANS if trans_a else blas.NO_TRANS, blas.TRANS if trans_b else blas.NO_TRANS
    for part in numba.prange(shares * slices):
        share, s = part // slices, part % slices
        first, last = share * depth // shares, (share + 1) * depth // shares
        a_start = s * a.shape[1] * lda + (first * lda if trans_a else first)
        b_start = s * b.shape[1] * ldb + (first if trans_b else first * ldb)
        gemm(blas.ROW_MAJOR, op_a, op_b, rows, cols, last - first, 1.0,
             a.ctypes.data + a_start * size, lda, b.ctypes.data + b_start * size, ldb,
             0.0, partials.ctypes.data + (share * slices + s) * rows * cols * size, cols)


def _gemm_parts(slices, rows, depth, cols, threads):
    """``(row blocks, column blocks, inner-dimension shares)`` of a product of ``slices`` matrices
    ``(rows, depth) @ (depth, cols)`` on ``threads`` threads: whole slices where there are at least
    as many as threads; shares of the inner dimension for a single slice whose output has fewer
    entries than that dimension has terms (a kernel gradient) or is too small to cut; else blocks of
    the longer output side (each thread then packs all of the operand along the other); none
    smaller than the ``MIN_PART_*`` sizes, and ``(1, 1, 1)`` for a product too small to split."""
    if threads == 1 or slices >= threads or slices * rows * depth * cols < MIN_SPLIT_WORK:
        return 1, 1, 1
    blocks = -(-threads // slices)
    can_cut_output = max(rows, cols) >= blocks * MIN_PART_ROWS
    if slices == 1 and depth >= threads * MIN_PART_DEPTH and (rows * cols < depth or not can_cut_output):
        return 1, 1, threads
    if can_cut_output:
        return (blocks, 1, 1) if rows >= cols else (1, blocks, 1)
    return 1, 1, 1


def _gemm_operand(x, trans):
    """``(x3, trans3)``: ``x`` as a C-contiguous stack ``(S, ., .)`` and whether to transpose it, such
    that ``op(x3)`` is ``op(x)``; an ``x`` whose swapped last two axes are contiguous (the transposed
    ``cols`` of :func:`im2col`) is read as that, transposed the other way, without a copy."""
    x3 = x if x.ndim == 3 else x[None]
    swapped = np.swapaxes(x3, -1, -2)
    if not x3.flags.c_contiguous and swapped.flags.c_contiguous:
        return swapped, not trans
    return np.ascontiguousarray(x3), trans


def _gemm(function, a, b, trans_a, trans_b):
    """``op(a) @ op(b)`` (``op`` transposes the last two axes where ``trans_*`` say), 2-D or stacked,
    by the split GEMMs above when :data:`GEMM_LIBRARY` is set and has a GEMM of this dtype, else by
    NumPy's ``@`` (which handles the transposes without copies)."""
    _check_matmul(function, a, b, 0 if trans_a else 1, 1 if trans_b else 0)
    gemm = _library_gemm(a, b)
    if gemm is None or 0 in a.shape or 0 in b.shape:
        return (np.swapaxes(a, -1, -2) if trans_a else a) @ (np.swapaxes(b, -1, -2) if trans_b else b)
    (a3, trans_a), (b3, trans_b) = _gemm_operand(a, trans_a), _gemm_operand(b, trans_b)
    slices, rows, depth = a3.shape[0], a3.shape[2 if trans_a else 1], a3.shape[1 if trans_a else 2]
    cols = b3.shape[1 if trans_b else 2]
    row_blocks, col_blocks, shares = _gemm_parts(slices, rows, depth, cols, numba.get_num_threads())
    if shares > 1:
        partials = np.empty((shares, slices, rows, cols), dtype=a.dtype)
        _gemm_by_depth(gemm, a3, b3, trans_a, trans_b, partials)
        c = partials.sum(axis=0)
    else:
        c = np.empty((slices, rows, cols), dtype=a.dtype)
        _gemm_by_blocks(gemm, a3, b3, trans_a, trans_b, row_blocks, col_blocks, c)
    return c if a.ndim == 3 else c[0]


def matmul(a, b):
    """``a @ b``: ``(M, K) @ (K, N) -> (M, N)``, or ``(S, M, K) @ (S, K, N) -> (S, M, N)``."""
    return _gemm("matmul", a, b, False, False)


def matmul_tn(a, b):
    """``a.T @ b``: ``(K, M)^T @ (K, N) -> (M, N)``, or per slice ``(S, K, M)`` with ``(S, K, N)``
    (no transposed copy is made)."""
    return _gemm("matmul_tn", a, b, True, False)


def matmul_nt(a, b):
    """``a @ b.T``: ``(M, K) @ (N, K)^T -> (M, N)``, or per slice ``(S, M, K)`` with ``(S, N, K)``
    (no transposed copy is made)."""
    return _gemm("matmul_nt", a, b, False, True)


@jit_parallel
def _column_sums_kernel(g, chunk_rows, out):
    """``out = g.sum(axis=0)`` for ``g (M, N)``, summed in chunks of rows then across chunks."""
    rows, cols = g.shape
    n_chunks = (rows + chunk_rows - 1) // chunk_rows
    partials = np.zeros((n_chunks, cols), dtype=out.dtype)
    for chunk in numba.prange(n_chunks):
        acc = partials[chunk]
        for m in range(chunk * chunk_rows, min(rows, (chunk + 1) * chunk_rows)):
            for n in range(cols):
                acc[n] += g[m, n]
    out[:] = 0
    for chunk in range(n_chunks):
        out += partials[chunk]


def bias_grad(grad_out):
    """Gradient of a bias broadcast over rows: ``grad_out.sum(axis=0)``, ``(M, N) -> (N,)``."""
    out = np.empty(grad_out.shape[1], dtype=grad_out.dtype)
    _column_sums_kernel(np.ascontiguousarray(grad_out), SUM_CHUNK_ROWS, out)
    return out


# ------------------------------------------------------------------------------------ convolution
#
# An image is unfolded by one of two helpers, each writing the rows of ``cols`` (or the columns of
# its transpose) that one image's windows make: ``im2col`` runs them over the batch, and the
# ``conv_by_image`` kernels over one image at a time in a scratch of the thread's own.


@jit
def _natural(index):
    """``index`` (never negative) typed unsigned.  Numba tests every signed index for a negative value
    (which counts from the end); the unfolds' copies, indexed by unsigned arithmetic throughout, skip
    that test and run faster (``benchmarks/RESULTS.md``, [D16])."""
    return np.uint64(index)


@jit
def _unfold_rows(image, kh, kw, sh, sw, top, left, first_oh, last_oh, out_w, cols, first_row):
    """``cols[first_row + (oh - first_oh)*OW + ow, (i*KW + j)*C + c] = image[oh*SH + i - top,
    ow*SW + j - left, c]`` for output rows ``first_oh <= oh < last_oh``, zero where that pixel is
    padding.  ``image (H, W, C)``, ``cols (., KH*KW*C)``."""
    height, width, channels = image.shape
    flat_cols = cols.reshape(-1)
    for oh in range(first_oh, last_oh):
        for ow in range(out_w):
            row_start = _natural(first_row + (oh - first_oh) * out_w + ow) * _natural(cols.shape[1])
            for i in range(kh):
                h = oh * sh + i - top
                for j in range(kw):
                    w = ow * sw + j - left
                    start = row_start + _natural((i * kw + j) * channels)  # cols[row, (i*KW + j)*C]
                    if 0 <= h < height and 0 <= w < width:
                        pixel = image[h, w]
                        for c in range(channels):
                            flat_cols[start + _natural(c)] = pixel[c]
                    else:
                        for c in range(channels):
                            flat_cols[start + _natural(c)] = 0


@jit
def _copy_to_phase_planes(image, top, left, sh, sw, planes):
    """``planes[c, a, b, r, k] = padded[r*SH + a, k*SW + b, c]`` for ``image (H, W, C)`` padded by
    ``top``/``left`` and zeroed planes ``(C, SH, SW, PH, PW)``: each plane holds the pixels of one
    phase ``(a, b)`` of the strides, so that a window tap at stride ``SH x SW`` reads a contiguous run
    of one plane row.  Pixels past the planes are left out, and padding is never written, so planes
    zeroed once serve every image of one shape.  Image row by image row, each read from memory once
    and then from the core's first-level cache for each of its ``C*SW`` plane rows."""
    height, width, channels = image.shape
    _, _, _, phase_h, phase_w = planes.shape
    step = _natural(sw * channels)
    for h in range(height):
        a, r = (h + top) % sh, (h + top) // sh
        if r >= phase_h:
            break
        row = image[h].reshape(-1)
        for c in range(channels):
            for b in range(sw):
                first = max(0, (left - b + sw - 1) // sw)
                stop = min(phase_w, (width + left - b + sw - 1) // sw)
                plane_row = planes[c, a, b, r]
                start = _natural((first * sw + b - left) * channels + c)  # image[h, first*SW + b - left, c]
                for k in range(stop - first):
                    plane_row[first + k] = row[start + _natural(k) * step]


@jit
def _phase_planes(channels, kh, kw, sh, sw, out_h, out_w, dtype):
    """Zeroed phase planes ``(C, SH, SW, PH, PW)`` for :func:`_unfold_transposed`: ``PH = OH +
    (KH - 1) // SH`` rows of ``PW = OW + (KW - 1) // SW``."""
    return np.zeros((channels, sh, sw, out_h + (kh - 1) // sh, out_w + (kw - 1) // sw), dtype=dtype)


@jit
def _unfold_transposed(image, planes, kh, kw, sh, sw, top, left, out_h, out_w, cols_t, first_col):
    """:func:`_unfold_rows` for all of ``image``'s outputs, writing the transpose:
    ``cols_t[(i*KW + j)*C + c, first_col + oh*OW + ow]``.  The image is first laid out as phase
    planes (:func:`_copy_to_phase_planes`), so that every ``(i, j, c)`` fills one run of ``OH*OW``
    values, each image row of it a contiguous copy of a plane row: ``x_padded[oh*SH + i, ow*SW + j]
    = plane (i % SH, j % SW)[oh + i // SH, ow + j // SW]``."""
    channels = image.shape[2]
    plane_w = _natural(planes.shape[4])
    _copy_to_phase_planes(image, top, left, sh, sw, planes)
    for i in range(kh):
        for j in range(kw):
            for c in range(channels):
                plane = planes[c, i % sh, j % sw].reshape(-1)
                run = cols_t[(i * kw + j) * channels + c]
                window_start = _natural((i // sh) * planes.shape[4] + j // sw)  # plane[i // SH, j // SW]
                for oh in range(out_h):
                    plane_start = window_start + _natural(oh) * plane_w
                    run_start = _natural(first_col + oh * out_w)
                    for ow in range(out_w):
                        run[run_start + _natural(ow)] = plane[plane_start + _natural(ow)]


@jit_parallel
def _im2col_kernel(x, kh, kw, sh, sw, top, left, out_h, out_w, cols):
    """``cols[(n, oh, ow), (i*KW + j)*C + c] = x[n, oh*SH + i - top, ow*SW + j - left, c]``, zero
    where that pixel is padding.  ``x (N, H, W, C)`` -> ``cols (N*OH*OW, KH*KW*C)``, one output row
    of one image per parallel task."""
    for image_row in numba.prange(x.shape[0] * out_h):
        n, oh = image_row // out_h, image_row % out_h
        _unfold_rows(x[n], kh, kw, sh, sw, top, left, oh, oh + 1, out_w, cols, image_row * out_w)


@jit_parallel
def _im2col_transposed_kernel(x, kh, kw, sh, sw, top, left, out_h, out_w, cols_t):
    """:func:`_im2col_kernel` writing the transpose, ``cols_t[(i*KW + j)*C + c, (n, oh, ow)]``, one
    image per parallel task (:func:`_unfold_transposed`).  ``x (N, H, W, C)`` -> ``cols_t
    (KH*KW*C, N*OH*OW)``."""
    for n in numba.prange(x.shape[0]):
        planes = _phase_planes(x.shape[3], kh, kw, sh, sw, out_h, out_w, x.dtype)
        _unfold_transposed(x[n], planes, kh, kw, sh, sw, top, left, out_h, out_w, cols_t, n * out_h * out_w)


def im2col(x, kernel_size, strides, pads):
    """Unfold every receptive field of ``x`` into one row.

    ``x`` ``(N, H, W, C)`` -> ``cols`` ``(N*OH*OW, KH*KW*C)``; row ``(n, oh, ow)`` holds
    ``x_padded[n, oh*SH + i, ow*SW + j, c]`` at column ``(i*KW + j)*C + c``.  A convolution is then
    ``cols @ kernel.reshape(KH*KW*C, C_out)``.  For inputs of fewer than ``FEW_CHANNELS`` channels
    ``cols`` is the transpose of a C-contiguous ``(KH*KW*C, N*OH*OW)`` array (BLAS takes either
    order): each of its rows is written contiguously, which made the first conv's unfold about three
    times faster than writing rows of ``KH*KW*C`` scalars (``benchmarks/profile_step.py`` times it),
    and read from zero-padded planes, one per channel and phase of the strides, which took another
    20-35% off it inside a training step (``benchmarks/RESULTS.md``, section
    "Planner gradients, dropout in one pass, a phase-plane unfold and the conv choice under the process settings").
    """
    (kh, kw), (sh, sw), ((top, _), (left, _)) = kernel_size, strides, pads
    out_h, out_w = output_hw(x.shape, kernel_size, strides, pads)
    n, _, _, c = x.shape
    if c < FEW_CHANNELS:
        cols_t = np.empty((kh * kw * c, n * out_h * out_w), dtype=x.dtype)
        _im2col_transposed_kernel(np.ascontiguousarray(x), kh, kw, sh, sw, top, left, out_h, out_w, cols_t)
        return cols_t.T
    cols = np.empty((n * out_h * out_w, kh * kw * c), dtype=x.dtype)
    _im2col_kernel(np.ascontiguousarray(x), kh, kw, sh, sw, top, left, out_h, out_w, cols)
    return cols


@jit
def _fold_image(cols, first_row, kh, kw, sh, sw, top, left, out_h, out_w, image):
    """``image[oh*SH + i - top, ow*SW + j - left, c] = sum of cols[first_row + oh*OW + ow, (i*KW +
    j)*C + c]`` over the windows covering that pixel: one image's rows of ``cols (., KH*KW*C)``
    folded back onto ``image (H, W, C)``, which it overwrites."""
    height, width, channels = image.shape
    image[:] = 0
    for oh in range(out_h):
        for ow in range(out_w):
            row = first_row + oh * out_w + ow
            for i in range(kh):
                h = oh * sh + i - top
                if h < 0 or h >= height:
                    continue
                for j in range(kw):
                    w = ow * sw + j - left
                    if w < 0 or w >= width:
                        continue
                    col = (i * kw + j) * channels
                    for c in range(channels):
                        image[h, w, c] += cols[row, col + c]


@jit_parallel
def _col2im_kernel(cols, kh, kw, sh, sw, top, left, out_h, out_w, x):
    """``x[n, oh*SH + i - top, ow*SW + j - left, c] += cols[(n, oh, ow), (i*KW + j)*C + c]`` for
    every pixel inside the image.  One image per parallel task, so no two tasks add to one pixel."""
    for n in numba.prange(x.shape[0]):
        _fold_image(cols, n * out_h * out_w, kh, kw, sh, sw, top, left, out_h, out_w, x[n])


def _check_cols(function, cols, x_shape, kernel_size, strides, pads):
    """``(OH, OW)`` of ``x_shape`` images under the window; raises ``ValueError`` naming ``function``
    unless ``cols`` is their ``(N*OH*OW, KH*KW*C)``."""
    out_h, out_w = output_hw(x_shape, kernel_size, strides, pads)
    n, _, _, c = x_shape
    expected = (n * out_h * out_w, kernel_size[0] * kernel_size[1] * c)
    if tuple(cols.shape) != expected:
        raise ValueError(f"{function}: cols must have shape {expected} for images {tuple(x_shape)}, got {cols.shape}")
    return out_h, out_w


def col2im(cols, x_shape, kernel_size, strides, pads):
    """Adjoint of :func:`im2col`: add every row of ``cols`` back onto the pixels it was read from.

    ``cols`` ``(N*OH*OW, KH*KW*C)`` -> ``(N, H, W, C)``; overlapping windows sum, padding is dropped.
    """
    (kh, kw), (sh, sw), ((top, _), (left, _)) = kernel_size, strides, pads
    out_h, out_w = _check_cols("col2im", cols, x_shape, kernel_size, strides, pads)
    x = np.empty(tuple(x_shape), dtype=cols.dtype)
    _col2im_kernel(np.ascontiguousarray(cols), kh, kw, sh, sw, top, left, out_h, out_w, x)
    return x


# The same products, image by image: each thread takes a run of the batch's images and, for each,
# unfolds it into a scratch of its own (one image's ``cols``, a few hundred kB, which stays in its
# core's cache) and multiplies that at once by one BLAS call.  Nothing the size of the batch's
# ``cols`` is written: where those are larger than the last-level cache, writing them and reading
# them back ran at memory speed: a strided 3-channel first conv's unfold, forward GEMM and kernel
# gradient took 20.6 ms of a training step, against 10.3 ms here (``benchmarks/RESULTS.md``, [D13]
# and the section it names).  The kernel gradient unfolds each image again, its products added into
# the thread's own partial sum; the input gradient folds each image's ``dL/dcols`` back as soon as
# it is made.  Few-channel inputs unfold transposed, as in ``im2col``.  Without a BLAS library to
# call (``GEMM_LIBRARY``), the products are im2col's.  Where the library has small-matrix kernels,
# each image's three products are cut into runs of pixels they take
# (:func:`_pixels_per_gemm`).

#: fewest output pixels of one GEMM call of the image-by-image kernels: in shorter runs the calls cost
#: more than the small-matrix kernels saved (``python benchmarks/gemm_rows.py``, one thread, us per
#: image for the forward, kernel gradient and input gradient together, whole against runs: 1,024 pixels
#: of a ``K = 288``, 32-filter product 462 -> 351 in runs of 108, of a 64-filter one 757 -> 689 in runs
#: of 54; 256 pixels of a ``K = 576``, 64-filter one 370 -> 375 in runs of 27)
MIN_GEMM_PIXELS = 48


@jit
def _unfold_image(image, planes, kh, kw, sh, sw, top, left, out_h, out_w, transposed, cols):
    """One image's ``cols`` into the flat scratch ``cols``: ``(OH*OW, KH*KW*C)`` rows, or their
    transpose where ``transposed`` (then by the phase ``planes``)."""
    pixels, depth = out_h * out_w, kh * kw * image.shape[2]
    if transposed:
        _unfold_transposed(image, planes, kh, kw, sh, sw, top, left, out_h, out_w, cols.reshape(depth, pixels), 0)
    else:
        _unfold_rows(image, kh, kw, sh, sw, top, left, 0, out_h, out_w, cols.reshape(pixels, depth), 0)


@jit
def _share_of_thread(thread, threads, count):
    """The run of ``count`` units of work (images, or bands of images) thread ``thread`` of ``threads``
    takes: ``range(first, stop)``."""
    return range(thread * count // threads, (thread + 1) * count // threads)


@jit
def _pixel_offset(pixel, depth, transposed):
    """Where pixel ``pixel``'s values start in one image's ``cols``, in values: its column of the
    transposed ``(KH*KW*C, OH*OW)`` layout, or its row of the ``(OH*OW, KH*KW*C)`` one."""
    return pixel if transposed else pixel * depth


@jit_parallel
def _conv_by_image_kernel(gemm, x, kernel_matrix, kh, kw, sh, sw, top, left, out_h, out_w, transposed, threads,
                          gemm_pixels, z):
    """``z[n] = cols(x[n]) @ kernel_matrix`` for every image, the images shared among ``threads``,
    each image's product in GEMM calls of ``gemm_pixels`` output pixels: ``x (N, H, W, C)``,
    ``kernel_matrix (KH*KW*C, F)``, ``z (N, OH, OW, F)``."""
    n_images, _, _, channels = x.shape
    depth, filters = kernel_matrix.shape
    pixels, size = out_h * out_w, x.itemsize
    op_cols, ld_cols = (blas.TRANS, pixels) if transposed else (blas.NO_TRANS, depth)
    for thread in numba.prange(threads):
        cols = np.empty(pixels * depth, dtype=x.dtype)
        planes = _phase_planes(channels if transposed else 0, kh, kw, sh, sw, out_h, out_w, x.dtype)  # empty for rows
        for n in _share_of_thread(thread, threads, n_images):
            _unfold_image(x[n], planes, kh, kw, sh, sw, top, left, out_h, out_w, transposed, cols)
            for first in range(0, pixels, gemm_pixels):
                gemm(blas.ROW_MAJOR, op_cols, blas.NO_TRANS, min(gemm_pixels, pixels - first), filters, depth, 1.0,
                     cols.ctypes.data + _pixel_offset(first, depth, transposed) * size, ld_cols,
                     kernel_matrix.ctypes.data, filters,
                     0.0, z.ctypes.data + (n * pixels + first) * filters * size, filters)


@jit_parallel
def _conv_by_image_kernel_grad_kernel(gemm, x, grad_out, kh, kw, sh, sw, top, left, transposed, gemm_pixels,
                                      partials):
    """``partials[t] = sum over thread t's images n of cols(x[n])^T @ grad_out[n]``, one thread per
    partial, each image's product in GEMM calls of ``gemm_pixels`` output pixels: ``x (N, H, W, C)``,
    ``grad_out (N, OH, OW, F)``, ``partials (threads, KH*KW*C, F)``."""
    n_images, _, _, channels = x.shape
    _, out_h, out_w, filters = grad_out.shape
    threads, depth, _ = partials.shape
    pixels, size = out_h * out_w, x.itemsize
    op_cols, ld_cols = (blas.NO_TRANS, pixels) if transposed else (blas.TRANS, depth)
    for thread in numba.prange(threads):
        cols = np.empty(pixels * depth, dtype=x.dtype)
        planes = _phase_planes(channels if transposed else 0, kh, kw, sh, sw, out_h, out_w, x.dtype)  # empty for rows
        partials[thread] = 0
        for n in _share_of_thread(thread, threads, n_images):
            _unfold_image(x[n], planes, kh, kw, sh, sw, top, left, out_h, out_w, transposed, cols)
            for first in range(0, pixels, gemm_pixels):
                gemm(blas.ROW_MAJOR, op_cols, blas.NO_TRANS, depth, filters, min(gemm_pixels, pixels - first), 1.0,
                     cols.ctypes.data + _pixel_offset(first, depth, transposed) * size, ld_cols,
                     grad_out.ctypes.data + (n * pixels + first) * filters * size, filters,
                     1.0, partials.ctypes.data + thread * depth * filters * size, filters)


@jit_parallel
def _conv_by_image_input_grad_kernel(gemm, grad_out, kernel_matrix_t, kh, kw, sh, sw, top, left, threads,
                                     gemm_pixels, grad_x):
    """``grad_x[n] = fold(grad_out[n] @ kernel_matrix_t)`` for every image, the images shared among
    ``threads``, each image's product in GEMM calls of ``gemm_pixels`` output pixels: ``grad_out (N,
    OH, OW, F)``, ``kernel_matrix_t (F, KH*KW*C)``, ``grad_x (N, H, W, C)``.  The kernel matrix comes
    transposed so that neither operand is read transposed: OpenBLAS's small-matrix kernels take a
    transposed second operand only for tiny outputs (``kernels.blas``)."""
    n_images, out_h, out_w, filters = grad_out.shape
    depth = kernel_matrix_t.shape[1]
    pixels, size = out_h * out_w, grad_out.itemsize
    for thread in numba.prange(threads):
        grad_cols = np.empty((pixels, depth), dtype=grad_out.dtype)
        for n in _share_of_thread(thread, threads, n_images):
            for first in range(0, pixels, gemm_pixels):
                gemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.NO_TRANS, min(gemm_pixels, pixels - first), depth, filters,
                     1.0, grad_out.ctypes.data + (n * pixels + first) * filters * size, filters,
                     kernel_matrix_t.ctypes.data, depth, 0.0, grad_cols.ctypes.data + first * depth * size, depth)
            _fold_image(grad_cols, 0, kh, kw, sh, sw, top, left, out_h, out_w, grad_x[n])


def _library_gemm(*arrays):
    """The BLAS GEMM the split products and the image-by-image kernels call for these arrays' common
    dtype, or ``None`` (no library under the policy, or mixed dtypes)."""
    dtypes = {array.dtype for array in arrays}
    if GEMM_LIBRARY is None or len(dtypes) != 1:
        return None
    return GEMM_LIBRARY.gemms.get(dtypes.pop())


def _pixels_per_gemm(pixels, depth, filters):
    """Output pixels per GEMM call of one image's ``(pixels, depth) x (depth, filters)`` product (or of
    its kernel or input gradient's, the same multiply-adds): all of them, unless the library's
    small-matrix kernels take fewer (``blas.Library.small_product``); then the most they take, if that
    is at least :data:`MIN_GEMM_PIXELS`.  A strided 3-channel first conv (1,024 pixels, ``K = 75``, 16
    filters) took 23.4 us for its forward product whole and 21.4 in runs of 833 pixels on one core, its
    kernel gradient 28.1 and 19.1; a ``K = 144`` one 48.5 and 33.6 in runs of 434
    (``benchmarks/gemm_rows.py``)."""
    small_pixels = GEMM_LIBRARY.small_product // (depth * filters)
    return small_pixels if MIN_GEMM_PIXELS <= small_pixels < pixels else pixels


def _check_kernel_matrix(function, kernel_matrix, channels, kernel_size):
    """Raises ``ValueError`` naming ``function`` unless ``kernel_matrix`` is ``(KH*KW*C, F)``."""
    depth = kernel_size[0] * kernel_size[1] * channels
    if kernel_matrix.ndim != 2 or kernel_matrix.shape[0] != depth:
        raise ValueError(f"{function}: kernel_matrix must have {depth} rows (KH*KW*C for a {kernel_size} window "
                         f"over {channels} channels), got shape {kernel_matrix.shape}")


def _check_grad_out(function, grad_out, x_shape, filters, kernel_size, strides, pads):
    """Raises ``ValueError`` naming ``function`` unless ``grad_out`` is ``(N, OH, OW, filters)`` for
    ``x_shape`` images under the window."""
    out_h, out_w = output_hw(x_shape, kernel_size, strides, pads)
    expected = (x_shape[0], out_h, out_w, filters)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"{function}: grad_out must have shape {expected} for images {tuple(x_shape)}, "
                         f"got {grad_out.shape}")


def conv_by_image(x, kernel_matrix, kernel_size, strides, pads):
    """``z = im2col(x) @ kernel_matrix``, image by image: ``x (N, H, W, C)``, ``kernel_matrix
    (KH*KW*C, F)`` -> ``z (N, OH, OW, F)``."""
    _check_kernel_matrix("conv_by_image", kernel_matrix, x.shape[3], kernel_size)
    out_h, out_w = output_hw(x.shape, kernel_size, strides, pads)
    out_shape = (x.shape[0], out_h, out_w, kernel_matrix.shape[1])
    gemm = _library_gemm(x, kernel_matrix)
    if gemm is None:
        return matmul(im2col(x, kernel_size, strides, pads), kernel_matrix).reshape(out_shape)
    (kh, kw), (sh, sw), ((top, _), (left, _)) = kernel_size, strides, pads
    z = np.empty(out_shape, dtype=x.dtype)
    gemm_pixels = _pixels_per_gemm(out_h * out_w, *kernel_matrix.shape)
    _conv_by_image_kernel(gemm, np.ascontiguousarray(x), np.ascontiguousarray(kernel_matrix), kh, kw, sh, sw,
                          top, left, out_h, out_w, x.shape[3] < FEW_CHANNELS, numba.get_num_threads(), gemm_pixels, z)
    return z


def conv_by_image_kernel_grad(x, grad_out, kernel_size, strides, pads):
    """``dL/dkernel_matrix = im2col(x)^T @ grad_out``, image by image: ``x (N, H, W, C)``,
    ``grad_out (N, OH, OW, F)`` -> ``(KH*KW*C, F)``."""
    _check_grad_out("conv_by_image_kernel_grad", grad_out, x.shape, grad_out.shape[-1], kernel_size, strides, pads)
    gemm = _library_gemm(x, grad_out)
    if gemm is None:
        return matmul_tn(im2col(x, kernel_size, strides, pads), grad_out.reshape(-1, grad_out.shape[3]))
    (kh, kw), (sh, sw), ((top, _), (left, _)) = kernel_size, strides, pads
    depth, filters = kh * kw * x.shape[3], grad_out.shape[3]
    partials = np.empty((numba.get_num_threads(), depth, filters), dtype=x.dtype)
    gemm_pixels = _pixels_per_gemm(grad_out.shape[1] * grad_out.shape[2], depth, filters)
    _conv_by_image_kernel_grad_kernel(gemm, np.ascontiguousarray(x), np.ascontiguousarray(grad_out), kh, kw, sh, sw,
                                      top, left, x.shape[3] < FEW_CHANNELS, gemm_pixels, partials)
    return partials.sum(axis=0)


def conv_by_image_input_grad(grad_out, kernel_matrix, x_shape, kernel_size, strides, pads):
    """``dL/dx = col2im(grad_out @ kernel_matrix^T)``, image by image: ``grad_out (N, OH, OW, F)``,
    ``kernel_matrix (KH*KW*C, F)`` -> ``x_shape (N, H, W, C)``."""
    _check_kernel_matrix("conv_by_image_input_grad", kernel_matrix, x_shape[3], kernel_size)
    _check_grad_out("conv_by_image_input_grad", grad_out, x_shape, kernel_matrix.shape[1], kernel_size, strides, pads)
    grad_2d = grad_out.reshape(-1, kernel_matrix.shape[1])
    gemm = _library_gemm(grad_out, kernel_matrix)
    if gemm is None:
        return col2im(matmul_nt(grad_2d, kernel_matrix), x_shape, kernel_size, strides, pads)
    (kh, kw), (sh, sw), ((top, _), (left, _)) = kernel_size, strides, pads
    grad_x = np.empty(tuple(x_shape), dtype=grad_out.dtype)
    gemm_pixels = _pixels_per_gemm(grad_out.shape[1] * grad_out.shape[2], *kernel_matrix.shape)
    _conv_by_image_input_grad_kernel(gemm, np.ascontiguousarray(grad_out), np.ascontiguousarray(kernel_matrix.T),
                                     kh, kw, sh, sw, top, left, numba.get_num_threads(), gemm_pixels, grad_x)
    return grad_x


# ---------------------------------------------------------------------- Winograd F(m x m, 3 x 3)
#
# The transforms of ``numpy_ref``'s Winograd section, as loops over tiles, for F(m x m, 3 x 3) with
# ``m = tile`` (2 or 4) and tiles of side ``m + 2``.  Tile ``t = (n*TH + i)*TW + j`` reads
# ``x[n, m*i - top : m*i - top + m + 2, m*j - left : m*j - left + m + 2]`` (zeros outside ``x``) and
# gives the ``m x m`` output block at ``(m*i, m*j)``.  The input transform and its adjoint take a row
# of tiles at a time through a ``strip``: ``B^T`` down the ``m + 2`` image rows under the tile row, over
# the whole width, then ``B`` along each tile's columns (the adjoint the other way round, overlapping
# tiles adding up in the strip, then the strip's rows onto the image's).  Each of their loops writes
# one output row over a run of contiguous values, and reads at most six, with index arithmetic on
# unsigned integers ([D16]); tile by tile, with all of a tile's rows written in one loop over its
# channels, the image-by-image forward and kernel gradient took 21-26% longer in a training step
# ([D27]).  The output transform and its adjoint go tile by tile: each tile is copied into a small
# scratch array and transformed one contiguous channel row at a time, each pass writing an array of
# its own (a pass that overwrote the rows it read stayed scalar, ``benchmarks/RESULTS.md`` [D22]), the
# forward's last straight to the output; by rows of tiles, the adjoint ran no faster.  Generic loops
# over the matrices' entries (with a swap of axes between the passes) ran slower in scratch timings,
# so each tile size has its own kernels, with the matrices of ``minidl.kernels.winograd`` written out;
# their coefficients are made in the array's dtype (``x.dtype.type(4)``), since ``4 *`` would promote
# float32 to float64 (many times slower in a scratch timing).  The rows of tiles are shared among the
# threads, each with its own scratch, so that a single image (a predict of one, or an inference chunk
# of one 111x111 image) still runs on every thread; the adjoint of the tiles adds overlapping tiles
# onto the image, so the kernels that make input gradients share whole images instead.


@functools.cache
def _kron_g(tile, dtype):
    """``kron(G, G)`` of F(tile x tile, 3 x 3) as ``dtype``: row ``a*(m+2) + b``, column ``3p + q`` hold
    ``G[a, p] * G[b, q]``, so that ``U = kron(G, G) @ g.reshape(9, -1)``.  Made once per tile and
    dtype; read only."""
    _, g, _ = winograd_matrices(tile, dtype)
    kron = np.kron(g, g)
    kron.setflags(write=False)
    return kron


def winograd_kernel(kernel, tile=2):
    """``G g G^T`` for every ``(c_in, c_out)``: ``kernel (3, 3, C_in, C_out) -> (P, C_in, C_out)``, one
    ``(P, 9) @ (9, C_in*C_out)`` GEMM."""
    return (_kron_g(tile, kernel.dtype) @ kernel.reshape(9, -1)).reshape(-1, *kernel.shape[2:])


def winograd_kernel_grad(grad_kernel_tiles):
    """Adjoint of :func:`winograd_kernel`: ``(P, C_in, C_out) -> (3, 3, C_in, C_out)``, one GEMM."""
    transform = _kron_g(tile_of_positions(grad_kernel_tiles.shape[0]), grad_kernel_tiles.dtype)
    return (transform.T @ grad_kernel_tiles.reshape(transform.shape[0], -1)).reshape(3, 3, *grad_kernel_tiles.shape[1:])


@jit
def _load_tile(x, n, row, col, tile):
    """``tile (a, a, C) = x[n, row : row + a, col : col + a]``, zero outside ``x`` (explicit channel
    loops: Numba's slice assignment was slower)."""
    _, height, width, channels = x.shape
    side = tile.shape[0]
    for a in range(side):
        for b in range(side):
            if 0 <= row + a < height and 0 <= col + b < width:
                for c in range(channels):
                    tile[a, b, c] = x[n, row + a, col + b, c]
            else:
                for c in range(channels):
                    tile[a, b, c] = 0


@jit_inline
def _tile_row_strip(tile, tiles_w, channels, dtype):
    """One thread's zeroed ``strip`` ``(m + 2, (m*TW + 2)*C)`` for the transforms of one row of tiles:
    the six (F(4x4)) or four image rows under a tile row, each over every column its tiles cover.  The
    input transform writes the image's columns alone, so the strip's columns of padding stay zero for
    every image of one shape."""
    return np.zeros((tile + 2, (tile * tiles_w + 2) * channels), dtype)


@jit_inline
def _strip_span(x, left, strip):
    """``(first, count)``: where an image row of ``x`` starts in a row of ``strip`` (after ``left``
    columns of padding) and how many of its values the tiles read."""
    channels = x.shape[3]
    return left * channels, min(x.shape[2] * channels, strip.shape[1] - left * channels)


@jit_inline
def _image_row(x, n, h, zero_row, count):
    """The first ``count`` values of row ``h`` of image ``n`` of ``x``, flat (``(W*C,)``), or of
    ``zero_row`` where ``h`` is padding."""
    row = x[n, h].reshape(-1) if 0 <= h < x.shape[1] else zero_row
    return row[:count]


@jit_inline
def _tiles_row_f2(x, n, i, top, left, tiles_w, strip, zero_row, tiles, first_tile):
    """F(2x2, 3x3): ``tiles[4a + b, first_tile + j, c] = (B^T d B)[a, b]`` for the 4x4 tile ``d`` at
    ``(2i - top, 2j - left)`` of image ``n``, for every ``j`` of tile row ``i``, with ``B^T = [[1, 0,
    -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]``: ``B^T`` down the tile row's four image rows
    into ``strip`` (:func:`_tile_row_strip`; ``zero_row``, ``(W*C,)`` zeros, stands for rows of
    padding), then ``B`` along each tile's columns."""
    channels = x.shape[3]
    first, count = _strip_span(x, left, strip)
    d0, d1 = _image_row(x, n, 2 * i - top, zero_row, count), _image_row(x, n, 2 * i - top + 1, zero_row, count)
    d2, d3 = _image_row(x, n, 2 * i - top + 2, zero_row, count), _image_row(x, n, 2 * i - top + 3, zero_row, count)
    s0, s1 = strip[0, first:first + count], strip[1, first:first + count]
    s2, s3 = strip[2, first:first + count], strip[3, first:first + count]
    for m in range(count):
        s0[m] = d0[m] - d2[m]
    for m in range(count):
        s1[m] = d1[m] + d2[m]
    for m in range(count):
        s2[m] = d2[m] - d1[m]
    for m in range(count):
        s3[m] = d1[m] - d3[m]
    flat_tiles, c_in = tiles.reshape(-1), _natural(channels)
    position = _natural(tiles.shape[1]) * c_in
    for a in range(4):  # tiles <- (strip's tile) B
        e = strip[a]
        for j in range(tiles_w):
            e0 = _natural(2 * j) * c_in
            e1, e2, e3 = e0 + c_in, e0 + _natural(2) * c_in, e0 + _natural(3) * c_in
            t0 = _natural(4 * a) * position + _natural(first_tile + j) * c_in
            t1, t2, t3 = t0 + position, t0 + _natural(2) * position, t0 + _natural(3) * position
            for c in range(c_in):
                flat_tiles[t0 + c] = e[e0 + c] - e[e2 + c]
            for c in range(c_in):
                flat_tiles[t1 + c] = e[e1 + c] + e[e2 + c]
            for c in range(c_in):
                flat_tiles[t2 + c] = e[e2 + c] - e[e1 + c]
            for c in range(c_in):
                flat_tiles[t3 + c] = e[e1 + c] - e[e3 + c]


@jit_inline
def _tiles_grad_row_f2(grad_tiles, first_tile, n, i, top, left, tiles_w, strip, grad_x):
    """F(2x2, 3x3): adds onto ``grad_x[n]`` the ``B u B^T`` placed at ``(2i - top, 2j - left)`` for ``u =
    grad_tiles[:, first_tile + j]`` of every ``j`` of tile row ``i``, inside the image: ``u B^T`` along
    each tile's columns into ``strip`` (overlapping tiles add up), then ``B`` down its four rows onto the
    image's."""
    channels = grad_x.shape[3]
    strip[:] = 0
    flat_tiles, c_in = grad_tiles.reshape(-1), _natural(channels)
    position = _natural(grad_tiles.shape[1]) * c_in
    for a in range(4):
        e = strip[a]
        for j in range(tiles_w):
            t0 = _natural(4 * a) * position + _natural(first_tile + j) * c_in
            t1, t2, t3 = t0 + position, t0 + _natural(2) * position, t0 + _natural(3) * position
            e0 = _natural(2 * j) * c_in
            e1, e2, e3 = e0 + c_in, e0 + _natural(2) * c_in, e0 + _natural(3) * c_in
            for c in range(c_in):
                e[e0 + c] += flat_tiles[t0 + c]
            for c in range(c_in):
                e[e1 + c] += flat_tiles[t1 + c] - flat_tiles[t2 + c] + flat_tiles[t3 + c]
            for c in range(c_in):
                e[e2 + c] += flat_tiles[t2 + c] + flat_tiles[t1 + c] - flat_tiles[t0 + c]
            for c in range(c_in):
                e[e3 + c] -= flat_tiles[t3 + c]
    first, count = _strip_span(grad_x, left, strip)
    s0, s1 = strip[0, first:first + count], strip[1, first:first + count]
    s2, s3 = strip[2, first:first + count], strip[3, first:first + count]
    row = 2 * i - top
    if 0 <= row < grad_x.shape[1]:
        g = grad_x[n, row].reshape(-1)[:count]
        for m in range(count):
            g[m] += s0[m]
    if 0 <= row + 1 < grad_x.shape[1]:
        g = grad_x[n, row + 1].reshape(-1)[:count]
        for m in range(count):
            g[m] += s1[m] - s2[m] + s3[m]
    if 0 <= row + 2 < grad_x.shape[1]:
        g = grad_x[n, row + 2].reshape(-1)[:count]
        for m in range(count):
            g[m] += s2[m] + s1[m] - s0[m]
    if 0 <= row + 3 < grad_x.shape[1]:
        g = grad_x[n, row + 3].reshape(-1)[:count]
        for m in range(count):
            g[m] -= s3[m]


@jit_inline
def _outputs_row_f2(products, first_tile, n, i, tiles_w, half, out):
    """F(2x2, 3x3): ``out[n, 2i + r, 2j + s, o] = (A^T m A)[r, s]`` for ``m = products[:, first_tile +
    j, o]`` of every ``j`` of tile row ``i``, with ``A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]``: rows into
    ``half``, then columns; a block's row or column past ``out`` is dropped."""
    _, out_h, out_w, c_out = out.shape
    for j in range(tiles_w):
        t = first_tile + j
        for b in range(4):
            for o in range(c_out):
                m0, m1, m2, m3 = products[b, t, o], products[4 + b, t, o], \
                    products[8 + b, t, o], products[12 + b, t, o]
                half[0, b, o], half[1, b, o] = m0 + m1 + m2, m1 - m2 - m3
        for r in range(min(2, out_h - 2 * i)):
            for o in range(c_out):
                out[n, 2 * i + r, 2 * j, o] = half[r, 0, o] + half[r, 1, o] + half[r, 2, o]
            if 2 * j + 1 < out_w:
                for o in range(c_out):
                    out[n, 2 * i + r, 2 * j + 1, o] = half[r, 1, o] - half[r, 2, o] - half[r, 3, o]


@jit_inline
def _outputs_grad_row_f2(grad_out, n, i, tiles_w, g, half, grad_products, first_tile):
    """F(2x2, 3x3): ``grad_products[:, first_tile + j, o] = A g A^T`` for the 2x2 block ``g`` of
    ``grad_out[n]`` at ``(2i, 2j)`` (zero past ``grad_out``), for every ``j`` of tile row ``i``:
    columns into ``half``, then rows."""
    c_out = grad_out.shape[3]
    for j in range(tiles_w):
        t = first_tile + j
        _load_tile(grad_out, n, 2 * i, 2 * j, g)
        for r in range(2):
            for o in range(c_out):
                g0, g1 = g[r, 0, o], g[r, 1, o]
                half[r, 0, o], half[r, 1, o], half[r, 2, o], half[r, 3, o] = g0, g0 + g1, g0 - g1, -g1
        for b in range(4):
            for o in range(c_out):
                h0, h1 = half[0, b, o], half[1, b, o]
                grad_products[b, t, o] = h0
                grad_products[4 + b, t, o] = h0 + h1
                grad_products[8 + b, t, o] = h0 - h1
                grad_products[12 + b, t, o] = -h1


@jit_inline
def _tiles_row_f4(x, n, i, top, left, tiles_w, strip, zero_row, tiles, first_tile):
    """F(4x4, 3x3): ``tiles[6a + b, first_tile + j, c] = (B^T d B)[a, b]`` for the 6x6 tile ``d`` at
    ``(4i - top, 4j - left)`` of image ``n``, for every ``j`` of tile row ``i``, with the ``B^T`` of
    ``minidl.kernels.winograd``: ``B^T`` down the tile row's six image rows into ``strip``
    (:func:`_tile_row_strip`; ``zero_row``, ``(W*C,)`` zeros, stands for rows of padding), then ``B``
    along each tile's columns."""
    channels = x.shape[3]
    two, four, five = x.dtype.type(2), x.dtype.type(4), x.dtype.type(5)
    first, count = _strip_span(x, left, strip)
    row = 4 * i - top
    d0, d1 = _image_row(x, n, row, zero_row, count), _image_row(x, n, row + 1, zero_row, count)
    d2, d3 = _image_row(x, n, row + 2, zero_row, count), _image_row(x, n, row + 3, zero_row, count)
    d4, d5 = _image_row(x, n, row + 4, zero_row, count), _image_row(x, n, row + 5, zero_row, count)
    s0, s1, s2 = strip[0, first:first + count], strip[1, first:first + count], strip[2, first:first + count]
    s3, s4, s5 = strip[3, first:first + count], strip[4, first:first + count], strip[5, first:first + count]
    for m in range(count):
        s0[m] = four * d0[m] - five * d2[m] + d4[m]
    for m in range(count):
        s1[m] = d3[m] + d4[m] - four * (d1[m] + d2[m])
    for m in range(count):
        s2[m] = d4[m] - d3[m] + four * (d1[m] - d2[m])
    for m in range(count):
        s3[m] = d4[m] - d2[m] + two * (d3[m] - d1[m])
    for m in range(count):
        s4[m] = d4[m] - d2[m] + two * (d1[m] - d3[m])
    for m in range(count):
        s5[m] = four * d1[m] - five * d3[m] + d5[m]
    flat_tiles, c_in = tiles.reshape(-1), _natural(channels)
    position = _natural(tiles.shape[1]) * c_in
    for a in range(6):  # tiles <- (strip's tile) B
        e = strip[a]
        for j in range(tiles_w):
            e0 = _natural(4 * j) * c_in
            e1, e2, e3, e4, e5 = e0 + c_in, e0 + _natural(2) * c_in, e0 + _natural(3) * c_in, \
                e0 + _natural(4) * c_in, e0 + _natural(5) * c_in
            t0 = _natural(6 * a) * position + _natural(first_tile + j) * c_in
            t1, t2, t3, t4, t5 = t0 + position, t0 + _natural(2) * position, t0 + _natural(3) * position, \
                t0 + _natural(4) * position, t0 + _natural(5) * position
            for c in range(c_in):
                flat_tiles[t0 + c] = four * e[e0 + c] - five * e[e2 + c] + e[e4 + c]
            for c in range(c_in):
                flat_tiles[t1 + c] = e[e3 + c] + e[e4 + c] - four * (e[e1 + c] + e[e2 + c])
            for c in range(c_in):
                flat_tiles[t2 + c] = e[e4 + c] - e[e3 + c] + four * (e[e1 + c] - e[e2 + c])
            for c in range(c_in):
                flat_tiles[t3 + c] = e[e4 + c] - e[e2 + c] + two * (e[e3 + c] - e[e1 + c])
            for c in range(c_in):
                flat_tiles[t4 + c] = e[e4 + c] - e[e2 + c] + two * (e[e1 + c] - e[e3 + c])
            for c in range(c_in):
                flat_tiles[t5 + c] = four * e[e1 + c] - five * e[e3 + c] + e[e5 + c]


@jit_inline
def _tiles_grad_row_f4(grad_tiles, first_tile, n, i, top, left, tiles_w, strip, grad_x):
    """F(4x4, 3x3): adds onto ``grad_x[n]`` the ``B u B^T`` placed at ``(4i - top, 4j - left)`` for ``u =
    grad_tiles[:, first_tile + j]`` of every ``j`` of tile row ``i``, inside the image: ``u B^T`` along
    each tile's columns into ``strip`` (overlapping tiles add up), then ``B`` down its six rows onto the
    image's."""
    channels = grad_x.shape[3]
    two, four, five = grad_x.dtype.type(2), grad_x.dtype.type(4), grad_x.dtype.type(5)
    strip[:] = 0
    u, c_in = grad_tiles.reshape(-1), _natural(channels)
    position = _natural(grad_tiles.shape[1]) * c_in
    for a in range(6):
        e = strip[a]
        for j in range(tiles_w):
            t0 = _natural(6 * a) * position + _natural(first_tile + j) * c_in
            t1, t2, t3, t4, t5 = t0 + position, t0 + _natural(2) * position, t0 + _natural(3) * position, \
                t0 + _natural(4) * position, t0 + _natural(5) * position
            e0 = _natural(4 * j) * c_in
            e1, e2, e3, e4, e5 = e0 + c_in, e0 + _natural(2) * c_in, e0 + _natural(3) * c_in, \
                e0 + _natural(4) * c_in, e0 + _natural(5) * c_in
            for c in range(c_in):
                e[e0 + c] += four * u[t0 + c]
            for c in range(c_in):
                e[e1 + c] += four * (u[t2 + c] - u[t1 + c] + u[t5 + c]) + two * (u[t4 + c] - u[t3 + c])
            for c in range(c_in):
                e[e2 + c] -= five * u[t0 + c] + four * (u[t1 + c] + u[t2 + c]) + u[t3 + c] + u[t4 + c]
            for c in range(c_in):
                e[e3 + c] += u[t1 + c] - u[t2 + c] + two * (u[t3 + c] - u[t4 + c]) - five * u[t5 + c]
            for c in range(c_in):
                e[e4 + c] += u[t0 + c] + u[t1 + c] + u[t2 + c] + u[t3 + c] + u[t4 + c]
            for c in range(c_in):
                e[e5 + c] += u[t5 + c]
    first, count = _strip_span(grad_x, left, strip)
    s0, s1, s2 = strip[0, first:first + count], strip[1, first:first + count], strip[2, first:first + count]
    s3, s4, s5 = strip[3, first:first + count], strip[4, first:first + count], strip[5, first:first + count]
    row, height = 4 * i - top, grad_x.shape[1]
    if 0 <= row < height:
        g = grad_x[n, row].reshape(-1)[:count]
        for m in range(count):
            g[m] += four * s0[m]
    if 0 <= row + 1 < height:
        g = grad_x[n, row + 1].reshape(-1)[:count]
        for m in range(count):
            g[m] += four * (s2[m] - s1[m] + s5[m]) + two * (s4[m] - s3[m])
    if 0 <= row + 2 < height:
        g = grad_x[n, row + 2].reshape(-1)[:count]
        for m in range(count):
            g[m] -= five * s0[m] + four * (s1[m] + s2[m]) + s3[m] + s4[m]
    if 0 <= row + 3 < height:
        g = grad_x[n, row + 3].reshape(-1)[:count]
        for m in range(count):
            g[m] += s1[m] - s2[m] + two * (s3[m] - s4[m]) - five * s5[m]
    if 0 <= row + 4 < height:
        g = grad_x[n, row + 4].reshape(-1)[:count]
        for m in range(count):
            g[m] += s0[m] + s1[m] + s2[m] + s3[m] + s4[m]
    if 0 <= row + 5 < height:
        g = grad_x[n, row + 5].reshape(-1)[:count]
        for m in range(count):
            g[m] += s5[m]


@jit_inline
def _outputs_row_f4(products, first_tile, n, i, tiles_w, half, block, out):
    """F(4x4, 3x3): ``out[n, 4i + r, 4j + s, o] = (A^T M A)[r, s]`` for ``M = products[:, first_tile +
    j, o]`` of every ``j`` of tile row ``i``, with the ``A^T`` of ``minidl.kernels.winograd``: rows
    into ``half``, then columns into ``block``; a block's rows or columns past ``out`` are dropped."""
    _, out_h, out_w, c_out = out.shape
    two, four, eight = out.dtype.type(2), out.dtype.type(4), out.dtype.type(8)
    for j in range(tiles_w):
        t = first_tile + j
        for b in range(6):
            for o in range(c_out):
                m0, m1, m2 = products[b, t, o], products[6 + b, t, o], products[12 + b, t, o]
                m3, m4, m5 = products[18 + b, t, o], products[24 + b, t, o], products[30 + b, t, o]
                half[0, b, o] = m0 + m1 + m2 + m3 + m4
                half[1, b, o] = m1 - m2 + two * (m3 - m4)
                half[2, b, o] = m1 + m2 + four * (m3 + m4)
                half[3, b, o] = m1 - m2 + eight * (m3 - m4) + m5
        for r in range(4):
            for o in range(c_out):
                h0, h1, h2, h3, h4, h5 = half[r, 0, o], half[r, 1, o], half[r, 2, o], half[r, 3, o], \
                    half[r, 4, o], half[r, 5, o]
                block[r, 0, o] = h0 + h1 + h2 + h3 + h4
                block[r, 1, o] = h1 - h2 + two * (h3 - h4)
                block[r, 2, o] = h1 + h2 + four * (h3 + h4)
                block[r, 3, o] = h1 - h2 + eight * (h3 - h4) + h5
        for r in range(min(4, out_h - 4 * i)):
            for s in range(min(4, out_w - 4 * j)):
                for o in range(c_out):
                    out[n, 4 * i + r, 4 * j + s, o] = block[r, s, o]


@jit_inline
def _outputs_grad_row_f4(grad_out, n, i, tiles_w, g, half, grad_products, first_tile):
    """F(4x4, 3x3): ``grad_products[:, first_tile + j, o] = A g A^T`` for the 4x4 block ``g`` of
    ``grad_out[n]`` at ``(4i, 4j)`` (zero past ``grad_out``), for every ``j`` of tile row ``i``: rows
    into ``half``, then columns."""
    c_out = grad_out.shape[3]
    two, four, eight = grad_out.dtype.type(2), grad_out.dtype.type(4), grad_out.dtype.type(8)
    for j in range(tiles_w):
        t = first_tile + j
        _load_tile(grad_out, n, 4 * i, 4 * j, g)
        for r in range(4):
            for o in range(c_out):
                g0, g1, g2, g3 = g[r, 0, o], g[r, 1, o], g[r, 2, o], g[r, 3, o]
                half[r, 0, o] = g0
                half[r, 1, o] = g0 + g1 + g2 + g3
                half[r, 2, o] = g0 - g1 + g2 - g3
                half[r, 3, o] = g0 + two * g1 + four * g2 + eight * g3
                half[r, 4, o] = g0 - two * g1 + four * g2 - eight * g3
                half[r, 5, o] = g3
        for q in range(6):
            for o in range(c_out):
                h0, h1, h2, h3 = half[0, q, o], half[1, q, o], half[2, q, o], half[3, q, o]
                grad_products[q, t, o] = h0
                grad_products[6 + q, t, o] = h0 + h1 + h2 + h3
                grad_products[12 + q, t, o] = h0 - h1 + h2 - h3
                grad_products[18 + q, t, o] = h0 + two * h1 + four * h2 + eight * h3
                grad_products[24 + q, t, o] = h0 - two * h1 + four * h2 - eight * h3
                grad_products[30 + q, t, o] = h3


# Each transform for either tile size (``tile`` 2 or 4, a run-time argument: Numba compiles both
# branches), over its own scratch tiles: ``side = tile + 2``.

@jit_inline
def _tiles_row(tile, x, n, i, top, left, tiles_w, strip, zero_row, tiles, first_tile):
    """Row ``i`` of image ``n``'s transformed tiles (``_tiles_row_f2`` / ``_f4``), ``strip`` from
    :func:`_tile_row_strip`, ``zero_row`` ``(W*C,)`` zeros."""
    if tile == 2:
        _tiles_row_f2(x, n, i, top, left, tiles_w, strip, zero_row, tiles, first_tile)
    else:
        _tiles_row_f4(x, n, i, top, left, tiles_w, strip, zero_row, tiles, first_tile)


@jit_inline
def _tiles_grad_image(tile, grad_tiles, first_tile, n, top, left, tiles_h, tiles_w, strip, grad_x):
    """``grad_x[n]``, image ``n``'s input gradient from its tiles' ``grad_tiles[:, first_tile :
    first_tile + TH*TW]``, tile row by tile row (``_tiles_grad_row_f2`` / ``_f4``), ``strip`` from
    :func:`_tile_row_strip`."""
    grad_x[n] = 0
    for i in range(tiles_h):
        _tiles_grad_row(tile, grad_tiles, first_tile + i * tiles_w, n, i, top, left, tiles_w, strip, grad_x)


@jit_inline
def _tiles_grad_row(tile, grad_tiles, first_tile, n, i, top, left, tiles_w, strip, grad_x):
    """Adds row ``i`` of image ``n``'s tiles, ``grad_tiles[:, first_tile : first_tile + TW]``, onto its
    input gradient ``grad_x[n]`` (``_tiles_grad_row_f2`` / ``_f4``), ``strip`` from
    :func:`_tile_row_strip`."""
    if tile == 2:
        _tiles_grad_row_f2(grad_tiles, first_tile, n, i, top, left, tiles_w, strip, grad_x)
    else:
        _tiles_grad_row_f4(grad_tiles, first_tile, n, i, top, left, tiles_w, strip, grad_x)


@jit_inline
def _outputs_row(tile, products, first_tile, n, i, tiles_w, half, block, out):
    """Row ``i`` of image ``n``'s output blocks (``_outputs_row_f2`` / ``_f4``); ``half`` ``(tile,
    side, F)``, ``block`` ``(tile, tile, F)`` (unused for F(2x2))."""
    if tile == 2:
        _outputs_row_f2(products, first_tile, n, i, tiles_w, half, out)
    else:
        _outputs_row_f4(products, first_tile, n, i, tiles_w, half, block, out)


@jit_inline
def _outputs_grad_row(tile, grad_out, n, i, tiles_w, g, half, grad_products, first_tile):
    """Row ``i`` of image ``n``'s output-block gradients (``_outputs_grad_row_f2`` / ``_f4``); ``g``
    ``(tile, tile, F)``, ``half`` ``(tile, side, F)``."""
    if tile == 2:
        _outputs_grad_row_f2(grad_out, n, i, tiles_w, g, half, grad_products, first_tile)
    else:
        _outputs_grad_row_f4(grad_out, n, i, tiles_w, g, half, grad_products, first_tile)


@jit_parallel
def _winograd_tiles_kernel(tile, x, top, left, tiles_h, tiles_w, tiles):
    """``tiles (P, N*TH*TW, C)`` of ``x (N, H, W, C)``, the rows of tiles shared among the threads."""
    n_images, _, width, channels = x.shape
    for tile_row in numba.prange(n_images * tiles_h):
        strip = _tile_row_strip(tile, tiles_w, channels, x.dtype)
        zero_row = np.zeros(width * channels, x.dtype)
        _tiles_row(tile, x, tile_row // tiles_h, tile_row % tiles_h, top, left, tiles_w, strip, zero_row, tiles,
                   tile_row * tiles_w)


@jit_parallel
def _winograd_tiles_grad_kernel(tile, grad_tiles, top, left, tiles_h, tiles_w, grad_x):
    """``grad_x (N, H, W, C)`` from ``grad_tiles (P, N*TH*TW, C)``, the images shared among the threads."""
    n_images, _, _, channels = grad_x.shape
    for n in numba.prange(n_images):
        strip = _tile_row_strip(tile, tiles_w, channels, grad_x.dtype)
        _tiles_grad_image(tile, grad_tiles, n * tiles_h * tiles_w, n, top, left, tiles_h, tiles_w, strip, grad_x)


@jit_parallel
def _winograd_outputs_kernel(tile, products, tiles_h, tiles_w, out):
    """``out (N, OH, OW, F)`` from ``products (P, N*TH*TW, F)``, the rows of tiles shared among the threads."""
    n_images, _, _, c_out = out.shape
    for tile_row in numba.prange(n_images * tiles_h):
        half = np.empty((tile, tile + 2, c_out), out.dtype)
        block = np.empty((tile, tile, c_out), out.dtype)
        _outputs_row(tile, products, tile_row * tiles_w, tile_row // tiles_h, tile_row % tiles_h, tiles_w, half,
                     block, out)


@jit_parallel
def _winograd_outputs_grad_kernel(tile, grad_out, tiles_h, tiles_w, grad_products):
    """``grad_products (P, N*TH*TW, F)`` from ``grad_out (N, OH, OW, F)``, the rows of tiles shared among
    the threads."""
    n_images, _, _, c_out = grad_out.shape
    for tile_row in numba.prange(n_images * tiles_h):
        g = np.empty((tile, tile, c_out), grad_out.dtype)
        half = np.empty((tile, tile + 2, c_out), grad_out.dtype)
        _outputs_grad_row(tile, grad_out, tile_row // tiles_h, tile_row % tiles_h, tiles_w, g, half, grad_products,
                          tile_row * tiles_w)


def winograd_tiles(x, pads, tile=2):
    """``B^T d B`` for every ``(m+2) x (m+2)`` tile ``d`` of ``x`` padded by ``pads`` (tiles at stride
    ``m``, in the order of :func:`im2col`'s rows): ``x (N, H, W, C) -> tiles (P, N*TH*TW, C)``.

    ``(TH, TW)`` come from :func:`kernels.shapes.winograd_tile_grid`; reads past the image are zeros.
    """
    check_tile(tile)
    (tiles_h, tiles_w), ((top, _), (left, _)) = winograd_tile_grid(x.shape, pads, tile)
    tiles = np.empty(((tile + 2) ** 2, x.shape[0] * tiles_h * tiles_w, x.shape[3]), dtype=x.dtype)
    _winograd_tiles_kernel(tile, np.ascontiguousarray(x), top, left, tiles_h, tiles_w, tiles)
    return tiles


def winograd_tiles_grad(grad_tiles, x_shape, pads):
    """Adjoint of :func:`winograd_tiles`: ``B u B^T`` per tile, added back onto the pixels the tile
    was read from: ``(P, N*TH*TW, C) -> (N, H, W, C)``."""
    tile = tile_of_positions(grad_tiles.shape[0])
    (tiles_h, tiles_w), ((top, _), (left, _)) = winograd_tile_grid(x_shape, pads, tile)
    expected = ((tile + 2) ** 2, x_shape[0] * tiles_h * tiles_w, x_shape[3])
    if grad_tiles.shape != expected:
        raise ValueError(f"winograd_tiles_grad: grad_tiles must have shape {expected} for images "
                         f"{tuple(x_shape)}, got {grad_tiles.shape}")
    grad_x = np.empty(tuple(x_shape), dtype=grad_tiles.dtype)
    _winograd_tiles_grad_kernel(tile, np.ascontiguousarray(grad_tiles), top, left, tiles_h, tiles_w, grad_x)
    return grad_x


def winograd_outputs(products, out_shape):
    """``A^T M A`` for every tile: ``products (P, N*TH*TW, C_out) -> y (N, OH, OW, C_out)``, the
    ``m x m`` output blocks laid side by side; where ``m`` does not divide ``OH`` or ``OW`` the last
    blocks' trailing rows or columns are dropped."""
    n, out_h, out_w, c_out = out_shape
    tile = tile_of_positions(products.shape[0])
    tiles_h, tiles_w = winograd_tiles_hw((out_h, out_w), tile)
    expected = ((tile + 2) ** 2, n * tiles_h * tiles_w, c_out)
    if products.shape != expected:
        raise ValueError(f"winograd_outputs: products must have shape {expected} "
                         f"for outputs {tuple(out_shape)}, got {products.shape}")
    out = np.empty(tuple(out_shape), dtype=products.dtype)
    _winograd_outputs_kernel(tile, np.ascontiguousarray(products), tiles_h, tiles_w, out)
    return out


def winograd_outputs_grad(grad_out, tile=2):
    """Adjoint of :func:`winograd_outputs`: ``A g A^T`` for every ``m x m`` block of ``grad_out``
    (zeros for the dropped rows or columns): ``(N, OH, OW, C_out) -> (P, N*TH*TW, C_out)``."""
    check_tile(tile)
    n, out_h, out_w, c_out = grad_out.shape
    tiles_h, tiles_w = winograd_tiles_hw((out_h, out_w), tile)
    grad_products = np.empty(((tile + 2) ** 2, n * tiles_h * tiles_w, c_out), dtype=grad_out.dtype)
    _winograd_outputs_grad_kernel(tile, np.ascontiguousarray(grad_out), tiles_h, tiles_w, grad_products)
    return grad_products


# Winograd image by image: each thread takes a run of images and, for each, makes its tiles, their
# products and the outputs (or the gradients) in scratch of its own, one BLAS call per position ``p``,
# so that one image's intermediates (``P x TH*TW x C`` values each) stay in the core's own L2 cache
# instead of the batch's passing through memory; the backward makes each image's tiles again.  Where
# one image's tiles and products pass :data:`IMAGE_SCRATCH_BYTES`, the forward and the kernel gradient
# take it in bands of tile rows that fit (:func:`_tile_rows_per_band`), the bands of all images shared
# among the threads.


def _second_level_cache_bytes(default=2**20):
    """The size of a core's L2 cache as the kernel reports it (``/sys``), else ``default``."""
    caches = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(caches)):
            with open(os.path.join(caches, index, "level")) as level_file:
                if level_file.read().strip() != "2":
                    continue
            with open(os.path.join(caches, index, "size")) as size_file:
                size = size_file.read().strip()
            units = {"K": 2**10, "M": 2**20}
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    except (OSError, ValueError):
        pass
    return default


#: Scratch one thread's image-by-image Winograd tiles and products may take at a time: a core's L2.
#: The seed's 224x224 network's 111x111x32 conv (64 filters) makes 3.4 MB of F(4x4) tiles and 6.7 MB of
#: products per image; in bands of two tile rows its forward outside training took 1.30-1.34 ms per
#: image, against 1.46-2.07 by the batch method and 2.19-3.13 image by image whole
#: (``benchmarks/conv_choice_images.py --inference``, [D25])
IMAGE_SCRATCH_BYTES = _second_level_cache_bytes()


def _tile_rows_per_band(tile, tiles_h, tiles_w, values_per_position, itemsize):
    """Tile rows per band of one image, the bands as even as they can be and their scratch, ``P x rows*TW
    x values_per_position`` values (``C + F`` for tiles and products, ``2C + F`` with the input
    gradient's tiles too), within :data:`IMAGE_SCRATCH_BYTES` where one row's is (all ``TH`` rows where
    the whole image's is)."""
    row_bytes = (tile + 2) ** 2 * tiles_w * values_per_position * itemsize
    rows_that_fit = max(1, IMAGE_SCRATCH_BYTES // row_bytes)
    bands = -(-tiles_h // rows_that_fit)
    return -(-tiles_h // bands)


@jit
def _products_per_position(gemm, trans_a, a, b, beta, c):
    """``c[p] = op(a[p]) @ b[p] + beta * c[p]`` for every position ``p``, one BLAS call each, ``op``
    transposing where ``trans_a``: ``a (P, M, K)`` or ``(P, K, M)``, ``b (P, K, N)``, ``c (P, M, N)``,
    all C-contiguous."""
    positions, rows, cols = c.shape
    depth, size = b.shape[1], c.itemsize
    for p in range(positions):
        gemm(blas.ROW_MAJOR, blas.TRANS if trans_a else blas.NO_TRANS, blas.NO_TRANS, rows, cols, depth, 1.0,
             a.ctypes.data + p * a.shape[1] * a.shape[2] * size, a.shape[2],
             b.ctypes.data + p * depth * cols * size, cols, beta, c.ctypes.data + p * rows * cols * size, cols)


@jit_inline
def _image_scratch(tile, positions, image_tiles, channels, filters, dtype):
    """One thread's scratch for one image's (or band's) Winograd products: ``(P, T, C)`` and ``(P, T,
    F)`` stacks for ``T = image_tiles``, a ``(tile, side, F)`` half-done output block and a ``(tile,
    tile, F)`` whole one."""
    return (np.empty((positions, image_tiles, channels), dtype), np.empty((positions, image_tiles, filters), dtype),
            np.empty((tile, tile + 2, filters), dtype), np.empty((tile, tile, filters), dtype))


@jit_inline
def _band(unit, band_rows, tiles_h):
    """Band ``unit`` of a batch whose images are cut into bands of ``band_rows`` of their ``tiles_h``
    tile rows: ``(n, rows)``, its image and its ``range`` of tile rows (the image's last band shorter)."""
    bands = -(-tiles_h // band_rows)
    n, first_row = unit // bands, unit % bands * band_rows
    return n, range(first_row, min(tiles_h, first_row + band_rows))


@jit_inline
def _band_stack(stack, band_tiles):
    """The first ``band_tiles`` tiles' worth of a ``(P, T, K)`` scratch stack, as a C-contiguous ``(P,
    band_tiles, K)`` array (what :func:`_products_per_position` takes)."""
    positions, _, depth = stack.shape
    return stack.reshape(-1)[:positions * band_tiles * depth].reshape(positions, band_tiles, depth)


@jit_parallel
def _winograd_by_image_kernel(gemm, tile, x, kernel_tiles, top, left, tiles_h, tiles_w, band_rows, threads, z):
    """``z[n] = outputs(tiles(x[n]) @ kernel_tiles)`` for every image, ``band_rows`` tile rows at a
    time, the bands of all images shared among ``threads`` (so that a chunk of fewer images than
    threads keeps them busy): ``x (N, H, W, C)``, ``kernel_tiles (P, C, F)``, ``z (N, OH, OW, F)``."""
    n_images, _, width, channels = x.shape
    positions, _, filters = kernel_tiles.shape
    for thread in numba.prange(threads):
        tiles, products, out_half, block = _image_scratch(tile, positions, band_rows * tiles_w, channels, filters,
                                                          x.dtype)
        strip = _tile_row_strip(tile, tiles_w, channels, x.dtype)
        zero_row = np.zeros(width * channels, x.dtype)
        for unit in _share_of_thread(thread, threads, n_images * -(-tiles_h // band_rows)):
            n, rows = _band(unit, band_rows, tiles_h)
            band_tiles, band_products = (_band_stack(tiles, len(rows) * tiles_w),
                                         _band_stack(products, len(rows) * tiles_w))
            for i in rows:
                _tiles_row(tile, x, n, i, top, left, tiles_w, strip, zero_row, band_tiles,
                           (i - rows.start) * tiles_w)
            _products_per_position(gemm, False, band_tiles, kernel_tiles, 0.0, band_products)
            for i in rows:
                _outputs_row(tile, band_products, (i - rows.start) * tiles_w, n, i, tiles_w, out_half, block, z)


@jit_inline
def _add_band_kernel_grad(gemm, tile, x, grad_out, n, rows, top, left, tiles_w, strip, zero_row, g, grad_half,
                          band_tiles, band_grad_products, partial):
    """Band ``rows`` (a ``range`` of tile rows) of image ``n``: its tiles and ``dM = outputs_grad(grad_out[n])``
    into the band's stacks, then ``partial[p] += tiles[p]^T @ dM[p]`` for every position ``p``."""
    for i in rows:
        first_tile = (i - rows.start) * tiles_w
        _tiles_row(tile, x, n, i, top, left, tiles_w, strip, zero_row, band_tiles, first_tile)
        _outputs_grad_row(tile, grad_out, n, i, tiles_w, g, grad_half, band_grad_products, first_tile)
    _products_per_position(gemm, True, band_tiles, band_grad_products, 1.0, partial)


@jit_parallel
def _winograd_by_image_kernel_grad_kernel(gemm, tile, x, grad_out, top, left, tiles_h, tiles_w, band_rows,
                                          partials):
    """``partials[t] = sum over thread t's bands of tiles(x[n])[p]^T @ outputs_grad(grad_out[n])[p]``
    for every position ``p``, the images cut into bands of ``band_rows`` tile rows, one thread per
    partial: ``x (N, H, W, C)``, ``grad_out (N, OH, OW, F)``, ``partials (threads, P, C, F)``."""
    n_images, _, width, channels = x.shape
    threads, positions, _, filters = partials.shape
    for thread in numba.prange(threads):
        tiles, grad_products, grad_half, g = _image_scratch(tile, positions, band_rows * tiles_w, channels, filters,
                                                            x.dtype)
        strip = _tile_row_strip(tile, tiles_w, channels, x.dtype)
        zero_row = np.zeros(width * channels, x.dtype)
        partials[thread] = 0
        for unit in _share_of_thread(thread, threads, n_images * -(-tiles_h // band_rows)):
            n, rows = _band(unit, band_rows, tiles_h)
            band_tiles, band_grad_products = (_band_stack(tiles, len(rows) * tiles_w),
                                              _band_stack(grad_products, len(rows) * tiles_w))
            _add_band_kernel_grad(gemm, tile, x, grad_out, n, rows, top, left, tiles_w, strip, zero_row, g, grad_half,
                                  band_tiles, band_grad_products, partials[thread])


@jit_parallel
def _winograd_by_image_grads_kernel(gemm, tile, x, grad_out, kernel_tiles_t, top, left, tiles_h, tiles_w, band_rows,
                                    partials, grad_x):
    """Both gradients from one ``dM = outputs_grad(grad_out[n])`` per band of ``band_rows`` tile rows:
    ``partials[t] = sum over thread t's bands of tiles(x[n])[p]^T @ dM[p]`` and ``grad_x[n] =
    tiles_grad(dM @ kernel_tiles_t)`` per position ``p``, each thread taking whole images (the bands of
    an image add overlapping rows onto its gradient): ``x (N, H, W, C)``, ``grad_out (N, OH, OW, F)``,
    ``kernel_tiles_t (P, F, C)`` (transposed once, as :func:`_conv_by_image_input_grad_kernel`'s),
    ``partials (threads, P, C, F)``, ``grad_x (N, H, W, C)``."""
    n_images, _, width, channels = x.shape
    threads, positions, _, filters = partials.shape
    for thread in numba.prange(threads):
        tiles, grad_products, grad_half, g = _image_scratch(tile, positions, band_rows * tiles_w, channels, filters,
                                                            x.dtype)
        grad_tiles = np.empty_like(tiles)
        strip = _tile_row_strip(tile, tiles_w, channels, x.dtype)
        grad_strip = _tile_row_strip(tile, tiles_w, channels, x.dtype)
        zero_row = np.zeros(width * channels, x.dtype)
        partials[thread] = 0
        for n in _share_of_thread(thread, threads, n_images):
            grad_x[n] = 0
            for first_row in range(0, tiles_h, band_rows):
                rows = range(first_row, min(tiles_h, first_row + band_rows))
                band_tiles, band_grad_products, band_grad_tiles = (_band_stack(tiles, len(rows) * tiles_w),
                                                                   _band_stack(grad_products, len(rows) * tiles_w),
                                                                   _band_stack(grad_tiles, len(rows) * tiles_w))
                _add_band_kernel_grad(gemm, tile, x, grad_out, n, rows, top, left, tiles_w, strip, zero_row, g,
                                      grad_half, band_tiles, band_grad_products, partials[thread])
                _products_per_position(gemm, False, band_grad_products, kernel_tiles_t, 0.0, band_grad_tiles)
                for i in rows:
                    _tiles_grad_row(tile, band_grad_tiles, (i - first_row) * tiles_w, n, i, top, left, tiles_w,
                                    grad_strip, grad_x)


def _check_kernel_tiles(function, kernel_tiles, channels):
    """Raises ``ValueError`` naming ``function`` unless ``kernel_tiles`` is ``(P, channels, F)`` with
    ``P`` the positions of a Winograd tile (16 or 36)."""
    tile_of_positions(kernel_tiles.shape[0] if kernel_tiles.ndim == 3 else 0)
    if kernel_tiles.shape[1] != channels:
        raise ValueError(f"{function}: kernel_tiles must be (P, {channels}, F) for {channels}-channel images, "
                         f"got shape {kernel_tiles.shape}")


def winograd_by_image(x, kernel_tiles, pads):
    """``z = winograd_outputs(winograd_tiles(x) @ kernel_tiles)``, image by image: ``x (N, H, W, C)``,
    ``kernel_tiles (P, C, F)`` -> ``z (N, OH, OW, F)``."""
    _check_kernel_tiles("winograd_by_image", kernel_tiles, x.shape[3])
    tile = tile_of_positions(kernel_tiles.shape[0])
    out_shape = (x.shape[0], *output_hw(x.shape, (3, 3), (1, 1), pads), kernel_tiles.shape[2])
    gemm = _library_gemm(x, kernel_tiles)
    if gemm is None:
        return winograd_outputs(matmul(winograd_tiles(x, pads, tile), kernel_tiles), out_shape)
    (tiles_h, tiles_w), ((top, _), (left, _)) = winograd_tile_grid(x.shape, pads, tile)
    z = np.empty(out_shape, dtype=x.dtype)
    band_rows = _tile_rows_per_band(tile, tiles_h, tiles_w, x.shape[3] + kernel_tiles.shape[2], x.itemsize)
    _winograd_by_image_kernel(gemm, tile, np.ascontiguousarray(x), np.ascontiguousarray(kernel_tiles), top, left,
                              tiles_h, tiles_w, band_rows, numba.get_num_threads(), z)
    return z


def winograd_by_image_kernel_grad(x, grad_out, pads, tile):
    """``dL/dkernel_tiles = winograd_tiles(x)^T @ winograd_outputs_grad(grad_out)`` per position,
    image by image: ``x (N, H, W, C)``, ``grad_out (N, OH, OW, F)`` -> ``(P, C, F)``."""
    check_tile(tile)
    _check_grad_out("winograd_by_image_kernel_grad", grad_out, x.shape, grad_out.shape[-1], (3, 3), (1, 1), pads)
    gemm = _library_gemm(x, grad_out)
    if gemm is None:
        return matmul_tn(winograd_tiles(x, pads, tile), winograd_outputs_grad(grad_out, tile))
    (tiles_h, tiles_w), ((top, _), (left, _)) = winograd_tile_grid(x.shape, pads, tile)
    partials = np.empty((numba.get_num_threads(), (tile + 2) ** 2, x.shape[3], grad_out.shape[3]), dtype=x.dtype)
    band_rows = _tile_rows_per_band(tile, tiles_h, tiles_w, x.shape[3] + grad_out.shape[3], x.itemsize)
    _winograd_by_image_kernel_grad_kernel(gemm, tile, np.ascontiguousarray(x), np.ascontiguousarray(grad_out), top,
                                          left, tiles_h, tiles_w, band_rows, partials)
    return partials.sum(axis=0)


def winograd_by_image_grads(x, grad_out, kernel_tiles, pads):
    """``(dL/dkernel_tiles, dL/dx)``, image by image from one ``dM = winograd_outputs_grad(grad_out)`` of
    each image: :func:`winograd_by_image_kernel_grad`'s ``winograd_tiles(x)^T @ dM`` and
    ``winograd_tiles_grad(dM @ kernel_tiles^T)`` per position.  ``x (N, H, W, C)``, ``grad_out (N, OH,
    OW, F)``, ``kernel_tiles (P, C, F)`` -> ``((P, C, F), (N, H, W, C))``."""
    _check_kernel_tiles("winograd_by_image_grads", kernel_tiles, x.shape[3])
    _check_grad_out("winograd_by_image_grads", grad_out, x.shape, kernel_tiles.shape[2], (3, 3), (1, 1), pads)
    tile = tile_of_positions(kernel_tiles.shape[0])
    gemm = _library_gemm(x, grad_out, kernel_tiles)
    if gemm is None:
        grad_products = winograd_outputs_grad(grad_out, tile)
        return (matmul_tn(winograd_tiles(x, pads, tile), grad_products),
                winograd_tiles_grad(matmul_nt(grad_products, kernel_tiles), x.shape, pads))
    (tiles_h, tiles_w), ((top, _), (left, _)) = winograd_tile_grid(x.shape, pads, tile)
    channels, filters = x.shape[3], grad_out.shape[3]
    partials = np.empty((numba.get_num_threads(), (tile + 2) ** 2, channels, filters), dtype=x.dtype)
    grad_x = np.empty(x.shape, dtype=x.dtype)
    band_rows = _tile_rows_per_band(tile, tiles_h, tiles_w, 2 * channels + filters, x.itemsize)
    _winograd_by_image_grads_kernel(gemm, tile, np.ascontiguousarray(x), np.ascontiguousarray(grad_out),
                                    np.ascontiguousarray(np.swapaxes(kernel_tiles, 1, 2)), top, left, tiles_h,
                                    tiles_w, band_rows, partials, grad_x)
    return partials.sum(axis=0), grad_x


# ---------------------------------------------------------------------------------------- pooling


@jit
def _window_span(start, size, length):
    """The part ``[first, stop)`` of the window ``[start, start + size)`` inside ``[0, length)``."""
    return max(start, 0), min(start + size, length)


@jit_parallel
def _maxpool_forward_kernel(x, ph, pw, sh, sw, top, left, out, argmax):
    """``out[n, oh, ow, c]`` = max of ``x`` over the window at ``(oh*SH - top, ow*SW - left)``;
    ``argmax`` its flat index ``i*PW + j``.  As ``numpy.argmax`` over the ``-inf``-padded window
    decides: the first maximum wins, a NaN beats every number, and index 0 stands when every
    value is ``-inf``."""
    n_images, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for image_row in numba.prange(n_images * out_h):
        n, oh = image_row // out_h, image_row % out_h
        for ow in range(out_w):
            best, best_index = out[n, oh, ow], argmax[n, oh, ow]
            best[:] = -np.inf
            best_index[:] = 0
            h0, h1 = _window_span(oh * sh - top, ph, height)
            w0, w1 = _window_span(ow * sw - left, pw, width)
            for h in range(h0, h1):
                for w in range(w0, w1):
                    window_index = (h - oh * sh + top) * pw + w - ow * sw + left
                    for c in range(channels):
                        value = x[n, h, w, c]
                        if value > best[c] or (value != value and best[c] == best[c]):
                            best[c], best_index[c] = value, window_index


def maxpool_forward(x, pool_size, strides, pads):
    """Max over each window, per channel.

    ``x`` ``(N, H, W, C)`` -> ``(out (N, OH, OW, C), argmax (N, OH, OW, C) int32)``; ``argmax`` is the
    flat index ``i*PW + j`` of the maximum inside its window (padding never wins: it is ``-inf``).
    """
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    out_h, out_w = output_hw(x.shape, pool_size, strides, pads)
    shape = (x.shape[0], out_h, out_w, x.shape[3])
    out, argmax = np.empty(shape, dtype=x.dtype), np.empty(shape, dtype=np.int32)
    _maxpool_forward_kernel(np.ascontiguousarray(x), ph, pw, sh, sw, top, left, out, argmax)
    return out, argmax


@jit_parallel
def _maxpool_values_kernel(x, ph, pw, sh, sw, top, left, out):
    """:func:`_maxpool_forward_kernel` without the argmax: one select per value, which vectorises
    (``benchmarks/ab_step.py --decision maxima --task predict``), with the same winner: a NaN beats
    every number."""
    n_images, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for image_row in numba.prange(n_images * out_h):
        n, oh = image_row // out_h, image_row % out_h
        for ow in range(out_w):
            best = out[n, oh, ow]
            best[:] = -np.inf
            h0, h1 = _window_span(oh * sh - top, ph, height)
            w0, w1 = _window_span(ow * sw - left, pw, width)
            for h in range(h0, h1):
                for w in range(w0, w1):
                    for c in range(channels):
                        value = x[n, h, w, c]
                        best[c] = value if value > best[c] or value != value else best[c]


def maxpool_values(x, pool_size, strides, pads):
    """``maxpool_forward``'s ``out`` alone, for inference: ``x`` ``(N, H, W, C)`` -> ``(N, OH, OW, C)``."""
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    out = np.empty((x.shape[0], *output_hw(x.shape, pool_size, strides, pads), x.shape[3]), dtype=x.dtype)
    _maxpool_values_kernel(np.ascontiguousarray(x), ph, pw, sh, sw, top, left, out)
    return out


@jit_parallel
def _maxpool_backward_kernel(grad_out, argmax, ph, pw, sh, sw, top, left, grad_in):
    """``grad_in[n, oh*SH + i - top, ow*SW + j - left, c] += grad_out[n, oh, ow, c]`` where
    ``argmax == i*PW + j``; one image per parallel task."""
    n_images, height, width, channels = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    for n in numba.prange(n_images):
        grad_in[n] = 0
        for oh in range(out_h):
            h0, h1 = _window_span(oh * sh - top, ph, height)
            for ow in range(out_w):
                w0, w1 = _window_span(ow * sw - left, pw, width)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        window_index = (h - oh * sh + top) * pw + w - ow * sw + left
                        for c in range(channels):
                            if argmax[n, oh, ow, c] == window_index:
                                grad_in[n, h, w, c] += grad_out[n, oh, ow, c]


def maxpool_backward(grad_out, argmax, x_shape, pool_size, strides, pads):
    """Route each output gradient to the input that was the window's maximum.

    ``grad_out``, ``argmax`` ``(N, OH, OW, C)`` -> ``grad_in`` ``(N, H, W, C)``;
    ``grad_in[n, oh*SH + i, ow*SW + j, c] += grad_out[n, oh, ow, c]`` where ``argmax == i*PW + j``.
    """
    _check_same_shape("maxpool_backward", "grad_out", grad_out, "argmax", argmax)
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    grad_in = np.empty(tuple(x_shape), dtype=grad_out.dtype)
    _maxpool_backward_kernel(
        np.ascontiguousarray(grad_out), np.ascontiguousarray(argmax), ph, pw, sh, sw, top, left, grad_in
    )
    return grad_in


@jit
def _average_row(image, oh, ph, pw, sh, sw, top, left, out_row):
    """``out_row[ow, c]`` = mean of ``image (H, W, C)`` over the real pixels of the window at
    ``(oh*SH - top, ow*SW - left)``, for every ``ow`` of ``out_row (OW, C)``."""
    height, width, channels = image.shape
    h0, h1 = _window_span(oh * sh - top, ph, height)
    for ow in range(out_row.shape[0]):
        w0, w1 = _window_span(ow * sw - left, pw, width)
        for c in range(channels):
            out_row[ow, c] = 0
        for h in range(h0, h1):
            for w in range(w0, w1):
                for c in range(channels):
                    out_row[ow, c] += image[h, w, c]
        inverse_count = 1.0 / ((h1 - h0) * (w1 - w0))
        for c in range(channels):
            out_row[ow, c] *= inverse_count


@jit_parallel
def _avgpool_forward_kernel(x, ph, pw, sh, sw, top, left, out):
    """``out[n, oh, ow, c]`` = mean of ``x`` over the real pixels of the window at
    ``(oh*SH - top, ow*SW - left)``, one output row of one image per parallel task."""
    out_h = out.shape[1]
    for image_row in numba.prange(x.shape[0] * out_h):
        n, oh = image_row // out_h, image_row % out_h
        _average_row(x[n], oh, ph, pw, sh, sw, top, left, out[n, oh])


def avgpool_forward(x, pool_size, strides, pads):
    """Mean over each window of the real pixels it covers (padding is not counted, as in Keras).

    ``x`` ``(N, H, W, C)`` -> ``(N, OH, OW, C)``.
    """
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    out_h, out_w = output_hw(x.shape, pool_size, strides, pads)
    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]), dtype=x.dtype)
    _avgpool_forward_kernel(np.ascontiguousarray(x), ph, pw, sh, sw, top, left, out)
    return out


@jit
def _spread_image(grad_out, ph, pw, sh, sw, top, left, grad_image):
    """``grad_image[h, w, c]`` = the sum of ``grad_out[oh, ow, c] / count(oh, ow)`` over the windows
    whose real pixels hold ``(h, w)``: ``grad_out (OH, OW, C)``, ``grad_image (H, W, C)``, which it
    overwrites."""
    height, width, channels = grad_image.shape
    out_h, out_w = grad_out.shape[0], grad_out.shape[1]
    grad_image[:] = 0
    for oh in range(out_h):
        h0, h1 = _window_span(oh * sh - top, ph, height)
        for ow in range(out_w):
            w0, w1 = _window_span(ow * sw - left, pw, width)
            inverse_count = 1.0 / ((h1 - h0) * (w1 - w0))
            for h in range(h0, h1):
                for w in range(w0, w1):
                    for c in range(channels):
                        grad_image[h, w, c] += grad_out[oh, ow, c] * inverse_count


@jit_parallel
def _avgpool_backward_kernel(grad_out, ph, pw, sh, sw, top, left, grad_in):
    """``grad_in[n, h, w, c] += grad_out[n, oh, ow, c] / count(oh, ow)`` over the real pixels
    ``(h, w)`` of each window; one image per parallel task."""
    for n in numba.prange(grad_in.shape[0]):
        _spread_image(grad_out[n], ph, pw, sh, sw, top, left, grad_in[n])


def avgpool_backward(grad_out, x_shape, pool_size, strides, pads):
    """Spread each output gradient evenly over the real pixels of its window.

    ``grad_out`` ``(N, OH, OW, C)`` -> ``(N, H, W, C)``;
    ``grad_in[n, oh*SH + i, ow*SW + j, c] += grad_out[n, oh, ow, c] / count[oh, ow]``.
    """
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    grad_in = np.empty(tuple(x_shape), dtype=grad_out.dtype)
    _avgpool_backward_kernel(np.ascontiguousarray(grad_out), ph, pw, sh, sw, top, left, grad_in)
    return grad_in


# ------------------------------------------------- one-channel 3x3 convolution under 2x2 max pooling
#
# ``numpy_ref``'s section of the same name, computed directly.  For every pooling window the 16 pixels
# of the 4x4 patch under it are read once, as scalars; then one loop over the filters (contiguous in
# the kernel and in the output) forms the window's four 3x3 dot products and keeps their maximum.
# That loop vectorises across filters with the patch in registers, and nothing of the convolution's
# full-size output is stored (``benchmarks/RESULTS.md``, "A direct first convolution under max
# pooling"; ``benchmarks/ab_step.py --decision direct`` times it against im2col + GEMM + pooling).


@jit
def _patch(image, row, col):
    """The 16 pixels ``image[row : row + 4, col : col + 4]`` of an ``(H, W)`` image, row by row."""
    r0, r1, r2, r3 = image[row], image[row + 1], image[row + 2], image[row + 3]
    return (r0[col], r0[col + 1], r0[col + 2], r0[col + 3], r1[col], r1[col + 1], r1[col + 2], r1[col + 3],
            r2[col], r2[col + 1], r2[col + 2], r2[col + 3], r3[col], r3[col + 1], r3[col + 2], r3[col + 3])


@jit
def _window_outputs(p, kernel, f):
    """``(z00, z01, z10, z11)``: filter ``f`` of ``kernel (9, F)`` applied at the four places ``(r, s)``
    of the 4x4 patch ``p``, ``z_rs = sum_{a, b} p[4(r + a) + s + b] * kernel[3a + b, f]``."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (kernel[0, f], kernel[1, f], kernel[2, f], kernel[3, f], kernel[4, f],
                                          kernel[5, f], kernel[6, f], kernel[7, f], kernel[8, f])
    z00 = p[0] * w0 + p[1] * w1 + p[2] * w2 + p[4] * w3 + p[5] * w4 + p[6] * w5 + p[8] * w6 + p[9] * w7 + p[10] * w8
    z01 = p[1] * w0 + p[2] * w1 + p[3] * w2 + p[5] * w3 + p[6] * w4 + p[7] * w5 + p[9] * w6 + p[10] * w7 + p[11] * w8
    z10 = p[4] * w0 + p[5] * w1 + p[6] * w2 + p[8] * w3 + p[9] * w4 + p[10] * w5 + p[12] * w6 + p[13] * w7 + p[14] * w8
    z11 = p[5] * w0 + p[6] * w1 + p[7] * w2 + p[9] * w3 + p[10] * w4 + p[11] * w5 + p[13] * w6 + p[14] * w7 + p[15] * w8
    return z00, z01, z10, z11


@jit
def _wins(value, best):
    """Whether ``value`` replaces ``best`` as a window's maximum: larger, or the first NaN (as
    ``numpy.argmax`` decides)."""
    return value > best or (value != value and best == best)


@jit_parallel
def _conv3x3_maxpool_kernel(images, kernel, pooled, argmax):
    """``pooled[n, i, j, f]`` = the largest of the four outputs of filter ``f`` on the patch at
    ``(2i, 2j)``, ``argmax`` its ``2r + s``; ``images (N, H, W)``, ``kernel (9, F)``."""
    n_images, pooled_h, pooled_w, filters = pooled.shape
    for n in numba.prange(n_images):
        for i in range(pooled_h):
            for j in range(pooled_w):
                p = _patch(images[n], 2 * i, 2 * j)
                best, best_index = pooled[n, i, j], argmax[n, i, j]
                for f in range(filters):
                    z00, z01, z10, z11 = _window_outputs(p, kernel, f)
                    value, index = z00, 0
                    value, index = (z01, 1) if _wins(z01, value) else (value, index)
                    value, index = (z10, 2) if _wins(z10, value) else (value, index)
                    value, index = (z11, 3) if _wins(z11, value) else (value, index)
                    best[f], best_index[f] = value, index


@jit_parallel
def _conv3x3_maxpool_values_kernel(images, kernel, pooled):
    """:func:`_conv3x3_maxpool_kernel` without the argmax: a NaN still wins (any NaN will do, as
    the value is all that is kept)."""
    n_images, pooled_h, pooled_w, filters = pooled.shape
    for n in numba.prange(n_images):
        for i in range(pooled_h):
            for j in range(pooled_w):
                p = _patch(images[n], 2 * i, 2 * j)
                best = pooled[n, i, j]
                for f in range(filters):
                    z00, z01, z10, z11 = _window_outputs(p, kernel, f)
                    value = z00
                    value = z01 if z01 > value or z01 != z01 else value
                    value = z10 if z10 > value or z10 != z10 else value
                    best[f] = z11 if z11 > value or z11 != z11 else value


@jit
def _pick(top_left, top_right, bottom_left, bottom_right, down, right):
    """One of four values by two flags."""
    return (bottom_right if right else bottom_left) if down else (top_right if right else top_left)


@jit_parallel
def _conv3x3_maxpool_kernel_grad_kernel(images, grad_pooled, argmax, grad_kernel):
    """``grad_kernel[3a + b, f] += grad_pooled[n, i, j, f] * p[4(r + a) + s + b]`` for the patch ``p``
    at ``(2i, 2j)`` and the winner ``2r + s = argmax[n, i, j, f]``; ``grad_kernel (9, F)``.  Each
    image adds into its own ``(9, F)`` sum, so that threads never add into the same one."""
    n_images, pooled_h, pooled_w, filters = grad_pooled.shape
    per_image = np.zeros((n_images, 9, filters), dtype=grad_kernel.dtype)
    for n in numba.prange(n_images):
        image_grad = per_image[n]
        for i in range(pooled_h):
            for j in range(pooled_w):
                p = _patch(images[n], 2 * i, 2 * j)
                grads, winners = grad_pooled[n, i, j], argmax[n, i, j]
                for f in range(filters):
                    g, down, right = grads[f], winners[f] >= 2, winners[f] % 2 == 1
                    image_grad[0, f] += g * _pick(p[0], p[1], p[4], p[5], down, right)
                    image_grad[1, f] += g * _pick(p[1], p[2], p[5], p[6], down, right)
                    image_grad[2, f] += g * _pick(p[2], p[3], p[6], p[7], down, right)
                    image_grad[3, f] += g * _pick(p[4], p[5], p[8], p[9], down, right)
                    image_grad[4, f] += g * _pick(p[5], p[6], p[9], p[10], down, right)
                    image_grad[5, f] += g * _pick(p[6], p[7], p[10], p[11], down, right)
                    image_grad[6, f] += g * _pick(p[8], p[9], p[12], p[13], down, right)
                    image_grad[7, f] += g * _pick(p[9], p[10], p[13], p[14], down, right)
                    image_grad[8, f] += g * _pick(p[10], p[11], p[14], p[15], down, right)
    grad_kernel[:] = per_image.sum(axis=0)


def _images_and_taps(x, kernel):
    """``x (N, H, W, 1)`` as contiguous ``(N, H, W)`` and ``kernel (3, 3, 1, F)`` as ``(9, F)``."""
    return np.ascontiguousarray(x[..., 0]), np.ascontiguousarray(kernel.reshape(9, -1))


def conv3x3_maxpool(x, kernel):
    """``z = conv(x, kernel)`` (3x3, stride 1, no padding, no bias) under 2x2 max pooling at stride 2:
    ``x (N, H, W, 1)``, ``kernel (3, 3, 1, F)`` -> ``(pooled, argmax)``, both ``(N, PH, PW, F)`` with
    ``PH = (H - 2) // 2``; ``argmax`` (int32) is the ``2r + s`` of the maximum ``z[n, 2i + r, 2j + s, f]``."""
    shape = conv3x3_maxpool_shape("conv3x3_maxpool", x.shape, kernel.shape)
    pooled, argmax = np.empty(shape, dtype=x.dtype), np.empty(shape, dtype=np.int32)
    _conv3x3_maxpool_kernel(*_images_and_taps(x, kernel), pooled, argmax)
    return pooled, argmax


def conv3x3_maxpool_values(x, kernel):
    """:func:`conv3x3_maxpool`'s ``pooled`` alone, for inference: ``(N, H, W, 1) -> (N, PH, PW, F)``."""
    pooled = np.empty(conv3x3_maxpool_shape("conv3x3_maxpool_values", x.shape, kernel.shape), dtype=x.dtype)
    _conv3x3_maxpool_values_kernel(*_images_and_taps(x, kernel), pooled)
    return pooled


def conv3x3_maxpool_kernel_grad(x, grad_pooled, argmax):
    """``dL/dkernel`` ``(3, 3, 1, F)`` of :func:`conv3x3_maxpool` from ``dL/dpooled`` and ``argmax``
    ``(N, PH, PW, F)``: each pooled gradient times the 3x3 pixels under the output that won its window."""
    filters = conv3x3_maxpool_grad_shape("conv3x3_maxpool_kernel_grad", x.shape, grad_pooled.shape,
                                         argmax.shape)[3]
    grad_kernel = np.empty((9, filters), dtype=grad_pooled.dtype)
    images = np.ascontiguousarray(x[..., 0])
    _conv3x3_maxpool_kernel_grad_kernel(images, np.ascontiguousarray(grad_pooled), np.ascontiguousarray(argmax),
                                        grad_kernel)
    return grad_kernel.reshape(3, 3, 1, filters)


# ------------------------------------------------------------------------------------ activations


#: ``tanh(v) = v P(v^2) / Q(v^2)`` on ``|v| <= TANH_SATURATES``, ``P``'s and ``Q``'s coefficients from
#: the constant term up: a rational fit of tanh (relative error 6.6e-9 before its coefficients were
#: rounded to float32), within 6 ulp of the correctly rounded float32 tanh when evaluated in float32
#: (``tests/kernels/test_cpu.py`` measures it); past ``TANH_SATURATES`` the float32 tanh is +-1.  In the
#: fused bias loop it runs on every thread where NumPy's tanh ran on one after it (``benchmarks/RESULTS.md``
#: [D15]).
TANH_P = (1.0, 0.13084019720554352, 0.0031039675232023, 1.1154419553349726e-05, -2.0225639829618558e-08,
          5.278127240826436e-11, -8.489122761950324e-14)
TANH_Q = (1.0, 0.46417346596717834, 0.02449522353708744, 0.0002546161413192749)
TANH_SATURATES = 9.0


@jit
def _tanh_float32(v):
    """``tanh(v)`` of a float32 ``v`` by :data:`TANH_P` / :data:`TANH_Q`: multiplications, additions and
    one division, which a loop vectorises, where ``np.tanh`` compiles to a scalar libm call.  Past
    :data:`TANH_SATURATES`, and where the fit's rounding passes 1 by an ulp, it is +-1; NaN stays NaN."""
    limit, one = np.float32(TANH_SATURATES), np.float32(1)
    s = min(max(v, -limit), limit)
    p0, p1, p2, p3, p4, p5, p6 = TANH_P
    q0, q1, q2, q3 = TANH_Q
    t = s * s
    p = ((((((np.float32(p6) * t + np.float32(p5)) * t + np.float32(p4)) * t + np.float32(p3)) * t
           + np.float32(p2)) * t + np.float32(p1)) * t + np.float32(p0))
    q = ((np.float32(q3) * t + np.float32(q2)) * t + np.float32(q1)) * t + np.float32(q0)
    y = s * p / q
    if v >= limit or y > one:
        return one
    if v <= -limit or y < -one:
        return -one
    return y if v == v else v


#: ``e^-r = sum_k EXP_NEGATIVE[k] r^k`` on ``|r| <= ln(2) / 2``: a least-squares polynomial fit, whose
#: sigmoid is within 4 ulp of the correctly rounded float32 sigmoid (``tests/kernels/test_cpu.py``).
EXP_NEGATIVE = (1.0, -1.0, 0.5, -0.16666455566883087, 0.04166628047823906, -0.008371911942958832,
                0.0013944600941613317)
#: ``ln 2`` split in two, the first part exact in float32 with trailing zero bits, so that ``a - k ln 2``
#: loses nothing for ``k < 2^8`` (Cody and Waite's range reduction).
LN2_HIGH, LN2_LOW = 0.693359375, -0.00021219444170128554
#: Past this ``|v|`` the float32 sigmoid is 1, or a subnormal below ``1.7e-38``, taken as 0.
SIGMOID_SATURATES = 87.0
#: ``2^-k`` for ``0 <= k < 128`` (read only): a table read vectorises, where ``ldexp`` does not, and
#: where building ``2^-k`` from the bits of ``k`` stopped the activation loop from vectorising.
POWERS_OF_HALF = np.array([2.0 ** -k for k in range(128)], dtype=np.float32)
POWERS_OF_HALF.setflags(write=False)


@jit
def _exp_negative_float32(a):
    """``e^-a`` of a float32 ``0 <= a <= SIGMOID_SATURATES``: ``a = k ln 2 + r`` with ``|r| <= ln(2) /
    2``, then ``e^-a = 2^-k e^-r`` by :data:`POWERS_OF_HALF` and :data:`EXP_NEGATIVE`."""
    k = np.int32(a * np.float32(1.4426950408889634) + np.float32(0.5))  # round(a / ln 2)
    r = (a - np.float32(k) * np.float32(LN2_HIGH)) - np.float32(k) * np.float32(LN2_LOW)
    c0, c1, c2, c3, c4, c5, c6 = EXP_NEGATIVE
    e = ((((((np.float32(c6) * r + np.float32(c5)) * r + np.float32(c4)) * r + np.float32(c3)) * r
           + np.float32(c2)) * r + np.float32(c1)) * r + np.float32(c0))
    return e * POWERS_OF_HALF[k]


@jit
def _sigmoid_float32(v):
    """``1 / (1 + e^-v)`` of a float32 ``v`` from ``e = e^-|v|`` (at most 1: no overflow): ``1 / (1 +
    e)`` for ``v >= 0`` and ``e / (1 + e)`` below, which keeps the small values' relative precision.
    Past :data:`SIGMOID_SATURATES` it is 1 or 0; NaN stays NaN."""
    one, limit = np.float32(1), np.float32(SIGMOID_SATURATES)
    magnitude = abs(v)
    e = _exp_negative_float32(magnitude if magnitude < limit else limit)  # NaN too: its index stays in range
    y = one / (one + e)
    if v < 0:
        y = np.float32(0) if v < -limit else e * y
    return y if v == v else v


@jit
def _activate(v, code, zero):
    """``f(v)`` for the activation numbered ``code`` of those :func:`_activates_in_loop` allows (linear,
    ReLU, float32's tanh and sigmoid); ``zero`` carries the dtype."""
    if code == RELU:
        return max(v, zero)
    if code == TANH:
        return _tanh_float32(v)
    if code == SIGMOID:
        return _sigmoid_float32(v)
    return v


@numba.njit(cache=True, error_model="numpy", inline="always")
def _bias_activate_loop(z_rows, bias, code, y_rows):
    """The loop of :func:`_bias_activate_rows`, inlined into each of its branches with a constant ``code``."""
    zero = y_rows.dtype.type(0)
    for m in range(z_rows.shape[0]):
        for c in range(z_rows.shape[1]):
            y_rows[m, c] = _activate(z_rows[m, c] + bias[c], code, zero)


@jit
def _bias_activate_rows(z_rows, bias, code, y_rows):
    """``y_rows[m, c] = f(z_rows[m, c] + bias[c])`` for ``z_rows, y_rows (M, C)``, ``bias (C,)``.

    The activation is chosen once, before the loop: each branch runs the loop with its code a
    constant, so the loop holds one activation's arithmetic and vectorises.  With the code tested per
    element, LLVM vectorised the loop in one kernel and not in another, which then ran 4-13x slower
    (``benchmarks/RESULTS.md`` [D20])."""
    if code == TANH:
        _bias_activate_loop(z_rows, bias, TANH, y_rows)
    elif code == SIGMOID:
        _bias_activate_loop(z_rows, bias, SIGMOID, y_rows)
    elif code == RELU:
        _bias_activate_loop(z_rows, bias, RELU, y_rows)
    else:
        _bias_activate_loop(z_rows, bias, LINEAR, y_rows)


@jit_parallel
def _bias_activation_kernel(z, bias, code, chunk_rows, y):
    """``y[m, c] = f(z[m, c] + bias[c])`` for ``z, y (M, C)``, ``bias (C,)``, ``chunk_rows`` rows per
    parallel task."""
    rows = z.shape[0]
    for chunk in numba.prange((rows + chunk_rows - 1) // chunk_rows):
        first, stop = chunk * chunk_rows, min(rows, (chunk + 1) * chunk_rows)
        _bias_activate_rows(z[first:stop], bias, code, y[first:stop])


def bias_activation(z, bias, activation):
    """``y = f(z + bias)``, bias broadcast over the last axis (``bias`` may be ``None``).

    ``f`` is ``linear`` (identity), ``relu`` ``max(0, v)``, ``sigmoid`` ``1 / (1 + e^-v)`` or
    ``tanh``.  Any shape ``(..., C)`` -> the same shape.
    """
    code = _activation_code("bias_activation", activation)
    y = np.empty(z.shape, dtype=_output_dtype(z, bias))
    loop_code = code if _activates_in_loop(code, y.dtype) else LINEAR  # else by NumPy after: _squash_in_place
    check_bias("bias_activation", bias, z.shape[-1])
    channels = z.shape[-1]
    _bias_activation_kernel(_flat(z).reshape(-1, channels), _bias_values(bias, channels, y.dtype), loop_code,
                            max(1, ACTIVATION_CHUNK // channels), y.reshape(-1, channels))
    if loop_code != code:
        _squash_in_place(y, code)
    return y


def _output_dtype(z, bias):
    """The dtype of ``f(z + bias)``: ``z``'s, or with a bias, the two promoted."""
    return z.dtype if bias is None else np.result_type(z, bias)


def _bias_values(bias, channels, dtype):
    """``bias`` ``(C,)`` as ``dtype``, or for ``None`` the bias that adds nothing: ``-0.0`` (``v + -0.0``
    is ``v`` for every ``v``, ``-0.0`` included, where ``-0.0 + 0.0`` is ``+0.0``)."""
    return np.full(channels, -0.0, dtype=dtype) if bias is None else bias.astype(dtype, copy=False)


def _activates_in_loop(code, dtype):
    """Whether the Numba loop applies activation ``code`` to ``dtype`` values: linear and ReLU always,
    tanh and sigmoid on float32 only (float64's would need fits of float64's precision)."""
    return code in (LINEAR, RELU) or (code in (TANH, SIGMOID) and dtype == np.float32)


def _squash_in_place(y, code):
    """``y = tanh(y)`` or ``sigmoid(y) = 1 / (1 + e^-y)`` in place (other codes: unchanged), by NumPy's
    SIMD ufuncs, for what the Numba loop does not apply (:func:`_activates_in_loop`: float64's tanh and
    sigmoid).  Without Intel's SVML, Numba compiles ``np.tanh`` and ``np.exp`` in a loop to a scalar
    libm call per element, 100 to 800 times slower than NumPy's on float32 (``benchmarks/RESULTS.md``
    [D8]).  IEEE arithmetic keeps the sigmoid exact at the ends: ``e^-y = inf`` gives ``0``."""
    if code == TANH:
        np.tanh(y, out=y)
    elif code == SIGMOID:
        with np.errstate(over="ignore"):
            np.negative(y, out=y)
            np.exp(y, out=y)
            y += 1
            np.reciprocal(y, out=y)


@jit
def _activation_derivative(y, code, zero, one):
    """``f'(z)`` written in terms of ``y = f(z)``; ``zero``, ``one`` carry the dtype."""
    if code == RELU:
        return one if y > 0 else zero
    if code == SIGMOID:
        return y * (one - y)
    if code == TANH:
        return one - y * y
    return one


@jit_parallel
def _activation_grad_kernel(grad_out, y, code, grad_in):
    """``grad_in[i] = grad_out[i] * f'(z[i])`` over flat arrays."""
    zero, one = y.dtype.type(0), y.dtype.type(1)
    for i in numba.prange(grad_out.size):
        grad_in[i] = grad_out[i] * _activation_derivative(y[i], code, zero, one)


def activation_grad(grad_out, y, activation):
    """``dL/dz = dL/dy * f'(z)``, with ``f'`` written in terms of the output ``y = f(z)``.

    relu: ``y > 0``; sigmoid: ``y (1 - y)``; tanh: ``1 - y^2``; linear: ``1``.  Same shape in and out.
    """
    code = _activation_code("activation_grad", activation)
    _check_same_shape("activation_grad", "grad_out", grad_out, "y", y)
    grad_in = np.empty(grad_out.shape, dtype=grad_out.dtype)
    _activation_grad_kernel(_flat(grad_out), _flat(y), code, grad_in.reshape(-1))
    return grad_in


@numba.njit(cache=True, error_model="numpy", inline="always")
def _activation_bias_grad_loop(grad_rows, y_rows, code, grad_z_rows, sums):
    """The loop of :func:`_activation_bias_grad_rows`, inlined into each of its branches with a constant
    ``code``."""
    zero, one = y_rows.dtype.type(0), y_rows.dtype.type(1)
    for m in range(grad_rows.shape[0]):
        for c in range(grad_rows.shape[1]):
            grad = grad_rows[m, c] * _activation_derivative(y_rows[m, c], code, zero, one)
            grad_z_rows[m, c] = grad
            sums[c] += grad


@jit
def _activation_bias_grad_rows(grad_rows, y_rows, code, grad_z_rows, sums):
    """``grad_z_rows[m, c] = grad_rows[m, c] * f'(y_rows[m, c])`` for ``(M, C)`` rows, each added into
    ``sums (C,)``; the activation chosen once, before the loop, as :func:`_bias_activate_rows` does."""
    if code == TANH:
        _activation_bias_grad_loop(grad_rows, y_rows, TANH, grad_z_rows, sums)
    elif code == SIGMOID:
        _activation_bias_grad_loop(grad_rows, y_rows, SIGMOID, grad_z_rows, sums)
    elif code == RELU:
        _activation_bias_grad_loop(grad_rows, y_rows, RELU, grad_z_rows, sums)
    else:
        _activation_bias_grad_loop(grad_rows, y_rows, LINEAR, grad_z_rows, sums)


@jit_parallel
def _activation_bias_grad_kernel(grad_out, y, code, chunk_rows, grad_z, partials):
    """``grad_z = grad_out * f'(y)`` for ``(M, C)`` arrays and ``partials[k]`` the column sums of its
    chunk ``k`` of ``chunk_rows`` rows, one chunk per parallel task."""
    rows = grad_out.shape[0]
    for chunk in numba.prange(partials.shape[0]):
        first, stop = chunk * chunk_rows, min(rows, (chunk + 1) * chunk_rows)
        partials[chunk] = 0
        _activation_bias_grad_rows(grad_out[first:stop], y[first:stop], code, grad_z[first:stop], partials[chunk])


def activation_bias_grad(grad_out, y, activation):
    """``(dL/dz, dL/db)`` in one pass: ``dL/dz = dL/dy * f'(z)`` as :func:`activation_grad` computes it
    and ``dL/db`` its column sums, as :func:`bias_grad`: ``grad_out``, ``y`` ``(M, C)`` -> ``((M, C),
    (C,))``."""
    code = _activation_code("activation_bias_grad", activation)
    _check_same_shape("activation_bias_grad", "grad_out", grad_out, "y", y)
    if grad_out.ndim != 2:
        raise ValueError(f"activation_bias_grad: grad_out and y must be (M, C), got shape {grad_out.shape}")
    rows, channels = grad_out.shape
    grad_z = np.empty(grad_out.shape, dtype=grad_out.dtype)
    chunk_rows = max(1, ACTIVATION_CHUNK // max(1, channels))
    partials = np.empty((max(1, -(-rows // chunk_rows)), channels), dtype=grad_out.dtype)
    _activation_bias_grad_kernel(np.ascontiguousarray(grad_out), np.ascontiguousarray(y, dtype=grad_out.dtype), code,
                                 chunk_rows, grad_z, partials)
    return grad_z, partials.sum(axis=0)


@jit_parallel
def _leaky_relu_kernel(z, alpha, y):
    """``y[i] = z[i]`` where ``z[i] > 0``, else ``alpha * z[i]``."""
    slope = z.dtype.type(alpha)
    for i in numba.prange(z.size):
        y[i] = z[i] if z[i] > 0 else slope * z[i]


def leaky_relu(z, alpha):
    """``y = z`` where ``z > 0``, else ``alpha * z``.  Same shape in and out."""
    y = np.empty_like(z, order="C")
    _leaky_relu_kernel(_flat(z), float(alpha), y.reshape(-1))
    return y


@jit_parallel
def _leaky_relu_grad_kernel(grad_out, z, alpha, grad_in):
    """``grad_in[i] = grad_out[i]`` where ``z[i] > 0``, else ``alpha * grad_out[i]``."""
    slope = grad_out.dtype.type(alpha)
    for i in numba.prange(grad_out.size):
        grad_in[i] = grad_out[i] if z[i] > 0 else slope * grad_out[i]


def leaky_relu_grad(grad_out, z, alpha):
    """``dL/dz = dL/dy`` where ``z > 0``, else ``alpha * dL/dy``.  Same shape in and out."""
    _check_same_shape("leaky_relu_grad", "grad_out", grad_out, "z", z)
    grad_in = np.empty_like(grad_out, order="C")
    _leaky_relu_grad_kernel(_flat(grad_out), _flat(z), float(alpha), grad_in.reshape(-1))
    return grad_in


@jit
def _softmax_row(z, y):
    """``y = e^(z - max z) / sum e^(z - max z)`` for one row."""
    peak = z.max()
    total = 0.0
    for k in range(z.size):
        y[k] = np.exp(z[k] - peak)
        total += y[k]
    inverse_total = 1.0 / total
    for k in range(z.size):
        y[k] *= inverse_total


@jit_parallel
def _softmax_kernel(z, y):
    """Row-wise softmax of ``z (M, K)`` into ``y (M, K)``."""
    for m in numba.prange(z.shape[0]):
        _softmax_row(z[m], y[m])


def softmax(z):
    """Row-wise softmax over the last axis, ``y_k = e^(z_k - max z) / sum_j e^(z_j - max z)``."""
    y = np.empty(z.shape, dtype=z.dtype)
    classes = z.shape[-1]
    _softmax_kernel(_flat(z).reshape(-1, classes), y.reshape(-1, classes))
    return y


@jit_parallel
def _softmax_grad_kernel(grad_out, y, grad_in):
    """``grad_in[m] = y[m] * (g[m] - <g[m], y[m]>)`` per row of ``(M, K)`` arrays."""
    for m in numba.prange(y.shape[0]):
        dot = 0.0
        for k in range(y.shape[1]):
            dot += grad_out[m, k] * y[m, k]
        for k in range(y.shape[1]):
            grad_in[m, k] = y[m, k] * (grad_out[m, k] - dot)


def softmax_grad(grad_out, y):
    """Jacobian-vector product of softmax: ``dL/dz = y * (g - sum_k g_k y_k)`` per row."""
    _check_same_shape("softmax_grad", "grad_out", grad_out, "y", y)
    grad_in = np.empty(y.shape, dtype=np.result_type(grad_out, y))
    classes = y.shape[-1]
    _softmax_grad_kernel(
        _flat(grad_out).reshape(-1, classes), _flat(y).reshape(-1, classes), grad_in.reshape(-1, classes)
    )
    return grad_in


# ---------------------------------------------------------------- activation under average pooling
#
# ``numpy_ref``'s section of the same name, image by image: each thread makes one image's ``y = f(z +
# b)`` and pools it while it is still in the core's cache, and backward spreads one image's pooled
# gradient, multiplies it by ``f'`` and adds it into the image's bias sums in one more pass over it.
# Apart, the bias and activation, the pooling, their two backward passes and the bias gradient each
# read or wrote the whole batch's ``(N, H, W, C)`` arrays again, 8 MB each at batch 128 on a 32x32x16
# output (``benchmarks/RESULTS.md`` [D18]).


@jit_parallel
def _bias_activation_avgpool_kernel(z, bias, code, ph, pw, sh, sw, top, left, y, pooled):
    """``y[n] = f(z[n] + bias)`` and ``pooled[n]`` its window means, one image per parallel task:
    ``z, y (N, H, W, C)``, ``bias (C,)``, ``pooled (N, OH, OW, C)``."""
    channels = z.shape[3]
    for n in numba.prange(z.shape[0]):
        _bias_activate_rows(z[n].reshape(-1, channels), bias, code, y[n].reshape(-1, channels))
        for oh in range(pooled.shape[1]):
            _average_row(y[n], oh, ph, pw, sh, sw, top, left, pooled[n, oh])


def bias_activation_avgpool(z, bias, activation, pool_size, strides, pads):
    """``(y, pooled)``: ``y = f(z + bias)`` for ``z`` ``(N, H, W, C)`` (``bias`` ``(C,)`` or ``None``)
    and ``pooled = avgpool_forward(y)`` ``(N, OH, OW, C)``, each image pooled as soon as it is made
    (activations the loop does not apply, :func:`_activates_in_loop`, run apart)."""
    code = _activation_code("bias_activation_avgpool", activation)
    check_bias("bias_activation_avgpool", bias, z.shape[-1])
    dtype = _output_dtype(z, bias)
    if not _activates_in_loop(code, dtype):
        y = bias_activation(z, bias, activation)
        return y, avgpool_forward(y, pool_size, strides, pads)
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    y = np.empty(z.shape, dtype=dtype)
    pooled = np.empty((z.shape[0], *output_hw(z.shape, pool_size, strides, pads), z.shape[3]), dtype=dtype)
    bias = _bias_values(bias, z.shape[3], dtype)
    _bias_activation_avgpool_kernel(np.ascontiguousarray(z, dtype=dtype), bias, code, ph, pw, sh, sw, top, left,
                                    y, pooled)
    return y, pooled


@jit_parallel
def _avgpool_activation_grad_kernel(grad_pooled, y, code, ph, pw, sh, sw, top, left, grad_z, image_bias_grads):
    """``grad_z[n] = spread(grad_pooled[n]) * f'(y[n])`` and ``image_bias_grads[n]`` its sum over the
    image's pixels, one image per parallel task: ``grad_pooled (N, OH, OW, C)``, ``y, grad_z (N, H, W,
    C)``, ``image_bias_grads (N, C)``."""
    zero, one = y.dtype.type(0), y.dtype.type(1)
    channels = y.shape[3]
    for n in numba.prange(y.shape[0]):
        _spread_image(grad_pooled[n], ph, pw, sh, sw, top, left, grad_z[n])
        grad_rows, y_rows, sums = grad_z[n].reshape(-1, channels), y[n].reshape(-1, channels), image_bias_grads[n]
        sums[:] = 0
        for m in range(grad_rows.shape[0]):
            for c in range(channels):
                grad = grad_rows[m, c] * _activation_derivative(y_rows[m, c], code, zero, one)
                grad_rows[m, c] = grad
                sums[c] += grad


def avgpool_activation_grad(grad_pooled, y, activation, pool_size, strides, pads):
    """``(grad_z, grad_bias)`` of :func:`bias_activation_avgpool` from ``dL/dpooled`` ``(N, OH, OW, C)``
    and ``y`` ``(N, H, W, C)``: ``grad_z = avgpool_backward(grad_pooled) * f'(z)`` (``f'`` from ``y``)
    and ``grad_bias`` its sum over ``N, H, W``, ``(C,)``; each image spread, scaled and summed in turn."""
    code = _activation_code("avgpool_activation_grad", activation)
    pooled_grad_shape("avgpool_activation_grad", grad_pooled.shape, y.shape, pool_size, strides, pads)
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    grad_z = np.empty(y.shape, dtype=grad_pooled.dtype)
    image_bias_grads = np.empty((y.shape[0], y.shape[3]), dtype=grad_pooled.dtype)
    _avgpool_activation_grad_kernel(np.ascontiguousarray(grad_pooled), np.ascontiguousarray(y), code, ph, pw, sh, sw,
                                    top, left, grad_z, image_bias_grads)
    return grad_z, image_bias_grads.sum(axis=0)


# ----------------------------------------------------------------------------------------- losses


@jit
def _softmax_cross_entropy_kernel(logits, targets, losses, grad):
    """Per row ``n``: ``log p = z - max z - log sum e^(z - max z)``, ``loss_n = -sum_k t_k log p_k``,
    ``grad[n] = (p - t) / N``."""
    rows, classes = logits.shape
    for n in range(rows):
        peak = logits[n].max()
        total = 0.0
        for k in range(classes):
            total += np.exp(logits[n, k] - peak)
        log_total = np.log(total)
        loss = 0.0
        for k in range(classes):
            log_p = logits[n, k] - peak - log_total
            loss -= targets[n, k] * log_p
            grad[n, k] = (np.exp(log_p) - targets[n, k]) / rows
        losses[n] = loss


def softmax_cross_entropy(logits, targets):
    """Fused softmax + cross-entropy on logits, stable for any logits.

    ``logits``, ``targets`` ``(N, K)`` (targets one-hot or probabilities) ->
    ``(losses (N,), grad (N, K))`` with ``loss_n = -sum_k t_nk log softmax(z_n)_k`` and
    ``grad = (softmax(z) - t) / N``, the gradient of the mean loss (targets summing to one per row).
    """
    _check_same_shape("softmax_cross_entropy", "logits", logits, "targets", targets)
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: logits must be (N, K), got shape {logits.shape}")
    losses = np.empty(logits.shape[0], dtype=logits.dtype)
    grad = np.empty(logits.shape, dtype=logits.dtype)
    _softmax_cross_entropy_kernel(
        np.ascontiguousarray(logits), np.ascontiguousarray(targets, dtype=logits.dtype), losses, grad
    )
    return losses, grad


# --------------------------------------------------------------------------------- regularisation


#: ``numpy_ref.dropout_hash_bits`` compiled for one uint64 counter at a time.
_dropout_hash_bits = jit(numpy_ref.dropout_hash_bits)


@jit_parallel
def _dropout_kernel(x, first_counter, threshold, keep_scale, y, mask):
    """``mask[i] = keep_scale`` where the hash of ``first_counter + i`` reaches ``threshold``, else ``0``;
    ``y[i] = x[i] * mask[i]``: one pass over flat arrays."""
    zero = x.dtype.type(0)
    for i in numba.prange(x.size):
        kept = keep_scale if _dropout_hash_bits(first_counter + np.uint64(i)) >= threshold else zero
        mask[i] = kept
        y[i] = x[i] * kept


def dropout(x, rate, seed):
    """Inverted dropout in one pass: ``(y, mask)``, the masks of ``numpy_ref.dropout`` (the same seed
    gives the same mask on every backend).  The hash runs inside the loop, so no uniform numbers are
    stored and read back (``benchmarks/RESULTS.md``, section
    "Planner gradients, dropout in one pass, a phase-plane unfold and the conv choice under the process settings")."""
    first_counter, threshold = numpy_ref.dropout_counter(seed), numpy_ref.dropout_threshold(rate)
    x = np.ascontiguousarray(x)
    y, mask = np.empty_like(x), np.empty_like(x)
    _dropout_kernel(x.reshape(-1), first_counter, threshold, x.dtype.type(1.0 / (1.0 - rate)), y.reshape(-1),
                    mask.reshape(-1))
    return y, mask


@jit_parallel
def _regularize_grad_kernel(grad, param, l1, l2):
    """``grad[i] += l1 * sign(param[i]) + 2 * l2 * param[i]``, in place."""
    l1_t, two_l2 = grad.dtype.type(l1), grad.dtype.type(2 * l2)
    for i in numba.prange(grad.size):
        grad[i] += l1_t * np.sign(param[i]) + two_l2 * param[i]


def regularize_grad(grad, param, l1, l2):
    """In place: ``grad += l1 * sign(param) + 2 * l2 * param``, the gradient of
    ``l1 * sum|w| + l2 * sum w^2``."""
    _check_same_shape("regularize_grad", "grad", grad, "param", param)
    if l1 or l2:
        _regularize_grad_kernel(
            _flat_inplace("regularize_grad", "grad", grad), _flat(param), float(l1), float(l2)
        )


@jit
def _regularization_penalty_kernel(param, l1, l2):
    """``l1 * sum|w| + l2 * sum w^2``, accumulated in float64."""
    abs_sum = 0.0
    square_sum = 0.0
    for i in range(param.size):
        w = np.float64(param[i])
        abs_sum += abs(w)
        square_sum += w * w
    return l1 * abs_sum + l2 * square_sum


def regularization_penalty(param, l1, l2):
    """``l1 * sum|w| + l2 * sum w^2`` as a Python float."""
    return float(_regularization_penalty_kernel(_flat(param), float(l1), float(l2)))


# -------------------------------------------------------------------------------- optimizer steps


@jit_parallel
def _sgd_kernel(param, grad, velocity, lr, momentum, nesterov):
    """``v = momentum v - lr g``; ``w += momentum v - lr g`` (Nesterov) or ``w += v``, in place."""
    lr_t, momentum_t = param.dtype.type(lr), param.dtype.type(momentum)
    for i in numba.prange(param.size):
        step = lr_t * grad[i]
        velocity[i] = momentum_t * velocity[i] - step
        if nesterov:
            param[i] += momentum_t * velocity[i] - step
        else:
            param[i] += velocity[i]


def sgd_update(param, grad, velocity, lr, momentum, nesterov):
    """In place, Keras's SGD: ``v = momentum * v - lr * g``; ``w += v`` or, with Nesterov,
    ``w += momentum * v - lr * g``.  With ``momentum == 0`` this is ``w -= lr * g``."""
    _check_same_shape("sgd_update", "param", param, "grad", grad)
    _check_same_shape("sgd_update", "param", param, "velocity", velocity)
    _sgd_kernel(
        _flat_inplace("sgd_update", "param", param), _flat(grad),
        _flat_inplace("sgd_update", "velocity", velocity), float(lr), float(momentum), bool(nesterov),
    )


@jit_parallel
def _adam_kernel(param, grad, m, v, lr_t, beta_1, beta_2, epsilon):
    """``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``; ``w -= lr_t m / (sqrt(v) + eps)``."""
    dtype = param.dtype.type
    b1, b2, eps, lr = dtype(beta_1), dtype(beta_2), dtype(epsilon), dtype(lr_t)
    one = dtype(1)
    for i in numba.prange(param.size):
        g = grad[i]
        m_i = b1 * m[i] + (one - b1) * g
        v_i = b2 * v[i] + (one - b2) * g * g
        m[i], v[i] = m_i, v_i
        param[i] -= lr * m_i / (np.sqrt(v_i) + eps)


def adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, step):
    """In place, Keras's Adam at step ``t = step`` (1-based)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    """
    for name, state in (("grad", grad), ("m", m), ("v", v)):
        _check_same_shape("adam_update", "param", param, name, state)
    lr_t = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    _adam_kernel(
        _flat_inplace("adam_update", "param", param), _flat(grad), _flat_inplace("adam_update", "m", m),
        _flat_inplace("adam_update", "v", v), float(lr_t), float(beta_1), float(beta_2), float(epsilon),
    )


@jit_parallel
def _rmsprop_kernel(param, grad, mean_square, lr, rho, epsilon):
    """``s = rho s + (1 - rho) g^2``; ``w -= lr g / sqrt(s + eps)``, in place."""
    dtype = param.dtype.type
    lr_t, rho_t, eps = dtype(lr), dtype(rho), dtype(epsilon)
    for i in numba.prange(param.size):
        g = grad[i]
        s_i = rho_t * mean_square[i] + (dtype(1) - rho_t) * g * g
        mean_square[i] = s_i
        param[i] -= lr_t * g / np.sqrt(s_i + eps)


def rmsprop_update(param, grad, mean_square, lr, rho, epsilon):
    """In place, Keras's RMSprop: ``s = rho s + (1 - rho) g^2``; ``w -= lr * g / sqrt(s + eps)``."""
    _check_same_shape("rmsprop_update", "param", param, "grad", grad)
    _check_same_shape("rmsprop_update", "param", param, "mean_square", mean_square)
    _rmsprop_kernel(
        _flat_inplace("rmsprop_update", "param", param), _flat(grad),
        _flat_inplace("rmsprop_update", "mean_square", mean_square), float(lr), float(rho), float(epsilon),
    )


# ------------------------------------------------------------------------------ setup and threads


def check_available():
    """Raise ``RuntimeError`` when Numba cannot compile and run a kernel here."""
    try:
        _multiply_kernel(np.ones(1), np.ones(1), np.empty(1))
    except Exception as error:  # any failure of the JIT means this backend is unusable
        raise RuntimeError(f"the Numba CPU backend cannot run: {error}") from error


def set_num_threads(n):
    """Run the parallel Numba kernels on ``n`` threads, from the calling thread on (Numba's rule);
    under the one-pool policy the GEMMs are split across the same ``n``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"set_num_threads: n must be an integer from 1 to {numba.config.NUMBA_NUM_THREADS}, got {n!r}")
    numba.set_num_threads(int(n))


def apply_thread_policy():
    """The policy above, for the calling thread.  Where :func:`kernels.blas.find` finds NumPy's BLAS:
    that library on one thread, its GEMMs split across Numba's threads (:data:`GEMM_LIBRARY`), and
    ``MINIDL_NUM_THREADS`` (default: every thread Numba has) Numba threads.  Elsewhere: BLAS on its
    own threads, ``MINIDL_NUM_THREADS`` (default 1) Numba threads, and ``OMP_WAIT_POLICY=PASSIVE``
    unless it is set, so idle Numba threads sleep instead of spinning against BLAS's (libgomp reads it
    when it loads, at the first parallel kernel of the process).
    ``minidl.backend.apply_process_settings`` calls it where a model first runs, never on import."""
    global GEMM_LIBRARY
    library = blas.find()
    if library is None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        set_num_threads(_threads_from_environment(1))
        return
    library.set_num_threads(1)
    GEMM_LIBRARY = library
    set_num_threads(_threads_from_environment(numba.config.NUMBA_NUM_THREADS))


def _threads_from_environment(default):
    """``MINIDL_NUM_THREADS`` as an int, else ``default``."""
    value = os.environ.get("MINIDL_NUM_THREADS")
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"MINIDL_NUM_THREADS must be a positive integer, got {value!r}") from None


def thread_policy():
    """One line describing the threads in use (for benchmark reports)."""
    library = blas.find()
    gemms = "GEMMs split across them" if GEMM_LIBRARY is not None else "GEMMs by NumPy"
    blas_threads = (library.get_num_threads() if library is not None
                    else os.environ.get("OPENBLAS_NUM_THREADS", "numpy default"))
    return (
        f"numba kernels {numba.get_num_threads()} thread(s) ({numba.threading_layer()} layer, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), {gemms}, BLAS threads {blas_threads}"
    )




def _warmup_calls(dtype):
    """One small call of every kernel, ``{name: call}``, covering every compiled specialisation."""
    rng = np.random.default_rng(0)

    def array(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, image, window, strides = array(2, 5, 5, 3), (2, 5, 5, 3), (2, 2), (1, 1)
    pads = ((0, 1), (0, 1))
    pooled, argmax = numpy_ref.maxpool_forward(x, window, strides, pads)
    gray, taps = array(2, 6, 6, 1), array(3, 3, 1, 3)
    gray_pooled, gray_argmax = numpy_ref.conv3x3_maxpool(gray, taps)
    rows = array(8, 4)
    logits, targets = array(4, 3), np.full((4, 3), 1 / 3, dtype=dtype)
    param, grad, slot_1, slot_2 = array(8), array(8), np.zeros(8, dtype), np.zeros(8, dtype)
    return {
        "add": lambda: add(param, grad),
        "multiply": lambda: multiply(param, grad),
        "all_finite": lambda: all_finite(param),
        "bias_grad": lambda: bias_grad(rows),
        "im2col": lambda: im2col(x, window, strides, pads),
        "im2col (many channels)": lambda: im2col(array(2, 5, 5, FEW_CHANNELS), window, strides, pads),
        "col2im": lambda: col2im(array(50, 12), image, window, strides, pads),
        "conv_by_image": lambda: conv_by_image(x, array(12, 2), window, strides, pads),
        "conv_by_image (many channels)": lambda: conv_by_image(array(2, 5, 5, FEW_CHANNELS), array(16, 2), window,
                                                               strides, pads),
        "conv_by_image_kernel_grad": lambda: conv_by_image_kernel_grad(x, array(2, 5, 5, 2), window, strides, pads),
        "conv_by_image_kernel_grad (many channels)": lambda: conv_by_image_kernel_grad(
            array(2, 5, 5, FEW_CHANNELS), array(2, 5, 5, 2), window, strides, pads),
        "conv_by_image_input_grad": lambda: conv_by_image_input_grad(array(2, 5, 5, 2), array(12, 2), image, window,
                                                                     strides, pads),
        "winograd_tiles": lambda: winograd_tiles(x, pads),
        "winograd_tiles_grad": lambda: winograd_tiles_grad(array(16, 8, 3), image, pads),
        "winograd_outputs": lambda: winograd_outputs(array(16, 18, 3), (2, 6, 6, 3)),
        "winograd_outputs_grad": lambda: winograd_outputs_grad(array(2, 6, 6, 3)),
        "maxpool_forward": lambda: maxpool_forward(x, window, strides, pads),
        "maxpool_values": lambda: maxpool_values(x, window, strides, pads),
        "maxpool_backward": lambda: maxpool_backward(pooled, argmax, image, window, strides, pads),
        "avgpool_forward": lambda: avgpool_forward(x, window, strides, pads),
        "avgpool_backward": lambda: avgpool_backward(pooled, image, window, strides, pads),
        "conv3x3_maxpool": lambda: conv3x3_maxpool(gray, taps),
        "conv3x3_maxpool_values": lambda: conv3x3_maxpool_values(gray, taps),
        "conv3x3_maxpool_kernel_grad": lambda: conv3x3_maxpool_kernel_grad(gray, gray_pooled, gray_argmax),
        "bias_activation": lambda: bias_activation(logits, logits[0], "relu"),
        "activation": lambda: bias_activation(logits, None, "relu"),
        "activation_grad": lambda: activation_grad(logits, logits, "relu"),
        "leaky_relu": lambda: leaky_relu(logits, 0.1),
        "leaky_relu_grad": lambda: leaky_relu_grad(logits, logits, 0.1),
        "softmax": lambda: softmax(logits),
        "softmax_grad": lambda: softmax_grad(logits, logits),
        "concatenate": lambda: concatenate([x, x], 3),
        "split": lambda: split(x, [1, 2], 3),
        "softmax_cross_entropy": lambda: softmax_cross_entropy(logits, targets),
        "dropout": lambda: dropout(logits, 0.5, 0),
        "regularize_grad": lambda: regularize_grad(grad, param, 0.1, 0.1),
        "regularization_penalty": lambda: regularization_penalty(param, 0.1, 0.1),
        "sgd_update": lambda: sgd_update(param, grad, slot_1, 0.1, 0.9, True),
        "adam_update": lambda: adam_update(param, grad, slot_1, slot_2, 0.1, 0.9, 0.999, 1e-7, 1),
        "rmsprop_update": lambda: rmsprop_update(param, grad, slot_1, 0.1, 0.9, 1e-7),
        "channel_moments": lambda: channel_moments(rows),
        "batch_norm": lambda: batch_norm(rows, rows[0], rows[1] ** 2, rows[2], rows[3], 1e-3),
        "batch_norm_backward": lambda: batch_norm_backward(rows, rows, rows[0], rows[1] ** 2, rows[2], 1e-3, True),
        "moving_average_update": lambda: moving_average_update(slot_1, param, 0.99),
        "zero_pad": lambda: zero_pad(x, ((1, 0), (0, 2))),
        "zero_pad_grad": lambda: zero_pad_grad(x, ((1, 0), (0, 2))),
        "scale_shift": lambda: scale_shift(x, 0.5, 1.0),
    }


def cache_report():
    """``(loaded, compiled)``: how many kernel specialisations this process loaded from Numba's on-disk
    cache and how many it had to compile.

    A cold start also compiles the small helpers the kernels call (``_patch``, ``_softmax_row``, ...);
    a warm start loads only the kernels, whose cached code holds the helpers, so ``compiled`` on a
    cold start is larger than ``loaded`` on a warm one."""
    dispatchers = [value for value in globals().values() if isinstance(value, numba.core.registry.CPUDispatcher)]
    loaded = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    compiled = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    return loaded, compiled


def warmup(dtype=np.float32):
    """Compile (or load from the on-disk cache) every kernel for ``dtype``.

    Returns ``{kernel name: seconds}`` of each first call: seconds when compiling, milliseconds when
    the cache hits.
    """
    seconds = {}
    for name, call in _warmup_calls(np.dtype(dtype)).items():
        start = time.perf_counter()
        call()
        seconds[name] = time.perf_counter() - start
    return seconds


# ------------------------------------------------------------------------- batch normalization


@jit_parallel
def _squared_deviations_kernel(x, mean, out):
    """``out[m, c] = (x[m, c] - mean[c])^2`` for ``x, out (M, C)``."""
    for m in numba.prange(x.shape[0]):
        for c in range(x.shape[1]):
            deviation = x[m, c] - mean[c]
            out[m, c] = deviation * deviation


def _column_means(x):
    """``x.mean(axis=0)`` for a C-contiguous ``(M, C)`` array, by the parallel column sums."""
    sums = np.empty(x.shape[1], dtype=x.dtype)
    _column_sums_kernel(x, SUM_CHUNK_ROWS, sums)
    return sums / x.dtype.type(x.shape[0])


def channel_moments(x):
    """Per-column mean and (biased) variance: ``x`` ``(M, C)`` -> ``(mean (C,), variance (C,))``,
    two passes (the mean first, then the mean squared deviation from it)."""
    x = np.ascontiguousarray(x)
    mean = _column_means(x)
    deviations = np.empty_like(x)
    _squared_deviations_kernel(x, mean, deviations)
    return mean, _column_means(deviations)


def _inverse_std(variance, epsilon):
    """``1 / sqrt(variance + epsilon)`` per channel ``(C,)``, in ``variance``'s dtype."""
    return (1 / np.sqrt(variance + variance.dtype.type(epsilon))).astype(variance.dtype, copy=False)


def _check_channel_vectors(function, x, **vectors):
    for name, vector in vectors.items():
        if vector.shape != (x.shape[1],):
            raise ValueError(f"{function}: {name} must have shape {(x.shape[1],)} for x {x.shape}, "
                             f"got {vector.shape}")


@jit_parallel
def _scale_columns_kernel(x, mean, scale, shift, y):
    """``y[m, c] = (x[m, c] - mean[c]) * scale[c] + shift[c]`` for ``x, y (M, C)``."""
    for m in numba.prange(x.shape[0]):
        for c in range(x.shape[1]):
            y[m, c] = (x[m, c] - mean[c]) * scale[c] + shift[c]


def batch_norm(x, mean, variance, gamma, beta, epsilon):
    """``y = gamma (x - mean) / sqrt(variance + epsilon) + beta`` per column: ``(M, C)`` -> ``(M, C)``,
    with ``mean``, ``variance``, ``gamma``, ``beta`` ``(C,)``."""
    _check_channel_vectors("batch_norm", x, mean=mean, variance=variance, gamma=gamma, beta=beta)
    y = np.empty(x.shape, dtype=x.dtype)
    scale = (gamma * _inverse_std(variance, epsilon)).astype(x.dtype, copy=False)
    _scale_columns_kernel(np.ascontiguousarray(x), mean.astype(x.dtype, copy=False), scale,
                          beta.astype(x.dtype, copy=False), y)
    return y


@jit_parallel
def _normalized_times_grad_kernel(grad_out, x, mean, inv_std, out):
    """``out[m, c] = g[m, c] * (x[m, c] - mean[c]) * inv_std[c]``: ``g x_hat`` ``(M, C)``."""
    for m in numba.prange(x.shape[0]):
        for c in range(x.shape[1]):
            out[m, c] = grad_out[m, c] * (x[m, c] - mean[c]) * inv_std[c]


@jit_parallel
def _batch_norm_input_grad_kernel(grad_out, x, mean, inv_std, gamma, mean_grad_beta, mean_grad_gamma,
                                  grad_x):
    """``dL/dx[m, c] = gamma inv_std (g - mean_grad_beta - x_hat mean_grad_gamma)`` per ``(m, c)``."""
    for m in numba.prange(x.shape[0]):
        for c in range(x.shape[1]):
            x_hat = (x[m, c] - mean[c]) * inv_std[c]
            grad_x[m, c] = gamma[c] * inv_std[c] * (grad_out[m, c] - mean_grad_beta[c]
                                                    - x_hat * mean_grad_gamma[c])


def batch_norm_backward(grad_out, x, mean, variance, gamma, epsilon, batch_statistics):
    """Gradients of :func:`batch_norm` from ``g = dL/dy`` ``(M, C)``: ``(dL/dx, dL/dgamma, dL/dbeta)``
    (formulas in ``numpy_ref.batch_norm_backward``); with ``batch_statistics`` the gradient through
    the batch's own mean and variance is included."""
    _check_same_shape("batch_norm_backward", "grad_out", grad_out, "x", x)
    _check_channel_vectors("batch_norm_backward", x, mean=mean, variance=variance, gamma=gamma)
    grad_out, x = np.ascontiguousarray(grad_out), np.ascontiguousarray(x)
    dtype = x.dtype
    mean, gamma = mean.astype(dtype, copy=False), gamma.astype(dtype, copy=False)
    inv_std = _inverse_std(variance, epsilon).astype(dtype, copy=False)
    grad_beta = bias_grad(grad_out)
    grad_times_normalized = np.empty_like(x)
    _normalized_times_grad_kernel(grad_out, x, mean, inv_std, grad_times_normalized)
    grad_gamma = bias_grad(grad_times_normalized)
    rows = dtype.type(x.shape[0])
    if batch_statistics:
        mean_grad_beta, mean_grad_gamma = grad_beta / rows, grad_gamma / rows
    else:
        mean_grad_beta = mean_grad_gamma = np.zeros(x.shape[1], dtype)
    grad_x = np.empty_like(x)
    _batch_norm_input_grad_kernel(grad_out, x, mean, inv_std, gamma, mean_grad_beta, mean_grad_gamma, grad_x)
    return grad_x, grad_gamma, grad_beta


@jit
def _moving_average_kernel(moving, value, momentum):
    """``moving[i] = momentum moving[i] + (1 - momentum) value[i]``, in place."""
    keep = moving.dtype.type(momentum)
    for i in range(moving.size):
        moving[i] = keep * moving[i] + (moving.dtype.type(1) - keep) * value[i]


def moving_average_update(moving, value, momentum):
    """In place: ``moving = momentum * moving + (1 - momentum) * value`` (same shapes)."""
    _check_same_shape("moving_average_update", "moving", moving, "value", value)
    _moving_average_kernel(_flat_inplace("moving_average_update", "moving", moving),
                           _flat(value).astype(moving.dtype, copy=False), float(momentum))


# ------------------------------------------------------------------------ padding and rescaling


def _check_pads(function, pads):
    if any(amount < 0 for pair in pads for amount in pair):
        raise ValueError(f"{function}: pads must be >= 0, got {pads}")


@jit_parallel
def _copy_into_kernel(source, top, left, target):
    """``target[n, top + h, left + w, c] = source[n, h, w, c]`` for every pixel of ``source``."""
    for n in numba.prange(source.shape[0]):
        for h in range(source.shape[1]):
            for w in range(source.shape[2]):
                for c in range(source.shape[3]):
                    target[n, top + h, left + w, c] = source[n, h, w, c]


@jit_parallel
def _copy_out_of_kernel(source, top, left, target):
    """``target[n, h, w, c] = source[n, top + h, left + w, c]`` for every pixel of ``target``."""
    for n in numba.prange(target.shape[0]):
        for h in range(target.shape[1]):
            for w in range(target.shape[2]):
                for c in range(target.shape[3]):
                    target[n, h, w, c] = source[n, top + h, left + w, c]


def zero_pad(x, pads):
    """``x`` ``(N, H, W, C)`` inside a border of zeros ``pads = ((top, bottom), (left, right))``, all
    ``>= 0``: ``(N, top + H + bottom, left + W + right, C)``."""
    _check_pads("zero_pad", pads)
    (top, bottom), (left, right) = pads
    n, height, width, channels = x.shape
    padded = np.zeros((n, top + height + bottom, left + width + right, channels), dtype=x.dtype)
    _copy_into_kernel(np.ascontiguousarray(x), top, left, padded)
    return padded


def zero_pad_grad(grad_out, pads):
    """Adjoint of :func:`zero_pad`: the inner ``(N, H, W, C)`` of ``grad_out``."""
    _check_pads("zero_pad_grad", pads)
    (top, bottom), (left, right) = pads
    n, padded_h, padded_w, channels = grad_out.shape
    grad_in = np.empty((n, padded_h - top - bottom, padded_w - left - right, channels), dtype=grad_out.dtype)
    _copy_out_of_kernel(np.ascontiguousarray(grad_out), top, left, grad_in)
    return grad_in


@jit_parallel
def _scale_shift_kernel(x, scale, offset, y):
    """``y[i] = x[i] * scale + offset`` over flat arrays."""
    dtype = y.dtype.type
    scale_t, offset_t = dtype(scale), dtype(offset)
    for i in numba.prange(x.size):
        y[i] = x[i] * scale_t + offset_t


def scale_shift(x, scale, offset):
    """``y = x * scale + offset`` for numbers ``scale`` and ``offset``; same shape and dtype as ``x``."""
    y = np.empty(x.shape, dtype=x.dtype)
    _scale_shift_kernel(_flat(x), float(scale), float(offset), y.reshape(-1))
    return y
# ------------------------------------------------------------------------------ joining tensors


@jit_parallel
def _copy_into_middle(part, out, offset):
    """``out[:, offset:offset + B, :] = part`` for ``part (A, B, C)``, ``out (A, B_total, C)``."""
    for a in numba.prange(part.shape[0]):
        for b in range(part.shape[1]):
            for c in range(part.shape[2]):
                out[a, offset + b, c] = part[a, b, c]


@jit_parallel
def _copy_out_of_middle(x, offset, part):
    """``part = x[:, offset:offset + B, :]`` for ``part (A, B, C)``, ``x (A, B_total, C)``."""
    for a in numba.prange(part.shape[0]):
        for b in range(part.shape[1]):
            for c in range(part.shape[2]):
                part[a, b, c] = x[a, offset + b, c]


def concatenate(parts, axis):
    """``parts`` joined along ``axis``: ``(..., B_i, ...) -> (..., sum B_i, ...)``; each part is copied
    into its slab of the output seen as ``(before, along, after)``."""
    out_shape = concatenated_shape("concatenate", [part.shape for part in parts], axis)
    out = np.empty(out_shape, dtype=parts[0].dtype)
    out_3d = out.reshape(as_three_axes(out_shape, axis))
    offset = 0
    for part in parts:
        _copy_into_middle(np.ascontiguousarray(part, dtype=out.dtype).reshape(as_three_axes(part.shape, axis)),
                          out_3d, offset)
        offset += part.shape[axis]
    return out


def split(x, sizes, axis):
    """The inverse of :func:`concatenate` (and its gradient): ``x`` cut along ``axis`` into fresh
    arrays of ``sizes[i]`` along it."""
    x_3d = np.ascontiguousarray(x).reshape(as_three_axes(x.shape, axis))
    parts, offset = [], 0
    for shape in split_shapes("split", x.shape, sizes, axis):
        part = np.empty(shape, dtype=x.dtype)
        _copy_out_of_middle(x_3d, offset, part.reshape(as_three_axes(shape, axis)))
        parts.append(part)
        offset += shape[axis]
    return parts


