"""Shape arithmetic shared by every kernel module.

All sizes are integers; nothing here touches array data.  Padding comes resolved, ``((top, bottom),
(left, right))``, from the layers (Keras's ``"valid"`` and ``"same"``: ``minidl/layers/base.py``)."""


def output_length(size, kernel, stride, pad_before, pad_after):
    """Number of window positions along one axis of length ``size`` padded by the given amounts."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def output_hw(x_shape, window, strides, pads):
    """``(OH, OW)`` of a window sliding over images ``x_shape = (N, H, W, C)`` padded by ``pads``."""
    (_, height, width, _), (kh, kw), (sh, sw), (pad_h, pad_w) = x_shape, window, strides, pads
    return output_length(height, kh, sh, *pad_h), output_length(width, kw, sw, *pad_w)


def winograd_tiles_hw(out_hw, tile=2):
    """``(TH, TW) = (ceil(OH / m), ceil(OW / m))``: the rows and columns of Winograd F(m x m, 3 x 3)
    tiles (``m = tile``), each giving an ``m x m`` block of an ``(OH, OW)`` output."""
    return -(-out_hw[0] // tile), -(-out_hw[1] // tile)


def winograd_tile_grid(x_shape, pads, tile=2):
    """The tiles of a Winograd F(m x m, 3 x 3) convolution (``m = tile``) of images
    ``x_shape = (N, H, W, C)`` padded by ``pads``.

    Each tile is an ``(m + 2) x (m + 2)`` window of the padded image, taken at stride ``m``, that gives an
    ``m x m`` block of the 3x3 stride-1 convolution's ``(OH, OW)`` output.  Returns
    ``((TH, TW), tile_pads)``: ``TH = ceil(OH / m)`` rows of tiles, and the padding under which the
    tiles are exactly the windows of an ``(m + 2) x (m + 2)``, stride-``m`` ``im2col``.  When ``m``
    does not divide ``OH`` the last row of tiles reaches past the padded image (zeros, or real rows
    that ``pads`` dropped); the outputs it gives are not kept.
    """
    tiles_h, tiles_w = winograd_tiles_hw(output_hw(x_shape, (3, 3), (1, 1), pads), tile)
    (top, _), (left, _) = pads
    tile_pads = ((top, tile * tiles_h + 2 - x_shape[1] - top), (left, tile * tiles_w + 2 - x_shape[2] - left))
    return (tiles_h, tiles_w), tile_pads


def conv3x3_maxpool_shape(function, x_shape, kernel_shape):
    """``(N, PH, PW, F)`` with ``PH = (H - 2) // 2``: the pooled output of a one-channel 3x3 valid,
    stride-1 convolution (``x_shape = (N, H, W, 1)``, ``kernel_shape = (3, 3, 1, F)``) under 2x2 max
    pooling at stride 2.  Raises ``ValueError`` naming ``function`` for any other shapes."""
    if len(x_shape) != 4 or x_shape[3] != 1 or x_shape[1] < 4 or x_shape[2] < 4:
        raise ValueError(f"{function}: x must be (N, H, W, 1) with H and W at least 4, got {tuple(x_shape)}")
    if len(kernel_shape) != 4 or tuple(kernel_shape[:3]) != (3, 3, 1):
        raise ValueError(f"{function}: kernel must be (3, 3, 1, F), got {tuple(kernel_shape)}")
    return x_shape[0], (x_shape[1] - 2) // 2, (x_shape[2] - 2) // 2, kernel_shape[3]


def conv3x3_maxpool_pads(x_shape):
    """The pads ``((0, bottom), (0, right))``, ``bottom, right <= 0``, under which a 3x3 stride-1
    convolution of ``x_shape`` computes exactly the ``(2*PH, 2*PW)`` outputs 2x2 pooling reads."""
    _, pooled_h, pooled_w, _ = conv3x3_maxpool_shape("conv3x3_maxpool_pads", x_shape, (3, 3, 1, 1))
    return (0, 2 * pooled_h + 2 - x_shape[1]), (0, 2 * pooled_w + 2 - x_shape[2])


def conv3x3_maxpool_grad_shape(function, x_shape, grad_pooled_shape, argmax_shape):
    """:func:`conv3x3_maxpool_shape` for the backward pass, from the pooled gradient's filters; raises
    ``ValueError`` naming ``function`` unless ``grad_pooled`` and ``argmax`` both have that shape."""
    grad_pooled_shape, argmax_shape = tuple(grad_pooled_shape), tuple(argmax_shape)
    expected = conv3x3_maxpool_shape(function, x_shape, (3, 3, 1, grad_pooled_shape[-1]))
    for name, shape in (("grad_pooled", grad_pooled_shape), ("argmax", argmax_shape)):
        if shape != expected:
            raise ValueError(f"{function}: {name} must have shape {expected} for images {tuple(x_shape)}, "
                             f"got {shape}")
    return expected


def check_bias(function, bias, channels):
    """Raises ``ValueError`` naming ``function`` unless ``bias`` is ``None`` (no bias) or of shape
    ``(channels,)``."""
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"{function}: bias must have shape {(channels,)}, got {tuple(bias.shape)}")


def pooled_grad_shape(function, grad_pooled_shape, y_shape, pool_size, strides, pads):
    """The pooled shape ``(N, OH, OW, C)`` of ``y_shape`` images under the window; raises
    ``ValueError`` naming ``function`` unless ``grad_pooled_shape`` is it."""
    expected = (y_shape[0], *output_hw(y_shape, pool_size, strides, pads), y_shape[3])
    if tuple(grad_pooled_shape) != expected:
        raise ValueError(f"{function}: grad_pooled must have shape {expected} for y of shape {tuple(y_shape)}, "
                         f"got {tuple(grad_pooled_shape)}")
    return expected


def concatenated_shape(function, shapes, axis):
    """The shape of ``shapes`` joined along ``axis`` (a non-negative axis index): equal on every other
    axis, summed on ``axis``.  Raises ``ValueError`` naming ``function`` and the shapes otherwise."""
    shapes = [tuple(shape) for shape in shapes]
    if not shapes:
        raise ValueError(f"{function}: needs at least one array")
    rank = len(shapes[0])
    if not isinstance(axis, int) or not 0 <= axis < rank:
        raise ValueError(f"{function}: axis must be an int in [0, {rank}), got {axis!r}")
    if any(len(shape) != rank or shape[:axis] + shape[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]
           for shape in shapes):
        raise ValueError(f"{function}: arrays must have equal shapes except on axis {axis}, got {shapes}")
    return shapes[0][:axis] + (sum(shape[axis] for shape in shapes),) + shapes[0][axis + 1:]


def split_shapes(function, x_shape, sizes, axis):
    """The shapes of ``x_shape`` cut along ``axis`` into pieces of ``sizes`` (which must sum to
    ``x_shape[axis]``); raises ``ValueError`` naming ``function`` otherwise."""
    x_shape = tuple(x_shape)
    if not isinstance(axis, int) or not 0 <= axis < len(x_shape):
        raise ValueError(f"{function}: axis must be an int in [0, {len(x_shape)}), got {axis!r}")
    sizes = [int(size) for size in sizes]
    if not sizes or min(sizes) < 1 or sum(sizes) != x_shape[axis]:
        raise ValueError(f"{function}: sizes {sizes} must be positive and sum to x.shape[{axis}] = "
                         f"{x_shape[axis]}")
    return [x_shape[:axis] + (size,) + x_shape[axis + 1:] for size in sizes]


def as_three_axes(shape, axis):
    """``shape`` seen as ``(before, along, after)``: the product of the axes before ``axis``, the size
    of ``axis``, the product of the axes after it.  Joining along ``axis`` is joining along the middle."""
    before = after = 1
    for size in shape[:axis]:
        before *= size
    for size in shape[axis + 1:]:
        after *= size
    return before, shape[axis], after
