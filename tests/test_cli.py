"""The ``minidl`` command run as a subprocess: exit codes 0 ok / 1 error / 2 usage."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import minidl
from minidl import layers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_data = pytest.mark.skipif(
    not os.path.isfile(os.path.join(REPO_ROOT, "minidl", "data", "__init__.py")),
    reason="the minidl.data package (datasets) is not in this checkout yet")


def minidl_cli(*arguments, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")])}
    env.setdefault("MINIDL_BACKEND", "numpy")
    return subprocess.run([sys.executable, "-m", "minidl.cli", *map(str, arguments)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def assert_clean_error(result, *fragments):
    """Exit status 1, one message on stderr naming the problem, no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "gradcheck", "bench", "convert"])
def test_every_command_has_help(command):
    result = minidl_cli(command, "--help")
    assert result.returncode == 0 and "usage: minidl " + command in result.stdout


@pytest.mark.parametrize("arguments", [(), ("fly",), ("train", "--epochs", "0", "--dataset", "shapes"),
                                       ("bench", "--backend", "abacus")])
def test_usage_errors_exit_with_status_2(arguments):
    result = minidl_cli(*arguments)
    assert result.returncode == 2 and "usage:" in result.stderr


@pytest.fixture(scope="module")
def trained_on_shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    result = minidl_cli("train", "--model", "tiny-cnn", "--dataset", "shapes", "--limit", "120",
                        "--epochs", "2", "--verbose", "0", "--output", folder / "shapes.minidl",
                        "--plots", folder / "plots")
    return folder, result


@needs_data
def test_train_writes_a_loadable_model_and_reports_test_accuracy(trained_on_shapes):
    folder, result = trained_on_shapes
    assert result.returncode == 0, result.stderr
    assert "test (120 samples): loss:" in result.stdout
    model = minidl.load_model(folder / "shapes.minidl")
    assert model.initial_epoch == 2 and model.class_names == ["circle", "square", "triangle"]


@needs_data
def test_train_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(tmp_path):
    common = ["train", "--model", "tiny-cnn", "--dataset", "shapes", "--limit", "120", "--verbose", "0",
              "--seed", "3"]
    whole = minidl_cli(*common, "--epochs", "3", "--output", tmp_path / "whole.minidl")
    first = minidl_cli(*common, "--epochs", "1", "--checkpoint", tmp_path / "ckpt.minidl",
                       "--output", tmp_path / "first.minidl")
    resumed = minidl_cli(*common, "--epochs", "3", "--resume", tmp_path / "ckpt.minidl",
                         "--output", tmp_path / "resumed.minidl")
    for result in (whole, first, resumed):
        assert result.returncode == 0, result.stderr
    assert "resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
    expected = minidl.load_model(tmp_path / "whole.minidl").get_weights()
    actual = minidl.load_model(tmp_path / "resumed.minidl").get_weights()
    for w_expected, w_actual in zip(expected, actual):
        np.testing.assert_array_equal(w_actual, w_expected)


@needs_data
def test_train_plots_are_written_when_matplotlib_is_installed(trained_on_shapes):
    pytest.importorskip("matplotlib")
    folder, _ = trained_on_shapes
    assert sorted(os.listdir(folder / "plots")) == ["confusion_matrix.png", "feature_maps.png",
                                                    "filters.png", "training_curves.png"]


@needs_data
def test_evaluate_prints_metrics_and_the_per_class_report(trained_on_shapes):
    folder, _ = trained_on_shapes
    result = minidl_cli("evaluate", folder / "shapes.minidl", "--dataset", "shapes", "--limit", "60")
    assert result.returncode == 0, result.stderr
    assert "(60 samples): loss:" in result.stdout and "macro avg" in result.stdout
    assert "triangle" in result.stdout


@needs_data
def test_predict_prints_a_class_and_probability_per_image(trained_on_shapes, tmp_path):
    from minidl.data import make_shapes

    folder, _ = trained_on_shapes
    images, _ = make_shapes(2, size=40, seed=3)  # another size: predict resizes to the model input
    paths = [tmp_path / f"shape{i}.png" for i in range(2)]
    for path, image in zip(paths, images):
        cv2.imwrite(str(path), image)
    result = minidl_cli("predict", folder / "shapes.minidl", *paths)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for path, line in zip(paths, lines):
        name, probability = line.removeprefix(f"{path}: ").rsplit(" ", 1)
        assert name in ("circle", "square", "triangle") and 0 < float(probability.strip("()")) <= 1


