"""The numba.cuda kernels against the NumPy reference, on a GPU or on Numba's CUDA simulator.

The simulator must be chosen before ``numba.cuda`` is first imported in the process, e.g.
``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/kernels/test_cuda.py``.  Without a GPU or the
simulator this module is skipped.  The simulator runs every GPU thread as a Python thread, so the
shapes are tiny and the examples few.
"""

import importlib.util
import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

numba_cuda = pytest.importorskip("numba.cuda", reason="the cuda kernels need numba-cuda (pip install minidl[gpu])")
if not (numba_cuda.config.ENABLE_CUDASIM or numba_cuda.is_available()):
    pytest.skip(
        "no CUDA GPU and the simulator is off: run NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/kernels/test_cuda.py",
        allow_module_level=True,
    )

from minidl.kernels import cuda as gpu  # noqa: E402  (only importable once the device question is settled)
from minidl.kernels import numpy_ref  # noqa: E402
from minidl.kernels.shapes import winograd_tiles_hw  # noqa: E402
from tests.kernels.strategies import window_problems, winograd_problems  # noqa: E402

FEW = settings(max_examples=8, deadline=None)
DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-11}


def assert_close(device_result, expected, dtype):
    host = gpu.to_host(device_result)
    assert host.dtype == dtype
    np.testing.assert_allclose(host, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def random_array(seed, shape, dtype, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def small_window_problems():
    """A tiny batch shape and a window that fits it, as ``(x_shape, window, strides, pads)``."""
    return window_problems(max_batch=2, max_size=6, max_window=3).map(lambda problem: problem[:4])


seeds = st.integers(0, 2**16)


# ------------------------------------------------------------------------------------------ arrays


def test_to_device_and_to_host_round_trip_counting_one_transfer_each():
    x = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not C-contiguous on the host
    gpu.reset_transfer_count()
    on_device = gpu.to_device(x)
    assert gpu.transfer_count() == 1
    assert on_device.shape == (4, 3) and on_device.dtype == np.float32
    assert gpu.to_device(on_device) is on_device
    np.testing.assert_array_equal(gpu.to_host(on_device), x)
    assert gpu.transfer_count() == 2


def test_to_host_passes_numpy_arrays_through_without_a_transfer():
    x = np.ones(3)
    gpu.reset_transfer_count()
    assert gpu.to_host(x) is x
    assert gpu.transfer_count() == 0


@pytest.mark.parametrize("dtype", DTYPES + [np.int32])
def test_zeros_and_zeros_like_are_filled_on_the_device(dtype):
    gpu.reset_transfer_count()
    z = gpu.zeros((2, 3), dtype)
    z_like = gpu.zeros_like(z)
    assert gpu.transfer_count() == 0
    for array in (z, z_like):
        np.testing.assert_array_equal(gpu.to_host(array), np.zeros((2, 3), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_is_a_device_array_of_its_shape_and_dtype_made_without_a_transfer(dtype):
    gpu.reset_transfer_count()
    out = gpu.empty((4, 3, 2), dtype)
    assert gpu.transfer_count() == 0
    assert out.shape == (4, 3, 2) and out.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multiply_add_and_accumulate_match_numpy(dtype):
    a, b = random_array(1, (3, 5), dtype), random_array(2, (3, 5), dtype)
    assert_close(gpu.multiply(gpu.to_device(a), gpu.to_device(b)), numpy_ref.multiply(a, b), dtype)
    assert_close(gpu.add(gpu.to_device(a), gpu.to_device(b)), numpy_ref.add(a, b), dtype)
    total = gpu.to_device(a)
    gpu.accumulate(total, gpu.to_device(b))
    assert_close(total, a + b, dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_is_a_python_bool_that_spots_nan_and_inf(bad):
    x = np.ones((4, 5), np.float32)
    assert gpu.all_finite(gpu.to_device(x)) is True
    x[3, 2] = bad
    assert gpu.all_finite(gpu.to_device(x)) is False


def test_kernels_refuse_host_arrays_instead_of_copying_them_silently():
    with pytest.raises(TypeError, match="to_device"):
        gpu.multiply(np.ones(3), np.ones(3))


def test_shape_mismatches_are_reported_with_the_function_and_shapes():
    with pytest.raises(ValueError, match=r"multiply.*\(2,\).*\(3,\)"):
        gpu.multiply(gpu.zeros(2, np.float32), gpu.zeros(3, np.float32))


# ----------------------------------------------------------------------------------- linear algebra

MATMULS = {
    "matmul": lambda a, b: (a, b),
    "matmul_tn": lambda a, b: (np.ascontiguousarray(a.T), b),
    "matmul_nt": lambda a, b: (a, np.ascontiguousarray(b.T)),
}


@FEW
@given(
    st.sampled_from(sorted(MATMULS)),
    st.integers(1, 40), st.integers(0, 40), st.integers(1, 40),
    st.sampled_from(DTYPES), seeds,
)
@example("matmul", 17, 33, 18, np.float32, 0)  # no dimension a multiple of the 16x16 tile
@example("matmul_tn", 16, 32, 16, np.float64, 0)  # every dimension exactly whole tiles
@example("matmul_nt", 1, 1, 1, np.float32, 0)
@example("matmul_tn", 3, 300, 4, np.float32, 0)  # long K, tiny output: K is split over 3 blocks
@example("matmul_nt", 20, 290, 17, np.float64, 0)  # split K with ragged tiles
def test_every_matmul_variant_matches_the_product_for_any_shape(variant, m, k, n, dtype, seed):
    a, b = random_array(seed, (m, k), dtype), random_array(seed + 1, (k, n), dtype)
    stored_a, stored_b = MATMULS[variant](a, b)
    result = getattr(gpu, variant)(gpu.to_device(stored_a), gpu.to_device(stored_b))
    assert_close(result, getattr(numpy_ref, variant)(stored_a, stored_b), dtype)


def test_matmul_names_both_shapes_when_the_inner_dimensions_differ():
    a, b = gpu.zeros((2, 3), np.float32), gpu.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3\).*\(4, 5\)"):
        gpu.matmul(a, b)


STACKED_MATMULS = {
    "matmul": lambda a, b: (a, b),
    "matmul_tn": lambda a, b: (np.ascontiguousarray(np.swapaxes(a, 1, 2)), b),
    "matmul_nt": lambda a, b: (a, np.ascontiguousarray(np.swapaxes(b, 1, 2))),
}


@FEW
@given(
    st.sampled_from(sorted(STACKED_MATMULS)),
    st.integers(1, 2), st.integers(1, 8), st.integers(0, 8), st.integers(1, 8),
    st.sampled_from(DTYPES), seeds,
)
@example("matmul_tn", 2, 3, 129, 4, np.float64, 0)  # long K, tiny outputs: K is split in two in each product
def test_every_matmul_variant_multiplies_stacks_slice_by_slice(variant, stack, m, k, n, dtype, seed):
    a, b = random_array(seed, (stack, m, k), dtype), random_array(seed + 1, (stack, k, n), dtype)
    stored_a, stored_b = STACKED_MATMULS[variant](a, b)
    result = getattr(gpu, variant)(gpu.to_device(stored_a), gpu.to_device(stored_b))
    assert tuple(result.shape) == (stack, m, n)
    assert_close(result, a @ b, dtype)


@pytest.mark.parametrize(
    "variant, a_shape, b_shape",
    [
        ("matmul", (2, 3, 4), (3, 4, 5)),  # stacks of different lengths
        ("matmul_tn", (2, 4, 3), (2, 5, 5)),  # inner dimensions differ
        ("matmul_nt", (2, 3, 4), (2, 5, 3)),
        ("matmul", (2, 3, 4), (4, 5)),  # a stack and a matrix
    ],
)
def test_stacked_matmul_names_the_function_and_both_shapes_when_they_do_not_fit(variant, a_shape, b_shape):
    a, b = gpu.zeros(a_shape, np.float32), gpu.zeros(b_shape, np.float32)
    pattern = rf"{variant}.*{re.escape(str(a_shape))}.*{re.escape(str(b_shape))}"
    with pytest.raises(ValueError, match=pattern):
        getattr(gpu, variant)(a, b)


@FEW
@given(st.integers(1, 600), st.integers(1, 4), st.sampled_from(DTYPES), seeds)
@example(600, 2, np.float64, 0)  # more rows than one fold pass handles
def test_bias_grad_is_the_column_sum(rows, cols, dtype, seed):
    grad_out = random_array(seed, (rows, cols), dtype)
    assert_close(gpu.bias_grad(gpu.to_device(grad_out)), numpy_ref.bias_grad(grad_out), dtype)


def test_set_gemm_rejects_an_unknown_engine():
    with pytest.raises(ValueError, match="numba.*cublas"):
        gpu.set_gemm("magma")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_cublas_gemm_without_cupy_raises_a_clear_error_and_keeps_the_numba_gemm():
    with pytest.raises(RuntimeError, match="CuPy"):
        gpu.set_gemm("cublas")
    assert gpu.get_gemm() == "numba"


# -------------------------------------------------------------------------------------- convolution


@FEW
@given(small_window_problems(), st.sampled_from(DTYPES), seeds)
def test_im2col_and_col2im_match_the_reference(problem, dtype, seed):
    x_shape, window, strides, pads = problem
    x = random_array(seed, x_shape, dtype)
    cols = numpy_ref.im2col(x, window, strides, pads)
    assert_close(gpu.im2col(gpu.to_device(x), window, strides, pads), cols, dtype)
    grad_cols = random_array(seed + 1, cols.shape, dtype)
    assert_close(
        gpu.col2im(gpu.to_device(grad_cols), x_shape, window, strides, pads),
        numpy_ref.col2im(grad_cols, x_shape, window, strides, pads),
        dtype,
    )


@FEW
@given(small_window_problems(), st.integers(1, 3), st.sampled_from(DTYPES), seeds)
def test_conv_by_image_and_its_gradients_match_the_reference(problem, filters, dtype, seed):
    x_shape, window, strides, pads = problem
    x = random_array(seed, x_shape, dtype)
    kernel_matrix = random_array(seed + 1, (window[0] * window[1] * x_shape[3], filters), dtype)
    z = numpy_ref.conv_by_image(x, kernel_matrix, window, strides, pads)
    grad_out = random_array(seed + 2, z.shape, dtype)
    x_gpu, kernel_gpu, grad_gpu = (gpu.to_device(array) for array in (x, kernel_matrix, grad_out))
    assert_close(gpu.conv_by_image(x_gpu, kernel_gpu, window, strides, pads), z, dtype)
    assert_close(gpu.conv_by_image_kernel_grad(x_gpu, grad_gpu, window, strides, pads),
                 numpy_ref.conv_by_image_kernel_grad(x, grad_out, window, strides, pads), dtype)
    assert_close(gpu.conv_by_image_input_grad(grad_gpu, kernel_gpu, x_shape, window, strides, pads),
                 numpy_ref.conv_by_image_input_grad(grad_out, kernel_matrix, x_shape, window, strides, pads), dtype)


# ------------------------------------------------------------------------ Winograd F(m x m, 3 x 3)

WINOGRAD_TILES = [2, 4]
# F(4x4)'s transforms hold larger coefficients (kernels.winograd): about ten times F(2x2)'s rounding
WINOGRAD_ROUNDING = {2: 1, 4: 10}


def assert_winograd_close(device_result, expected, dtype, tile):
    """:func:`assert_close` for a Winograd transform of ``tile``: its sums of many terms round relative
    to the values' size, not to an entry that cancels to near 0."""
    host = gpu.to_host(device_result)
    assert host.dtype == dtype
    tolerance = TOLERANCE[dtype] * WINOGRAD_ROUNDING[tile]
    np.testing.assert_allclose(host, expected, rtol=tolerance, atol=tolerance * max(1.0, np.abs(expected).max()))


def small_winograd_problems():
    return winograd_problems(max_batch=2, max_size=6, max_channels=3)


# 'same' padding with two output rows dropped: OH = OW = 3 (not a multiple of 2 or 4), and the last
# tile row reads x's row 4, which the padding dropped
ODD_OUTPUTS_FROM_A_DROPPED_ROW = ((2, 5, 4, 1), (3, 3), (1, 1), ((1, -1), (1, 0)), (3, 3))
# 'same' padding with three output rows dropped: OH = 5, OW = 7, so F(4x4) has 2 x 2 overlapping tiles,
# the last row of them reading x's dropped rows 6 and 7 and a zero row past x
TWO_F4_TILES_EACH_WAY = ((1, 8, 7, 2), (3, 3), (1, 1), ((1, -2), (1, 1)), (5, 7))


@pytest.mark.parametrize("tile", WINOGRAD_TILES)
@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(st.integers(1, 3), st.integers(1, 3), seeds)
def test_winograd_kernel_transform_and_its_adjoint_match_the_reference(dtype, tile, c_in, c_out, seed):
    kernel = random_array(seed, (3, 3, c_in, c_out), dtype)
    assert_winograd_close(gpu.winograd_kernel(gpu.to_device(kernel), tile), numpy_ref.winograd_kernel(kernel, tile),
                          dtype, tile)
    grad_kernel_tiles = random_array(seed + 1, ((tile + 2) ** 2, c_in, c_out), dtype)
    assert_winograd_close(
        gpu.winograd_kernel_grad(gpu.to_device(grad_kernel_tiles)),
        numpy_ref.winograd_kernel_grad(grad_kernel_tiles),
        dtype,
        tile,
    )


def products_on_the_host(monkeypatch):
    """The device's stacked GEMMs replaced by NumPy's on copies (each is tested against the reference
    above; on the simulator one stack of 36 takes seconds)."""
    for name, product in (("matmul", lambda a, b: a @ b),
                          ("matmul_tn", lambda a, b: np.swapaxes(a, -1, -2) @ b),
                          ("matmul_nt", lambda a, b: a @ np.swapaxes(b, -1, -2))):
        monkeypatch.setattr(gpu, name, lambda a, b, product=product: gpu.to_device(product(gpu.to_host(a),
                                                                                           gpu.to_host(b))))


@pytest.mark.parametrize("tile", WINOGRAD_TILES)
@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(small_winograd_problems(), st.integers(1, 3), seeds)
def test_winograd_by_image_and_its_gradients_match_the_reference(dtype, tile, problem, c_out, seed):
    """The device's transforms composed with the products as the reference composes them."""
    x_shape, _, _, pads, _ = problem
    x = random_array(seed, x_shape, dtype)
    kernel_tiles = random_array(seed + 1, ((tile + 2) ** 2, x_shape[3], c_out), dtype)
    z = numpy_ref.winograd_by_image(x, kernel_tiles, pads)
    grad_out = random_array(seed + 2, z.shape, dtype)
    with pytest.MonkeyPatch.context() as patch:
        products_on_the_host(patch)
        x_gpu, tiles_gpu, grad_gpu = (gpu.to_device(array) for array in (x, kernel_tiles, grad_out))
        assert_winograd_close(gpu.winograd_by_image(x_gpu, tiles_gpu, pads), z, dtype, tile)
        assert_winograd_close(gpu.winograd_by_image_kernel_grad(x_gpu, grad_gpu, pads, tile),
                              numpy_ref.winograd_by_image_kernel_grad(x, grad_out, pads, tile), dtype, tile)
        for actual, expected in zip(gpu.winograd_by_image_grads(x_gpu, grad_gpu, tiles_gpu, pads),
                                    numpy_ref.winograd_by_image_grads(x, grad_out, kernel_tiles, pads)):
            assert_winograd_close(actual, expected, dtype, tile)


@pytest.mark.parametrize("tile", WINOGRAD_TILES)
@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(small_winograd_problems(), seeds)
@example(ODD_OUTPUTS_FROM_A_DROPPED_ROW, 0)
@example(TWO_F4_TILES_EACH_WAY, 0)
def test_winograd_input_tiles_and_their_adjoint_match_the_reference(dtype, tile, problem, seed):
    x_shape, _, _, pads, _ = problem
    x = random_array(seed, x_shape, dtype)
    tiles = numpy_ref.winograd_tiles(x, pads, tile)
    assert_winograd_close(gpu.winograd_tiles(gpu.to_device(x), pads, tile), tiles, dtype, tile)
    grad_tiles = random_array(seed + 1, tiles.shape, dtype)
    assert_winograd_close(
        gpu.winograd_tiles_grad(gpu.to_device(grad_tiles), x_shape, pads),
        numpy_ref.winograd_tiles_grad(grad_tiles, x_shape, pads),
        dtype,
        tile,
    )


@pytest.mark.parametrize("tile", WINOGRAD_TILES)
@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(small_winograd_problems(), st.integers(1, 3), seeds)
@example(ODD_OUTPUTS_FROM_A_DROPPED_ROW, 2, 0)
@example(TWO_F4_TILES_EACH_WAY, 1, 0)
def test_winograd_outputs_and_their_adjoint_match_the_reference_for_partial_blocks_too(dtype, tile, problem, c_out,
                                                                                        seed):
    x_shape, _, _, _, (out_h, out_w) = problem
    out_shape = (x_shape[0], out_h, out_w, c_out)
    tiles_h, tiles_w = winograd_tiles_hw((out_h, out_w), tile)
    products = random_array(seed, ((tile + 2) ** 2, x_shape[0] * tiles_h * tiles_w, c_out), dtype)
    y = numpy_ref.winograd_outputs(products, out_shape)
    assert_winograd_close(gpu.winograd_outputs(gpu.to_device(products), out_shape), y, dtype, tile)
    grad_out = random_array(seed + 1, out_shape, dtype)
    assert_winograd_close(
        gpu.winograd_outputs_grad(gpu.to_device(grad_out), tile), numpy_ref.winograd_outputs_grad(grad_out, tile),
        dtype,
        tile,
    )


@pytest.mark.parametrize(
    "function, args",
    [
        ("winograd_kernel", (np.ones((3, 3, 1, 1)),)),
        ("winograd_kernel_grad", (np.ones((16, 1, 1)),)),
        ("winograd_tiles", (np.ones((1, 4, 4, 1)), ((0, 0), (0, 0)))),
        ("winograd_tiles_grad", (np.ones((16, 1, 1)), (1, 4, 4, 1), ((0, 0), (0, 0)))),
        ("winograd_outputs", (np.ones((16, 1, 1)), (1, 2, 2, 1))),
        ("winograd_outputs_grad", (np.ones((1, 2, 2, 1)),)),
    ],
)
def test_winograd_transforms_refuse_host_arrays(function, args):
    with pytest.raises(TypeError, match=rf"{function}.*to_device"):
        getattr(gpu, function)(*args)


def test_winograd_transforms_reject_a_tile_count_that_does_not_fit_the_images():
    with pytest.raises(ValueError, match=r"winograd_outputs.*\(16, 4, 1\).*\(16, 1, 1\)"):
        gpu.winograd_outputs(gpu.zeros((16, 1, 1), np.float32), (1, 4, 3, 1))
    with pytest.raises(ValueError, match=r"winograd_outputs.*\(36, 2, 1\).*\(36, 1, 1\)"):
        gpu.winograd_outputs(gpu.zeros((36, 1, 1), np.float32), (1, 5, 3, 1))
    with pytest.raises(ValueError, match=r"winograd_tiles_grad.*\(16, 2, 1\).*\(16, 1, 1\)"):
        gpu.winograd_tiles_grad(gpu.zeros((16, 1, 1), np.float32), (1, 4, 6, 1), ((0, 0), (0, 0)))


@pytest.mark.parametrize(
    "function, shape, args",
    [
        ("winograd_kernel", (3, 3, 1, 1), (3,)),
        ("winograd_tiles", (1, 4, 4, 1), (((0, 0), (0, 0)), 3)),
        ("winograd_outputs_grad", (1, 2, 2, 1), (3,)),
    ],
)
def test_winograd_transforms_reject_an_unknown_tile(function, shape, args):
    with pytest.raises(ValueError, match=r"tile must be one of \(2, 4\).*got 3"):
        getattr(gpu, function)(gpu.zeros(shape, np.float32), *args)


@pytest.mark.parametrize(
    "function, shape, args",
    [
        ("winograd_kernel_grad", (25, 1, 1), ()),
        ("winograd_kernel_grad", (16, 1), ()),
        ("winograd_tiles_grad", (25, 1, 1), ((1, 5, 5, 1), ((0, 0), (0, 0)))),
        ("winograd_outputs", (25, 1, 1), ((1, 3, 3, 1),)),
    ],
)
def test_winograd_adjoints_and_outputs_name_the_shape_they_expect_for_positions_of_no_tile(function, shape, args):
    with pytest.raises(ValueError, match=rf"{function}.*must be \(P, .*\)"):
        getattr(gpu, function)(gpu.zeros(shape, np.float32), *args)


@pytest.mark.parametrize("tile", WINOGRAD_TILES)
def test_winograd_transforms_copy_their_matrices_to_the_device_once_per_tile_and_dtype(tile):
    kernel = gpu.zeros((3, 3, 1, 1), np.float64)
    gpu.winograd_kernel(kernel, tile)
    gpu.reset_transfer_count()
    gpu.winograd_kernel_grad(gpu.winograd_kernel(kernel, tile))
    gpu.winograd_outputs_grad(gpu.winograd_outputs(gpu.zeros(((tile + 2) ** 2, 1, 1), np.float64), (1, 2, 2, 1)), tile)
    gpu.winograd_tiles_grad(gpu.winograd_tiles(gpu.zeros((1, 4, 4, 1), np.float64), ((0, 0), (0, 0)), tile),
                            (1, 4, 4, 1), ((0, 0), (0, 0)))
    assert gpu.transfer_count() == 0


# ------------------------------------------------------------------------------------------ pooling


@FEW
@given(small_window_problems(), st.sampled_from(DTYPES), seeds)
def test_max_pooling_forward_argmax_values_and_backward_match_the_reference(problem, dtype, seed):
    x_shape, window, strides, pads = problem
    x = random_array(seed, x_shape, dtype)
    out, argmax = numpy_ref.maxpool_forward(x, window, strides, pads)
    gpu_out, gpu_argmax = gpu.maxpool_forward(gpu.to_device(x), window, strides, pads)
    assert_close(gpu_out, out, dtype)
    np.testing.assert_array_equal(gpu.to_host(gpu_argmax), argmax)
    assert_close(gpu.maxpool_values(gpu.to_device(x), window, strides, pads), out, dtype)
    grad_out = random_array(seed + 1, out.shape, dtype)
    assert_close(
        gpu.maxpool_backward(gpu.to_device(grad_out), gpu_argmax, x_shape, window, strides, pads),
        numpy_ref.maxpool_backward(grad_out, argmax, x_shape, window, strides, pads),
        dtype,
    )


@FEW
@given(small_window_problems(), st.sampled_from(DTYPES), st.sampled_from(numpy_ref.ACTIVATIONS), seeds)
def test_activation_under_average_pooling_matches_the_reference(problem, dtype, activation, seed):
    x_shape, window, strides, pads = problem
    z, bias = random_array(seed, x_shape, dtype), random_array(seed + 1, x_shape[3:], dtype)
    y, pooled = gpu.bias_activation_avgpool(gpu.to_device(z), gpu.to_device(bias), activation, window, strides, pads)
    expected_y, expected_pooled = numpy_ref.bias_activation_avgpool(z, bias, activation, window, strides, pads)
    assert_close(y, expected_y, dtype)
    assert_close(pooled, expected_pooled, dtype)
    grad_pooled = random_array(seed + 2, expected_pooled.shape, dtype)
    grad_z, grad_bias = gpu.avgpool_activation_grad(gpu.to_device(grad_pooled), gpu.to_device(expected_y), activation,
                                                    window, strides, pads)
    expected_grad_z, expected_grad_bias = numpy_ref.avgpool_activation_grad(grad_pooled, expected_y, activation,
                                                                            window, strides, pads)
    assert_close(grad_z, expected_grad_z, dtype)
    assert_close(grad_bias, expected_grad_bias, dtype)


def test_max_pooling_argmax_picks_the_first_of_equal_maxima():
    x = np.zeros((1, 2, 2, 1), np.float32)
    _, argmax = gpu.maxpool_forward(gpu.to_device(x), (2, 2), (2, 2), ((0, 0), (0, 0)))
    assert gpu.to_host(argmax).item() == numpy_ref.maxpool_forward(x, (2, 2), (2, 2), ((0, 0), (0, 0)))[1].item() == 0


@FEW
@given(small_window_problems(), st.sampled_from(DTYPES), seeds)
def test_average_pooling_forward_and_backward_match_the_reference(problem, dtype, seed):
    x_shape, window, strides, pads = problem
    x = random_array(seed, x_shape, dtype)
    out = numpy_ref.avgpool_forward(x, window, strides, pads)
    assert_close(gpu.avgpool_forward(gpu.to_device(x), window, strides, pads), out, dtype)
    grad_out = random_array(seed + 1, out.shape, dtype)
    assert_close(
        gpu.avgpool_backward(gpu.to_device(grad_out), x_shape, window, strides, pads),
        numpy_ref.avgpool_backward(grad_out, x_shape, window, strides, pads),
        dtype,
    )



@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(st.integers(1, 2), st.integers(4, 7), st.integers(4, 7), st.integers(1, 3), seeds)
def test_conv3x3_maxpool_its_values_and_its_kernel_grad_match_the_reference(dtype, n, height, width, filters, seed):
    x = random_array(seed, (n, height, width, 1), dtype)
    kernel = random_array(seed + 1, (3, 3, 1, filters), dtype)
    expected, expected_argmax = numpy_ref.conv3x3_maxpool(x, kernel)
    pooled, argmax = gpu.conv3x3_maxpool(gpu.to_device(x), gpu.to_device(kernel))
    assert_close(pooled, expected, dtype)
    np.testing.assert_array_equal(gpu.to_host(argmax), expected_argmax)
    assert_close(gpu.conv3x3_maxpool_values(gpu.to_device(x), gpu.to_device(kernel)), expected, dtype)
    grad_pooled = random_array(seed + 2, expected.shape, dtype)
    assert_close(
        gpu.conv3x3_maxpool_kernel_grad(gpu.to_device(x), gpu.to_device(grad_pooled), gpu.to_device(expected_argmax)),
        numpy_ref.conv3x3_maxpool_kernel_grad(x, grad_pooled, expected_argmax),
        dtype,
    )


@pytest.mark.parametrize("function, args", [
    ("conv3x3_maxpool", (np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 1)))),
    ("conv3x3_maxpool_values", (np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 1)))),
    ("conv3x3_maxpool_kernel_grad", (np.ones((1, 4, 4, 1)), np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int32))),
])
def test_conv3x3_maxpool_refuses_host_arrays(function, args):
    with pytest.raises(TypeError, match=rf"{function}.*to_device"):
        getattr(gpu, function)(*args)

