"""Shape arithmetic shared by every kernel module and every layer.

All sizes are integers; nothing here touches array data.  Padding follows Keras:

* ``"valid"``: no padding, ``out = (size - kernel) // stride + 1``.
* ``"same"``: ``out = ceil(size / stride)``; the total padding needed for that is split with the
  smaller half before and the larger half after (TensorFlow's rule).
"""


def padding_amounts(size, kernel, stride, padding):
    """Return ``(before, after)`` padding of one spatial axis for ``"valid"`` or ``"same"``."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def output_length(size, kernel, stride, pad_before, pad_after):
    """Number of window positions along one axis of length ``size`` padded by the given amounts."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def output_hw(x_shape, window, strides, pads):
    """``(OH, OW)`` of a window sliding over images ``x_shape = (N, H, W, C)`` padded by ``pads``."""
    (_, height, width, _), (kh, kw), (sh, sw), (pad_h, pad_w) = x_shape, window, strides, pads
    return output_length(height, kh, sh, *pad_h), output_length(width, kw, sw, *pad_w)


def window_geometry(input_hw, kernel_size, strides, padding):
    """Resolve a 2-D sliding window over an ``(H, W)`` image.

    Returns ``(pads, (OH, OW))`` with ``pads = ((top, bottom), (left, right))``.  Raises ``ValueError``
    when the window does not fit (an output of size zero).
    """
    (height, width), (kh, kw), (sh, sw) = input_hw, kernel_size, strides
    pads = (padding_amounts(height, kh, sh, padding), padding_amounts(width, kw, sw, padding))
    out_h = output_length(height, kh, sh, *pads[0])
    out_w = output_length(width, kw, sw, *pads[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"a {kh}x{kw} window with strides {strides} and padding {padding!r} does not fit "
            f"an input of height x width {height}x{width}"
        )
    return pads, (out_h, out_w)
