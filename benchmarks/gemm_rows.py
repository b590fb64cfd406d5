"""One image's conv products on NumPy's BLAS, whole and cut into GEMM calls of fewer output pixels.

    python benchmarks/gemm_rows.py [--shape PIXELS DEPTH FILTERS LAYOUT ...] [--repeats 20] [--calls 50]

For each shape, the three products the image-by-image conv kernels make per image, on one thread:
the forward ``z = cols @ W2d`` ``(PIXELS, DEPTH) x (DEPTH, FILTERS)``, the kernel gradient ``cols^T
@ G`` and the input gradient's ``G @ W2d^T`` (the same multiply-adds), with ``cols`` in ``LAYOUT``
``transposed`` (``(DEPTH, PIXELS)``, as few-channel inputs are unfolded) or ``rows``. Each is timed
whole and in runs of ``PIXELS / 2, / 4, ...`` pixels down to 64, and in runs of the most pixels the
library's small-matrix kernels take (``kernels.blas.Library.small_product``), the last run shorter.
The GEMM calls are made from a Numba loop, as the conv kernels make them (called from Python,
through ``ctypes``, each call carried an overhead the kernels do not pay, which made the shorter
runs look slower than they are): ``--calls`` products per timed call, the fastest of ``--repeats``,
in microseconds per image. The default shapes are the suite's image-by-image convs and a few beside
them.
"""

import argparse

import numba
import numpy as np

import machine  # benchmarks/machine.py, beside this script
from minidl.kernels import blas

DEFAULT_SHAPES = (
    (1024, 75, 16, "transposed"),  # 64x64x3, 5x5 at stride 2, 16 filters
    (1024, 27, 32, "transposed"),  # 32x32x3, 3x3, 32 filters
    (4096, 27, 32, "transposed"),
    (1024, 144, 16, "rows"),
    (1024, 288, 32, "rows"),  # runs of 108 pixels
    (1024, 288, 64, "rows"),  # runs of 54
    (256, 576, 64, "rows"),  # runs of 27: fewer than MIN_GEMM_PIXELS
    (64, 400, 32, "rows"),  # 16x16x16, 5x5 at stride 2, 32 filters
)


def run_lengths(pixels, small_pixels):
    """The run lengths to time: all pixels, halves, quarters, ... down to 64, and ``small_pixels``."""
    lengths = {pixels}
    length = pixels // 2
    while length >= 64:
        lengths.add(length)
        length //= 2
    if 0 < small_pixels < pixels:
        lengths.add(small_pixels)
    return sorted(lengths, reverse=True)


@numba.njit
def forward_runs(gemm, calls, run, transposed, cols, kernel_matrix, z):
    """``calls`` times one image's forward ``z = cols @ kernel_matrix`` in GEMM calls of ``run`` pixels,
    from compiled code, as the conv kernels call the library."""
    pixels, filters = z.shape
    depth, size = kernel_matrix.shape[0], cols.itemsize
    op_cols, ld_cols, step = (blas.TRANS, pixels, 1) if transposed else (blas.NO_TRANS, depth, depth)
    for _ in range(calls):
        for first in range(0, pixels, run):
            gemm(blas.ROW_MAJOR, op_cols, blas.NO_TRANS, min(run, pixels - first), filters, depth, 1.0,
                 cols.ctypes.data + first * step * size, ld_cols, kernel_matrix.ctypes.data, filters,
                 0.0, z.ctypes.data + first * filters * size, filters)


@numba.njit
def kernel_grad_runs(gemm, calls, run, transposed, cols, grad, grad_kernel):
    """``calls`` times one image's kernel gradient ``grad_kernel += cols^T @ grad`` in GEMM calls of
    ``run`` pixels, from compiled code."""
    pixels, filters = grad.shape
    depth, size = grad_kernel.shape[0], cols.itemsize
    op_cols, ld_cols, step = (blas.NO_TRANS, pixels, 1) if transposed else (blas.TRANS, depth, depth)
    for _ in range(calls):
        for first in range(0, pixels, run):
            gemm(blas.ROW_MAJOR, op_cols, blas.NO_TRANS, depth, filters, min(run, pixels - first), 1.0,
                 cols.ctypes.data + first * step * size, ld_cols, grad.ctypes.data + first * filters * size, filters,
                 1.0, grad_kernel.ctypes.data, filters)