# -------------------------------------------------------------------------------------- activations


@pytest.mark.parametrize("activation", numpy_ref.ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_activation_and_its_gradient_match_the_reference(activation, with_bias):
    dtype = np.float32
    z, grad_out = random_array(1, (2, 3, 4), dtype, scale=3.0), random_array(2, (2, 3, 4), dtype)
    bias = random_array(3, (4,), dtype) if with_bias else None
    y = numpy_ref.bias_activation(z, bias, activation)
    gpu_bias = gpu.to_device(bias) if with_bias else None
    gpu_y = gpu.bias_activation(gpu.to_device(z), gpu_bias, activation)
    assert_close(gpu_y, y, dtype)
    assert_close(
        gpu.activation_grad(gpu.to_device(grad_out), gpu_y, activation),
        numpy_ref.activation_grad(grad_out, y, activation),
        dtype,
    )
    rows_y, rows_grad = y.reshape(-1, 4), grad_out.reshape(-1, 4)
    for actual, expected in zip(gpu.activation_bias_grad(gpu.to_device(rows_grad), gpu.to_device(rows_y), activation),
                                numpy_ref.activation_bias_grad(rows_grad, rows_y, activation)):
        assert_close(actual, expected, dtype)


def test_unknown_activation_is_rejected_by_name():
    with pytest.raises(ValueError, match="swish"):
        gpu.bias_activation(gpu.zeros((2, 2), np.float32), None, "swish")


@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_and_its_gradient_match_the_reference(dtype):
    z, grad_out = random_array(4, (3, 7), dtype), random_array(5, (3, 7), dtype)
    assert_close(gpu.leaky_relu(gpu.to_device(z), 0.2), numpy_ref.leaky_relu(z, 0.2), dtype)
    assert_close(
        gpu.leaky_relu_grad(gpu.to_device(grad_out), gpu.to_device(z), 0.2),
        numpy_ref.leaky_relu_grad(grad_out, z, 0.2),
        dtype,
    )


@FEW
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.sampled_from(DTYPES), seeds)
def test_softmax_and_its_gradient_match_the_reference_over_the_last_axis(shape, dtype, seed):
    z, grad_out = random_array(seed, shape, dtype, scale=10.0), random_array(seed + 1, shape, dtype)
    y = numpy_ref.softmax(z)
    assert_close(gpu.softmax(gpu.to_device(z)), y, dtype)
    assert_close(
        gpu.softmax_grad(gpu.to_device(grad_out), gpu.to_device(y)), numpy_ref.softmax_grad(grad_out, y), dtype
    )


