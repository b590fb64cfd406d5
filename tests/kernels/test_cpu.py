"""The Numba kernels agree with the NumPy reference on random shapes, windows, strides, paddings, dtypes."""

import re
from types import SimpleNamespace

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minidl.kernels import cpu
from minidl.kernels import numpy_ref as ref
from minidl.kernels.winograd import WINOGRAD_TILES
from tests.kernels.strategies import window_problems, winograd_problems

DTYPES = (np.float32, np.float64)
SETTINGS = settings(max_examples=25, deadline=None)


def assert_close(actual, expected):
    """Equal shapes and dtypes, values within the dtype's rounding."""
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    tolerance = 2e-5 if actual.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


@st.composite
def windowed_images(draw):
    """``(x, window, strides, pads)``: a random NHWC image batch and a window that fits it."""
    x_shape, window, strides, pads, _ = draw(window_problems(max_channels=4))
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(draw(st.sampled_from(DTYPES)))
    return x, window, strides, pads


@st.composite
def arrays(draw, min_dims=1, max_dims=4):
    """A random float32 or float64 array of 1 to 4 small dimensions."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=min_dims, max_size=max_dims)))
    return np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(shape).astype(dtype)


needs_blas = pytest.mark.skipif(cpu.blas.find() is None, reason="no BLAS library of kernels.blas's flavours")


def like(x, seed=1):
    """Another random array of the shape and dtype of ``x``."""
    return np.random.default_rng(seed).standard_normal(x.shape).astype(x.dtype)


# ------------------------------------------------------------------------------------ convolution


@SETTINGS
@given(windowed_images())
def test_im2col_matches_reference(case):
    x, window, strides, pads = case
    assert_close(cpu.im2col(x, window, strides, pads), ref.im2col(x, window, strides, pads))


@SETTINGS
@given(windowed_images())
def test_col2im_matches_reference_and_is_a_fresh_contiguous_array(case):
    x, window, strides, pads = case
    cols = like(ref.im2col(x, window, strides, pads))
    grad_x = cpu.col2im(cols, x.shape, window, strides, pads)
    assert_close(grad_x, ref.col2im(cols, x.shape, window, strides, pads))
    assert grad_x.flags.c_contiguous and grad_x.base is None


def test_col2im_names_the_expected_cols_shape():
    with pytest.raises(ValueError, match=r"col2im: cols must have shape \(18, 4\)"):
        cpu.col2im(np.zeros((5, 4)), (2, 4, 4, 1), (2, 2), (1, 1), ((0, 0), (0, 0)))


@st.composite
def conv_cases(draw):
    """``(x, kernel_matrix, grad_out, window, strides, pads)`` of a convolution: 1-3 input channels
    (the transposed unfold), 4-5 or 64+ (rows), 1-5 filters, float32 or float64."""
    x_shape, window, strides, pads, out_hw = draw(window_problems(max_channels=5))
    channels = draw(st.sampled_from([x_shape[3], 64, 67]))
    filters, dtype = draw(st.integers(1, 5)), draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((*x_shape[:3], channels)).astype(dtype)
    kernel_matrix = rng.standard_normal((window[0] * window[1] * channels, filters)).astype(dtype)
    grad_out = rng.standard_normal((x_shape[0], *out_hw, filters)).astype(dtype)
    return x, kernel_matrix, grad_out, window, strides, pads


def assert_conv_by_image_matches_reference(case):
    x, kernel_matrix, grad_out, window, strides, pads = case
    tolerance = 1e-4 if x.dtype == np.float32 else 1e-12  # sums over up to 16 * 67 terms
    for actual, expected in (
        (cpu.conv_by_image(x, kernel_matrix, window, strides, pads),
         ref.conv_by_image(x, kernel_matrix, window, strides, pads)),
        (cpu.conv_by_image_kernel_grad(x, grad_out, window, strides, pads),
         ref.conv_by_image_kernel_grad(x, grad_out, window, strides, pads)),
        (cpu.conv_by_image_input_grad(grad_out, kernel_matrix, x.shape, window, strides, pads),
         ref.conv_by_image_input_grad(grad_out, kernel_matrix, x.shape, window, strides, pads)),
    ):
        assert actual.shape == expected.shape and actual.dtype == expected.dtype and actual.flags.c_contiguous
        np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


@needs_blas
@SETTINGS
@given(conv_cases(), st.integers(1, 3))
def test_conv_by_image_and_its_gradients_match_the_reference_on_any_thread_count(case, threads):
    """Image by image on the BLAS library, with fewer threads than images, as many, or more."""
    previous = numba.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "GEMM_LIBRARY", cpu.blas.find())
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            assert_conv_by_image_matches_reference(case)
        finally:
            numba.set_num_threads(previous)


@needs_blas
@SETTINGS
@given(conv_cases(), st.integers(1, 5))
def test_conv_by_image_in_gemm_calls_of_a_few_pixels_matches_the_reference(case, pixels_per_call):
    """A library whose small-matrix kernels take the products of only a few pixels: each image's
    forward and kernel-gradient products run in calls of that many, the last one shorter."""
    x, kernel_matrix, grad_out = case[:3]
    pixels = grad_out.shape[1] * grad_out.shape[2]
    library = cpu.blas.find()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "GEMM_LIBRARY", library)
        patch.setattr(cpu, "MIN_GEMM_PIXELS", 1)
        patch.setattr(library, "small_product", pixels_per_call * kernel_matrix.size)
        assert cpu._pixels_per_gemm(pixels, *kernel_matrix.shape) == min(pixels_per_call, pixels)
        assert_conv_by_image_matches_reference(case)


def test_pixels_per_gemm_fit_the_small_matrix_kernels_where_they_take_enough():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "GEMM_LIBRARY", SimpleNamespace(small_product=10**6))
        assert cpu._pixels_per_gemm(1024, 75, 16) == 833  # a strided 3-channel first conv: 1.2M multiply-adds
        assert cpu._pixels_per_gemm(1024, 27, 32) == 1024  # 0.88M: taken whole
        assert cpu._pixels_per_gemm(1024, 288, 32) == 108  # a 32x32x32 3x3 conv with 32 filters
        assert cpu._pixels_per_gemm(1024, 576, 64) == 1024  # 27 pixels' worth: fewer than MIN_GEMM_PIXELS
        patch.setattr(cpu, "GEMM_LIBRARY", SimpleNamespace(small_product=0))
        assert cpu._pixels_per_gemm(1024, 75, 16) == 1024


@SETTINGS
@given(conv_cases())
def test_conv_by_image_without_a_blas_library_computes_im2cols_products(case):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "GEMM_LIBRARY", None)
        assert_conv_by_image_matches_reference(case)


def test_conv_by_image_names_a_kernel_matrix_or_gradient_of_the_wrong_shape():
    x, pads = np.zeros((2, 6, 6, 3), np.float32), ((0, 0), (0, 0))
    with pytest.raises(ValueError, match=r"conv_by_image: kernel_matrix must have 27 rows .*got shape \(12, 4\)"):
        cpu.conv_by_image(x, np.zeros((12, 4), np.float32), (3, 3), (1, 1), pads)
    with pytest.raises(ValueError, match=r"conv_by_image_kernel_grad: grad_out must have shape \(2, 4, 4, 4\)"):
        cpu.conv_by_image_kernel_grad(x, np.zeros((2, 5, 5, 4), np.float32), (3, 3), (1, 1), pads)
    with pytest.raises(ValueError, match=r"conv_by_image_input_grad: grad_out must have shape \(2, 4, 4, 4\)"):
        cpu.conv_by_image_input_grad(np.zeros((2, 4, 4, 3), np.float32), np.zeros((27, 4), np.float32), x.shape,
                                     (3, 3), (1, 1), pads)


@st.composite
def winograd_images(draw):
    """``(x, pads, (OH, OW))``: a random image batch and the padding of a 3x3 stride-1 convolution."""
    x_shape, _, _, pads, out_hw = draw(winograd_problems())
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(draw(st.sampled_from(DTYPES)))
    return x, pads, out_hw


def assert_close_to_size(actual, expected, tile):
    """:func:`assert_close` with the float32 rounding of F(tile x tile, 3x3)'s larger coefficients,
    judged against the values' size (F(4x4)'s transforms multiply by up to 8 and 25)."""
    if actual.dtype == np.float32 and tile == 4:
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5 * max(1.0, float(np.abs(expected).max())))
    else:
        assert_close(actual, expected)


@SETTINGS
@given(winograd_images(), st.integers(1, 5), st.sampled_from(WINOGRAD_TILES))
def test_winograd_transforms_and_their_grads_match_reference(case, c_out, tile):
    x, pads, out_hw = case
    positions = (tile + 2) ** 2
    tiles = cpu.winograd_tiles(x, pads, tile)
    assert_close_to_size(tiles, ref.winograd_tiles(x, pads, tile), tile)
    grad_tiles = like(tiles)
    assert_close_to_size(cpu.winograd_tiles_grad(grad_tiles, x.shape, pads),
                         ref.winograd_tiles_grad(grad_tiles, x.shape, pads), tile)
    products = like(np.empty((positions, tiles.shape[1], c_out), x.dtype))
    out_shape = (x.shape[0], *out_hw, c_out)
    assert_close_to_size(cpu.winograd_outputs(products, out_shape), ref.winograd_outputs(products, out_shape), tile)
    grad_out = like(np.empty(out_shape, x.dtype), seed=2)
    assert_close_to_size(cpu.winograd_outputs_grad(grad_out, tile), ref.winograd_outputs_grad(grad_out, tile), tile)
    kernel = like(np.empty((3, 3, x.shape[3], c_out), x.dtype), seed=3)
    assert_close_to_size(cpu.winograd_kernel(kernel, tile), ref.winograd_kernel(kernel, tile), tile)
    grad_kernel_tiles = like(np.empty((positions, x.shape[3], c_out), x.dtype), seed=4)
    assert_close_to_size(cpu.winograd_kernel_grad(grad_kernel_tiles), ref.winograd_kernel_grad(grad_kernel_tiles), tile)


def assert_winograd_by_image_matches_reference(x, pads, c_out, tile):
    """:func:`cpu.winograd_by_image`, its kernel gradient alone and both its gradients against
    ``numpy_ref``'s compositions."""
    kernel_tiles = like(np.empty(((tile + 2) ** 2, x.shape[3], c_out), x.dtype), seed=3)
    z = ref.winograd_by_image(x, kernel_tiles, pads)
    grad_out = like(z, seed=2)
    grad_kernel_tiles = ref.winograd_by_image_kernel_grad(x, grad_out, pads, tile)
    both_grads = cpu.winograd_by_image_grads(x, grad_out, kernel_tiles, pads)
    for actual, expected in (
        (cpu.winograd_by_image(x, kernel_tiles, pads), z),
        (cpu.winograd_by_image_kernel_grad(x, grad_out, pads, tile), grad_kernel_tiles),
        *zip(both_grads, ref.winograd_by_image_grads(x, grad_out, kernel_tiles, pads)),
    ):
        assert actual.flags.c_contiguous
        assert_close_to_size(actual, expected, tile)


