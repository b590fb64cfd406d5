"""Keras files read and written as data: real Keras fixtures, round trips, and hostile files."""

import builtins
import io
import json
import marshal
import os
import pickle
import shutil
import sys
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import minidl
from minidl import keras_format, layers, saving
from tests.archives import archive_members, write_archive

h5py = pytest.importorskip("h5py")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "keras")


def fixture(name):
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="module")
def keras_outputs():
    with np.load(fixture("outputs.npz"), allow_pickle=False) as outputs:
        return dict(outputs)


def importing_a_module():
    """True while Python imports a module (whose code it compiles and runs), i.e. when a frame of
    the import machinery is on the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(("importlib._bootstrap", "_frozen_importlib")):
            return True
        frame = frame.f_back
    return False


def only_for_imports(function):
    """``function`` while a module is imported; any other call fails the test."""
    def guarded(*args, **kwargs):
        if not importing_a_module():
            raise AssertionError(f"loading a Keras file called {function.__name__}")
        return function(*args, **kwargs)
    return guarded


def load_running_no_code(path):
    """``minidl.load_model(path)``, failing the test if loading reaches ``eval``, ``exec``,
    ``compile``, ``marshal.loads`` (how Lambda bytecode is revived) or ``pickle`` other than to
    import a module."""
    minidl.get_backend()  # starts (and JIT-compiles) the kernel backend before the guard is on
    with pytest.MonkeyPatch.context() as patch:
        for module, name in ((builtins, "eval"), (builtins, "exec"), (builtins, "compile"),
                             (marshal, "loads"), (pickle, "loads"), (pickle, "load")):
            patch.setattr(module, name, only_for_imports(getattr(module, name)))
        return minidl.load_model(path)


def cnn():
    model = minidl.Sequential([
        layers.Input((9, 9, 2)), layers.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
        layers.MaxPooling2D(2, padding="same"), layers.Conv2D(3, 2, strides=2, activation="tanh"),
        layers.AveragePooling2D(2, strides=1, padding="same"), layers.Dropout(0.2), layers.Flatten(),
        layers.Dense(6, activation="sigmoid"), layers.LeakyReLU(0.1), layers.Dense(3, activation="softmax")],
        name="cnn")
    model.compile(minidl.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
                  "categorical_crossentropy", metrics=["accuracy"])
    return model


def images(shape, count=5, seed=0):
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


def with_edited_config(source, target, edit):
    members = archive_members(source)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    write_archive(target, members)
    return target


def layer_config(config, class_name):
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == class_name)["config"]


# ---------------------------------------------------------------------- real Keras files


@pytest.mark.parametrize("name", ["sequential_cnn.keras", "sequential_cnn.h5"])
def test_a_keras_sequential_cnn_predicts_what_keras_predicted(name, keras_outputs):
    model = load_running_no_code(fixture(name))
    assert [layer.name for layer in model.layers] == ["features", "downsample", "more_features", "smooth",
                                                      "drop", "flat", "hidden", "classes"]
    np.testing.assert_allclose(model.predict(keras_outputs["x_cnn"]), keras_outputs["y_sequential_cnn"],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["sequential_cnn.keras", "sequential_cnn.h5"])
def test_the_compile_settings_of_a_keras_file_are_read(name):
    model = minidl.load_model(fixture(name))
    assert type(model.optimizer).__name__ == "Adam"
    assert model.optimizer.learning_rate == pytest.approx(0.002)
    assert model.loss.name == "categorical_crossentropy" and model.metric_names == ["accuracy"]


def test_a_keras_functional_chain_predicts_what_keras_predicted(keras_outputs):
    model = load_running_no_code(fixture("functional_chain.keras"))
    assert model.input_shape == (8, 8, 1) and model.loss is None
    np.testing.assert_allclose(model.predict(keras_outputs["x_chain"]), keras_outputs["y_functional_chain"],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["functional_graph.keras", "functional_graph.h5"])
def test_a_keras_functional_graph_with_batchnorm_add_and_concatenate_predicts_what_keras_predicted(
        name, keras_outputs):
    model = load_running_no_code(fixture(name))
    assert type(model) is minidl.Model and model.loss.name == "sparse_categorical_crossentropy"
    assert [type(layer).__name__ for layer in model.layers if type(layer).__name__ in ("Add", "Concatenate")] \
        == ["Add", "Concatenate"]
    np.testing.assert_allclose(model.predict(keras_outputs["x_graph"]), keras_outputs["y_functional_graph"],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_functional_graph_round_trips_through_keras_formats_exactly(suffix, keras_outputs, tmp_path):
    model = minidl.load_model(fixture("functional_graph.keras"))
    model.save(tmp_path / f"graph{suffix}")
    loaded = minidl.load_model(tmp_path / f"graph{suffix}")
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    for saved, read in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(saved, read)
    np.testing.assert_array_equal(loaded.predict(keras_outputs["x_graph"]), model.predict(keras_outputs["x_graph"]))


def test_a_loaded_keras_model_trains(keras_outputs):
    model = minidl.load_model(fixture("sequential_cnn.keras"))
    before = model.get_weights()
    model.fit(keras_outputs["x_cnn"], np.eye(3)[[0, 1, 2, 0]], epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# ---------------------------------------------------------------------- hostile files

HOSTILE = [
    ("lambda.keras", "'Lambda' is not one minidl reads"),
    ("lambda.h5", "'Lambda' is not one minidl reads"),
    ("custom_layer.keras", "'fixtures>Doubling' is a registered custom object"),
    ("path_traversal.keras", "'../../escaped.txt'"),
    ("huge_shapes.keras", "20,000,000,000 values per sample"),
    ("huge_dense.keras", "the config declares 446,676,598,914 parameters"),
    ("weight_mismatch.keras", "weight layers/conv2d/vars/0 has shape (3, 3, 2, 5), the layer needs (3, 3, 2, 4)"),
    ("external_link.h5", "is a link to data elsewhere (ExternalLink)"),
    ("truncated.keras", "truncated/corrupt"),
    ("truncated.h5", "truncated/corrupt"),
]


@pytest.mark.parametrize("name, problem", HOSTILE)
def test_a_hostile_keras_file_is_refused_naming_the_problem_and_nothing_runs_or_is_written(
        name, problem, tmp_path):
    path = shutil.copy(fixture(name), tmp_path / name)
    modules_before = set(sys.modules)
    with pytest.raises(saving.ModelFileError) as refused:
        load_running_no_code(path)
    assert problem in str(refused.value) and str(path) in str(refused.value)
    assert os.listdir(tmp_path) == [name]
    assert not {"keras", "tensorflow"} & (set(sys.modules) - modules_before)


@pytest.mark.parametrize("edit, problem", [
    (lambda c: layer_config(c, "Conv2D").update(dilation_rate=[2, 2]),
     "dilation_rate=[2, 2] is not implemented in minidl"),
    (lambda c: layer_config(c, "Dense").update(surprise=1), "unexpected argument 'surprise'"),
    (lambda c: layer_config(c, "Dense").update(activation="gelu"), "activation 'gelu'"),
    (lambda c: layer_config(c, "Dense").update(dtype="mixed_float16"), "dtype 'mixed_float16'"),
    (lambda c: layer_config(c, "Conv2D").update(groups=True), "groups=True is not implemented"),
    (lambda c: layer_config(c, "Conv2D")["kernel_initializer"].update(module="evil.module"),
     "comes from module 'evil.module'"),
    (lambda c: layer_config(c, "Dense").update(units=-3), "units must be a positive int"),
    (lambda c: c.update(class_name="Pipeline"), "model class 'Pipeline'"),
])
def test_a_config_minidl_cannot_honour_is_refused_naming_it(edit, problem, tmp_path):
    path = with_edited_config(fixture("sequential_cnn.keras"), tmp_path / "edited.keras", edit)
    with pytest.raises(saving.ModelFileError, match="edited.keras") as refused:
        minidl.load_model(path)
    assert problem in str(refused.value)


def test_a_shared_layer_in_a_functional_graph_is_refused(tmp_path):
    def share(config):
        dense = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")
        dense["inbound_nodes"] = dense["inbound_nodes"] * 2
    path = with_edited_config(fixture("functional_chain.keras"), tmp_path / "graph.keras", share)
    with pytest.raises(saving.ModelFileError, match="layer 'dense' is called 2 times; minidl reads layers "
                                                    "called once"):
        minidl.load_model(path)


def test_a_functional_layer_reading_a_tensor_no_earlier_layer_writes_is_refused(tmp_path):
    def dangle(config):
        dense = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")
        dense["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = "nowhere"
    path = with_edited_config(fixture("functional_chain.keras"), tmp_path / "graph.keras", dangle)
    with pytest.raises(saving.ModelFileError, match=r"layer 'dense' reads \['nowhere'\]"):
        minidl.load_model(path)


def test_an_archive_member_that_declares_more_than_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setitem(keras_format.MEMBER_LIMITS, "config.json", 100)
    with pytest.raises(saving.ModelFileError, match="'config.json' declares .* more than the 100"):
        minidl.load_model(fixture("sequential_cnn.keras"))


def test_compile_settings_minidl_lacks_leave_the_model_uncompiled_with_a_warning(tmp_path):
    path = with_edited_config(fixture("sequential_cnn.keras"), tmp_path / "amsgrad.keras",
                              lambda c: c["compile_config"]["optimizer"]["config"].update(amsgrad=True))
    with pytest.warns(UserWarning, match="amsgrad=True is not implemented"):
        model = minidl.load_model(path)
    assert model.loss is None and model.count_params() == 390


def test_a_keras_2_style_h5_with_batch_input_shape_and_no_input_layer_is_read(tmp_path):
    kernel, bias = images((4, 3), count=1)[0], np.array([0.1, -0.2, 0.3], np.float32)
    config = {"class_name": "Sequential", "config": {"name": "old", "layers": [
        {"class_name": "Dense", "config": {"name": "dense", "trainable": True, "dtype": "float32",
                                           "batch_input_shape": [None, 4], "units": 3, "activation": "softmax",
                                           "use_bias": True, "kernel_initializer": {
                                               "class_name": "GlorotUniform", "config": {"seed": None}},
                                           "bias_initializer": {"class_name": "Zeros", "config": {}},
                                           "kernel_regularizer": None, "bias_regularizer": None,
                                           "activity_regularizer": None, "kernel_constraint": None,
                                           "bias_constraint": None}}]}}
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as file:
        file.attrs["model_config"] = json.dumps(config).encode()
        group = file.create_group("model_weights/dense")
        group.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        group["dense/kernel:0"], group["dense/bias:0"] = kernel, bias
    model = minidl.load_model(path)
    x = images((4,), count=2)
    logits = x @ kernel + bias
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict(x), expected, atol=1e-6)


# ---------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_model_saved_in_a_keras_format_loads_with_the_same_predictions_and_compile_settings(suffix, tmp_path):
    model = cnn()
    model.save(tmp_path / f"m{suffix}")
    loaded = minidl.load_model(tmp_path / f"m{suffix}")
    x = images((9, 9, 2))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert type(loaded.optimizer).__name__ == "SGD" and loaded.optimizer.nesterov
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.loss.name == "categorical_crossentropy" and loaded.metric_names == ["accuracy"]


def test_a_keras_archive_holds_keras_members_and_weight_paths_by_class(tmp_path):
    model = cnn()
    model.save(tmp_path / "m.keras")
    members = archive_members(tmp_path / "m.keras")
    assert sorted(members) == ["config.json", "metadata.json", "model.weights.h5"]
    config = json.loads(members["config.json"])
    assert [layer["class_name"] for layer in config["config"]["layers"]][:3] == ["InputLayer", "Conv2D",
                                                                                 "MaxPooling2D"]
    with h5py.File(io.BytesIO(members["model.weights.h5"]), "r") as weights:
        assert weights["layers/conv2d/vars/0"].shape == (3, 3, 2, 4)
        assert weights["layers/conv2d_1/vars/0"].shape == (2, 2, 4, 3)
        np.testing.assert_array_equal(weights["layers/dense_1/vars/1"][()], model.layers[-1].get_weights()[1])


def test_an_h5_save_writes_hdf5_not_a_minidl_archive(tmp_path):
    cnn().save(tmp_path / "m.h5")
    assert keras_format.is_hdf5(tmp_path / "m.h5") and not zipfile.is_zipfile(tmp_path / "m.h5")


def test_a_minidl_archive_named_keras_still_loads_as_minidl(tmp_path):
    model = cnn()
    saving.save_native_model(model, tmp_path / "old.keras", epoch=3)
    assert minidl.load_model(tmp_path / "old.keras").initial_epoch == 3


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_failed_keras_save_leaves_the_old_file(suffix, tmp_path, monkeypatch):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"the previous file")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(h5py.Group, "create_dataset", disk_full)
    with pytest.raises(OSError, match="No space"):
        cnn().save(path)
    assert path.read_bytes() == b"the previous file" and os.listdir(tmp_path) == [f"m{suffix}"]


@st.composite
def small_sequentials(draw):
    stack = [layers.Input((draw(st.integers(5, 9)), draw(st.integers(5, 9)), draw(st.integers(1, 3))))]
    for _ in range(draw(st.integers(1, 2))):
        stack.append(layers.Conv2D(draw(st.integers(1, 4)), draw(st.integers(1, 3)),
                                   strides=draw(st.integers(1, 2)), padding=draw(st.sampled_from(["valid", "same"])),
                                   activation=draw(st.sampled_from(["relu", "tanh", "linear", "sigmoid"])),
                                   use_bias=draw(st.booleans())))
        pooling = draw(st.sampled_from([None, layers.MaxPooling2D, layers.AveragePooling2D]))
        if pooling is not None:
            stack.append(pooling(2, strides=1, padding="same"))
    stack += [layers.Flatten(), layers.Dense(draw(st.integers(1, 5)),
                                             activation=draw(st.sampled_from(["softmax", "linear"])))]
    try:
        return minidl.Sequential(stack)
    except ValueError:  # a window larger than its input: not a model
        reject()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=small_sequentials(), suffix=st.sampled_from([".keras", ".h5"]))
def test_any_small_cnn_round_trips_through_keras_formats_exactly(model, suffix, tmp_path):
    path = tmp_path / f"random{suffix}"
    model.save(path)
    loaded = minidl.load_model(path)
    for saved, read in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(saved, read)
    x = images(model.input_shape, count=2)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_format.keras_model_config(loaded)


def json_paths(value, path=()):
    """Every path (a tuple of keys and indices) into a JSON value."""
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from json_paths(item, (*path, key))


ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                        | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                     max_size=3),
                        max_leaves=6)
FUZZED_FILES = ("sequential_cnn.keras", "functional_graph.keras")
CONFIG_PATHS = [(name, path) for name in FUZZED_FILES
                for path in json_paths(json.loads(archive_members(fixture(name))["config.json"])) if path]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file_and_path=st.sampled_from(CONFIG_PATHS), value=ANY_JSON)
def test_any_value_anywhere_in_a_config_loads_or_is_refused_as_a_model_file_error(file_and_path, value, tmp_path):
    name, path = file_and_path

    def replace(config):
        *parents, last = path
        for key in parents:
            config = config[key]
        config[last] = value
    edited = with_edited_config(fixture(name), tmp_path / "fuzzed.keras", replace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compile settings minidl lacks only warn
        try:
            minidl.load_model(edited)
        except saving.ModelFileError:
            pass


def test_without_h5py_a_keras_save_names_the_extra_to_install_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pip install 'minidl\[keras-files\]'"):
        cnn().save(tmp_path / "m.keras")
    with pytest.raises(ImportError, match=r"m.h5: Keras files .* need h5py"):
        minidl.load_model(shutil.copy(fixture("sequential_cnn.h5"), tmp_path / "m.h5"))
    assert os.listdir(tmp_path) == ["m.h5"]


def test_the_layer_order_minidl_writes_is_the_order_keras_wrote_for_the_same_graph():
    model = minidl.load_model(fixture("functional_graph.keras"))
    config = json.loads(archive_members(fixture("functional_graph.keras"))["config.json"])
    keras_order = [layer["name"] for layer in config["config"]["layers"] if layer["class_name"] != "InputLayer"]
    assert [layer.name for layer in keras_format.keras_layer_order(model)] == keras_order
