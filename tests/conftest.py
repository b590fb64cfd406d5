import ctypes.util
import importlib.util
import os

if "NUMBA_ENABLE_CUDASIM" not in os.environ and ctypes.util.find_library("cuda") is None:
    # no NVIDIA driver: kernels/cuda.py is tested on Numba's CUDA simulator (set before Numba reads it)
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

# convs are planned by the deterministic cost model: no timing, no cache file written by the tests
os.environ.setdefault("MINIDL_CONV_CHOICE", "model")

import pytest  # noqa: E402

import minidl  # noqa: E402

CPU_BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    """Run the test once per CPU backend, restoring the previous backend afterwards."""
    previous = minidl.get_backend()
    minidl.set_backend(request.param)
    yield request.param
    minidl.set_backend(previous)