@needs_blas
@SETTINGS
@given(winograd_images(), st.integers(1, 5), st.sampled_from(WINOGRAD_TILES), st.integers(1, 3))
def test_winograd_by_image_and_its_gradients_match_the_reference_on_any_thread_count(case, c_out, tile, threads):
    """Image by image on the BLAS library, with fewer threads than images, as many, or more."""
    x, pads, _ = case
    previous = numba.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "GEMM_LIBRARY", cpu.blas.find())
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            assert_winograd_by_image_matches_reference(x, pads, c_out, tile)
        finally:
            numba.set_num_threads(previous)


@needs_blas
@SETTINGS
@given(winograd_images(), st.integers(1, 5), st.sampled_from(WINOGRAD_TILES), st.integers(1, 3), st.integers(1, 3))
def test_winograd_by_image_in_bands_of_tile_rows_matches_the_reference(case, c_out, tile, rows_per_band, threads):
    """Images whose tiles and products pass the scratch bound run in bands of tile rows, the last one
    shorter (a bound of ``rows_per_band`` rows' worth), the bands shared among 1-3 threads; with the
    input gradient's tiles as well, the bands are thinner and each adds its rows onto the image's."""
    x, pads, _ = case
    (tiles_h, tiles_w), _ = ref.winograd_tile_grid(x.shape, pads, tile)
    row_bytes = (tile + 2) ** 2 * tiles_w * (x.shape[3] + c_out) * x.itemsize
    previous = numba.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "GEMM_LIBRARY", cpu.blas.find())
        patch.setattr(cpu, "IMAGE_SCRATCH_BYTES", rows_per_band * row_bytes)
        bands = -(-tiles_h // rows_per_band)
        assert cpu._tile_rows_per_band(tile, tiles_h, tiles_w, x.shape[3] + c_out, x.itemsize) == -(-tiles_h // bands)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            assert_winograd_by_image_matches_reference(x, pads, c_out, tile)
        finally:
            numba.set_num_threads(previous)


def test_tile_rows_per_band_even_out_the_bands_and_take_whole_images_that_fit():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "IMAGE_SCRATCH_BYTES", 2**20)
        # the seed's 224x224 network's 111x111x32 conv, 64 filters: 387 kB of F(4x4) tiles and products a row
        assert cpu._tile_rows_per_band(4, 28, 28, 32 + 64, 4) == 2
        # the residual network's 32x32x32 convs: 590 kB for a whole image
        assert cpu._tile_rows_per_band(4, 8, 8, 32 + 32, 4) == 8
        patch.setattr(cpu, "IMAGE_SCRATCH_BYTES", 400 * 1024)
        assert cpu._tile_rows_per_band(4, 8, 8, 32 + 32, 4) == 4  # two bands of four, not 5 + 3
        patch.setattr(cpu, "IMAGE_SCRATCH_BYTES", 1)
        assert cpu._tile_rows_per_band(4, 8, 8, 32 + 32, 4) == 1


@SETTINGS
@given(winograd_images(), st.integers(1, 3), st.sampled_from(WINOGRAD_TILES))
def test_winograd_by_image_without_a_blas_library_runs_the_batch_transforms(case, c_out, tile):
    x, pads, _ = case
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "GEMM_LIBRARY", None)
        assert_winograd_by_image_matches_reference(x, pads, c_out, tile)