# ------------------------------------------------------------------------------------------- losses


@FEW
@given(st.integers(1, 6), st.integers(2, 5), st.sampled_from([1.0, 1e3]), st.sampled_from(DTYPES), seeds)
def test_fused_softmax_cross_entropy_matches_the_reference_even_for_huge_logits(n, k, scale, dtype, seed):
    logits = random_array(seed, (n, k), dtype, scale=scale)
    targets = np.eye(k, dtype=dtype)[np.random.default_rng(seed).integers(0, k, n)]
    losses, grad = numpy_ref.softmax_cross_entropy(logits, targets)
    gpu_losses, gpu_grad = gpu.softmax_cross_entropy(gpu.to_device(logits), gpu.to_device(targets))
    # the loss is a difference of terms of size `scale`: allow float rounding relative to that
    np.testing.assert_allclose(gpu.to_host(gpu_losses), losses, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * scale)
    assert_close(gpu_grad, grad, dtype)


# ----------------------------------------------------------------------------------- regularisation


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the simulator's uint64 wrap-around
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate, seed", [(0.25, 7), (0.5, 2**31 - 1)])
def test_dropout_gives_the_reference_mask_exactly(dtype, rate, seed):
    x = np.random.default_rng(0).standard_normal((10, 24)).astype(dtype)
    y, mask = gpu.dropout(gpu.to_device(x), rate, seed)
    expected_y, expected_mask = numpy_ref.dropout(x, rate, seed)
    np.testing.assert_array_equal(gpu.to_host(mask), expected_mask)
    np.testing.assert_array_equal(gpu.to_host(y), expected_y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (0.01, 0.0), (0.0, 0.02), (0.01, 0.02)])