@needs_data
def test_predict_on_a_missing_image_is_a_clean_error(trained_on_shapes, tmp_path):
    folder, _ = trained_on_shapes
    assert_clean_error(minidl_cli("predict", folder / "shapes.minidl", tmp_path / "absent.png"),
                       "absent.png", "no such image file")


def test_evaluate_with_a_corrupt_model_file_is_a_clean_error(tmp_path):
    path = tmp_path / "broken.minidl"
    path.write_bytes(b"not a model")
    assert_clean_error(minidl_cli("evaluate", path, "--dataset", "shapes"), "broken.minidl", "not a minidl file")


@needs_data
def test_train_from_a_json_architecture_and_an_image_folder(tmp_path):
    from minidl.data import make_shapes

    images, labels = make_shapes(24, size=16, seed=0)
    for index, (image, label) in enumerate(zip(images, labels)):
        class_folder = tmp_path / "images" / f"class{label}"
        class_folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(class_folder / f"{index}.png"), image)
    architecture = minidl.Sequential([layers.Flatten(), layers.Dense(3, activation="softmax")]).get_config()
    (tmp_path / "arch.json").write_text(json.dumps(architecture))
    result = minidl_cli("train", "--model", "arch.json", "--dataset", "images", "--image-size", "16",
                        "--epochs", "1", "--verbose", "0", "--output", "folder.minidl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert minidl.load_model(tmp_path / "folder.minidl").input_shape == (16, 16, 1)


def test_unknown_dataset_is_a_clean_error(tmp_path):
    assert_clean_error(minidl_cli("train", "--dataset", "imagenet", cwd=tmp_path), "imagenet")


def test_gradcheck_passes_on_a_preset_and_fails_with_exit_1_at_zero_tolerance():
    passed = minidl_cli("gradcheck", "--each-layer")
    assert passed.returncode == 0, passed.stderr
    assert "PASS" in passed.stdout and "all 5 gradient checks passed" in passed.stdout
    failed = minidl_cli("gradcheck", "--tolerance", "0")
    assert failed.returncode == 1 and "gradient check FAILED" in failed.stderr


def test_bench_prints_steps_per_second_and_seconds_per_epoch():
    result = minidl_cli("bench", "--steps", "2", "--warmup-steps", "1", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert "steps/s" in result.stdout and "s per epoch of 60000 samples" in result.stdout
    if "backend numba" in result.stdout:
        assert "kernels loaded from the on-disk cache" in result.stdout and "helpers compiled" in result.stdout


FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@needs_data
@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason=f"Fashion-MNIST is not installed at {FASHION_DIR}")
def test_train_on_the_first_samples_of_fashion_mnist(tmp_path):
    result = minidl_cli("train", "--model", "tiny-cnn", "--dataset", "fashion_mnist", "--data-dir", FASHION_DIR,
                        "--limit", "64", "--verbose", "0", "--augment", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert minidl.load_model(tmp_path / "model.minidl").class_names[9] == "Ankle boot"


# ------------------------------------------------------------------ refused before any training


@needs_data
def test_resume_with_other_run_arguments_is_refused_naming_each_saved_and_given_value(tmp_path):
    common = ["train", "--dataset", "shapes", "--limit", "60", "--verbose", "0"]
    first = minidl_cli(*common, "--model", "tiny-cnn", "--epochs", "1", "--checkpoint", tmp_path / "ckpt.minidl",
                       "--output", tmp_path / "first.minidl")
    assert first.returncode == 0, first.stderr
    saved_bytes = (tmp_path / "ckpt.minidl").read_bytes()
    resumed = minidl_cli(*common, "--model", "mlp", "--optimizer", "sgd", "--learning-rate", "0.1", "--seed", "4",
                         "--epochs", "2", "--resume", tmp_path / "ckpt.minidl", "--checkpoint", tmp_path / "ckpt.minidl",
                         cwd=tmp_path)
    assert_clean_error(resumed, "--model: saved 'tiny-cnn', given 'mlp'", "--optimizer: saved 'adam', given 'sgd'",
                       "--learning-rate: saved None, given 0.1", "--seed: saved 0, given 4")
    assert (tmp_path / "ckpt.minidl").read_bytes() == saved_bytes


@needs_data
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Fashion-MNIST is not installed")
def test_resume_on_another_dataset_is_refused_naming_the_datasets_and_class_counts(tmp_path):
    trained = minidl_cli("train", "--model", "tiny-cnn", "--dataset", "fashion_mnist", "--limit", "32", "--epochs", "1",
                         "--verbose", "0", "--checkpoint", tmp_path / "ckpt.minidl", "--output", tmp_path / "m.minidl")
    assert trained.returncode == 0, trained.stderr
    resumed = minidl_cli("train", "--model", "tiny-cnn", "--dataset", "shapes", "--limit", "32", "--epochs", "2",
                         "--verbose", "0", "--resume", tmp_path / "ckpt.minidl", cwd=tmp_path)
    assert_clean_error(resumed, "--dataset: saved 'fashion_mnist', given 'shapes'",
                       "the saved model has 10 outputs, the dataset 3 classes")


@pytest.mark.parametrize("output, message", [("missing-folder/model.minidl", "does not exist"),
                                             (".", "is a directory; give a file name")])
def test_an_output_that_cannot_be_written_is_refused_before_training(tmp_path, output, message):
    result = minidl_cli("train", "--dataset", "shapes", "--limit", "30", "--verbose", "0", "--output", output,
                        cwd=tmp_path)
    assert_clean_error(result, f"--output {output}", message)
    assert "test (" not in result.stdout  # nothing was trained


def test_a_trained_model_whose_write_fails_is_saved_to_a_rescue_file(tmp_path):
    from minidl.cli import save_trained_model

    model = minidl.Sequential([layers.Input((3,)), layers.Dense(2)])
    with pytest.raises(OSError, match=r"could not write .*gone/model.minidl .*saved to (\S+)$") as error:
        save_trained_model(model, tmp_path / "gone" / "model.minidl")
    rescue_path = str(error.value).rsplit(" ", 1)[1]
    try:
        rescued = minidl.load_model(rescue_path)
        for expected, actual in zip(model.get_weights(), rescued.get_weights()):
            np.testing.assert_array_equal(actual, expected)
    finally:
        os.unlink(rescue_path)


@pytest.mark.parametrize("arguments, fragments", [
    (("--learning-rate", "inf"), ("Adam: learning_rate must be finite, got inf",)),
    (("--optimizer", "sgd", "--learning-rate", "-0.1"), ("SGD: learning_rate must be positive, got -0.1",)),
    (("--data-dir", "/nonexistent"), ("--data-dir /nonexistent: no such directory",)),
])
def test_bad_train_settings_are_refused_with_one_line_naming_them(tmp_path, arguments, fragments):
    result = minidl_cli("train", "--dataset", "shapes", "--limit", "30", "--verbose", "0", *arguments, cwd=tmp_path)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "model.minidl").exists()


def test_a_data_dir_without_the_dataset_files_is_refused_rather_than_ignored(tmp_path):
    result = minidl_cli("train", "--dataset", "fashion_mnist", "--data-dir", tmp_path, "--verbose", "0", cwd=tmp_path)
    assert_clean_error(result, f"--data-dir {tmp_path}: missing the Fashion-MNIST files train-images-idx3-ubyte")


def test_an_architecture_json_without_layers_is_refused_naming_the_file(tmp_path):
    (tmp_path / "arch.json").write_text(json.dumps({"name": "m", "input_shape": [28, 28, 1]}))
    result = minidl_cli("train", "--dataset", "shapes", "--model", "arch.json", "--verbose", "0", cwd=tmp_path)
    assert_clean_error(result, "arch.json: the architecture has no 'layers'", "expected Sequential.get_config()")


KERAS_FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures", "keras")


@pytest.mark.parametrize("target", ["cnn.onnx", "cnn.minidl", "cnn.h5"])
def test_convert_writes_a_keras_file_in_the_format_of_the_target_suffix(target, tmp_path):
    pytest.importorskip("h5py")
    if target.endswith(".onnx"):
        pytest.importorskip("onnx")
    result = minidl_cli("convert", os.path.join(KERAS_FIXTURES, "sequential_cnn.keras"), tmp_path / target)
    assert result.returncode == 0, result.stderr
    assert "cnn (8 layers, 390 parameters)" in result.stdout and os.listdir(tmp_path) == [target]


def test_convert_refuses_a_target_suffix_that_names_no_format(tmp_path):
    result = minidl_cli("convert", os.path.join(KERAS_FIXTURES, "sequential_cnn.keras"), tmp_path / "cnn.pb")
    assert_clean_error(result, "cnn.pb: OUT must end in .minidl, .keras, .h5, .onnx")
    assert os.listdir(tmp_path) == []


def test_convert_refuses_a_lambda_layer_and_writes_nothing(tmp_path):
    pytest.importorskip("h5py")
    result = minidl_cli("convert", os.path.join(KERAS_FIXTURES, "lambda.keras"), tmp_path / "out.onnx")
    assert_clean_error(result, "lambda.keras", "'Lambda' is not one minidl reads")
    assert os.listdir(tmp_path) == []


def test_version_prints_the_package_version():
    result = minidl_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"minidl {minidl.__version__}"


@pytest.mark.parametrize("layer_config, message", [
    ({"class_name": "Dense", "config": {}}, "arch.json: layer 1 (Dense): Dense.__init__() missing 1 required "
                                            "positional argument: 'units'"),
    ({"class_name": "Dense", "config": {"units": 3, "colour": 1}}, "arch.json: layer 1 (Dense): "),
    ({"class_name": "Dense2", "config": {}}, "arch.json: layer 1 (Dense2): unknown layer class 'Dense2'"),
])
def test_a_bad_layer_in_an_architecture_json_is_named_with_the_file_and_its_position(tmp_path, layer_config,
                                                                                     message):
    architecture = {"name": "m", "layers": [{"class_name": "Flatten", "config": {}}, layer_config]}
    (tmp_path / "arch.json").write_text(json.dumps(architecture))
    result = minidl_cli("train", "--dataset", "shapes", "--model", "arch.json", "--verbose", "0", cwd=tmp_path)
    assert_clean_error(result, message)


def test_an_architecture_that_does_not_fit_the_data_names_the_file(tmp_path):
    architecture = {"name": "m", "input_shape": [5],
                    "layers": [{"class_name": "Conv2D", "config": {"filters": 2, "kernel_size": 3}}]}
    (tmp_path / "arch.json").write_text(json.dumps(architecture))
    result = minidl_cli("train", "--dataset", "shapes", "--model", "arch.json", "--verbose", "0", cwd=tmp_path)
    assert_clean_error(result, "arch.json: the architecture does not build: ", "expects inputs of shape")


def test_the_default_output_is_not_overwritten_without_overwrite(tmp_path):
    (tmp_path / "model.minidl").write_bytes(b"an earlier model")
    train = ("train", "--dataset", "shapes", "--model", "mlp", "--limit", "30", "--verbose", "0")
    refused = minidl_cli(*train, cwd=tmp_path)
    assert_clean_error(refused, "model.minidl exists", "--output NAME.minidl", "--overwrite")
    assert (tmp_path / "model.minidl").read_bytes() == b"an earlier model"
    assert minidl_cli(*train, "--overwrite", cwd=tmp_path).returncode == 0
    assert minidl.load_model(tmp_path / "model.minidl").count_params() > 0


def test_an_output_with_a_suffix_that_names_no_format_is_refused_before_training(tmp_path):
    result = minidl_cli("train", "--dataset", "shapes", "--limit", "30", "--verbose", "0", "--output", "m.pt",
                        cwd=tmp_path)
    assert_clean_error(result, "--output save_model: m.pt has the suffix '.pt'", "*.minidl or *.keras or *.h5")
    assert list(tmp_path.iterdir()) == []


def test_an_output_with_a_keras_suffix_is_written_in_keras_format(tmp_path):
    pytest.importorskip("h5py")
    result = minidl_cli("train", "--dataset", "shapes", "--limit", "30", "--verbose", "0", "--output", "m.h5",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.h5").read_bytes().startswith(b"\x89HDF") and minidl.load_model(tmp_path / "m.h5").built