def test_winograd_by_image_names_kernel_tiles_or_a_gradient_of_the_wrong_shape():
    x, pads = np.zeros((2, 6, 6, 3), np.float32), ((0, 0), (0, 0))
    with pytest.raises(ValueError, match=r"winograd_by_image: kernel_tiles must be \(P, 3, F\) .*got shape "
                                         r"\(16, 4, 2\)"):
        cpu.winograd_by_image(x, np.zeros((16, 4, 2), np.float32), pads)
    with pytest.raises(ValueError, match=r"positions along their first axis, got 25"):
        cpu.winograd_by_image(x, np.zeros((25, 3, 2), np.float32), pads)
    with pytest.raises(ValueError, match=r"winograd_by_image_kernel_grad: grad_out must have shape \(2, 4, 4, 2\)"):
        cpu.winograd_by_image_kernel_grad(x, np.zeros((2, 5, 5, 2), np.float32), pads, 2)
    with pytest.raises(ValueError, match=r"winograd_by_image_grads: grad_out must have shape \(2, 4, 4, 2\)"):
        cpu.winograd_by_image_grads(x, np.zeros((2, 5, 5, 2), np.float32), np.zeros((16, 3, 2), np.float32), pads)
    with pytest.raises(ValueError, match=r"winograd_by_image_grads: kernel_tiles must be \(P, 3, F\)"):
        cpu.winograd_by_image_grads(x, np.zeros((2, 4, 4, 2), np.float32), np.zeros((16, 4, 2), np.float32), pads)