def test_regularize_grad_in_place_and_the_penalty_match_the_reference(dtype, l1, l2):
    param, grad = random_array(6, (5, 3), dtype), random_array(7, (5, 3), dtype)
    param[0, 0] = 0  # sign(0) == 0
    expected = grad.copy()
    numpy_ref.regularize_grad(expected, param, l1, l2)
    gpu_grad = gpu.to_device(grad)
    gpu.regularize_grad(gpu_grad, gpu.to_device(param), l1, l2)
    assert_close(gpu_grad, expected, dtype)
    penalty = gpu.regularization_penalty(gpu.to_device(param), l1, l2)
    assert isinstance(penalty, float)
    assert penalty == pytest.approx(numpy_ref.regularization_penalty(param, l1, l2), rel=1e-5, abs=1e-12)


# ---------------------------------------------------------------------------------- optimizer steps


def two_steps(update, arrays, **hyper):
    """Apply ``update`` twice with NumPy and with the GPU kernels; return both sets of states."""
    host = [a.copy() for a in arrays]
    device = [gpu.to_device(a) for a in arrays]
    for step in (1, 2):
        step_args = {"step": step} if update == "adam_update" else {}
        getattr(numpy_ref, update)(*host, **hyper, **step_args)
        getattr(gpu, update)(*device, **hyper, **step_args)
    return host, device


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "update, n_arrays, hyper",
    [
        ("sgd_update", 3, dict(lr=0.1, momentum=0.0, nesterov=False)),
        ("sgd_update", 3, dict(lr=0.1, momentum=0.9, nesterov=False)),
        ("sgd_update", 3, dict(lr=0.1, momentum=0.9, nesterov=True)),
        ("adam_update", 4, dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7)),
        ("rmsprop_update", 3, dict(lr=0.01, rho=0.9, epsilon=1e-7)),
    ],
)
def test_optimizer_updates_in_place_match_the_reference_over_two_steps(dtype, update, n_arrays, hyper):
    param, grad = random_array(8, (4, 3), dtype), random_array(9, (4, 3), dtype)
    states = [np.abs(random_array(10 + i, (4, 3), dtype)) for i in range(n_arrays - 2)]
    host, device = two_steps(update, [param, grad, *states], **hyper)
    for expected, result in zip(host, device):
        assert_close(result, expected, dtype)
    assert not np.array_equal(host[0], param)  # the step moved the weights


