"""``concatenate`` and ``split`` (the merge layers' kernels) on every backend against the NumPy
reference, on hypothesis-drawn shapes, axes and dtypes; ``cuda`` on a GPU or Numba's CUDA simulator."""

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl.kernels import numpy_ref as ref

DTYPES = (np.float32, np.float64)


@st.composite
def parts_to_join(draw, max_size=5):
    """``(parts, axis)``: two to four random arrays of one rank and dtype, equal except on ``axis``."""
    rank = draw(st.integers(1, 4))
    axis = draw(st.integers(0, rank - 1))
    shape = draw(st.lists(st.integers(1, max_size), min_size=rank, max_size=rank))
    sizes = draw(st.lists(st.integers(1, max_size), min_size=2, max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    parts = [rng.standard_normal(shape[:axis] + [size] + shape[axis + 1:]).astype(dtype) for size in sizes]
    return parts, axis


def backend_module(name):
    if name == "cuda":
        numba_cuda = pytest.importorskip("numba.cuda", reason="the cuda kernels need numba-cuda")
        if not (numba_cuda.config.ENABLE_CUDASIM or numba_cuda.is_available()):
            pytest.skip("no CUDA GPU and the simulator is off")
    return importlib.import_module(f"minidl.kernels.{name}")


@settings(max_examples=30, deadline=None)
@given(parts_to_join())
def test_reference_concatenate_is_numpy_concatenate_and_split_inverts_it(case):
    parts, axis = case
    joined = ref.concatenate(parts, axis)
    np.testing.assert_array_equal(joined, np.concatenate(parts, axis))
    pieces = ref.split(joined, [part.shape[axis] for part in parts], axis)
    for piece, part in zip(pieces, parts):
        assert piece.flags.c_contiguous and piece.dtype == part.dtype
        np.testing.assert_array_equal(piece, part)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@settings(max_examples=15, deadline=None)
@given(case=parts_to_join(max_size=4))
def test_backend_concatenate_and_split_match_the_reference(backend, case):
    module = backend_module(backend)
    parts, axis = case
    joined = module.concatenate([module.to_device(part) for part in parts], axis)
    expected = ref.concatenate(parts, axis)
    host = module.to_host(joined)
    assert host.dtype == expected.dtype and host.shape == expected.shape
    np.testing.assert_array_equal(host, expected)
    sizes = [part.shape[axis] for part in parts]
    pieces = module.split(module.to_device(expected), sizes, axis)
    for piece, reference_piece in zip(pieces, ref.split(expected, sizes, axis)):
        np.testing.assert_array_equal(module.to_host(piece), reference_piece)


@pytest.mark.parametrize("backend", ["numpy_ref", "cpu", "cuda"])
def test_mismatched_shapes_and_sizes_are_refused_naming_them(backend):
    module = backend_module(backend)
    a, b = (module.to_device(np.zeros(shape, np.float32)) for shape in ((2, 3, 4), (2, 5, 1)))
    with pytest.raises(ValueError, match=r"equal shapes except on axis 2.*\(2, 5, 1\)"):
        module.concatenate([a, b], 2)
    with pytest.raises(ValueError, match=r"sum to x.shape\[2\] = 4"):
        module.split(a, [1, 2], 2)
    with pytest.raises(ValueError, match="axis must be an int in"):
        module.concatenate([a, a], 3)