def test_winograd_grads_name_the_shape_they_expected():
    with pytest.raises(ValueError, match=r"winograd_tiles_grad: grad_tiles must have shape \(16, 8, 3\)"):
        cpu.winograd_tiles_grad(np.zeros((16, 9, 3)), (2, 6, 6, 3), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match=r"winograd_outputs: products must have shape \(16, 8, 3\)"):
        cpu.winograd_outputs(np.zeros((16, 9, 3)), (2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"winograd_outputs: products must have shape \(36, 2, 3\)"):
        cpu.winograd_outputs(np.zeros((36, 9, 3)), (2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"positions along their first axis, got 25"):
        cpu.winograd_tiles_grad(np.zeros((25, 8, 3)), (2, 6, 6, 3), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match=r"Winograd tile must be one of \(2, 4\).*got 3"):
        cpu.winograd_tiles(np.zeros((1, 6, 6, 1)), ((0, 0), (0, 0)), 3)


# ---------------------------------------------------------------------------------------- pooling


@SETTINGS
@given(windowed_images())
def test_maxpool_forward_matches_reference_values_and_argmax_and_maxpool_values_its_values(case):
    x, window, strides, pads = case
    out, argmax = cpu.maxpool_forward(x, window, strides, pads)
    expected_out, expected_argmax = ref.maxpool_forward(x, window, strides, pads)
    assert_close(out, expected_out)
    assert argmax.dtype == np.int32
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(cpu.maxpool_values(x, window, strides, pads), out)


@SETTINGS
@given(windowed_images())
def test_maxpool_forward_breaks_ties_like_numpy_argmax(case):
    x, window, strides, pads = case
    ties = np.round(x).clip(-1, 1)  # few distinct values: many equal maxima, -1 and 0 and 1
    ties[..., 0] = -np.inf  # whole windows of -inf: index 0 even where it is padding
    _, argmax = cpu.maxpool_forward(ties, window, strides, pads)
    np.testing.assert_array_equal(argmax, ref.maxpool_forward(ties, window, strides, pads)[1])


def test_maxpool_forward_and_values_let_the_first_nan_win_like_numpy_argmax():
    x = np.array([1.0, np.nan, 5.0, np.nan], dtype=np.float32).reshape(1, 2, 2, 1)
    out, argmax = cpu.maxpool_forward(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
    assert np.isnan(out[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 1
    assert np.isnan(cpu.maxpool_values(x, (2, 2), (2, 2), ((0, 0), (0, 0)))[0, 0, 0, 0])


@SETTINGS
@given(windowed_images())
def test_maxpool_backward_matches_reference(case):
    x, window, strides, pads = case
    out, argmax = ref.maxpool_forward(x, window, strides, pads)
    grad_out = like(out)
    assert_close(
        cpu.maxpool_backward(grad_out, argmax, x.shape, window, strides, pads),
        ref.maxpool_backward(grad_out, argmax, x.shape, window, strides, pads),
    )


@st.composite
def gray_conv_cases(draw):
    """One-channel images (odd and even sizes from 4), a 3x3 kernel of 1 to 10 filters (vector
    remainders included), float32 or float64."""
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x_shape = (draw(st.integers(1, 3)), draw(st.integers(4, 11)), draw(st.integers(4, 11)), 1)
    kernel = rng.standard_normal((3, 3, 1, draw(st.integers(1, 10)))).astype(dtype)
    return rng.standard_normal(x_shape).astype(dtype), kernel


@SETTINGS
@given(gray_conv_cases())
def test_conv3x3_maxpool_its_values_and_its_kernel_grad_match_reference(case):
    x, kernel = case
    pooled, argmax = cpu.conv3x3_maxpool(x, kernel)
    expected, expected_argmax = ref.conv3x3_maxpool(x, kernel)
    assert_close(pooled, expected)
    assert argmax.dtype == np.int32
    np.testing.assert_array_equal(argmax, expected_argmax)
    assert_close(cpu.conv3x3_maxpool_values(x, kernel), expected)
    grad_pooled = like(pooled)
    assert_close(cpu.conv3x3_maxpool_kernel_grad(x, grad_pooled, expected_argmax),
                 ref.conv3x3_maxpool_kernel_grad(x, grad_pooled, expected_argmax))


@SETTINGS
@given(gray_conv_cases())
def test_conv3x3_maxpool_breaks_ties_and_lets_the_first_nan_win_like_numpy_argmax(case):
    x, kernel = case
    x, kernel = np.round(x).clip(-1, 1), np.round(kernel)  # small integers: exact sums, many ties
    x[0, 0, 0, 0] = np.nan  # the first window's top-left output is NaN
    pooled, argmax = cpu.conv3x3_maxpool(x, kernel)
    expected, expected_argmax = ref.conv3x3_maxpool(x, kernel)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(pooled, expected)  # NaN where the reference has NaN
    np.testing.assert_array_equal(cpu.conv3x3_maxpool_values(x, kernel), expected)


@pytest.mark.parametrize("module", [cpu, ref], ids=["cpu", "numpy_ref"])
def test_conv3x3_maxpool_names_the_shapes_it_refuses(module):
    with pytest.raises(ValueError, match=r"conv3x3_maxpool: x must be \(N, H, W, 1\) .*got \(2, 6, 6, 3\)"):
        module.conv3x3_maxpool(np.zeros((2, 6, 6, 3)), np.zeros((3, 3, 1, 4)))
    with pytest.raises(ValueError, match=r"conv3x3_maxpool_values: kernel must be \(3, 3, 1, F\), got \(5, 5, 1, 4\)"):
        module.conv3x3_maxpool_values(np.zeros((2, 6, 6, 1)), np.zeros((5, 5, 1, 4)))
    with pytest.raises(ValueError, match=r"conv3x3_maxpool_kernel_grad: argmax must have shape \(2, 2, 2, 4\) "
                                         r"for images \(2, 6, 6, 1\), got \(2, 3, 3, 4\)"):
        module.conv3x3_maxpool_kernel_grad(np.zeros((2, 6, 6, 1)), np.zeros((2, 2, 2, 4)),
                                           np.zeros((2, 3, 3, 4), np.int32))


@SETTINGS
@given(windowed_images())
def test_avgpool_forward_matches_reference(case):
    x, window, strides, pads = case
    assert_close(cpu.avgpool_forward(x, window, strides, pads), ref.avgpool_forward(x, window, strides, pads))


@SETTINGS
@given(windowed_images())
def test_avgpool_backward_matches_reference(case):
    x, window, strides, pads = case
    grad_out = like(ref.avgpool_forward(x, window, strides, pads))
    assert_close(
        cpu.avgpool_backward(grad_out, x.shape, window, strides, pads),
        ref.avgpool_backward(grad_out, x.shape, window, strides, pads),
    )


@SETTINGS
@given(windowed_images(), st.sampled_from(ref.ACTIVATIONS), st.booleans())
def test_bias_activation_under_average_pooling_matches_reference(case, activation, with_bias):
    z, window, strides, pads = case
    bias = like(z[0, 0, 0], seed=2) if with_bias else None
    y, pooled = cpu.bias_activation_avgpool(z, bias, activation, window, strides, pads)
    expected_y, expected_pooled = ref.bias_activation_avgpool(z, bias, activation, window, strides, pads)
    assert_close(y, expected_y)
    assert_close(pooled, expected_pooled)
    grad_pooled = like(expected_pooled, seed=3)
    grad_z, grad_bias = cpu.avgpool_activation_grad(grad_pooled, expected_y, activation, window, strides, pads)
    expected_grad_z, expected_grad_bias = ref.avgpool_activation_grad(grad_pooled, expected_y, activation, window,
                                                                      strides, pads)
    assert_close(grad_z, expected_grad_z)
    tolerance = 2e-5 if z.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(grad_bias, expected_grad_bias, rtol=tolerance, atol=tolerance * grad_z[..., 0].size)


@pytest.mark.parametrize("module", [cpu, ref], ids=["cpu", "numpy_ref"])
def test_activation_under_average_pooling_names_the_shapes_it_refuses(module):
    window, strides, valid = (2, 2), (2, 2), ((0, 0), (0, 0))
    with pytest.raises(ValueError, match=r"bias_activation_avgpool: bias must have shape \(3,\), got \(2,\)"):
        module.bias_activation_avgpool(np.zeros((1, 4, 4, 3)), np.zeros(2), "relu", window, strides, valid)
    with pytest.raises(ValueError, match=r"avgpool_activation_grad: grad_pooled must have shape \(1, 2, 2, 3\) "
                                         r"for y of shape \(1, 4, 4, 3\), got \(1, 3, 3, 3\)"):
        module.avgpool_activation_grad(np.zeros((1, 3, 3, 3)), np.zeros((1, 4, 4, 3)), "relu", window, strides, valid)


# ------------------------------------------------------------------------------------ activations


@SETTINGS
@given(arrays(), st.sampled_from(ref.ACTIVATIONS), st.booleans())
def test_bias_activation_matches_reference_with_and_without_bias(z, activation, with_bias):
    bias = like(z[(0,) * (z.ndim - 1)], seed=2) if with_bias else None
    y = cpu.bias_activation(z, bias, activation)
    assert_close(y, ref.bias_activation(z, bias, activation))
    assert not np.shares_memory(y, z)


def test_bias_activation_is_stable_for_extreme_inputs():
    z = np.array([[-1e4, -100.0, 0.0, 100.0, 1e4]], dtype=np.float32)
    for activation in ref.ACTIVATIONS:
        assert_close(cpu.bias_activation(z, None, activation), ref.bias_activation(z, None, activation))


def test_float32_tanh_is_within_6_ulp_of_the_correctly_rounded_tanh():
    magnitudes = np.arange(0, np.float32(9.5).view(np.uint32), 512, dtype=np.uint32).view(np.float32)
    values = np.concatenate([magnitudes, -magnitudes])
    y = cpu.bias_activation(values.reshape(-1, 2), None, "tanh").ravel()
    exact = np.tanh(values.astype(np.float64))
    ulps = np.abs(y - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 6
    assert np.abs(y).max() <= 1
    np.testing.assert_array_equal(y[len(magnitudes):], -y[:len(magnitudes)])


def test_float32_tanh_keeps_nan_signed_zeros_and_saturates_to_one():
    z = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e-45]], dtype=np.float32)
    y = cpu.bias_activation(z, None, "tanh")[0]
    assert np.isnan(y[0])
    np.testing.assert_array_equal(y[1:], np.array([1, -1, 0, 0, 1, -1, 1e-45], dtype=np.float32))
    assert np.signbit(y[4]) and not np.signbit(y[3])


def test_float32_sigmoid_is_within_4_ulp_of_the_correctly_rounded_sigmoid():
    magnitudes = np.arange(0, np.float32(87).view(np.uint32), 512, dtype=np.uint32).view(np.float32)
    values = np.concatenate([magnitudes, -magnitudes])
    y = cpu.bias_activation(values.reshape(-1, 2), None, "sigmoid").ravel()
    exact = 1 / (1 + np.exp(-values.astype(np.float64)))
    ulps = np.abs(y - exact) / np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 4
    assert y.min() > 0 and y.max() <= 1


def test_float32_sigmoid_keeps_nan_and_saturates_to_zero_and_one():
    z = np.array([[np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0]], dtype=np.float32)
    y = cpu.bias_activation(z, None, "sigmoid")[0]
    assert np.isnan(y[0])
    np.testing.assert_array_equal(y[1:], np.array([1, 0, 0.5, 1, 0], dtype=np.float32))


def _bias_activation_kernel_arguments():
    z = np.zeros((8, 16), dtype=np.float32)
    return z, np.zeros(16, dtype=np.float32), cpu.TANH, 4, np.empty_like(z)


def _bias_activation_avgpool_kernel_arguments():
    z = np.zeros((2, 4, 4, 16), dtype=np.float32)
    pooled = np.empty((2, 2, 2, 16), dtype=np.float32)
    return z, np.zeros(16, dtype=np.float32), cpu.TANH, 2, 2, 2, 2, 0, 0, np.empty_like(z), pooled


@pytest.mark.parametrize("kernel, arguments", [
    (cpu._bias_activation_kernel, _bias_activation_kernel_arguments),
    (cpu._bias_activation_avgpool_kernel, _bias_activation_avgpool_kernel_arguments),
], ids=["bias_activation", "bias_activation_avgpool"])
def test_float32_bias_activation_loops_compile_to_vector_divisions(kernel, arguments):
    """Tanh's and sigmoid's divisions run on vectors of float32.  With the activation tested per
    element, the fused avgpool kernel's loop compiled to scalar code, 4-13x slower with the same
    results.  Compiled afresh here: Numba does not show the code of a cached compilation."""
    fresh = numba.njit(error_model="numpy", parallel=True)(kernel.py_func)
    fresh(*arguments())
    code = "\n".join(fresh.inspect_llvm().values())
    assert len(re.findall(r"fdiv [^\n]*<\d+ x float>", code)) >= 2


def test_bias_activation_rejects_an_unknown_activation_by_name():
    with pytest.raises(ValueError, match="bias_activation: activation must be one of .* got 'swish'"):
        cpu.bias_activation(np.zeros((2, 3)), None, "swish")


@SETTINGS
@given(arrays(), st.sampled_from(ref.ACTIVATIONS))
def test_activation_grad_matches_reference(z, activation):
    y = ref.bias_activation(z, None, activation)
    grad_out = like(z)
    assert_close(cpu.activation_grad(grad_out, y, activation), ref.activation_grad(grad_out, y, activation))


@SETTINGS
@given(arrays(min_dims=2, max_dims=2), st.sampled_from(ref.ACTIVATIONS), st.integers(1, 40))
def test_activation_bias_grad_matches_reference_in_chunks_of_any_length(z, activation, chunk):
    """Both gradients in one pass, the rows cut into chunks of ``chunk`` values' worth (the last one
    shorter) whose column sums are added up after."""
    y = ref.bias_activation(z, None, activation)
    grad_out = like(z)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "ACTIVATION_CHUNK", chunk)
        grad_z, grad_bias = cpu.activation_bias_grad(grad_out, y, activation)
    expected_grad_z, expected_grad_bias = ref.activation_bias_grad(grad_out, y, activation)
    assert_close(grad_z, expected_grad_z)
    assert_close(grad_bias, expected_grad_bias)


def test_activation_bias_grad_names_arrays_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"activation_bias_grad: grad_out has shape \(2, 3\) but y has shape "
                                         r"\(3, 2\)"):
        cpu.activation_bias_grad(np.zeros((2, 3)), np.zeros((3, 2)), "relu")
    with pytest.raises(ValueError, match=r"activation_bias_grad: grad_out and y must be \(M, C\), got shape "
                                         r"\(2, 3, 4\)"):
        cpu.activation_bias_grad(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), "relu")
    with pytest.raises(ValueError, match="activation_bias_grad: activation must be one of .* got 'swish'"):
        cpu.activation_bias_grad(np.zeros((2, 3)), np.zeros((2, 3)), "swish")


