"""Hypothesis strategies shared by the kernel tests."""

from hypothesis import strategies as st

from minidl.layers.base import window_geometry


@st.composite
def window_problems(draw, max_batch=3, max_size=9, max_window=4, max_channels=3, window=None, strides=None):
    """``(x_shape, window, strides, pads, (OH, OW))``: an NHWC batch shape and a 2-D window (size,
    strides 1-3, 'valid' or 'same' padding made explicit) that fits it.  Sometimes the bottom and
    right paddings are lowered by whole strides, below zero too, to drop trailing outputs (as a
    layer does for outputs nothing reads).  A given ``window`` or ``strides`` is used as it is."""
    window = window or (draw(st.integers(1, max_window)), draw(st.integers(1, max_window)))
    strides = strides or (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["valid", "same"]))
    smallest = window if padding == "valid" else (1, 1)  # 'same' fits any size
    height, width = draw(st.integers(smallest[0], max_size)), draw(st.integers(smallest[1], max_size))
    x_shape = (draw(st.integers(1, max_batch)), height, width, draw(st.integers(1, max_channels)))
    ((top, bottom), (left, right)), (out_h, out_w) = window_geometry((height, width), window, strides, padding)
    dropped_h = draw(st.one_of(st.just(0), st.integers(0, out_h - 1)))
    dropped_w = draw(st.one_of(st.just(0), st.integers(0, out_w - 1)))
    pads = ((top, bottom - dropped_h * strides[0]), (left, right - dropped_w * strides[1]))
    return x_shape, window, strides, pads, (out_h - dropped_h, out_w - dropped_w)


def winograd_problems(max_batch=3, max_size=9, max_channels=4):
    """:func:`window_problems` for the 3x3, stride-1 convolutions Winograd F(2x2, 3x3) and F(4x4, 3x3) compute."""
    return window_problems(max_batch, max_size, max_channels=max_channels, window=(3, 3), strides=(1, 1))
