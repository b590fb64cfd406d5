"""README's examples run as written."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import minidl

from tests.markdown import python_blocks as all_python_blocks
from tests.markdown import section_python_blocks

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_block_after(heading):
    """The first ```python block of the README section that starts with ``heading``."""
    return python_blocks(heading)[0]


def python_blocks(heading):
    """Every ```python block of the README section that starts with ``heading`` (to the next ``## ``)."""
    return section_python_blocks(README, heading)


#: the sections whose examples run in this order as one program (they say so)
CHAINED_SECTIONS = ("## Callbacks and metrics", "## Saving and resuming", "## Plots")


def test_every_python_block_of_the_readme_is_run_by_a_test():
    tested = (python_blocks("## Quickstart") + python_blocks("## Data") + python_blocks("## Keras files and ONNX")
              + python_blocks("## Training on several machines")  # tests/test_distributed.py
              + python_blocks("## Functional models")
              + [block for heading in CHAINED_SECTIONS for block in python_blocks(heading)])
    assert sorted(tested) == sorted(all_python_blocks(README))


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


def test_keras_files_and_onnx_examples_run_in_order(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for index, block in enumerate(python_blocks("## Keras files and ONNX")):
        exec(compile(block, f"README Keras files and ONNX {index}", "exec"), namespace)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.h5", "model.keras", "model.minidl",
                                                               "model.onnx"]
    assert abs(namespace["probabilities"] - namespace["model"].predict(namespace["x"])).max() < 1e-5


@pytest.mark.slow
def test_fashion_mnist_loader_example_gives_augmented_float_batches():
    namespace = {}
    exec(compile(python_blocks("## Data")[1], "README data loaders", "exec"), namespace)
    x_batch, y_batch = next(iter(namespace["train"]))
    assert x_batch.shape == (64, 28, 28, 1) and x_batch.dtype == "float32" and 0 <= x_batch.min() <= x_batch.max() <= 1
    assert len(y_batch) == 64 and len(namespace["test"]) == 40


@pytest.mark.slow
def test_callbacks_saving_resuming_and_plots_examples_run_in_order(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for heading in CHAINED_SECTIONS:
        for index, block in enumerate(python_blocks(heading)):
            exec(compile(block, f"README {heading[3:]} {index}", "exec"), namespace)
    written = {path.name for path in tmp_path.iterdir()}
    assert {"training.csv", "model.minidl", "w.weights", "ckpt.minidl", "curves.png", "cm.png", "filters.png",
            "maps.png"} <= written
    assert any(name.startswith("epoch-") for name in written)  # the best-only checkpoints
    assert namespace["model"].initial_epoch == 3


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_gitignore_covers_what_the_readme_commands_write():
    repository = Path(__file__).resolve().parents[1]
    written = ["model.minidl", "fashion.minidl", "ckpt.minidl", "epoch-03-0.871.minidl", "w.weights",
               "training.csv", "curves.png", "cm.png", "plots/confusion_matrix.png", "shapes/circle/0000.png"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=repository, capture_output=True,
                            text=True)
    assert result.stdout.split() == written


def test_functional_model_example_trains_saves_and_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_block_after("## Functional models"), "README functional models", "exec"), namespace)
    assert type(namespace["same"]) is minidl.Model and (tmp_path / "residual.minidl").exists()