@SETTINGS
@given(arrays(), st.floats(0.0, 1.0))
def test_leaky_relu_and_its_grad_match_reference(z, alpha):
    grad_out = like(z)
    assert_close(cpu.leaky_relu(z, alpha), ref.leaky_relu(z, alpha))
    assert_close(cpu.leaky_relu_grad(grad_out, z, alpha), ref.leaky_relu_grad(grad_out, z, alpha))


@SETTINGS
@given(arrays())
def test_softmax_and_its_grad_match_reference(z):
    z = z * 30  # large logits exercise the max shift
    y = ref.softmax(z)
    grad_out = like(z)
    assert_close(cpu.softmax(z), y)
    assert_close(cpu.softmax_grad(grad_out, y), ref.softmax_grad(grad_out, y))


# ----------------------------------------------------------------------------------------- losses


@SETTINGS
@given(arrays(min_dims=2, max_dims=2), st.booleans())
def test_softmax_cross_entropy_matches_reference(logits, one_hot):
    logits = logits * 50
    rng = np.random.default_rng(3)
    if one_hot:
        targets = np.eye(logits.shape[1], dtype=logits.dtype)[rng.integers(0, logits.shape[1], logits.shape[0])]
    else:
        targets = ref.softmax(like(logits))
    losses, grad = cpu.softmax_cross_entropy(logits, targets)
    expected_losses, expected_grad = ref.softmax_cross_entropy(logits, targets)
    assert_close(losses, expected_losses)
    assert_close(grad, expected_grad)


