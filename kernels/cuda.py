"""The kernel contract of :mod:`kernels.numpy_ref` on an NVIDIA GPU, written with ``numba.cuda``.

Every array argument and result is a ``numba.cuda`` device array (C-contiguous); layers use only
``.shape``, ``.dtype``, ``.reshape`` and the functions below, so activations, gradients and weights
stay on the device between layers.  Data crosses the bus only in :func:`to_device`, :func:`to_host`
and the two reductions that return a Python scalar (:func:`all_finite`,
:func:`regularization_penalty`); each crossing adds one to :func:`transfer_count`.  The Winograd
transforms' small matrices cross too, through :func:`to_device`, once per tile size and dtype.
Passing a host NumPy array to a kernel raises ``TypeError`` instead of letting Numba copy it silently.

How the work is split (one idea per kernel):

* Elementwise and gather kernels run one thread per output element, on a 1-D grid of
  ``ceil(n / THREADS_PER_BLOCK)`` blocks of ``THREADS_PER_BLOCK`` threads; a thread past the end
  returns at once.
* ``col2im``, ``winograd_tiles_grad`` and the pooling backward passes let each *input* pixel gather
  from the windows (or Winograd tiles) that cover it, so no two threads write the same element and no
  atomics are needed.
* The Winograd F(m x m, 3 x 3) transforms (m = 2 or 4) run one thread per element of their result,
  each summing one entry of a small 2-D transform with the matrices ``B^T``, ``G``, ``A^T`` read from
  device arrays, so one kernel serves both tile sizes.
* Row-wise kernels (softmax, the fused loss) run one thread per row.
* Sums (``bias_grad``, ``regularization_penalty``) fold rows into partial sums, then fold the
  partials again, until one row is left; no atomics, so results are deterministic.
* ``matmul``, ``matmul_tn`` and ``matmul_nt`` share one tiled shared-memory GEMM kernel, compiled
  per dtype and operand layout; a transposed operand is read transposed, never copied.  A stack of
  products ``(S, M, K) @ (S, K, N)`` is one launch, the products side by side on grid axis z.  Setting
  ``MINIDL_CUDA_GEMM=cublas`` (or :func:`set_gemm`) routes them through CuPy's cuBLAS instead.

Without a GPU the kernels run on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before
Numba is imported): slow, but exact enough to test every kernel against ``numpy_ref``.
"""

import functools
import math
import os

import numba
import numpy as np
from numba import cuda
from . import numpy_ref
from .numpy_ref import ACTIVATIONS, check_activation
from .shapes import (conv3x3_maxpool_grad_shape, conv3x3_maxpool_pads, conv3x3_maxpool_shape, output_hw,
                            winograd_tile_grid, winograd_tiles_hw)
from .shapes import as_three_axes, check_bias, concatenated_shape, pooled_grad_shape, split_shapes
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
    "check_available",
    "get_gemm",
    "reset_transfer_count",
    "set_gemm",
    "transfer_count",
    "concatenate",
    "split",
]

ON_SIMULATOR = bool(cuda.config.ENABLE_CUDASIM)

THREADS_PER_BLOCK = 128
TILE = 16  # a GEMM block computes a TILE x TILE tile of the output, one element per thread
TILE_PADDED = 17  # TILE + 1: the spare column makes column-wise writes to shared tiles conflict-free
ROWS_PER_THREAD = 256  # how many rows one thread folds into a partial sum
GEMM_TARGET_BLOCKS = 256  # split K until a GEMM launch has about this many blocks ...
MIN_TILES_PER_SPLIT = 8  # ... but give each slice of K at least this many tiles
GEMM_ENGINES = ("numba", "cublas")


def check_available():
    """Raise ``RuntimeError`` unless a CUDA GPU (or the simulator) can run these kernels."""
    if ON_SIMULATOR or cuda.is_available():
        get_gemm()
        return
    raise RuntimeError(
        "the 'cuda' backend found no usable CUDA GPU (numba.cuda.is_available() is False). "
        "On a machine with an NVIDIA GPU and driver, install minidl[gpu] (it brings numba-cuda); "
        "without a GPU, set NUMBA_ENABLE_CUDASIM=1 to run on the simulator (slow, for tests)."
    )


# --------------------------------------------------------------------------- host <-> device traffic

_transfers = {"count": 0}


def transfer_count():
    """How many host<->device copies this module has made since the last reset."""
    return _transfers["count"]


def reset_transfer_count():
    _transfers["count"] = 0


def _copy_to_host(device_array):
    _transfers["count"] += 1
    return device_array.copy_to_host()


# ----------------------------------------------------------------------------------------- launching


