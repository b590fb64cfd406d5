"""README's examples run as written."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_block_after(heading):
    """The first ```python block of the README section that starts with ``heading``."""
    section = README[README.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_quickstart_trains_the_seed_cnn_on_fashion_mnist(capsys):
    exec(compile(python_block_after("## Quickstart"), "README quickstart", "exec"), {})
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.88  # Keras reaches about 0.90 with the same model and settings


@pytest.mark.slow
def test_image_folder_example_trains_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_block_after("## Data"), "README data example", "exec"), namespace)
    assert namespace["accuracy"] > 0.55  # chance is 1/3; five augmented epochs reach about 0.7
    assert sorted(path.name for path in (tmp_path / "shapes").iterdir()) == ["circle", "square", "triangle"]


def test_keras_files_and_onnx_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block_after("## Keras files and ONNX"), "README Keras files example", "exec"), {})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.h5", "model.keras", "model.minidl",
                                                               "model.onnx"]