# --------------------------------------------------------------------------------- linear algebra


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.sampled_from(DTYPES))
def test_matmul_variants_match_reference(m, k, n, dtype):
    rng = np.random.default_rng(m * k * n)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    assert_close(cpu.matmul(a, b), ref.matmul(a, b))
    assert_close(cpu.matmul_tn(np.ascontiguousarray(a.T), b), ref.matmul(a, b))
    assert_close(cpu.matmul_nt(a, np.ascontiguousarray(b.T)), ref.matmul(a, b))


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 20), st.integers(1, 20), st.integers(1, 20), st.sampled_from(DTYPES))
def test_matmul_variants_on_stacks_match_reference(stack, m, k, n, dtype):
    rng = np.random.default_rng(stack * m * k * n)
    a, b = rng.standard_normal((stack, m, k)).astype(dtype), rng.standard_normal((stack, k, n)).astype(dtype)
    assert_close(cpu.matmul(a, b), ref.matmul(a, b))
    assert_close(cpu.matmul_tn(np.ascontiguousarray(np.swapaxes(a, 1, 2)), b), ref.matmul(a, b))
    assert_close(cpu.matmul_nt(a, np.ascontiguousarray(np.swapaxes(b, 1, 2))), ref.matmul(a, b))


@st.composite
def split_products(draw):
    """``(a, b, trans_a, trans_b, expected)``: a stack of products ``op(a) @ op(b)`` in either
    orientation of each operand, and their product by NumPy in float64."""
    dtype = draw(st.sampled_from(DTYPES))
    stack, rows, depth, cols = (draw(st.integers(1, n)) for n in (3, 40, 40, 12))
    trans_a, trans_b = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = rng.standard_normal((stack, depth, rows) if trans_a else (stack, rows, depth)).astype(dtype)
    b = rng.standard_normal((stack, cols, depth) if trans_b else (stack, depth, cols)).astype(dtype)
    op_a, op_b = (np.swapaxes(x, 1, 2) if trans else x for x, trans in ((a, trans_a), (b, trans_b)))
    return a, b, trans_a, trans_b, (op_a.astype(np.float64) @ op_b).astype(dtype)


@needs_blas
@SETTINGS
@given(split_products(), st.integers(1, 4), st.integers(1, 4))
def test_gemm_split_by_output_blocks_matches_numpy(product, row_blocks, col_blocks):
    a, b, trans_a, trans_b, expected = product
    row_blocks, col_blocks = min(row_blocks, expected.shape[1]), min(col_blocks, expected.shape[2])
    c = np.full(expected.shape, np.nan, dtype=a.dtype)
    cpu._gemm_by_blocks(cpu.blas.find().gemms[a.dtype], a, b, trans_a, trans_b, row_blocks, col_blocks, c)
    np.testing.assert_allclose(c, expected, rtol=1e-4 if a.dtype == np.float32 else 1e-12, atol=1e-4)


@needs_blas
@SETTINGS
@given(split_products(), st.integers(1, 5))
def test_gemm_split_by_inner_dimension_adds_up_to_the_product(product, shares):
    a, b, trans_a, trans_b, expected = product
    shares = min(shares, a.shape[1 if trans_a else 2])
    partials = np.full((shares, *expected.shape), np.nan, dtype=a.dtype)
    cpu._gemm_by_depth(cpu.blas.find().gemms[a.dtype], a, b, trans_a, trans_b, partials)
    np.testing.assert_allclose(partials.sum(0), expected, rtol=1e-4 if a.dtype == np.float32 else 1e-12, atol=1e-4)


def test_gemm_parts_split_slices_then_the_longer_output_side_then_the_inner_dimension_and_never_a_small_product():
    assert cpu._gemm_parts(36, 2048, 32, 32, threads=2) == (1, 1, 1)  # whole slices, 18 per thread
    assert cpu._gemm_parts(1, 32768, 27, 32, threads=2) == (2, 1, 1)  # half the rows each
    assert cpu._gemm_parts(1, 32, 784, 512, threads=2) == (1, 2, 1)  # half the columns each
    assert cpu._gemm_parts(1, 27, 32768, 32, threads=2) == (1, 1, 2)  # kernel gradient: half of K each
    assert cpu._gemm_parts(1, 20, 100, 20, threads=2) == (1, 1, 1)  # too small to be worth a split
    assert cpu._gemm_parts(1, 4096, 4096, 4096, threads=1) == (1, 1, 1)