def _blocks(n_items, per_block):
    """``ceil(n_items / per_block)``, at least one block."""
    return max(1, -(-n_items // per_block))


def _reject_host_arrays(name, args):
    for position, arg in enumerate(args):
        if isinstance(arg, np.ndarray):
            raise TypeError(
                f"minidl.kernels.cuda: {name} got a host numpy array of shape "
                f"{arg.shape} as argument {position}; move it with kernels.cuda.to_device() first"
            )


def _launch(kernel, n_threads, *args):
    """Run ``kernel(*args)`` with at least ``n_threads`` threads on a 1-D grid:
    ``ceil(n_threads / THREADS_PER_BLOCK)`` blocks of ``THREADS_PER_BLOCK`` threads."""
    _reject_host_arrays(kernel.py_func.__name__, args)
    kernel[_blocks(n_threads, THREADS_PER_BLOCK), THREADS_PER_BLOCK](*args)


def _is_device_array(x):
    return hasattr(x, "copy_to_host")  # numba's DeviceNDArray, or the simulator's stand-in


def _flat(x):
    """The C-contiguous device array ``x`` as a 1-D view of ``x.size`` elements (no copy)."""
    return x.reshape(x.size)


def _last_axis(x):
    return tuple(x.shape)[-1]  # the simulator's shape objects do not take negative indices


def _require_shape(function, name, array, expected):
    if tuple(array.shape) != tuple(expected):
        raise ValueError(
            f"minidl.kernels.cuda.{function}: {name} must have shape {tuple(expected)}, got {tuple(array.shape)}"
        )


def _require_same_shape(function, **arrays):
    shapes = {name: tuple(array.shape) for name, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"minidl.kernels.cuda.{function}: arrays must have one shape, got {shapes}")


# -------------------------------------------------------------------------------------------- arrays


def to_device(x):
    """Copy a host array to the device as a C-contiguous device array (device arrays pass through)."""
    if _is_device_array(x):
        return x
    _transfers["count"] += 1
    return cuda.to_device(np.ascontiguousarray(x))


def to_host(x):
    """Copy a device array to a NumPy array; a NumPy array passes through uncopied."""
    if isinstance(x, np.ndarray):
        return x
    return _copy_to_host(x)


@cuda.jit
def _fill(out_flat, value):
    """``out[i] = value``, one thread per element."""
    i = cuda.grid(1)
    if i < out_flat.size:
        out_flat[i] = value


def zeros(shape, dtype):
    """A device array of zeros, filled on the device (no transfer)."""
    out = cuda.device_array(shape, dtype=np.dtype(dtype))
    _launch(_fill, out.size, _flat(out), 0)
    return out


def zeros_like(x):
    return zeros(x.shape, x.dtype)


def empty(shape, dtype):
    """A device array whose values are unset (the caller writes every element): no fill, no transfer."""
    return cuda.device_array(shape, dtype=np.dtype(dtype))


@cuda.jit
def _add(a_flat, b_flat, out_flat):
    """``out[i] = a[i] + b[i]``, one thread per element."""
    i = cuda.grid(1)
    if i < out_flat.size:
        out_flat[i] = a_flat[i] + b_flat[i]


def add(a, b):
    """Elementwise ``a + b`` of two device arrays of the same shape."""
    _require_same_shape("add", a=a, b=b)
    out = cuda.device_array(a.shape, dtype=np.result_type(a.dtype, b.dtype))
    _launch(_add, out.size, _flat(a), _flat(b), _flat(out))
    return out


@cuda.jit
def _multiply(a_flat, b_flat, out_flat):
    """``out[i] = a[i] * b[i]``, one thread per element."""
    i = cuda.grid(1)
    if i < out_flat.size:
        out_flat[i] = a_flat[i] * b_flat[i]


def multiply(a, b):
    """Elementwise ``a * b`` of two device arrays of the same shape."""
    _require_same_shape("multiply", a=a, b=b)
    out = cuda.device_array(a.shape, dtype=np.result_type(a.dtype, b.dtype))
    _launch(_multiply, out.size, _flat(a), _flat(b), _flat(out))
    return out


@cuda.jit
def _accumulate(total_flat, x_flat):
    """``total[i] += x[i]``, in place, one thread per element."""
    i = cuda.grid(1)
    if i < total_flat.size:
        total_flat[i] += x_flat[i]


def accumulate(total, x):
    """In place: ``total += x`` (same shapes)."""
    _require_same_shape("accumulate", total=total, x=x)
    _launch(_accumulate, total.size, _flat(total), _flat(x))


@cuda.jit
def _flag_non_finite(x_flat, flag):
    """``flag[0] = 1`` if any ``x[i]`` is NaN or infinite; every writer writes the same 1."""
    i = cuda.grid(1)
    if i < x_flat.size and not math.isfinite(x_flat[i]):
        flag[0] = 1


def all_finite(x):
    """``True`` when no element of ``x`` is NaN or infinite (one scalar copied to the host)."""
    flag = zeros(1, np.int32)
    _launch(_flag_non_finite, x.size, _flat(x), flag)
    return not _copy_to_host(flag)[0]


# ------------------------------------------------------------------------------------ linear algebra


@cuda.jit
def _fold_rows(matrix, partials):
    """``partials[p, j] = sum_{r = p, p + P, p + 2P, ...} matrix[r, j]`` with ``P`` partial rows.

    ``matrix`` ``(R, C)`` -> ``partials`` ``(P, C)``; one thread per partial, threads of adjacent
    columns read adjacent memory.
    """
    index = cuda.grid(1)
    n_partials, n_cols = partials.shape
    if index >= partials.size:
        return
    p, j = index // n_cols, index % n_cols
    total = 0.0
    for r in range(p, matrix.shape[0], n_partials):
        total += matrix[r, j]
    partials[p, j] = total


def _column_sums(matrix):
    """``matrix.sum(axis=0, keepdims=True)``: ``(R, C) -> (1, C)``, folding ``ROWS_PER_THREAD`` rows
    per thread per pass, ``ceil(log(R) / log(ROWS_PER_THREAD))`` passes."""
    while True:
        partials = cuda.device_array((_blocks(matrix.shape[0], ROWS_PER_THREAD), matrix.shape[1]), matrix.dtype)
        _launch(_fold_rows, partials.size, matrix, partials)
        if partials.shape[0] == 1:
            return partials
        matrix = partials


@cuda.jit(device=True)
def _element_or(matrix, row, col, zero):
    """``matrix[row, col]``, or ``zero`` outside the matrix (the ragged edge of the last tile)."""
    if row < matrix.shape[0] and col < matrix.shape[1]:
        return matrix[row, col]
    return zero


@functools.cache
def _gemm_kernel(dtype, a_transposed, b_transposed):
    """Compile ``out[s] = op(a[s]) @ op(b[s])`` for one dtype, for every matrix ``s`` of two stacks of
    ``S``; ``op`` transposes where the flag says so.

    ``op(a[s])`` is ``(M, K)`` (stored ``(K, M)`` when transposed), ``op(b[s])`` is ``(K, N)`` (stored
    ``(N, K)``), ``out`` ``(P, S, M, N)`` (below).  Block ``(TILE, TILE)`` threads compute the output
    tile at rows ``blockIdx.x * TILE + [0, TILE)`` and columns ``blockIdx.y * TILE + [0, TILE)`` of
    product ``s = blockIdx.z mod S``, thread ``(ty, tx)`` its element ``out[p, s, row, col]``.  For
    each step of ``TILE`` along ``K`` the block loads one ``TILE x TILE`` tile of each operand into
    shared memory (one element per thread, zero past the edges), waits, and accumulates
    ``sum_k a_tile[ty, k] * b_tile[k, tx]``.  Loads are coalesced: ``tx`` always walks the operand's
    contiguous axis, so a transposed operand is written into its tile transposed.  Rows go on grid
    axis x because ``M = N*OH*OW`` can exceed the 65535-block limit of axis y.

    Split K: block ``blockIdx.z = p*S + s`` only sums ``k`` in ``[p * k_per_split, (p + 1) * k_per_split)``
    (``k_per_split`` a multiple of ``TILE``) and writes ``out[p, s]``; the caller adds the ``P`` parts.
    With ``P = 1`` this is the plain product; a single matrix product is a stack of ``S = 1``.
    """
    element = numba.from_dtype(dtype)

    @cuda.jit
    def gemm(a_stack, b_stack, k_per_split, out):
        a_tile = cuda.shared.array((TILE, TILE_PADDED), element)  # a_tile[i, k] = op(a)[row0+i, k0+k]
        b_tile = cuda.shared.array((TILE, TILE_PADDED), element)  # b_tile[k, j] = op(b)[k0+k, col0+j]
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        row0, col0 = cuda.blockIdx.x * TILE, cuda.blockIdx.y * TILE
        part, s = cuda.blockIdx.z // a_stack.shape[0], cuda.blockIdx.z % a_stack.shape[0]
        a, b = a_stack[s], b_stack[s]  # this block's two matrices
        k_begin = part * k_per_split
        k_end = min(k_begin + k_per_split, a.shape[0] if a_transposed else a.shape[1])
        zero = element(0)
        total = zero
        for k0 in range(k_begin, k_end, TILE):
            if a_transposed:  # a (K, M)
                a_tile[tx, ty] = _element_or(a, k0 + ty, row0 + tx, zero)
            else:  # a (M, K)
                a_tile[ty, tx] = _element_or(a, row0 + ty, k0 + tx, zero)
            if b_transposed:  # b (N, K)
                b_tile[tx, ty] = _element_or(b, col0 + ty, k0 + tx, zero)
            else:  # b (K, N)
                b_tile[ty, tx] = _element_or(b, k0 + ty, col0 + tx, zero)
            cuda.syncthreads()
            for k in range(TILE):
                total += a_tile[ty, k] * b_tile[k, tx]
            cuda.syncthreads()
        row, col = row0 + ty, col0 + tx
        if row < out.shape[2] and col < out.shape[3]:
            out[part, s, row, col] = total

    return gemm


_gemm = {"engine": None, "cupy": None}


def set_gemm(engine):
    """Choose who multiplies matrices: ``"numba"`` (the tiled kernel above, the default) or
    ``"cublas"`` (CuPy's matmul on the same device memory, no copy).  Raises ``ValueError`` for an
    unknown name and ``RuntimeError`` when ``"cublas"`` is asked for and CuPy cannot be imported."""
    if engine not in GEMM_ENGINES:
        raise ValueError(f"minidl.kernels.cuda.set_gemm: engine must be one of {GEMM_ENGINES}, got {engine!r}")
    cupy = None
    if engine == "cublas":
        try:
            import cupy
        except ImportError as error:
            raise RuntimeError(
                "kernels.cuda: the 'cublas' GEMM needs CuPy (pip install cupy-cuda12x or cupy-cuda13x); "
                f"import failed: {error}"
            ) from error
    _gemm["engine"], _gemm["cupy"] = engine, cupy


def get_gemm():
    """The GEMM engine in use; on first call it is read from ``MINIDL_CUDA_GEMM`` (default ``numba``)."""
    if _gemm["engine"] is None:
        set_gemm(os.environ.get("MINIDL_CUDA_GEMM", "numba"))
    return _gemm["engine"]


def _k_splits(stack, m, n, depth):
    """How many parts of ``K`` to give separate blocks: ``P = min(ceil(K / (TILE*MIN_TILES_PER_SPLIT)),
    GEMM_TARGET_BLOCKS // output_tiles)``, at least 1, with ``output_tiles`` counted over all ``S = stack``
    products.  A small output with a long ``K`` (a conv weight gradient, ``(KH*KW*C_in, C_out)``
    summed over ``N*OH*OW`` rows) would otherwise keep only a few blocks busy while each walks all of ``K``."""
    output_tiles = stack * _blocks(m, TILE) * _blocks(n, TILE)
    return max(1, min(_blocks(depth, TILE * MIN_TILES_PER_SPLIT), GEMM_TARGET_BLOCKS // output_tiles))


MAX_GRID_Z = 65535  # CUDA's limit on gridDim.z, which holds the products of a stack


def _product(function, a, b, a_transposed, b_transposed):
    """``op(a) @ op(b)`` for two matrices, or for each pair of matrices of two stacks ``(S, ., .)``,
    after checking the shapes agree.  Launch: grid ``(ceil(M / TILE), ceil(N / TILE), P*S)`` of
    ``(TILE, TILE)`` blocks, ``P`` from :func:`_k_splits` (``S = 1`` for matrices); the ``P``
    partial products are then added by :func:`_column_sums`."""
    _reject_host_arrays(function, (a, b))
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)
    if not (a.ndim == b.ndim == 2 or a.ndim == b.ndim == 3):
        raise ValueError(
            f"minidl.kernels.cuda.{function}: needs two 2-D matrices or two 3-D stacks of them, "
            f"got shapes {a_shape} and {b_shape}"
        )
    if a.dtype != b.dtype:
        raise ValueError(f"minidl.kernels.cuda.{function}: dtypes differ, {a.dtype} and {b.dtype}")
    stack = a_shape[0] if a.ndim == 3 else 1
    if a.ndim == 3 and b_shape[0] != stack:
        raise ValueError(
            f"minidl.kernels.cuda.{function}: stacks differ in length, a {a_shape} holds {stack} matrices "
            f"but b {b_shape} holds {b_shape[0]}"
        )
    m, depth = (a_shape[-1], a_shape[-2]) if a_transposed else a_shape[-2:]
    b_depth, n = (b_shape[-1], b_shape[-2]) if b_transposed else b_shape[-2:]
    if depth != b_depth:
        raise ValueError(
            f"minidl.kernels.cuda.{function}: inner dimensions differ, a {a_shape} gives K={depth} "
            f"but b {b_shape} gives K={b_depth}"
        )
    if get_gemm() == "cublas":
        return _cublas_product(a, b, a_transposed, b_transposed)
    if stack > MAX_GRID_Z:
        raise ValueError(
            f"minidl.kernels.cuda.{function}: at most {MAX_GRID_Z} matrices per stack, got shapes {a_shape} and {b_shape}"
        )
    out_shape = (stack, m, n) if a.ndim == 3 else (m, n)
    if stack == 0:
        return cuda.device_array(out_shape, dtype=a.dtype)
    a, b = a.reshape(stack, *a_shape[-2:]), b.reshape(stack, *b_shape[-2:])  # matrices as stacks of one
    kernel = _gemm_kernel(np.dtype(a.dtype), a_transposed, b_transposed)
    parts = _k_splits(stack, m, n, depth)
    k_per_split = TILE * _blocks(_blocks(depth, TILE), parts)  # whole tiles per part of K
    partials = cuda.device_array((parts, stack, m, n), dtype=a.dtype)
    kernel[(_blocks(m, TILE), _blocks(n, TILE), parts * stack), (TILE, TILE)](a, b, k_per_split, partials)
    if parts == 1:
        return partials.reshape(*out_shape)
    return _column_sums(partials.reshape(parts, stack * m * n)).reshape(*out_shape)


def _cublas_product(a, b, a_transposed, b_transposed):
    """``op(a) @ op(b)`` by CuPy (cuBLAS, batched for stacks) on views of the same device memory;
    ``op`` swaps the last two axes.  Returns a Numba array."""
    cupy = _gemm["cupy"]
    a_view, b_view = cupy.asarray(a), cupy.asarray(b)  # zero-copy, via __cuda_array_interface__
    product = (cupy.swapaxes(a_view, -1, -2) if a_transposed else a_view) @ (
        cupy.swapaxes(b_view, -1, -2) if b_transposed else b_view
    )
    return cuda.as_cuda_array(product)


def matmul(a, b):
    """``a @ b``: ``(M, K) @ (K, N) -> (M, N)``, or ``(S, M, K) @ (S, K, N) -> (S, M, N)``."""
    return _product("matmul", a, b, a_transposed=False, b_transposed=False)


def matmul_tn(a, b):
    """``a.T @ b``: ``(K, M)^T @ (K, N) -> (M, N)``, or per slice ``(S, K, M)`` with ``(S, K, N)``,
    reading ``a`` transposed in place."""
    return _product("matmul_tn", a, b, a_transposed=True, b_transposed=False)


def matmul_nt(a, b):
    """``a @ b.T``: ``(M, K) @ (N, K)^T -> (M, N)``, or per slice ``(S, M, K)`` with ``(S, N, K)``,
    reading ``b`` transposed in place."""
    return _product("matmul_nt", a, b, a_transposed=False, b_transposed=True)


def bias_grad(grad_out):
    """Gradient of a bias broadcast over rows: ``grad_out.sum(axis=0)``, ``(M, N) -> (N,)``."""
    return _column_sums(grad_out).reshape(grad_out.shape[1])


# ---------------------------------------------------------------------------------------- convolution


@cuda.jit(device=True)
def _split_nhwc(index, shape):
    """The ``(n, h, w, c)`` position of flat ``index`` in a C-contiguous array of ``shape``."""
    rest, c = index // shape[3], index % shape[3]
    rest, w = rest // shape[2], rest % shape[2]
    n, h = rest // shape[1], rest % shape[1]
    return n, h, w, c


@cuda.jit(device=True)
def _covering_windows(position, kernel, stride, n_windows):
    """Windows ``o`` (``o*stride <= position < o*stride + kernel``) that cover one padded position,
    as ``range(first, stop)``."""
    first = max(0, (position - kernel + stride) // stride)
    stop = min(n_windows, position // stride + 1)
    return first, stop


@cuda.jit
def _im2col(x, kernel_w, stride_h, stride_w, top, left, out_h, out_w, cols):
    """``cols[(n*OH + oh)*OW + ow, (i*KW + j)*C + c] = x_padded[n, oh*SH + i, ow*SW + j, c]``.

    ``x`` ``(N, H, W, C)`` -> ``cols`` ``(N*OH*OW, KH*KW*C)``, one thread per element of ``cols``
    (adjacent threads write adjacent columns); padding reads as zero.
    """
    index = cuda.grid(1)
    if index >= cols.size:
        return
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    row, column = index // cols.shape[1], index % cols.shape[1]
    n, pixel = row // (out_h * out_w), row % (out_h * out_w)
    oh, ow = pixel // out_w, pixel % out_w
    tap, c = column // channels, column % channels
    i, j = tap // kernel_w, tap % kernel_w
    h, w = oh * stride_h + i - top, ow * stride_w + j - left
    if 0 <= h < height and 0 <= w < width:
        cols[row, column] = x[n, h, w, c]
    else:
        cols[row, column] = 0


def im2col(x, kernel_size, strides, pads):
    """Unfold every receptive field of ``x`` into one row.

    ``x`` ``(N, H, W, C)`` -> ``cols`` ``(N*OH*OW, KH*KW*C)``; row ``(n, oh, ow)`` holds
    ``x_padded[n, oh*SH + i, ow*SW + j, c]`` at column ``(i*KW + j)*C + c``.
    """
    n, _, _, channels = x.shape
    (kh, kw), (sh, sw), ((top, _), (left, _)) = kernel_size, strides, pads
    out_h, out_w = output_hw(x.shape, kernel_size, strides, pads)
    cols = cuda.device_array((n * out_h * out_w, kh * kw * channels), dtype=x.dtype)
    _launch(_im2col, cols.size, x, kw, sh, sw, top, left, out_h, out_w, cols)
    return cols


@cuda.jit
def _col2im(cols, kernel_h, kernel_w, stride_h, stride_w, top, left, out_h, out_w, x):
    """``x[n, h, w, c] = sum over windows (oh, ow) covering it of cols[(n*OH + oh)*OW + ow, (i*KW + j)*C + c]``
    with ``i = h + top - oh*SH``, ``j = w + left - ow*SW``.

    ``cols`` ``(N*OH*OW, KH*KW*C)`` -> ``x`` ``(N, H, W, C)``, one thread per pixel of ``x`` gathering
    from its covering windows (no two threads write one element).
    """
    index = cuda.grid(1)
    if index >= x.size:
        return
    n, h, w, c = _split_nhwc(index, x.shape)
    channels = x.shape[3]
    hp, wp = h + top, w + left
    oh_first, oh_stop = _covering_windows(hp, kernel_h, stride_h, out_h)
    ow_first, ow_stop = _covering_windows(wp, kernel_w, stride_w, out_w)
    total = 0.0
    for oh in range(oh_first, oh_stop):
        for ow in range(ow_first, ow_stop):
            i, j = hp - oh * stride_h, wp - ow * stride_w
            total += cols[(n * out_h + oh) * out_w + ow, (i * kernel_w + j) * channels + c]
    x[n, h, w, c] = total


def col2im(cols, x_shape, kernel_size, strides, pads):
    """Adjoint of :func:`im2col`: add every row of ``cols`` back onto the pixels it was read from.

    ``cols`` ``(N*OH*OW, KH*KW*C)`` -> ``(N, H, W, C)``; overlapping windows sum, padding is dropped.
    """
    (kh, kw), (sh, sw), ((top, _), (left, _)) = kernel_size, strides, pads
    out_h, out_w = output_hw(x_shape, kernel_size, strides, pads)
    x = cuda.device_array(tuple(x_shape), dtype=cols.dtype)
    _launch(_col2im, x.size, cols, kh, kw, sh, sw, top, left, out_h, out_w, x)
    return x


# The convolution with nothing kept for backward: on the GPU, im2col and one GEMM over the batch (the
# CPU backend's image-by-image loop exists for its caches).


def conv_by_image(x, kernel_matrix, kernel_size, strides, pads):
    """``z = im2col(x) @ kernel_matrix``: ``x (N, H, W, C)``, ``kernel_matrix (KH*KW*C, F)`` -> ``(N, OH, OW, F)``."""
    _reject_host_arrays("conv_by_image", (x, kernel_matrix))
    out_h, out_w = output_hw(x.shape, kernel_size, strides, pads)
    z = matmul(im2col(x, kernel_size, strides, pads), kernel_matrix)
    return z.reshape(x.shape[0], out_h, out_w, _last_axis(kernel_matrix))


def conv_by_image_kernel_grad(x, grad_out, kernel_size, strides, pads):
    """``im2col(x)^T @ grad_out``: ``x (N, H, W, C)``, ``grad_out (N, OH, OW, F)`` -> ``(KH*KW*C, F)``."""
    _reject_host_arrays("conv_by_image_kernel_grad", (x, grad_out))
    return matmul_tn(im2col(x, kernel_size, strides, pads), grad_out.reshape(grad_out.size // _last_axis(grad_out),
                                                                             _last_axis(grad_out)))


def conv_by_image_input_grad(grad_out, kernel_matrix, x_shape, kernel_size, strides, pads):
    """``col2im(grad_out @ kernel_matrix^T)``: ``grad_out (N, OH, OW, F)``, ``kernel_matrix (KH*KW*C, F)``
    -> ``x_shape``."""
    _reject_host_arrays("conv_by_image_input_grad", (grad_out, kernel_matrix))
    filters = _last_axis(kernel_matrix)
    grad_cols = matmul_nt(grad_out.reshape(grad_out.size // filters, filters), kernel_matrix)
    return col2im(grad_cols, x_shape, kernel_size, strides, pads)


# ------------------------------------------------------------------------- Winograd F(m x m, 3 x 3)
#
# The transforms of ``numpy_ref``'s Winograd section, for an output tile side ``m = tile`` (2 or 4)
# and an input tile side ``side = m + 2`` (``P = side^2`` positions).  Tile
# ``t = (n*TH + i)*TW + j`` reads the ``side x side`` block ``x[n, m*i - top : +side, m*j - left : +side]``
# (zeros outside ``x``) and gives the ``m x m`` output block at ``(m*i, m*j)``.  The matrices ``B^T``,
# ``G``, ``A^T`` of ``kernels.winograd`` reach the kernels as small device arrays
# (:func:`_device_matrices`), and the kernels read ``m`` and ``side`` from their shapes, so one
# compiled kernel serves both tiles.  Every kernel runs one thread per element of its result, and each
# element is one entry of a small 2-D transform, ``(L v R^T)[k, l] = sum_{p, q} L[k, p] v[p, q] R[l, q]``;
# winograd_tiles_grad lets each input pixel gather from the (at most 2 x 2) tiles that cover it, as
# col2im does.


@functools.cache
def _device_matrices(tile, dtype):
    """``(B^T, G, A^T)`` of F(tile x tile, 3 x 3) (:func:`kernels.winograd.winograd_matrices`) as
    ``dtype`` device arrays.  They are copied through :func:`to_device` (so counted) on the first call
    for each ``(tile, dtype)`` and kept for every later one; an unknown ``tile`` raises ``ValueError``."""
    return tuple(to_device(matrix) for matrix in winograd_matrices(tile, dtype))


def _tile_of(function, name, array, axes):
    """The tile side ``m`` of a Winograd array of shape ``(P, *axes)``, read from ``P = (m + 2)^2``;
    ``ValueError`` naming ``function`` and the expected shape for any other array."""
    if array.ndim != 3:
        raise ValueError(f"minidl.kernels.cuda.{function}: {name} must be (P, {axes}), got {tuple(array.shape)}")
    try:
        return tile_of_positions(array.shape[0])
    except ValueError as error:
        raise ValueError(f"minidl.kernels.cuda.{function}: {name} must be (P, {axes}): {error}") from None


@cuda.jit(device=True)
def _pixel_or(x, n, h, w, c, zero):
    """``x[n, h, w, c]``, or ``zero`` outside the image."""
    if 0 <= h < x.shape[1] and 0 <= w < x.shape[2]:
        return x[n, h, w, c]
    return zero


@cuda.jit(device=True)
def _split_tile(t, tiles_h, tiles_w):
    """The ``(n, i, j)`` of tile ``t = (n*TH + i)*TW + j``."""
    rest, j = t // tiles_w, t % tiles_w
    return rest // tiles_h, rest % tiles_h, j


@cuda.jit(device=True)
def _split_ptc(index, shape):
    """The ``(position, tile, channel)`` of flat ``index`` in a C-contiguous ``(P, N*TH*TW, C)`` array."""
    per_position = shape[1] * shape[2]
    position, rest = index // per_position, index % per_position
    return position, rest // shape[2], rest % shape[2]


@cuda.jit
def _winograd_kernel(g, kernel, zero, out):
    """``out[side*a + b, k] = (G g_k G^T)[a, b] = sum_{p, q} G[a, p] g_k[p, q] G[b, q]``, ``g_k = kernel[:, :, k]``.

    ``g`` the matrix ``G`` ``(side, 3)``, ``kernel`` ``(3, 3, C_in*C_out)`` -> ``out``
    ``(side^2, C_in*C_out)``, one thread per element of ``out``.
    """
    index = cuda.grid(1)
    if index >= out.size:
        return
    side = g.shape[0]
    ab, k = index // out.shape[1], index % out.shape[1]
    a, b = ab // side, ab % side
    total = zero
    for p in range(3):
        for q in range(3):
            total += g[a, p] * kernel[p, q, k] * g[b, q]
    out[ab, k] = total


def winograd_kernel(kernel, tile=2):
    """``G g G^T`` for every ``(c_in, c_out)``: ``kernel (3, 3, C_in, C_out) -> (P, C_in, C_out)``,
    ``P = (tile + 2)^2``.

    Launch: one thread per output element, ``P * C_in * C_out`` threads.
    """
    _reject_host_arrays("winograd_kernel", (kernel,))
    if kernel.ndim != 4 or tuple(kernel.shape)[:2] != (3, 3):
        raise ValueError(f"minidl.kernels.cuda.winograd_kernel: kernel must be (3, 3, C_in, C_out), got {kernel.shape}")
    _, g, _ = _device_matrices(tile, kernel.dtype)
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    positions = (tile + 2) ** 2
    out = cuda.device_array((positions, c_in, c_out), dtype=kernel.dtype)
    zero = np.dtype(kernel.dtype).type(0)
    _launch(
        _winograd_kernel, out.size, g, kernel.reshape(3, 3, c_in * c_out), zero, out.reshape(positions, c_in * c_out)
    )
    return out


@cuda.jit
def _winograd_kernel_grad(g, grad_tiles, zero, grad_kernel):
    """``grad_kernel[3p + q, k] = (G^T u G)[p, q] = sum_{a, b} G[a, p] u[a, b] G[b, q]``,
    ``u = grad_tiles[:, k]`` as ``side x side``.

    ``g`` the matrix ``G`` ``(side, 3)``, ``grad_tiles`` ``(side^2, C_in*C_out)`` -> ``grad_kernel``
    ``(9, C_in*C_out)``, one thread per element of ``grad_kernel``.
    """
    index = cuda.grid(1)
    if index >= grad_kernel.size:
        return
    side = g.shape[0]
    pq, k = index // grad_kernel.shape[1], index % grad_kernel.shape[1]
    p, q = pq // 3, pq % 3
    total = zero
    for a in range(side):
        for b in range(side):
            total += g[a, p] * grad_tiles[side * a + b, k] * g[b, q]
    grad_kernel[pq, k] = total


def winograd_kernel_grad(grad_kernel_tiles):
    """Adjoint of :func:`winograd_kernel`: ``G^T u G``, ``(P, C_in, C_out) -> (3, 3, C_in, C_out)``;
    the tile side ``m`` comes from ``P = (m + 2)^2``.

    Launch: one thread per output element, ``9 * C_in * C_out`` threads.
    """
    _reject_host_arrays("winograd_kernel_grad", (grad_kernel_tiles,))
    tile = _tile_of("winograd_kernel_grad", "grad_kernel_tiles", grad_kernel_tiles, "C_in, C_out")
    _, g, _ = _device_matrices(tile, grad_kernel_tiles.dtype)
    positions, c_in, c_out = grad_kernel_tiles.shape
    grad_kernel = cuda.device_array((3, 3, c_in, c_out), dtype=grad_kernel_tiles.dtype)
    zero = np.dtype(grad_kernel_tiles.dtype).type(0)
    _launch(
        _winograd_kernel_grad,
        grad_kernel.size,
        g,
        grad_kernel_tiles.reshape(positions, c_in * c_out),
        zero,
        grad_kernel.reshape(9, c_in * c_out),
    )
    return grad_kernel


@cuda.jit
def _winograd_tiles(b_t, x, top, left, tiles_h, tiles_w, zero, tiles):
    """``tiles[side*a + b, t, c] = (B^T d B)[a, b] = sum_{p, q} B^T[a, p] d[p, q] B^T[b, q]`` for the
    tile ``d = x[n, m*i - top : +side, m*j - left : +side, c]`` (zeros outside ``x``).

    ``b_t`` the matrix ``B^T`` ``(side, side)``, ``x`` ``(N, H, W, C)`` -> ``tiles``
    ``(side^2, N*TH*TW, C)``, one thread per element of ``tiles`` (adjacent threads, adjacent channels).
    """
    index = cuda.grid(1)
    if index >= tiles.size:
        return
    side = b_t.shape[0]
    ab, t, c = _split_ptc(index, tiles.shape)
    a, b = ab // side, ab % side
    n, i, j = _split_tile(t, tiles_h, tiles_w)
    row, col = (side - 2) * i - top, (side - 2) * j - left
    total = zero
    for p in range(side):
        for q in range(side):
            total += b_t[a, p] * _pixel_or(x, n, row + p, col + q, c, zero) * b_t[b, q]
    tiles[ab, t, c] = total


def winograd_tiles(x, pads, tile=2):
    """``B^T d B`` for every ``(m+2) x (m+2)`` tile ``d`` of ``x`` padded by ``pads`` (``m = tile``;
    tiles at stride ``m``, in the order of :func:`im2col`'s rows): ``x (N, H, W, C) -> tiles (P, N*TH*TW, C)``,
    ``P = (m + 2)^2``.

    ``(TH, TW)`` come from :func:`kernels.shapes.winograd_tile_grid`; reads past the image are zeros.
    Launch: one thread per output element, ``P * N*TH*TW * C`` threads.
    """
    _reject_host_arrays("winograd_tiles", (x,))
    b_t, _, _ = _device_matrices(tile, x.dtype)
    (tiles_h, tiles_w), ((top, _), (left, _)) = winograd_tile_grid(x.shape, pads, tile)
    n, _, _, channels = x.shape
    tiles = cuda.device_array(((tile + 2) ** 2, n * tiles_h * tiles_w, channels), dtype=x.dtype)
    zero = np.dtype(x.dtype).type(0)
    _launch(_winograd_tiles, tiles.size, b_t, x, top, left, tiles_h, tiles_w, zero, tiles)
    return tiles


@cuda.jit(device=True)
def _tile_grad_entry(b_t, grad_tiles, t, c, p, q, zero):
    """``(B u B^T)[p, q] = sum_{a, b} B^T[a, p] u[a, b] B^T[b, q]`` for ``u = grad_tiles[:, t, c]`` as
    ``side x side``."""
    side = b_t.shape[0]
    total = zero
    for a in range(side):
        for b in range(side):
            total += b_t[a, p] * grad_tiles[side * a + b, t, c] * b_t[b, q]
    return total


@cuda.jit
def _winograd_tiles_grad(b_t, grad_tiles, top, left, tiles_h, tiles_w, zero, grad_x):
    """``grad_x[n, h, w, c] = sum over the tiles (i, j) covering it of (B u B^T)[p, q]``, ``u`` the
    tile's ``grad_tiles[:, t, c]`` as ``side x side``, ``p = h + top - m*i``, ``q = w + left - m*j``.

    ``b_t`` the matrix ``B^T`` ``(side, side)``, ``grad_tiles`` ``(side^2, N*TH*TW, C)`` -> ``grad_x``
    ``(N, H, W, C)``, one thread per pixel of ``grad_x`` gathering from its covering tiles (at most
    2 x 2, as tiles overlap by 2 <= m; no two threads write one element).
    """
    index = cuda.grid(1)
    if index >= grad_x.size:
        return
    side = b_t.shape[0]
    tile = side - 2
    n, h, w, c = _split_nhwc(index, grad_x.shape)
    hp, wp = h + top, w + left
    i_first, i_stop = _covering_windows(hp, side, tile, tiles_h)
    j_first, j_stop = _covering_windows(wp, side, tile, tiles_w)
    total = zero
    for i in range(i_first, i_stop):
        for j in range(j_first, j_stop):
            t = (n * tiles_h + i) * tiles_w + j
            total += _tile_grad_entry(b_t, grad_tiles, t, c, hp - tile * i, wp - tile * j, zero)
    grad_x[n, h, w, c] = total


def winograd_tiles_grad(grad_tiles, x_shape, pads):
    """Adjoint of :func:`winograd_tiles`: ``B u B^T`` per tile, added back onto the pixels the tile
    was read from: ``(P, N*TH*TW, C) -> (N, H, W, C)``; the tile side ``m`` comes from ``P = (m + 2)^2``.

    Launch: one thread per input pixel and channel, ``N*H*W*C`` threads.
    """
    _reject_host_arrays("winograd_tiles_grad", (grad_tiles,))
    tile = _tile_of("winograd_tiles_grad", "grad_tiles", grad_tiles, "N*TH*TW, C")
    b_t, _, _ = _device_matrices(tile, grad_tiles.dtype)
    (tiles_h, tiles_w), ((top, _), (left, _)) = winograd_tile_grid(x_shape, pads, tile)
    expected = ((tile + 2) ** 2, x_shape[0] * tiles_h * tiles_w, x_shape[3])
    _require_shape("winograd_tiles_grad", "grad_tiles", grad_tiles, expected)
    grad_x = cuda.device_array(tuple(x_shape), dtype=grad_tiles.dtype)
    zero = np.dtype(grad_tiles.dtype).type(0)
    _launch(_winograd_tiles_grad, grad_x.size, b_t, grad_tiles, top, left, tiles_h, tiles_w, zero, grad_x)
    return grad_x


@cuda.jit
def _winograd_outputs(a_t, products, tiles_h, tiles_w, zero, out):
    """``out[n, m*i + r, m*j + s, o] = (A^T M A)[r, s] = sum_{a, b} A^T[r, a] M[a, b] A^T[s, b]``,
    ``M = products[:, t, o]`` as ``side x side``, ``t = (n*TH + i)*TW + j``.

    ``a_t`` the matrix ``A^T`` ``(m, side)``, ``products`` ``(side^2, N*TH*TW, C_out)`` -> ``out``
    ``(N, OH, OW, C_out)``, one thread per element of ``out`` (so the dropped rows and columns of the
    last blocks are never computed).
    """
    index = cuda.grid(1)
    if index >= out.size:
        return
    tile, side = a_t.shape[0], a_t.shape[1]
    n, h, w, o = _split_nhwc(index, out.shape)
    i, r = h // tile, h % tile
    j, s = w // tile, w % tile
    t = (n * tiles_h + i) * tiles_w + j
    total = zero
    for a in range(side):
        for b in range(side):
            total += a_t[r, a] * products[side * a + b, t, o] * a_t[s, b]
    out[n, h, w, o] = total


def winograd_outputs(products, out_shape):
    """``A^T m A`` for every tile: ``products (P, N*TH*TW, C_out) -> y (N, OH, OW, C_out)``, the
    ``m x m`` output blocks laid side by side (``P = (m + 2)^2`` gives ``m``); where ``m`` does not
    divide ``OH`` or ``OW`` the last blocks' trailing rows or columns are dropped.

    Launch: one thread per output element, ``N*OH*OW*C_out`` threads.
    """
    _reject_host_arrays("winograd_outputs", (products,))
    tile = _tile_of("winograd_outputs", "products", products, "N*TH*TW, C_out")
    _, _, a_t = _device_matrices(tile, products.dtype)
    n, out_h, out_w, c_out = out_shape
    tiles_h, tiles_w = winograd_tiles_hw((out_h, out_w), tile)
    _require_shape("winograd_outputs", "products", products, ((tile + 2) ** 2, n * tiles_h * tiles_w, c_out))
    out = cuda.device_array(tuple(out_shape), dtype=products.dtype)
    zero = np.dtype(products.dtype).type(0)
    _launch(_winograd_outputs, out.size, a_t, products, tiles_h, tiles_w, zero, out)
    return out


@cuda.jit
def _winograd_outputs_grad(a_t, grad_out, tiles_h, tiles_w, zero, grad_products):
    """``grad_products[side*a + b, t, o] = (A g A^T)[a, b] = sum_{r, s} A^T[r, a] g[r, s] A^T[s, b]``,
    ``g = grad_out[n, m*i : m*i + m, m*j : m*j + m, o]`` (zeros past ``grad_out``).

    ``a_t`` the matrix ``A^T`` ``(m, side)``, ``grad_out`` ``(N, OH, OW, C_out)`` -> ``grad_products``
    ``(side^2, N*TH*TW, C_out)``, one thread per element of ``grad_products``.
    """
    index = cuda.grid(1)
    if index >= grad_products.size:
        return
    tile, side = a_t.shape[0], a_t.shape[1]
    ab, t, o = _split_ptc(index, grad_products.shape)
    a, b = ab // side, ab % side
    n, i, j = _split_tile(t, tiles_h, tiles_w)
    total = zero
    for r in range(tile):
        for s in range(tile):
            total += a_t[r, a] * _pixel_or(grad_out, n, tile * i + r, tile * j + s, o, zero) * a_t[s, b]
    grad_products[ab, t, o] = total


def winograd_outputs_grad(grad_out, tile=2):
    """Adjoint of :func:`winograd_outputs`: ``A g A^T`` for every ``m x m`` block of ``grad_out``
    (``m = tile``; zeros for the dropped rows or columns): ``(N, OH, OW, C_out) -> (P, N*TH*TW, C_out)``,
    ``P = (m + 2)^2``.

    Launch: one thread per output element, ``P * N*TH*TW * C_out`` threads.
    """
    _reject_host_arrays("winograd_outputs_grad", (grad_out,))
    _, _, a_t = _device_matrices(tile, grad_out.dtype)
    n, out_h, out_w, c_out = grad_out.shape
    tiles_h, tiles_w = winograd_tiles_hw((out_h, out_w), tile)
    grad_products = cuda.device_array(((tile + 2) ** 2, n * tiles_h * tiles_w, c_out), dtype=grad_out.dtype)
    zero = np.dtype(grad_out.dtype).type(0)
    _launch(_winograd_outputs_grad, grad_products.size, a_t, grad_out, tiles_h, tiles_w, zero, grad_products)
    return grad_products


# The Winograd convolution with nothing kept for backward: on the GPU, the transforms and GEMMs over
# the batch (the CPU backend's image-by-image loop exists for its caches).


def winograd_by_image(x, kernel_tiles, pads):
    """``winograd_outputs(winograd_tiles(x) @ kernel_tiles)``: ``x (N, H, W, C)``, ``kernel_tiles (P, C, F)``
    -> ``(N, OH, OW, F)``."""
    _reject_host_arrays("winograd_by_image", (x, kernel_tiles))
    tile = tile_of_positions(kernel_tiles.shape[0])
    out_shape = (x.shape[0], *output_hw(x.shape, (3, 3), (1, 1), pads), _last_axis(kernel_tiles))
    return winograd_outputs(matmul(winograd_tiles(x, pads, tile), kernel_tiles), out_shape)


def winograd_by_image_kernel_grad(x, grad_out, pads, tile):
    """``winograd_tiles(x)^T @ winograd_outputs_grad(grad_out)`` per position: ``x (N, H, W, C)``,
    ``grad_out (N, OH, OW, F)`` -> ``(P, C, F)``."""
    _reject_host_arrays("winograd_by_image_kernel_grad", (x, grad_out))
    return matmul_tn(winograd_tiles(x, pads, tile), winograd_outputs_grad(grad_out, tile))


def winograd_by_image_grads(x, grad_out, kernel_tiles, pads):
    """``(winograd_tiles(x)^T @ dM, winograd_tiles_grad(dM @ kernel_tiles^T))`` per position from one ``dM =
    winograd_outputs_grad(grad_out)``: ``x (N, H, W, C)``, ``grad_out (N, OH, OW, F)``, ``kernel_tiles (P,
    C, F)`` -> ``((P, C, F), (N, H, W, C))``."""
    _reject_host_arrays("winograd_by_image_grads", (x, grad_out, kernel_tiles))
    tile = tile_of_positions(kernel_tiles.shape[0])
    grad_products = winograd_outputs_grad(grad_out, tile)
    return (matmul_tn(winograd_tiles(x, pads, tile), grad_products),
            winograd_tiles_grad(matmul_nt(grad_products, kernel_tiles), x.shape, pads))


# ------------------------------------------------------------------------------------------- pooling


@cuda.jit
def _maxpool_forward(x, pool_h, pool_w, stride_h, stride_w, top, left, out, argmax):
    """``out[n, oh, ow, c] = max_{i, j} x_padded[n, oh*SH + i, ow*SW + j, c]``, ``argmax = i*PW + j``
    of the first maximum; padding never wins.  One thread per output element."""
    index = cuda.grid(1)
    if index >= out.size:
        return
    n, oh, ow, c = _split_nhwc(index, out.shape)
    best, best_tap = -math.inf, 0
    for i in range(pool_h):
        for j in range(pool_w):
            h, w = oh * stride_h + i - top, ow * stride_w + j - left
            if 0 <= h < x.shape[1] and 0 <= w < x.shape[2] and x[n, h, w, c] > best:
                best, best_tap = x[n, h, w, c], i * pool_w + j
    out[n, oh, ow, c] = best
    argmax[n, oh, ow, c] = best_tap


def maxpool_forward(x, pool_size, strides, pads):
    """Max over each window, per channel.

    ``x`` ``(N, H, W, C)`` -> ``(out (N, OH, OW, C), argmax (N, OH, OW, C) int32)``; ``argmax`` is the
    flat index ``i*PW + j`` of the maximum inside its window.
    """
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    out_shape = (x.shape[0], *output_hw(x.shape, pool_size, strides, pads), x.shape[3])
    out = cuda.device_array(out_shape, dtype=x.dtype)
    argmax = cuda.device_array(out_shape, dtype=np.int32)
    _launch(_maxpool_forward, out.size, x, ph, pw, sh, sw, top, left, out, argmax)
    return out, argmax


def maxpool_values(x, pool_size, strides, pads):
    """``maxpool_forward``'s ``out`` alone, for inference: ``x`` ``(N, H, W, C)`` -> ``(N, OH, OW, C)``.
    It runs :func:`maxpool_forward`'s kernel and drops the argmax that kernel also writes."""
    return maxpool_forward(x, pool_size, strides, pads)[0]


@cuda.jit
def _maxpool_backward(grad_out, argmax, pool_h, pool_w, stride_h, stride_w, top, left, grad_in):
    """``grad_in[n, h, w, c] = sum of grad_out[n, oh, ow, c]`` over the windows covering ``(h, w)``
    whose ``argmax`` is this pixel's tap ``i*PW + j``.  One thread per input pixel."""
    index = cuda.grid(1)
    if index >= grad_in.size:
        return
    n, h, w, c = _split_nhwc(index, grad_in.shape)
    hp, wp = h + top, w + left
    oh_first, oh_stop = _covering_windows(hp, pool_h, stride_h, grad_out.shape[1])
    ow_first, ow_stop = _covering_windows(wp, pool_w, stride_w, grad_out.shape[2])
    total = 0.0
    for oh in range(oh_first, oh_stop):
        for ow in range(ow_first, ow_stop):
            if argmax[n, oh, ow, c] == (hp - oh * stride_h) * pool_w + (wp - ow * stride_w):
                total += grad_out[n, oh, ow, c]
    grad_in[n, h, w, c] = total


def maxpool_backward(grad_out, argmax, x_shape, pool_size, strides, pads):
    """Route each output gradient to the input that was the window's maximum.

    ``grad_out``, ``argmax`` ``(N, OH, OW, C)`` -> ``grad_in`` ``(N, H, W, C)``;
    ``grad_in[n, oh*SH + i, ow*SW + j, c] += grad_out[n, oh, ow, c]`` where ``argmax == i*PW + j``.
    """
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    grad_in = cuda.device_array(tuple(x_shape), dtype=grad_out.dtype)
    _launch(_maxpool_backward, grad_in.size, grad_out, argmax, ph, pw, sh, sw, top, left, grad_in)
    return grad_in


@cuda.jit(device=True)
def _real_length(window, kernel, stride, pad_before, size):
    """How many unpadded positions window ``window`` covers along one axis of ``size``."""
    start = window * stride
    return min(start + kernel, pad_before + size) - max(start, pad_before)


@cuda.jit
def _avgpool_forward(x, pool_h, pool_w, stride_h, stride_w, top, left, out):
    """``out[n, oh, ow, c] = sum of the real pixels of the window / their count``.
    One thread per output element."""
    index = cuda.grid(1)
    if index >= out.size:
        return
    n, oh, ow, c = _split_nhwc(index, out.shape)
    total = 0.0
    for i in range(pool_h):
        for j in range(pool_w):
            h, w = oh * stride_h + i - top, ow * stride_w + j - left
            if 0 <= h < x.shape[1] and 0 <= w < x.shape[2]:
                total += x[n, h, w, c]
    count = _real_length(oh, pool_h, stride_h, top, x.shape[1]) * _real_length(ow, pool_w, stride_w, left, x.shape[2])
    out[n, oh, ow, c] = total / count


def avgpool_forward(x, pool_size, strides, pads):
    """Mean over each window of the real pixels it covers (padding is not counted, as in Keras).

    ``x`` ``(N, H, W, C)`` -> ``(N, OH, OW, C)``.
    """
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    out_shape = (x.shape[0], *output_hw(x.shape, pool_size, strides, pads), x.shape[3])
    out = cuda.device_array(out_shape, dtype=x.dtype)
    _launch(_avgpool_forward, out.size, x, ph, pw, sh, sw, top, left, out)
    return out


@cuda.jit
def _avgpool_backward(grad_out, pool_h, pool_w, stride_h, stride_w, top, left, grad_in):
    """``grad_in[n, h, w, c] = sum of grad_out[n, oh, ow, c] / count(oh, ow)`` over the windows
    covering ``(h, w)``.  One thread per input pixel."""
    index = cuda.grid(1)
    if index >= grad_in.size:
        return
    n, h, w, c = _split_nhwc(index, grad_in.shape)
    height, width = grad_in.shape[1], grad_in.shape[2]
    oh_first, oh_stop = _covering_windows(h + top, pool_h, stride_h, grad_out.shape[1])
    ow_first, ow_stop = _covering_windows(w + left, pool_w, stride_w, grad_out.shape[2])
    total = 0.0
    for oh in range(oh_first, oh_stop):
        for ow in range(ow_first, ow_stop):
            count = _real_length(oh, pool_h, stride_h, top, height) * _real_length(ow, pool_w, stride_w, left, width)
            total += grad_out[n, oh, ow, c] / count
    grad_in[n, h, w, c] = total


def avgpool_backward(grad_out, x_shape, pool_size, strides, pads):
    """Spread each output gradient evenly over the real pixels of its window.

    ``grad_out`` ``(N, OH, OW, C)`` -> ``(N, H, W, C)``;
    ``grad_in[n, oh*SH + i, ow*SW + j, c] += grad_out[n, oh, ow, c] / count[oh, ow]``.
    """
    (ph, pw), (sh, sw), ((top, _), (left, _)) = pool_size, strides, pads
    grad_in = cuda.device_array(tuple(x_shape), dtype=grad_out.dtype)
    _launch(_avgpool_backward, grad_in.size, grad_out, ph, pw, sh, sw, top, left, grad_in)
    return grad_in


# --------------------------------------------------- one-channel 3x3 convolution under 2x2 max pooling
#
# numpy_ref's composition of the kernels above, on the GPU: the outputs the pooling reads by im2col
# and a GEMM, then max pooling.  The CPU backend's direct kernel exists because im2col with K = 9 is
# memory-bound on a small CPU; on a GPU that is unmeasured.


def conv3x3_maxpool(x, kernel):
    """``z = conv(x, kernel)`` (3x3, stride 1, no padding, no bias) under 2x2 max pooling at stride 2:
    ``x (N, H, W, 1)``, ``kernel (3, 3, 1, F)`` -> ``(pooled, argmax)``, both ``(N, PH, PW, F)``."""
    _reject_host_arrays("conv3x3_maxpool", (x, kernel))
    n, pooled_h, pooled_w, filters = conv3x3_maxpool_shape("conv3x3_maxpool", x.shape, kernel.shape)
    z = matmul(im2col(x, (3, 3), (1, 1), conv3x3_maxpool_pads(x.shape)), kernel.reshape(9, filters))
    return maxpool_forward(z.reshape(n, 2 * pooled_h, 2 * pooled_w, filters), (2, 2), (2, 2), ((0, 0), (0, 0)))


def conv3x3_maxpool_values(x, kernel):
    """:func:`conv3x3_maxpool`'s ``pooled`` alone: ``(N, H, W, 1) -> (N, PH, PW, F)``."""
    _reject_host_arrays("conv3x3_maxpool_values", (x, kernel))
    conv3x3_maxpool_shape("conv3x3_maxpool_values", x.shape, kernel.shape)
    return conv3x3_maxpool(x, kernel)[0]


def conv3x3_maxpool_kernel_grad(x, grad_pooled, argmax):
    """``dL/dkernel`` ``(3, 3, 1, F)`` of :func:`conv3x3_maxpool`: the pooled gradient routed to the
    winning outputs, then ``im2col(x)^T @`` it."""
    _reject_host_arrays("conv3x3_maxpool_kernel_grad", (x, grad_pooled, argmax))
    n, pooled_h, pooled_w, filters = conv3x3_maxpool_grad_shape("conv3x3_maxpool_kernel_grad", x.shape,
                                                                grad_pooled.shape, argmax.shape)
    grad_z = maxpool_backward(grad_pooled, argmax, (n, 2 * pooled_h, 2 * pooled_w, filters), (2, 2), (2, 2),
                              ((0, 0), (0, 0)))
    cols = im2col(x, (3, 3), (1, 1), conv3x3_maxpool_pads(x.shape))
    return matmul_tn(cols, grad_z.reshape(-1, filters)).reshape(3, 3, 1, filters)


# ---------------------------------------------------------------------------------------- activations

RELU, SIGMOID, TANH = (ACTIVATIONS.index(name) for name in ("relu", "sigmoid", "tanh"))


@cuda.jit(device=True)
def _activate(v, activation):
    """``f(v)`` for the activation code (an index into ``ACTIVATIONS``)."""
    if activation == RELU:
        return max(v, 0)
    if activation == SIGMOID:
        e = math.exp(-abs(v))  # never overflows
        return 1 / (1 + e) if v >= 0 else e / (1 + e)
    if activation == TANH:
        return math.tanh(v)
    return v


@cuda.jit(device=True)
def _slope_from_output(y, activation):
    """``f'(z)`` written with ``y = f(z)``: relu ``y > 0``, sigmoid ``y (1 - y)``, tanh ``1 - y^2``."""
    if activation == RELU:
        return 1 if y > 0 else 0
    if activation == SIGMOID:
        return y * (1 - y)
    if activation == TANH:
        return 1 - y * y
    return 1


@cuda.jit
def _bias_activation(z_flat, bias, activation, y_flat):
    """``y[i] = f(z[i] + bias[i mod C])`` (no bias when ``bias`` is ``None``), one thread per element."""
    i = cuda.grid(1)
    if i >= y_flat.size:
        return
    v = z_flat[i]
    if bias is not None:
        v += bias[i % bias.size]
    y_flat[i] = _activate(v, activation)


def bias_activation(z, bias, activation):
    """``y = f(z + bias)``, bias ``(C,)`` broadcast over the last axis (``bias`` may be ``None``).

    ``f`` is ``linear``, ``relu`` ``max(0, v)``, ``sigmoid`` ``1 / (1 + e^-v)`` or ``tanh``.
    Any shape ``(..., C)`` -> the same shape.
    """
    check_activation(activation)
    channels = _last_axis(z)
    check_bias("minidl.kernels.cuda.bias_activation", bias, channels)
    y = cuda.device_array(z.shape, dtype=z.dtype)
    _launch(_bias_activation, y.size, _flat(z), bias, ACTIVATIONS.index(activation), _flat(y))
    return y


@cuda.jit
def _activation_grad(grad_out_flat, y_flat, activation, grad_in_flat):
    """``grad_in[i] = grad_out[i] * f'(z[i])`` from ``y[i]``, one thread per element."""
    i = cuda.grid(1)
    if i < grad_in_flat.size:
        grad_in_flat[i] = grad_out_flat[i] * _slope_from_output(y_flat[i], activation)


def activation_grad(grad_out, y, activation):
    """``dL/dz = dL/dy * f'(z)``, with ``f'`` written in terms of the output ``y = f(z)``.

    relu: ``y > 0``; sigmoid: ``y (1 - y)``; tanh: ``1 - y^2``; linear: ``1``.  Same shape in and out.
    """
    check_activation(activation)
    _require_same_shape("activation_grad", grad_out=grad_out, y=y)
    grad_in = cuda.device_array(grad_out.shape, dtype=grad_out.dtype)
    _launch(_activation_grad, grad_in.size, _flat(grad_out), _flat(y), ACTIVATIONS.index(activation), _flat(grad_in))
    return grad_in


def activation_bias_grad(grad_out, y, activation):
    """``(dL/dz, dL/db)``: :func:`activation_grad` and its :func:`bias_grad`, ``(M, C) -> ((M, C), (C,))``."""
    grad_z = activation_grad(grad_out, y, activation)
    return grad_z, bias_grad(grad_z)


@cuda.jit
def _leaky_relu(z_flat, alpha, y_flat):
    """``y[i] = z[i]`` if ``z[i] > 0`` else ``alpha * z[i]``, one thread per element."""
    i = cuda.grid(1)
    if i < y_flat.size:
        y_flat[i] = z_flat[i] if z_flat[i] > 0 else alpha * z_flat[i]


def leaky_relu(z, alpha):
    """``y = z`` where ``z > 0``, else ``alpha * z``.  Same shape in and out."""
    y = cuda.device_array(z.shape, dtype=z.dtype)
    _launch(_leaky_relu, y.size, _flat(z), alpha, _flat(y))
    return y


@cuda.jit
def _leaky_relu_grad(grad_out_flat, z_flat, alpha, grad_in_flat):
    """``grad_in[i] = grad_out[i]`` if ``z[i] > 0`` else ``alpha * grad_out[i]``."""
    i = cuda.grid(1)
    if i < grad_in_flat.size:
        grad_in_flat[i] = grad_out_flat[i] if z_flat[i] > 0 else alpha * grad_out_flat[i]


def leaky_relu_grad(grad_out, z, alpha):
    """``dL/dz = dL/dy`` where ``z > 0``, else ``alpha * dL/dy``.  Same shape in and out."""
    _require_same_shape("leaky_relu_grad", grad_out=grad_out, z=z)
    grad_in = cuda.device_array(grad_out.shape, dtype=grad_out.dtype)
    _launch(_leaky_relu_grad, grad_in.size, _flat(grad_out), _flat(z), alpha, _flat(grad_in))
    return grad_in


def _rows(x):
    """``(..., K)`` as the 2-D view ``(size // K, K)`` that the row kernels walk."""
    return x.reshape(x.size // _last_axis(x), _last_axis(x))


@cuda.jit
def _softmax_rows(z, y):
    """``y[r, k] = e^(z[r, k] - max_j z[r, j]) / sum_j e^(z[r, j] - max_j z[r, j])``, one thread per row."""
    r = cuda.grid(1)
    if r >= z.shape[0]:
        return
    largest = z[r, 0]
    for k in range(1, z.shape[1]):
        largest = max(largest, z[r, k])
    total = 0.0
    for k in range(z.shape[1]):
        y[r, k] = math.exp(z[r, k] - largest)
        total += y[r, k]
    for k in range(z.shape[1]):
        y[r, k] /= total


def softmax(z):
    """Row-wise softmax over the last axis, ``y_k = e^(z_k - max z) / sum_j e^(z_j - max z)``."""
    y = cuda.device_array(z.shape, dtype=z.dtype)
    _launch(_softmax_rows, _rows(z).shape[0], _rows(z), _rows(y))
    return y


@cuda.jit
def _softmax_grad_rows(grad_out, y, grad_in):
    """``grad_in[r, k] = y[r, k] * (g[r, k] - sum_j g[r, j] y[r, j])``, one thread per row."""
    r = cuda.grid(1)
    if r >= y.shape[0]:
        return
    dot = 0.0
    for k in range(y.shape[1]):
        dot += grad_out[r, k] * y[r, k]
    for k in range(y.shape[1]):
        grad_in[r, k] = y[r, k] * (grad_out[r, k] - dot)


def softmax_grad(grad_out, y):
    """Jacobian-vector product of softmax: ``dL/dz = y * (g - sum_k g_k y_k)`` per row."""
    _require_same_shape("softmax_grad", grad_out=grad_out, y=y)
    grad_in = cuda.device_array(y.shape, dtype=y.dtype)
    _launch(_softmax_grad_rows, _rows(y).shape[0], _rows(grad_out), _rows(y), _rows(grad_in))
    return grad_in


# ------------------------------------------------------------------ activation under average pooling
#
# numpy_ref's composition of the kernels above, on the GPU: the CPU backend's fused kernels exist
# because the batch's ``(N, H, W, C)`` arrays pass a small CPU's caches; on a GPU that is unmeasured.


def bias_activation_avgpool(z, bias, activation, pool_size, strides, pads):
    """``(y, pooled)``: ``y = f(z + bias)`` for ``z`` ``(N, H, W, C)`` and ``pooled = avgpool_forward(y)``."""
    y = bias_activation(z, bias, activation)
    return y, avgpool_forward(y, pool_size, strides, pads)


def avgpool_activation_grad(grad_pooled, y, activation, pool_size, strides, pads):
    """``(grad_z, grad_bias)``: ``grad_z = avgpool_backward(grad_pooled) * f'(z)`` from ``y`` and its sum
    over ``N, H, W``."""
    pooled_grad_shape("avgpool_activation_grad", grad_pooled.shape, y.shape, pool_size, strides, pads)
    grad_z = activation_grad(avgpool_backward(grad_pooled, y.shape, pool_size, strides, pads), y, activation)
    return grad_z, bias_grad(grad_z.reshape(-1, y.shape[3]))


# ---------------------------------------------------------------------------------------------- losses


@cuda.jit
def _softmax_cross_entropy_rows(logits, targets, losses, grad):
    """Per row ``n``: ``log p_k = z_k - max z - log sum_j e^(z_j - max z)``,
    ``loss_n = -sum_k t_k log p_k``, ``grad[n, k] = (p_k - t_k) / N``.  One thread per row."""
    r = cuda.grid(1)
    n_rows, n_classes = logits.shape
    if r >= n_rows:
        return
    largest = logits[r, 0]
    for k in range(1, n_classes):
        largest = max(largest, logits[r, k])
    sum_exp = 0.0
    for k in range(n_classes):
        sum_exp += math.exp(logits[r, k] - largest)
    log_sum_exp = math.log(sum_exp)
    loss = 0.0
    for k in range(n_classes):
        log_p = logits[r, k] - largest - log_sum_exp
        loss -= targets[r, k] * log_p
        grad[r, k] = (math.exp(log_p) - targets[r, k]) / n_rows
    losses[r] = loss


def softmax_cross_entropy(logits, targets):
    """Fused softmax + cross-entropy on logits, stable for any logits.

    ``logits``, ``targets`` ``(N, K)`` -> ``(losses (N,), grad (N, K))`` on the device, with
    ``loss_n = -sum_k t_nk log softmax(z_n)_k`` and ``grad = (softmax(z) - t) / N``.
    """
    _require_same_shape("softmax_cross_entropy", logits=logits, targets=targets)
    losses = cuda.device_array(logits.shape[0], dtype=logits.dtype)
    grad = cuda.device_array(logits.shape, dtype=logits.dtype)
    _launch(_softmax_cross_entropy_rows, logits.shape[0], logits, targets, losses, grad)
    return losses, grad


# -------------------------------------------------------------------------------------- regularisation


#: ``numpy_ref.dropout_hash_bits`` compiled for one uint64 counter at a time, on the device.
_dropout_hash_bits = cuda.jit(device=True)(numpy_ref.dropout_hash_bits)


@cuda.jit
def _dropout(x_flat, first_counter, threshold, keep_scale, y_flat, mask_flat):
    """Thread ``i``: ``mask[i] = keep_scale`` where the hash of ``first_counter + i`` reaches
    ``threshold``, else ``0``; ``y[i] = x[i] * mask[i]``."""
    i = cuda.grid(1)
    if i >= x_flat.size:
        return
    mask_flat[i] = keep_scale if _dropout_hash_bits(first_counter + numba.uint64(i)) >= threshold else 0
    y_flat[i] = x_flat[i] * mask_flat[i]


def dropout(x, rate, seed):
    """Inverted dropout in one pass: ``(y, mask)``, the masks of ``numpy_ref.dropout`` (the same seed
    gives the same mask on every backend)."""
    first_counter, threshold = numpy_ref.dropout_counter(seed), numpy_ref.dropout_threshold(rate)
    y = cuda.device_array(x.shape, dtype=x.dtype)
    mask = cuda.device_array(x.shape, dtype=x.dtype)
    keep_scale = x.dtype.type(1.0 / (1.0 - rate))
    _launch(_dropout, x.size, _flat(x), first_counter, threshold, keep_scale, _flat(y), _flat(mask))
    return y, mask


@cuda.jit
def _regularize_grad(grad_flat, param_flat, l1, l2):
    """``grad[i] += l1 * sign(w[i]) + 2 * l2 * w[i]``, in place, one thread per element."""
    i = cuda.grid(1)
    if i < grad_flat.size:
        w = param_flat[i]
        sign = 1 if w > 0 else (-1 if w < 0 else 0)
        grad_flat[i] += l1 * sign + 2 * l2 * w


def regularize_grad(grad, param, l1, l2):
    """In place: ``grad += l1 * sign(param) + 2 * l2 * param``, the gradient of
    ``l1 * sum|w| + l2 * sum w^2``."""
    _require_same_shape("regularize_grad", grad=grad, param=param)
    _launch(_regularize_grad, grad.size, _flat(grad), _flat(param), l1, l2)


@cuda.jit
def _penalty_terms(param_flat, l1, l2, terms):
    """``terms[i, 0] = l1 * |w[i]| + l2 * w[i]^2`` (float64), one thread per element."""
    i = cuda.grid(1)
    if i < param_flat.size:
        w = param_flat[i]
        terms[i, 0] = l1 * abs(w) + l2 * w * w


def regularization_penalty(param, l1, l2):
    """``l1 * sum|w| + l2 * sum w^2`` as a Python float (one scalar copied to the host)."""
    terms = cuda.device_array((param.size, 1), dtype=np.float64)
    _launch(_penalty_terms, param.size, _flat(param), float(l1), float(l2), terms)
    return float(_copy_to_host(_column_sums(terms))[0, 0])


# ----------------------------------------------------------------------------------- optimizer steps


@cuda.jit
def _sgd(param_flat, grad_flat, velocity_flat, lr, momentum, nesterov):
    """``v = momentum v - lr g``; ``w += v``, or ``w += momentum v - lr g`` with Nesterov."""
    i = cuda.grid(1)
    if i >= param_flat.size:
        return
    g = grad_flat[i]
    v = momentum * velocity_flat[i] - lr * g
    velocity_flat[i] = v
    param_flat[i] += (momentum * v - lr * g) if nesterov else v


def sgd_update(param, grad, velocity, lr, momentum, nesterov):
    """In place, Keras's SGD: ``v = momentum * v - lr * g``; ``w += v`` or, with Nesterov,
    ``w += momentum * v - lr * g``.  With ``momentum == 0`` this is ``w -= lr * g``."""
    _require_same_shape("sgd_update", param=param, grad=grad, velocity=velocity)
    _launch(_sgd, param.size, _flat(param), _flat(grad), _flat(velocity), lr, momentum, bool(nesterov))


@cuda.jit
def _adam(param_flat, grad_flat, m_flat, v_flat, lr_t, beta_1, beta_2, epsilon):
    """``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``; ``w -= lr_t m / (sqrt(v) + eps)``."""
    i = cuda.grid(1)
    if i >= param_flat.size:
        return
    g = grad_flat[i]
    m = beta_1 * m_flat[i] + (1 - beta_1) * g
    v = beta_2 * v_flat[i] + (1 - beta_2) * g * g
    m_flat[i], v_flat[i] = m, v
    param_flat[i] -= lr_t * m / (math.sqrt(v) + epsilon)


def adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, step):
    """In place, Keras's Adam at step ``t = step`` (1-based)::

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    """
    _require_same_shape("adam_update", param=param, grad=grad, m=m, v=v)
    lr_t = lr * math.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    _launch(_adam, param.size, _flat(param), _flat(grad), _flat(m), _flat(v), lr_t, beta_1, beta_2, epsilon)


@cuda.jit
def _rmsprop(param_flat, grad_flat, mean_square_flat, lr, rho, epsilon):
    """``s = rho s + (1 - rho) g^2``; ``w -= lr g / sqrt(s + eps)``, one thread per element."""
    i = cuda.grid(1)
    if i >= param_flat.size:
        return
    g = grad_flat[i]
    s = rho * mean_square_flat[i] + (1 - rho) * g * g
    mean_square_flat[i] = s
    param_flat[i] -= lr * g / math.sqrt(s + epsilon)


def rmsprop_update(param, grad, mean_square, lr, rho, epsilon):
    """In place, Keras's RMSprop: ``s = rho s + (1 - rho) g^2``; ``w -= lr * g / sqrt(s + eps)``."""
    _require_same_shape("rmsprop_update", param=param, grad=grad, mean_square=mean_square)
    _launch(_rmsprop, param.size, _flat(param), _flat(grad), _flat(mean_square), lr, rho, epsilon)


# ------------------------------------------------------------------------- batch normalization
#
# Over ``x`` ``(M, C)``: elementwise kernels run one thread per element (channel ``i mod C``); the
# per-channel sums fold rows as :func:`bias_grad` does, so they are deterministic and need no atomics.


@cuda.jit
def _squared_deviations(x_flat, mean, out_flat):
    """``out[m, c] = (x[m, c] - mean[c])^2``, one thread per element."""
    i = cuda.grid(1)
    if i < out_flat.size:
        deviation = x_flat[i] - mean[i % mean.size]
        out_flat[i] = deviation * deviation


@cuda.jit
def _scale_by(vector, factor):
    """``vector[c] *= factor``, in place, one thread per element."""
    c = cuda.grid(1)
    if c < vector.size:
        vector[c] *= factor


def _column_means(x):
    """``x.mean(axis=0)``: ``(M, C) -> (C,)``."""
    means = _column_sums(x).reshape(x.shape[1])
    _launch(_scale_by, means.size, means, 1.0 / x.shape[0])
    return means


def channel_moments(x):
    """Per-column mean and (biased) variance: ``x`` ``(M, C)`` -> ``(mean (C,), variance (C,))``,
    two passes (the mean first, then the mean squared deviation from it)."""
    mean = _column_means(x)
    deviations = cuda.device_array(x.shape, dtype=x.dtype)
    _launch(_squared_deviations, x.size, _flat(x), mean, _flat(deviations))
    return mean, _column_means(deviations)


def _require_channel_vectors(function, x, **vectors):
    for name, vector in vectors.items():
        _require_shape(function, name, vector, (x.shape[1],))


@cuda.jit
def _batch_norm(x_flat, mean, variance, gamma, beta, epsilon, y_flat):
    """``y = gamma[c] (x - mean[c]) / sqrt(variance[c] + epsilon) + beta[c]``, one thread per element."""
    i = cuda.grid(1)
    if i >= y_flat.size:
        return
    c = i % mean.size
    y_flat[i] = gamma[c] * (x_flat[i] - mean[c]) / math.sqrt(variance[c] + epsilon) + beta[c]


def batch_norm(x, mean, variance, gamma, beta, epsilon):
    """``y = gamma (x - mean) / sqrt(variance + epsilon) + beta`` per column: ``(M, C)`` -> ``(M, C)``,
    with ``mean``, ``variance``, ``gamma``, ``beta`` ``(C,)``."""
    _require_channel_vectors("batch_norm", x, mean=mean, variance=variance, gamma=gamma, beta=beta)
    y = cuda.device_array(x.shape, dtype=x.dtype)
    _launch(_batch_norm, y.size, _flat(x), mean, variance, gamma, beta, epsilon, _flat(y))
    return y


@cuda.jit
def _grad_times_normalized(grad_flat, x_flat, mean, variance, epsilon, out_flat):
    """``out[m, c] = g[m, c] * x_hat[m, c]``, ``x_hat = (x - mean[c]) / sqrt(variance[c] + epsilon)``."""
    i = cuda.grid(1)
    if i >= out_flat.size:
        return
    c = i % mean.size
    out_flat[i] = grad_flat[i] * (x_flat[i] - mean[c]) / math.sqrt(variance[c] + epsilon)


@cuda.jit
def _batch_norm_input_grad(grad_flat, x_flat, mean, variance, gamma, epsilon, grad_beta, grad_gamma, rows,
                           batch_statistics, grad_x_flat):
    """``dL/dx = gamma inv_std (g - [dL/dbeta / M + x_hat dL/dgamma / M])``, the bracket only with
    ``batch_statistics``; one thread per element."""
    i = cuda.grid(1)
    if i >= grad_x_flat.size:
        return
    c = i % mean.size
    inv_std = 1 / math.sqrt(variance[c] + epsilon)
    g = grad_flat[i]
    if batch_statistics:
        x_hat = (x_flat[i] - mean[c]) * inv_std
        g = g - grad_beta[c] / rows - x_hat * grad_gamma[c] / rows
    grad_x_flat[i] = gamma[c] * inv_std * g


def batch_norm_backward(grad_out, x, mean, variance, gamma, epsilon, batch_statistics):
    """Gradients of :func:`batch_norm` from ``g = dL/dy`` ``(M, C)``: ``(dL/dx, dL/dgamma, dL/dbeta)``
    (formulas in ``numpy_ref.batch_norm_backward``); with ``batch_statistics`` the gradient through
    the batch's own mean and variance is included."""
    _require_same_shape("batch_norm_backward", grad_out=grad_out, x=x)
    _require_channel_vectors("batch_norm_backward", x, mean=mean, variance=variance, gamma=gamma)
    channels = x.shape[1]
    grad_beta = bias_grad(grad_out)
    grad_times_normalized = cuda.device_array(x.shape, dtype=x.dtype)
    _launch(_grad_times_normalized, x.size, _flat(grad_out), _flat(x), mean, variance, epsilon,
            _flat(grad_times_normalized))
    grad_gamma = _column_sums(grad_times_normalized).reshape(channels)
    grad_x = cuda.device_array(x.shape, dtype=x.dtype)
    _launch(_batch_norm_input_grad, x.size, _flat(grad_out), _flat(x), mean, variance, gamma, epsilon,
            grad_beta, grad_gamma, x.shape[0], bool(batch_statistics), _flat(grad_x))
    return grad_x, grad_gamma, grad_beta


@cuda.jit
def _moving_average(moving_flat, value_flat, momentum):
    """``moving[i] = momentum moving[i] + (1 - momentum) value[i]``, in place, one thread per element."""
    i = cuda.grid(1)
    if i < moving_flat.size:
        moving_flat[i] = momentum * moving_flat[i] + (1 - momentum) * value_flat[i]


def moving_average_update(moving, value, momentum):
    """In place: ``moving = momentum * moving + (1 - momentum) * value`` (same shapes)."""
    _require_same_shape("moving_average_update", moving=moving, value=value)
    _launch(_moving_average, moving.size, _flat(moving), _flat(value), float(momentum))


# ------------------------------------------------------------------------ padding and rescaling


def _require_non_negative_pads(function, pads):
    if any(amount < 0 for pair in pads for amount in pair):
        raise ValueError(f"minidl.kernels.cuda.{function}: pads must be >= 0, got {pads}")


@cuda.jit
def _zero_pad(x, top, left, padded):
    """``padded[n, h, w, c] = x[n, h - top, w - left, c]`` inside, ``0`` on the border; one thread per
    element of ``padded``."""
    i = cuda.grid(1)
    if i >= padded.size:
        return
    n, h, w, c = _split_nhwc(i, padded.shape)
    h, w = h - top, w - left
    inside = 0 <= h < x.shape[1] and 0 <= w < x.shape[2]
    padded[n, h + top, w + left, c] = x[n, h, w, c] if inside else 0


def zero_pad(x, pads):
    """``x`` ``(N, H, W, C)`` inside a border of zeros ``pads = ((top, bottom), (left, right))``, all
    ``>= 0``: ``(N, top + H + bottom, left + W + right, C)``."""
    _require_non_negative_pads("zero_pad", pads)
    (top, bottom), (left, right) = pads
    n, height, width, channels = x.shape
    padded = cuda.device_array((n, top + height + bottom, left + width + right, channels), dtype=x.dtype)
    _launch(_zero_pad, padded.size, x, top, left, padded)
    return padded


@cuda.jit
def _crop(grad_out, top, left, grad_in):
    """``grad_in[n, h, w, c] = grad_out[n, top + h, left + w, c]``, one thread per element of ``grad_in``."""
    i = cuda.grid(1)
    if i >= grad_in.size:
        return
    n, h, w, c = _split_nhwc(i, grad_in.shape)
    grad_in[n, h, w, c] = grad_out[n, top + h, left + w, c]


def zero_pad_grad(grad_out, pads):
    """Adjoint of :func:`zero_pad`: the inner ``(N, H, W, C)`` of ``grad_out``."""
    _require_non_negative_pads("zero_pad_grad", pads)
    (top, bottom), (left, right) = pads
    n, padded_h, padded_w, channels = grad_out.shape
    grad_in = cuda.device_array((n, padded_h - top - bottom, padded_w - left - right, channels),
                                dtype=grad_out.dtype)
    _launch(_crop, grad_in.size, grad_out, top, left, grad_in)
    return grad_in


@cuda.jit
def _scale_shift(x_flat, scale, offset, y_flat):
    """``y[i] = x[i] * scale + offset``, one thread per element."""
    i = cuda.grid(1)
    if i < y_flat.size:
        y_flat[i] = x_flat[i] * scale + offset


def scale_shift(x, scale, offset):
    """``y = x * scale + offset`` for numbers ``scale`` and ``offset``; same shape and dtype as ``x``."""
    y = cuda.device_array(x.shape, dtype=x.dtype)
    _launch(_scale_shift, y.size, _flat(x), float(scale), float(offset), _flat(y))
    return y
# ------------------------------------------------------------------------------ joining tensors


@cuda.jit
def _copy_into_middle(part, out, offset):
    """``out[:, offset:offset + B, :] = part`` for ``part (A, B, C)``, one thread per element of ``part``."""
    i = cuda.grid(1)
    along, after = part.shape[1], part.shape[2]
    if i < part.size:
        a, rest = i // (along * after), i % (along * after)
        out[a, offset + rest // after, rest % after] = part[a, rest // after, rest % after]


@cuda.jit
def _copy_out_of_middle(x, offset, part):
    """``part = x[:, offset:offset + B, :]`` for ``part (A, B, C)``, one thread per element of ``part``."""
    i = cuda.grid(1)
    along, after = part.shape[1], part.shape[2]
    if i < part.size:
        a, rest = i // (along * after), i % (along * after)
        part[a, rest // after, rest % after] = x[a, offset + rest // after, rest % after]


def concatenate(parts, axis):
    """``parts`` joined along ``axis``: ``(..., B_i, ...) -> (..., sum B_i, ...)``; each part is copied
    into its slab of the output seen as ``(before, along, after)``, on the device."""
    _reject_host_arrays("concatenate", parts)
    out_shape = concatenated_shape("concatenate", [tuple(part.shape) for part in parts], axis)
    out = cuda.device_array(out_shape, dtype=parts[0].dtype)
    out_3d = out.reshape(as_three_axes(out_shape, axis))
    offset = 0
    for part in parts:
        _launch(_copy_into_middle, part.size, part.reshape(as_three_axes(tuple(part.shape), axis)), out_3d, offset)
        offset += tuple(part.shape)[axis]
    return out


def split(x, sizes, axis):
    """The inverse of :func:`concatenate` (and its gradient): ``x`` cut along ``axis`` into fresh
    device arrays of ``sizes[i]`` along it."""
    _reject_host_arrays("split", [x])
    x_3d = x.reshape(as_three_axes(tuple(x.shape), axis))
    parts, offset = [], 0
    for shape in split_shapes("split", tuple(x.shape), sizes, axis):
        part = cuda.device_array(shape, dtype=x.dtype)
        _launch(_copy_out_of_middle, part.size, x_3d, offset, part.reshape(as_three_axes(shape, axis)))
        parts.append(part)
        offset += shape[axis]
    return parts


