"""The compute kernels install as ``minidl.kernels``: no top-level ``kernels`` package lands in site-packages."""

import pathlib
import subprocess
import sys

import pytest

import minidl.kernels

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_minidl_kernels_is_the_repository_kernels_folder():
    assert pathlib.Path(minidl.kernels.__file__).resolve().parent == REPO / "kernels"


def test_kernels_modules_import_each_other_relatively():
    for module in (REPO / "kernels").glob("*.py"):
        assert "from kernels" not in module.read_text() and "import kernels" not in module.read_text(), module


def run_outside_repo(code, tmp_path):
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})


def test_installed_package_has_no_top_level_kernels(tmp_path):
    if run_outside_repo("import minidl", tmp_path).returncode != 0:
        pytest.skip("minidl is not installed (pip install -e .)")
    assert run_outside_repo("import minidl.kernels.numpy_ref", tmp_path).returncode == 0
    result = run_outside_repo("import kernels", tmp_path)
    assert result.returncode != 0 and "No module named 'kernels'" in result.stderr