@needs_blas
@SETTINGS
@given(split_products(), st.sampled_from([False, True]))
def test_matmuls_on_the_blas_library_match_numpy_whatever_the_split_and_layout(product, contiguous):
    a, b, trans_a, trans_b, expected = product
    assume(not (trans_a and trans_b))  # no kernel multiplies two transposed operands
    if not contiguous:  # the transposed cols of im2col: the swapped axes are the contiguous ones
        a = np.swapaxes(np.ascontiguousarray(np.swapaxes(a, 1, 2)), 1, 2)
    function = {(False, False): cpu.matmul, (True, False): cpu.matmul_tn, (False, True): cpu.matmul_nt}[
        trans_a, trans_b]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, "GEMM_LIBRARY", cpu.blas.find())
        patch.setattr(cpu, "MIN_SPLIT_WORK", 1)
        patch.setattr(cpu, "MIN_PART_ROWS", 1)
        patch.setattr(cpu, "MIN_PART_DEPTH", 1)
        for operands in ((a, b), (a[0], b[0])):
            c = function(*operands)
            want = expected if operands[0].ndim == 3 else expected[0]
            assert c.shape == want.shape and c.dtype == want.dtype and c.flags.c_contiguous
            np.testing.assert_allclose(c, want, rtol=1e-4 if a.dtype == np.float32 else 1e-12, atol=1e-4)