# --------------------------------------------------------------------------------- transfers, setup


def test_transfer_counter_counts_copies_and_scalar_reductions_but_not_kernels():
    x = np.ones((8, 4), np.float32)
    gpu.reset_transfer_count()
    on_device = gpu.to_device(x)
    hidden = gpu.bias_activation(gpu.matmul(on_device, gpu.to_device(np.ones((4, 2), np.float32))), None, "relu")
    gpu.bias_grad(hidden)
    assert gpu.transfer_count() == 2
    gpu.all_finite(hidden)
    gpu.regularization_penalty(hidden, 0.1, 0.1)
    assert gpu.transfer_count() == 4
    gpu.to_host(hidden)
    assert gpu.transfer_count() == 5
    gpu.reset_transfer_count()
    assert gpu.transfer_count() == 0


def test_check_available_accepts_the_simulator_or_a_gpu():
    gpu.check_available()


def test_check_available_explains_how_to_get_a_device_when_there_is_none(monkeypatch):
    monkeypatch.setattr(gpu, "ON_SIMULATOR", False)
    monkeypatch.setattr(gpu.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError) as error:
        gpu.check_available()
    assert "NUMBA_ENABLE_CUDASIM=1" in str(error.value) and "minidl[gpu]" in str(error.value)


# ------------------------------------------------------------------------- batch normalization


