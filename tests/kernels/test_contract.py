"""Every backend module implements exactly the kernel contract (``minidl.kernels.contract``), with the
contract's parameter names, and declares whatever else it offers."""

import importlib
import inspect

import pytest

from minidl.kernels.contract import EXTRAS, KERNELS

BACKENDS = list(EXTRAS)


def public_functions(module):
    return {name for name, value in vars(module).items()
            if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == module.__name__}


@pytest.mark.parametrize("module_name", BACKENDS)
def test_backend_implements_every_kernel_with_the_contract_parameters(module_name):
    module = pytest.importorskip(module_name)
    missing = sorted(name for name in KERNELS if not callable(getattr(module, name, None)))
    assert not missing, f"{module_name} lacks {missing}"
    for name, (parameters, _) in KERNELS.items():
        assert tuple(inspect.signature(getattr(module, name)).parameters) == parameters, f"{module_name}.{name}"


@pytest.mark.parametrize("module_name", BACKENDS)
def test_backend_declares_all_it_offers_in_all_and_the_extras(module_name):
    module = pytest.importorskip(module_name)
    assert set(module.__all__) == set(KERNELS) | set(EXTRAS[module_name])
    undeclared = public_functions(module) - set(KERNELS) - set(EXTRAS[module_name])
    assert not undeclared, f"{module_name} offers {sorted(undeclared)} outside the contract and its extras"


def test_the_layers_call_only_contract_kernels():
    """``ops.<name>`` in the library names a kernel of the contract, never a backend's extra."""
    import pathlib
    import re

    import minidl
    root = pathlib.Path(minidl.__file__).parent
    called = {name for path in root.rglob("*.py") if "kernels" not in path.parts
              for name in re.findall(r"\bops\.([a-z_0-9]+)\(", path.read_text())}
    assert called <= set(KERNELS), sorted(called - set(KERNELS))
