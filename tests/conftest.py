import importlib.util

import pytest

import minidl

CPU_BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    """Run the test once per CPU backend, restoring the previous backend afterwards."""
    previous = minidl.get_backend()
    minidl.set_backend(request.param)
    yield request.param
    minidl.set_backend(previous)