def channel_vectors(seed, channels, dtype):
    """``(mean, variance, gamma, beta)`` ``(C,)``, the variance positive."""
    rng = np.random.default_rng(seed)
    mean, gamma, beta = (rng.standard_normal(channels).astype(dtype) for _ in range(3))
    return mean, rng.uniform(0.1, 2.0, channels).astype(dtype), gamma, beta


@FEW
@given(st.integers(1, 600), st.integers(1, 4), st.sampled_from(DTYPES), seeds)
@example(600, 3, np.float32, 0)  # more rows than one fold pass handles
def test_channel_moments_match_the_reference(rows, channels, dtype, seed):
    x = random_array(seed, (rows, channels), dtype, scale=3.0) + dtype(1)
    for actual, expected in zip(gpu.channel_moments(gpu.to_device(x)), numpy_ref.channel_moments(x)):
        assert_close(actual, expected, dtype)


@FEW
@given(st.integers(1, 40), st.integers(1, 4), st.sampled_from(DTYPES), st.booleans(), seeds)
def test_batch_norm_and_its_backward_match_the_reference(rows, channels, dtype, batch_statistics, seed):
    x, grad_out = random_array(seed, (rows, channels), dtype), random_array(seed + 1, (rows, channels), dtype)
    mean, variance, gamma, beta = channel_vectors(seed, channels, dtype)
    on_device = [gpu.to_device(a) for a in (x, mean, variance, gamma, beta)]
    assert_close(gpu.batch_norm(*on_device, 1e-3), numpy_ref.batch_norm(x, mean, variance, gamma, beta, 1e-3),
                 dtype)
    actual = gpu.batch_norm_backward(gpu.to_device(grad_out), *on_device[:4], 1e-3, batch_statistics)
    expected = numpy_ref.batch_norm_backward(grad_out, x, mean, variance, gamma, 1e-3, batch_statistics)
    for actual_part, expected_part in zip(actual, expected):
        host = gpu.to_host(actual_part)
        assert host.dtype == dtype
        np.testing.assert_allclose(host, expected_part, rtol=1e-4, atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_moving_average_update_matches_the_reference_in_place(dtype):
    moving, value = random_array(0, (5,), dtype), random_array(1, (5,), dtype)
    expected = moving.copy()
    numpy_ref.moving_average_update(expected, value, 0.9)
    on_device = gpu.to_device(moving)
    gpu.moving_average_update(on_device, gpu.to_device(value), 0.9)
    assert_close(on_device, expected, dtype)


# ------------------------------------------------------------------------ padding and rescaling


@FEW
@given(st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)),
       st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))),
       st.sampled_from(DTYPES), seeds)
def test_zero_pad_and_its_grad_match_the_reference(shape, pads, dtype, seed):
    x = random_array(seed, shape, dtype)
    padded = gpu.zero_pad(gpu.to_device(x), pads)
    expected = numpy_ref.zero_pad(x, pads)
    assert_close(padded, expected, dtype)
    grad_out = random_array(seed + 1, expected.shape, dtype)
    assert_close(gpu.zero_pad_grad(gpu.to_device(grad_out), pads), numpy_ref.zero_pad_grad(grad_out, pads), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_shift_matches_the_reference(dtype):
    x = random_array(0, (2, 3, 4), dtype)
    assert_close(gpu.scale_shift(gpu.to_device(x), 1 / 255, -0.5), numpy_ref.scale_shift(x, 1 / 255, -0.5), dtype)