def test_matmul_names_both_shapes_when_they_do_not_chain():
    with pytest.raises(ValueError, match=r"matmul_tn: cannot multiply shapes \(3, 2\) and \(4, 5\)"):
        cpu.matmul_tn(np.zeros((3, 2)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"matmul: cannot multiply shapes \(2, 3, 4\) and \(3, 4, 5\)"):
        cpu.matmul(np.zeros((2, 3, 4)), np.zeros((3, 4, 5)))


@SETTINGS
@given(arrays(min_dims=2, max_dims=2))
def test_bias_grad_matches_reference(g):
    assert_close(cpu.bias_grad(g), ref.bias_grad(g))


@SETTINGS
@given(arrays(min_dims=2, max_dims=2), st.integers(1, 3000))
def test_bias_grad_sums_long_columns_exactly_when_the_sums_are_representable(g, repeat):
    g = np.tile(np.round(8 * g), (repeat, 1))  # small integers: every partial sum is exact
    np.testing.assert_array_equal(cpu.bias_grad(g), ref.bias_grad(g))


# ------------------------------------------------------------------------------------- arrays


@SETTINGS
@given(arrays())
def test_multiply_and_add_match_reference(a):
    assert_close(cpu.multiply(a, like(a)), ref.multiply(a, like(a)))
    assert_close(cpu.add(a, like(a)), ref.add(a, like(a)))


@SETTINGS
@given(arrays())
def test_accumulate_adds_in_place_like_the_reference(a):
    total, expected = a.copy(), a.copy()
    cpu.accumulate(total, like(a))
    ref.accumulate(expected, like(a))
    assert_close(total, expected)


@pytest.mark.parametrize("backend", [cpu, ref], ids=["cpu", "numpy_ref"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_is_a_writable_contiguous_array_of_its_shape_and_dtype(backend, dtype):
    out = backend.empty((3, 4, 5), dtype)
    assert out.shape == (3, 4, 5) and out.dtype == np.dtype(dtype) and out.flags.c_contiguous
    out[...] = 2.0
    np.testing.assert_array_equal(out, np.full((3, 4, 5), 2.0, dtype))


def test_add_and_accumulate_name_the_shapes_they_refuse():
    with pytest.raises(ValueError, match=r"add: a has shape \(2,\) but b has shape \(3,\)"):
        cpu.add(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"accumulate: total has shape \(2,\) but x has shape \(3,\)"):
        cpu.accumulate(np.zeros(2), np.zeros(3))


@SETTINGS
@given(arrays(), st.sampled_from([None, np.nan, np.inf, -np.inf]))
def test_all_finite_matches_reference(x, bad_value):
    if bad_value is not None:
        x.flat[x.size // 2] = bad_value
    assert cpu.all_finite(x) is ref.all_finite(x)


# --------------------------------------------------------------------------------- regularisation


@SETTINGS
@given(arrays(), st.sampled_from([0.0, 0.1, 0.5, 0.9]), st.integers(0, 2**31 - 1))
def test_dropout_gives_the_reference_mask_exactly_in_one_pass(x, rate, seed):
    y, mask = cpu.dropout(x, rate, seed)
    expected_y, expected_mask = ref.dropout(x, rate, seed)
    assert y.dtype == mask.dtype == x.dtype and y.shape == mask.shape == x.shape
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(y, expected_y)


@SETTINGS
@given(arrays(), st.sampled_from([0.0, 0.01]), st.sampled_from([0.0, 0.02]))
def test_regularize_grad_matches_reference_in_place(param, l1, l2):
    grad, expected = like(param), like(param)
    cpu.regularize_grad(grad, param, l1, l2)
    ref.regularize_grad(expected, param, l1, l2)
    assert_close(grad, expected)


@SETTINGS
@given(arrays(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_regularization_penalty_matches_reference(param, l1, l2):
    penalty = cpu.regularization_penalty(param, l1, l2)
    assert isinstance(penalty, float)
    assert penalty == pytest.approx(ref.regularization_penalty(param, l1, l2), rel=1e-5, abs=1e-6)


# -------------------------------------------------------------------------------- optimizer steps


def two_steps(module, update, param, slots, seed):
    """Apply ``update(module, param, grad, slots, step)`` at steps 1 and 2 with seeded gradients."""
    for step in (1, 2):
        update(module, param, like(param, seed=seed + step), slots, step)


UPDATES = {
    "sgd": (1, lambda k, w, g, s, t: k.sgd_update(w, g, s[0], 0.1, 0.0, False)),
    "momentum": (1, lambda k, w, g, s, t: k.sgd_update(w, g, s[0], 0.1, 0.9, False)),
    "nesterov": (1, lambda k, w, g, s, t: k.sgd_update(w, g, s[0], 0.1, 0.9, True)),
    "adam": (2, lambda k, w, g, s, t: k.adam_update(w, g, s[0], s[1], 0.01, 0.9, 0.999, 1e-7, t)),
    "rmsprop": (1, lambda k, w, g, s, t: k.rmsprop_update(w, g, s[0], 0.01, 0.9, 1e-7)),
}


@pytest.mark.parametrize("name", UPDATES)
@SETTINGS
@given(param=arrays())
def test_optimizer_updates_match_reference_in_place_over_two_steps(name, param):
    n_slots, update = UPDATES[name]
    expected_param, expected_slots = param.copy(), [np.zeros_like(param) for _ in range(n_slots)]
    slots = [np.zeros_like(param) for _ in range(n_slots)]
    param_buffer = param
    two_steps(cpu, update, param, slots, seed=5)
    two_steps(ref, update, expected_param, expected_slots, seed=5)
    assert param is param_buffer
    assert_close(param, expected_param)
    for slot, expected_slot in zip(slots, expected_slots):
        assert_close(slot, expected_slot)


def test_in_place_update_refuses_a_non_contiguous_parameter():
    param = np.zeros((4, 4))[:, ::2]
    with pytest.raises(ValueError, match="sgd_update: param must be C-contiguous"):
        cpu.sgd_update(param, np.zeros((4, 2)), np.zeros((4, 2)), 0.1, 0.0, False)


# ------------------------------------------------------------------------------ setup and threads


def test_warmup_reports_seconds_for_every_kernel():
    seconds = cpu.warmup(np.float64)
    assert {"im2col", "col2im", "maxpool_forward", "adam_update", "softmax_cross_entropy"} <= set(seconds)
    assert all(value >= 0 for value in seconds.values())


def test_check_available_passes_where_numba_runs():
    cpu.check_available()


def test_set_num_threads_rejects_counts_numba_cannot_run():
    with pytest.raises(ValueError, match="set_num_threads: n must be an integer from 1 to"):
        cpu.set_num_threads(0)


def test_minidl_num_threads_must_be_an_integer(monkeypatch):
    monkeypatch.setenv("MINIDL_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="MINIDL_NUM_THREADS must be a positive integer, got 'two'"):
        cpu._threads_from_environment(1)


# ------------------------------------------------------------------------- batch normalization


@st.composite
def channel_rows(draw):
    """``(x, mean, variance, gamma, beta)``: rows ``(M, C)`` and per-channel vectors, positive variance."""
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rows, channels = draw(st.integers(1, 3000)), draw(st.integers(1, 6))
    x = (rng.standard_normal((rows, channels)) * 3 + 1).astype(dtype)
    mean, gamma, beta = (rng.standard_normal(channels).astype(dtype) for _ in range(3))
    variance = rng.uniform(0.1, 2.0, channels).astype(dtype)
    return x, mean, variance, gamma, beta


@SETTINGS
@given(channel_rows())
def test_channel_moments_match_reference(case):
    x = case[0]
    for actual, expected in zip(cpu.channel_moments(x), ref.channel_moments(x)):
        assert_close(actual, expected)


@SETTINGS
@given(channel_rows())
def test_batch_norm_matches_reference(case):
    x, mean, variance, gamma, beta = case
    assert_close(cpu.batch_norm(x, mean, variance, gamma, beta, 1e-3),
                 ref.batch_norm(x, mean, variance, gamma, beta, 1e-3))


@SETTINGS
@given(channel_rows(), st.booleans())
def test_batch_norm_backward_matches_reference(case, batch_statistics):
    x, mean, variance, gamma, _ = case
    grad_out = like(x)
    actual = cpu.batch_norm_backward(grad_out, x, mean, variance, gamma, 1e-3, batch_statistics)
    expected = ref.batch_norm_backward(grad_out, x, mean, variance, gamma, 1e-3, batch_statistics)
    for actual_part, expected_part in zip(actual, expected):
        assert actual_part.shape == expected_part.shape and actual_part.dtype == expected_part.dtype
        tolerance = 1e-4 if x.dtype == np.float32 else 1e-10  # sums over up to 3000 rows
        np.testing.assert_allclose(actual_part, expected_part, rtol=tolerance, atol=tolerance * len(x))


@SETTINGS
@given(arrays(), st.floats(0, 1))
def test_moving_average_update_matches_reference_in_place(moving, momentum):
    value = like(moving)
    expected = moving.copy()
    ref.moving_average_update(expected, value, momentum)
    cpu.moving_average_update(moving, value, momentum)
    assert_close(moving, expected)


def test_batch_norm_kernels_name_the_channel_vector_of_the_wrong_shape():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"batch_norm: gamma must have shape \(3,\)"):
        cpu.batch_norm(x, np.zeros(3), np.ones(3), np.ones(2), np.zeros(3), 1e-3)


# ------------------------------------------------------------------------ padding and rescaling


@st.composite
def images_and_pads(draw):
    x = draw(arrays(min_dims=4, max_dims=4))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    return x, pads


@SETTINGS
@given(images_and_pads())
def test_zero_pad_and_its_grad_match_reference(case):
    x, pads = case
    padded = cpu.zero_pad(x, pads)
    assert_close(padded, ref.zero_pad(x, pads))
    grad_out = like(padded)
    assert_close(cpu.zero_pad_grad(grad_out, pads), ref.zero_pad_grad(grad_out, pads))


def test_zero_pad_refuses_negative_pads():
    with pytest.raises(ValueError, match="zero_pad: pads must be >= 0"):
        cpu.zero_pad(np.ones((1, 2, 2, 1)), ((0, -1), (0, 0)))


@SETTINGS
@given(arrays(), st.floats(-10, 10), st.floats(-10, 10))
def test_scale_shift_matches_reference(x, scale, offset):
    assert_close(cpu.scale_shift(x, scale, offset), ref.scale_shift(x, scale, offset))
