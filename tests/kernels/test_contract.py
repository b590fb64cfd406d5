"""Every backend module offers every function of the reference contract."""

import inspect

import pytest

from minidl.kernels import numpy_ref


def contract_functions():
    return sorted(name for name, value in vars(numpy_ref).items()
                  if inspect.isfunction(value) and not name.startswith("_")
                  and value.__module__ == numpy_ref.__name__ and name != "check_activation")


@pytest.mark.parametrize("module_name", ["minidl.kernels.cpu", "minidl.kernels.cuda"])
def test_backend_module_implements_the_whole_contract(module_name):
    module = pytest.importorskip(module_name)
    missing = [name for name in contract_functions() if not callable(getattr(module, name, None))]
    assert not missing, f"{module_name} lacks {missing}"


def test_backend_functions_take_the_reference_arguments():
    from minidl.kernels import cpu

    for name in contract_functions():
        reference = list(inspect.signature(getattr(numpy_ref, name)).parameters)
        assert list(inspect.signature(getattr(cpu, name)).parameters) == reference, name
