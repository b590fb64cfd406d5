"""``kernels.blas`` finds NumPy's own BLAS among the libraries the process maps, and its GEMMs multiply."""

import sys

import cv2  # noqa: F401  (OpenCV's wheels map an OpenBLAS of their own beside NumPy's)
import numpy as np
import pytest

from minidl.kernels import blas

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or blas.find() is None,
                                reason="no BLAS library of kernels.blas's flavours")


def test_find_prefers_numpys_blas_over_another_packages():
    numpy_paths = [path for path in blas._mapped_blas_paths() if "numpy" in path]
    if not numpy_paths:
        pytest.skip("NumPy's BLAS does not lie under NumPy's folders here")
    assert blas.find().path in numpy_paths


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_found_gemm_multiplies_row_major_operands_in_either_orientation(dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
    c = np.full((5, 3), np.nan, dtype=dtype)
    gemm = blas.find().gemms[np.dtype(dtype)]
    gemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.TRANS, 5, 3, 7, 1.0, a.ctypes.data, 7, b.ctypes.data, 7,
         0.0, c.ctypes.data, 3)
    np.testing.assert_allclose(c, a @ b.T, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_the_library_reports_the_threads_it_was_set_to():
    library = blas.find()
    before = library.get_num_threads()
    try:
        library.set_num_threads(1)
        assert library.get_num_threads() == 1
    finally:
        library.set_num_threads(before)


def test_the_library_names_its_core_and_the_products_its_small_matrix_kernels_take():
    library = blas.find()
    assert isinstance(library.core, str)
    expected = blas.SMALL_PRODUCT if library.core in blas.SMALL_KERNEL_CORES else 0
    assert library.small_product == expected