@numba.njit
def input_grad_runs(gemm, calls, run, grad, kernel_matrix_t, grad_cols):
    """``calls`` times one image's ``grad_cols = grad @ kernel_matrix_t`` (the input gradient's product,
    before the fold) in GEMM calls of ``run`` pixels, from compiled code."""
    pixels, filters = grad.shape
    depth, size = kernel_matrix_t.shape[1], grad.itemsize
    for _ in range(calls):
        for first in range(0, pixels, run):
            gemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.NO_TRANS, min(run, pixels - first), depth, filters, 1.0,
                 grad.ctypes.data + first * filters * size, filters, kernel_matrix_t.ctypes.data, depth,
                 0.0, grad_cols.ctypes.data + first * depth * size, depth)


def image_products(gemm, pixels, depth, filters, transposed, calls):
    """``{name: product(run)}``: calls that make one image's three products ``calls`` times in GEMM
    calls of ``run`` pixels, on random float32 operands (the input gradient's alike for both layouts:
    it writes ``dL/dcols`` in rows, which the fold reads)."""
    rng = np.random.default_rng(0)
    cols = rng.standard_normal((depth, pixels) if transposed else (pixels, depth)).astype(np.float32)
    kernel_matrix = rng.standard_normal((depth, filters)).astype(np.float32)
    grad = rng.standard_normal((pixels, filters)).astype(np.float32)
    z, grad_kernel = np.empty((pixels, filters), np.float32), np.zeros((depth, filters), np.float32)
    kernel_matrix_t, grad_cols = np.ascontiguousarray(kernel_matrix.T), np.empty((pixels, depth), np.float32)

    def forward(run):
        forward_runs(gemm, calls, run, transposed, cols, kernel_matrix, z)

    def kernel_grad(run):
        kernel_grad_runs(gemm, calls, run, transposed, cols, grad, grad_kernel)

    def input_grad(run):
        input_grad_runs(gemm, calls, run, grad, kernel_matrix_t, grad_cols)

    return {"forward": forward, "kernel gradient": kernel_grad, "input gradient": input_grad}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=4, action="append", metavar=("PIXELS", "DEPTH", "FILTERS", "LAYOUT"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50, help="products per timed call")
    args = parser.parse_args()
    library = blas.find()
    if library is None:
        raise SystemExit("gemm_rows.py: no BLAS library of kernels.blas's flavours is mapped in this process")
    library.set_num_threads(1)
    print(machine.describe())
    print(f"BLAS core {library.core or '(not named)'}, small-matrix kernels take {library.small_product:,} "
          f"multiply-adds; one thread, float32, us per image (fastest of {args.repeats} runs of {args.calls})")
    shapes = [(int(p), int(d), int(f), layout) for p, d, f, layout in args.shape] if args.shape else DEFAULT_SHAPES
    for pixels, depth, filters, layout in shapes:
        if layout not in ("transposed", "rows"):
            raise SystemExit(f"gemm_rows.py: LAYOUT must be 'transposed' or 'rows', got {layout!r}")
        products = image_products(library.gemms[np.dtype(np.float32)], pixels, depth, filters,
                                  layout == "transposed", args.calls)
        small_pixels = library.small_product // (depth * filters)
        print(f"{pixels} pixels x K {depth} x {filters} filters, {layout} cols "
              f"({pixels * depth * filters / 1e6:.2f}M multiply-adds; small kernels take {small_pixels} pixels)")
        for name, product in products.items():
            times = [(run, 1e3 * machine.fastest_ms(lambda: product(run), args.repeats) / args.calls)
                     for run in run_lengths(pixels, small_pixels)]
            print(f"  {name:15s} " + "  ".join(f"{run}: {us:6.1f}" for run, us in times))


if __name__ == "__main__":
    main()
