"""The reference kernels against direct loop implementations written here from the definitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl.kernels import numpy_ref
from minidl.kernels.winograd import WINOGRAD_TILES
from tests.kernels.strategies import window_problems, winograd_problems


@st.composite
def images_and_window(draw):
    """A random batch of images and a window (size, strides, pads) that fits them."""
    x_shape, window, strides, pads, out_hw = draw(window_problems())
    x = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal(x_shape)
    return x, window, strides, pads, out_hw


def padded_pixel(x, n, row, col, c, pads, fill=0.0):
    """``x_padded[n, row, col, c]`` computed from the definition of zero (or ``fill``) padding."""
    row, col = row - pads[0][0], col - pads[1][0]
    if 0 <= row < x.shape[1] and 0 <= col < x.shape[2]:
        return x[n, row, col, c]
    return fill


def direct_conv(x, kernel, strides, pads, out_hw):
    n_images, _, _, c_in = x.shape
    kh, kw, _, c_out = kernel.shape
    y = np.zeros((n_images, *out_hw, c_out))
    for n in range(n_images):
        for i in range(out_hw[0]):
            for j in range(out_hw[1]):
                for o in range(c_out):
                    y[n, i, j, o] = sum(padded_pixel(x, n, i * strides[0] + p, j * strides[1] + q, c, pads)
                                        * kernel[p, q, c, o]
                                        for p in range(kh) for q in range(kw) for c in range(c_in))
    return y


@settings(max_examples=40, deadline=None)
@given(images_and_window(), st.integers(1, 3))
def test_im2col_gemm_equals_direct_convolution(problem, c_out):
    x, window, strides, pads, out_hw = problem
    kernel = np.random.default_rng(1).standard_normal((*window, x.shape[3], c_out))
    cols = numpy_ref.im2col(x, window, strides, pads)
    y = (cols @ kernel.reshape(-1, c_out)).reshape(x.shape[0], *out_hw, c_out)
    np.testing.assert_allclose(y, direct_conv(x, kernel, strides, pads, out_hw), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(images_and_window(), st.integers(1, 3))
def test_conv_by_image_is_the_direct_convolution_and_its_gradients_are_its_adjoints(problem, c_out):
    """``<conv(x, W), G> = <x, dL/dx> = <W, dL/dW>`` for the linear map's two gradients."""
    x, window, strides, pads, out_hw = problem
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((*window, x.shape[3], c_out))
    kernel_matrix = kernel.reshape(-1, c_out)
    z = numpy_ref.conv_by_image(x, kernel_matrix, window, strides, pads)
    np.testing.assert_allclose(z, direct_conv(x, kernel, strides, pads, out_hw), atol=1e-12)
    grad_out = rng.standard_normal(z.shape)
    grad_x = numpy_ref.conv_by_image_input_grad(grad_out, kernel_matrix, x.shape, window, strides, pads)
    grad_kernel_matrix = numpy_ref.conv_by_image_kernel_grad(x, grad_out, window, strides, pads)
    assert grad_x.shape == x.shape and grad_kernel_matrix.shape == kernel_matrix.shape
    np.testing.assert_allclose((x * grad_x).sum(), (z * grad_out).sum(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose((kernel_matrix * grad_kernel_matrix).sum(), (z * grad_out).sum(), rtol=1e-10, atol=1e-10)


def test_a_negative_after_padding_drops_trailing_outputs_like_cropping_the_images():
    x = np.random.default_rng(3).standard_normal((2, 9, 9, 2))
    dropped = numpy_ref.im2col(x, (3, 3), (1, 2), ((1, -2), (0, -2)))
    np.testing.assert_array_equal(dropped, numpy_ref.im2col(x[:, :7, :7], (3, 3), (1, 2), ((1, 0), (0, 0))))
    grad_x = numpy_ref.col2im(np.ones_like(dropped), x.shape, (3, 3), (1, 2), ((1, -2), (0, -2)))
    assert grad_x.shape == x.shape
    assert not grad_x[:, 7:].any() and not grad_x[:, :, 7:].any()


@settings(max_examples=40, deadline=None)
@given(images_and_window())
def test_col2im_is_the_adjoint_of_im2col(problem):
    x, window, strides, pads, _ = problem
    cols = numpy_ref.im2col(x, window, strides, pads)
    g = np.random.default_rng(2).standard_normal(cols.shape)
    back = numpy_ref.col2im(g, x.shape, window, strides, pads)
    assert back.shape == x.shape
    np.testing.assert_allclose((cols * g).sum(), (x * back).sum(), rtol=1e-10)


@st.composite
def winograd_cases(draw):
    """Images, a 3x3 kernel, ``pads`` and ``(OH, OW)`` of a stride-1 convolution, in float64."""
    x_shape, _, _, pads, out_hw = draw(winograd_problems())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kernel = rng.standard_normal((3, 3, x_shape[3], draw(st.integers(1, 3))))
    return rng.standard_normal(x_shape), kernel, pads, out_hw


@settings(max_examples=40, deadline=None)
@given(winograd_cases(), st.sampled_from(WINOGRAD_TILES))
def test_winograd_convolution_equals_direct_convolution(case, tile):
    x, kernel, pads, out_hw = case
    products = numpy_ref.matmul(numpy_ref.winograd_tiles(x, pads, tile), numpy_ref.winograd_kernel(kernel, tile))
    y = numpy_ref.winograd_outputs(products, (x.shape[0], *out_hw, kernel.shape[3]))
    np.testing.assert_allclose(y, direct_conv(x, kernel, (1, 1), pads, out_hw), atol=1e-11)


@settings(max_examples=40, deadline=None)
@given(winograd_cases(), st.sampled_from(WINOGRAD_TILES))
def test_winograd_by_image_is_the_direct_convolution_and_its_gradients_are_its_adjoints(case, tile):
    """``<conv(x, W), G> = <x, dL/dx> = <U, dL/dU>`` with ``U`` the kernel's tiles."""
    x, kernel, pads, out_hw = case
    kernel_tiles = numpy_ref.winograd_kernel(kernel, tile)
    z = numpy_ref.winograd_by_image(x, kernel_tiles, pads)
    np.testing.assert_allclose(z, direct_conv(x, kernel, (1, 1), pads, out_hw), atol=1e-11)
    grad_out = np.random.default_rng(5).standard_normal(z.shape)
    grad_kernel_tiles, grad_x = numpy_ref.winograd_by_image_grads(x, grad_out, kernel_tiles, pads)
    assert grad_x.shape == x.shape and grad_kernel_tiles.shape == kernel_tiles.shape
    np.testing.assert_array_equal(grad_kernel_tiles, numpy_ref.winograd_by_image_kernel_grad(x, grad_out, pads, tile))
    np.testing.assert_allclose((x * grad_x).sum(), (z * grad_out).sum(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose((kernel_tiles * grad_kernel_tiles).sum(), (z * grad_out).sum(), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(winograd_cases(), st.sampled_from(WINOGRAD_TILES))
def test_each_winograd_grad_is_the_adjoint_of_its_transform(case, tile):
    x, kernel, pads, out_hw = case
    rng = np.random.default_rng(4)
    tiles = numpy_ref.winograd_tiles(x, pads, tile)
    grad_tiles = rng.standard_normal(tiles.shape)
    np.testing.assert_allclose((tiles * grad_tiles).sum(),
                               (x * numpy_ref.winograd_tiles_grad(grad_tiles, x.shape, pads)).sum(), rtol=1e-10)
    kernel_tiles = numpy_ref.winograd_kernel(kernel, tile)
    grad_kernel_tiles = rng.standard_normal(kernel_tiles.shape)
    np.testing.assert_allclose((kernel_tiles * grad_kernel_tiles).sum(),
                               (kernel * numpy_ref.winograd_kernel_grad(grad_kernel_tiles)).sum(), rtol=1e-10)
    products = rng.standard_normal((tiles.shape[0], tiles.shape[1], kernel.shape[3]))
    y = numpy_ref.winograd_outputs(products, (x.shape[0], *out_hw, kernel.shape[3]))
    grad_out = rng.standard_normal(y.shape)
    np.testing.assert_allclose((y * grad_out).sum(),
                               (products * numpy_ref.winograd_outputs_grad(grad_out, tile)).sum(), rtol=1e-10)


def test_stacked_matmuls_multiply_slice_by_slice():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 2))
    expected = np.stack([a[s] @ b[s] for s in range(3)])
    np.testing.assert_allclose(numpy_ref.matmul(a, b), expected)
    np.testing.assert_allclose(numpy_ref.matmul_tn(np.swapaxes(a, 1, 2).copy(), b), expected)
    np.testing.assert_allclose(numpy_ref.matmul_nt(a, np.swapaxes(b, 1, 2).copy()), expected)


@settings(max_examples=40, deadline=None)
@given(images_and_window())
def test_maxpool_equals_direct_window_maximum(problem):
    x, window, strides, pads, out_hw = problem
    out, argmax = numpy_ref.maxpool_forward(x, window, strides, pads)
    for n, i, j, c in np.ndindex(*out.shape):
        values = [padded_pixel(x, n, i * strides[0] + p, j * strides[1] + q, c, pads, -np.inf)
                  for p in range(window[0]) for q in range(window[1])]
        assert out[n, i, j, c] == max(values)
        assert values[argmax[n, i, j, c]] == max(values)


@settings(max_examples=40, deadline=None)
@given(images_and_window())
def test_avgpool_equals_direct_mean_of_real_pixels(problem):
    x, window, strides, pads, out_hw = problem
    out = numpy_ref.avgpool_forward(x, window, strides, pads)
    for n, i, j, c in np.ndindex(*out.shape):
        values = [x[n, r - pads[0][0], q - pads[1][0], c]
                  for r in range(i * strides[0], i * strides[0] + window[0])
                  for q in range(j * strides[1], j * strides[1] + window[1])
                  if 0 <= r - pads[0][0] < x.shape[1] and 0 <= q - pads[1][0] < x.shape[2]]
        # the sum's rounding is relative to the pixels' size, not to a mean that cancels to near 0
        np.testing.assert_allclose(out[n, i, j, c], np.mean(values), rtol=1e-12, atol=1e-12 * np.abs(values).max())


@settings(max_examples=30, deadline=None)
@given(images_and_window())
def test_pooling_backwards_are_adjoint_to_their_linearisation(problem):
    x, window, strides, pads, _ = problem
    out, argmax = numpy_ref.maxpool_forward(x, window, strides, pads)
    g = np.random.default_rng(3).standard_normal(out.shape)
    # max pooling is linear in x for a fixed argmax, so <out, g> == <x, backward(g)>
    np.testing.assert_allclose((out * g).sum(),
                               (x * numpy_ref.maxpool_backward(g, argmax, x.shape, window, strides, pads)).sum(),
                               rtol=1e-10)
    avg = numpy_ref.avgpool_forward(x, window, strides, pads)
    np.testing.assert_allclose((avg * g).sum(),
                               (x * numpy_ref.avgpool_backward(g, x.shape, window, strides, pads)).sum(),
                               rtol=1e-10)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    targets = np.eye(3)[[0, 2]]
    losses, grad = numpy_ref.softmax_cross_entropy(logits, targets)
    assert np.isfinite(losses).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(losses, [0.0, np.log(3)], atol=1e-12)
    np.testing.assert_allclose(grad[1], (np.full(3, 1 / 3) - targets[1]) / 2)


@st.composite
def gray_conv_cases(draw):
    """One-channel images (odd and even sizes from 4) and a 3x3 kernel of 1 to 3 filters, float64."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x_shape = (draw(st.integers(1, 3)), draw(st.integers(4, 9)), draw(st.integers(4, 9)), 1)
    return rng.standard_normal(x_shape), rng.standard_normal((3, 3, 1, draw(st.integers(1, 3))))


@settings(max_examples=40, deadline=None)
@given(gray_conv_cases())
def test_conv3x3_maxpool_is_the_window_maximum_of_the_direct_convolution(case):
    x, kernel = case
    z = direct_conv(x, kernel, (1, 1), ((0, 0), (0, 0)), (x.shape[1] - 2, x.shape[2] - 2))
    pooled, argmax = numpy_ref.conv3x3_maxpool(x, kernel)
    assert pooled.shape == argmax.shape == (x.shape[0], (x.shape[1] - 2) // 2, (x.shape[2] - 2) // 2, kernel.shape[3])
    for n, i, j, f in np.ndindex(*pooled.shape):
        window = [z[n, 2 * i + r, 2 * j + s, f] for r in (0, 1) for s in (0, 1)]
        assert pooled[n, i, j, f] == pytest.approx(max(window), rel=1e-12)
        assert int(np.argmax(window)) == argmax[n, i, j, f]
    np.testing.assert_array_equal(numpy_ref.conv3x3_maxpool_values(x, kernel), pooled)


@settings(max_examples=20, deadline=None)
@given(gray_conv_cases())
def test_conv3x3_maxpool_kernel_grad_matches_central_differences(case):
    x, kernel = case
    pooled, argmax = numpy_ref.conv3x3_maxpool(x, kernel)
    grad_pooled = np.random.default_rng(7).standard_normal(pooled.shape)
    loss = lambda k: (numpy_ref.conv3x3_maxpool_values(x, k) * grad_pooled).sum()  # noqa: E731
    numeric, step = np.zeros_like(kernel), 1e-6
    for index in np.ndindex(*kernel.shape):
        shift = np.zeros_like(kernel)
        shift[index] = step
        numeric[index] = (loss(kernel + shift) - loss(kernel - shift)) / (2 * step)
    np.testing.assert_allclose(numpy_ref.conv3x3_maxpool_kernel_grad(x, grad_pooled, argmax), numeric,
                               rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_keeps_about_one_minus_rate_scaled_and_repeats_for_a_seed(dtype):
    x = np.random.default_rng(0).standard_normal((200, 50)).astype(dtype)
    y, mask = numpy_ref.dropout(x, 0.3, 7)
    assert y.dtype == mask.dtype == dtype
    assert set(np.unique(mask)) <= {dtype(0), dtype(1 / 0.7)}
    assert abs((mask > 0).mean() - 0.7) < 0.02
    np.testing.assert_array_equal(y, x * mask)
    np.testing.assert_array_equal(mask, numpy_ref.dropout(x, 0.3, 7)[1])
    assert not np.array_equal(mask, numpy_ref.dropout(x, 0.3, 8)[1])


def test_dropout_masks_of_neighbouring_seeds_are_not_shifted_copies():
    """Element ``i`` hashes ``seed * 2^32 + i``: a seed's mask is no slice of the next seed's."""
    first, second = (numpy_ref.dropout(np.ones(4096), 0.5, seed)[1] for seed in (11, 12))
    assert all(not np.array_equal(first[shift:], second[:4096 - shift]) for shift in range(64))
    assert abs(np.mean(first == second) - 0.5) < 0.05


@pytest.mark.parametrize("rate, seed, message", [(1.0, 0, "rate must be in"), (-0.1, 0, "rate must be in"),
                                                  (0.5, 2**31, "seed must be in"), (0.5, -1, "seed must be in")])
def test_dropout_names_a_bad_rate_or_seed(rate, seed, message):
    with pytest.raises(ValueError, match=f"dropout: {message}"):
        numpy_ref.dropout(np.ones(3), rate, seed)
