"""ONNX export: the graph passes onnx.checker and onnxruntime computes what minidl computes."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import minidl
from minidl import layers, onnx_export

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "keras")


def run_onnx(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def images(shape, count=4, seed=0):
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


def op_types(path):
    return [node.op_type for node in onnx.load(str(path)).graph.node]


@st.composite
def small_cnns(draw):
    stack = [layers.Input((draw(st.integers(5, 10)), draw(st.integers(5, 10)), draw(st.integers(1, 3))))]
    for _ in range(draw(st.integers(1, 3))):
        stack.append(layers.Conv2D(draw(st.integers(1, 5)), (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                                   strides=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
                                   padding=draw(st.sampled_from(["valid", "same"])),
                                   activation=draw(st.sampled_from(["relu", "tanh", "sigmoid", "linear"])),
                                   use_bias=draw(st.booleans())))
        pooling = draw(st.sampled_from([None, layers.MaxPooling2D, layers.AveragePooling2D]))
        if pooling is not None:
            stack.append(pooling(draw(st.integers(1, 3)), strides=draw(st.integers(1, 2)), padding="same"))
        extra = draw(st.sampled_from([None, layers.ReLU(), layers.LeakyReLU(0.2), layers.Dropout(0.5),
                                      layers.Softmax()]))
        if extra is not None:
            stack.append(extra)
    stack += [layers.Flatten(), layers.Dense(draw(st.integers(1, 6)), activation="tanh"),
              layers.Dense(draw(st.integers(1, 4)), activation=draw(st.sampled_from(["softmax", "linear"])))]
    try:
        return minidl.Sequential(stack)
    except ValueError:  # a window larger than its input: not a model
        reject()


def assert_onnx_predicts_as_minidl(model, path):
    """Export ``model`` to ``path``: the checker accepts the graph and onnxruntime's outputs are minidl's."""
    model.export(path, format="onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = images(model.input_shape)
    np.testing.assert_allclose(run_onnx(path, x), model.predict(x), atol=1e-5, rtol=0)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=small_cnns())
def test_onnxruntime_computes_what_minidl_computes_for_any_small_cnn(model, tmp_path):
    assert_onnx_predicts_as_minidl(model, tmp_path / "model.onnx")


def test_a_keras_file_exported_to_onnx_predicts_what_keras_predicted(tmp_path):
    pytest.importorskip("h5py")
    model = minidl.load_model(os.path.join(FIXTURES, "sequential_cnn.keras"))
    model.export(tmp_path / "cnn.onnx")
    with np.load(os.path.join(FIXTURES, "outputs.npz"), allow_pickle=False) as outputs:
        np.testing.assert_allclose(run_onnx(tmp_path / "cnn.onnx", outputs["x_cnn"]), outputs["y_sequential_cnn"],
                                   atol=1e-5, rtol=0)


def test_a_keras_functional_graph_exported_to_onnx_predicts_what_keras_predicted(tmp_path):
    pytest.importorskip("h5py")
    model = minidl.load_model(os.path.join(FIXTURES, "functional_graph.keras"))
    model.export(tmp_path / "graph.onnx")
    with np.load(os.path.join(FIXTURES, "outputs.npz"), allow_pickle=False) as outputs:
        np.testing.assert_allclose(run_onnx(tmp_path / "graph.onnx", outputs["x_graph"]),
                                   outputs["y_functional_graph"], atol=1e-5, rtol=0)


@st.composite
def small_graphs(draw):
    """A functional model: an optional Rescaling / ZeroPadding2D stem, a conv, two branches joined by
    Add or Concatenate (on a random axis), BatchNormalization or not, then global pooling or
    Reshape + Flatten, and a Dense."""
    inputs = minidl.Input((draw(st.integers(4, 7)), draw(st.integers(4, 7)), draw(st.integers(1, 3))))
    x = inputs
    if draw(st.booleans()):
        x = layers.Rescaling(draw(st.floats(0.1, 2)), offset=draw(st.floats(-1, 1)))(x)
    if draw(st.booleans()):
        x = layers.ZeroPadding2D(((draw(st.integers(0, 2)), draw(st.integers(0, 2))),
                                  (draw(st.integers(0, 2)), draw(st.integers(0, 2)))))(x)
    channels = draw(st.integers(1, 4))
    x = layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
    if draw(st.booleans()):
        norm = layers.BatchNormalization(center=draw(st.booleans()), scale=draw(st.booleans()))
        x = norm(x)
        norm.set_weights([np.random.default_rng(1).random(w.shape).astype(np.float32) + 0.5
                          for w in norm.get_weights()])
    left = layers.Conv2D(channels, draw(st.integers(1, 3)), padding="same")(x)
    right = layers.MaxPooling2D(draw(st.integers(1, 3)), strides=1, padding="same")(x)
    if draw(st.booleans()):
        x = layers.Add()([left, right, x])
    else:
        x = layers.Concatenate(axis=draw(st.sampled_from([-1, 1, 2, 3])))([left, right])
    if draw(st.booleans()):
        x = draw(st.sampled_from([layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D]))(
            keepdims=draw(st.booleans()))(x)
        x = layers.Flatten()(x)
    else:
        height, width, depth = x.sample_shape
        x = layers.Flatten()(layers.Reshape((height * width, depth))(x))
    return minidl.Model(inputs, layers.Dense(3, activation="softmax")(x))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=small_graphs())
def test_onnxruntime_computes_what_minidl_computes_for_any_small_functional_graph(model, tmp_path):
    assert_onnx_predicts_as_minidl(model, tmp_path / "graph.onnx")


def test_consecutive_convs_and_poolings_stay_channels_first_between_two_transposes(tmp_path):
    model = minidl.Sequential([layers.Input((8, 8, 3)), layers.Conv2D(4, 3, activation="relu"),
                               layers.MaxPooling2D(2), layers.Conv2D(4, 2), layers.AveragePooling2D(1),
                               layers.Dropout(0.5), layers.Flatten(), layers.Dense(2, activation="softmax")])
    model.export(tmp_path / "m.onnx")
    assert op_types(tmp_path / "m.onnx") == ["Transpose", "Conv", "Relu", "MaxPool", "Conv", "AveragePool",
                                             "Transpose", "Flatten", "Gemm", "Softmax", "Identity"]


def test_a_model_without_image_axes_exports_without_transposes(tmp_path):
    model = minidl.Sequential([layers.Input((5,)), layers.Dense(4, activation="relu"), layers.Dense(2)])
    model.export(tmp_path / "mlp.onnx")
    assert "Transpose" not in op_types(tmp_path / "mlp.onnx")
    x = images((5,))
    np.testing.assert_allclose(run_onnx(tmp_path / "mlp.onnx", x), model.predict(x), atol=1e-5, rtol=0)


def test_softmax_over_a_channels_first_tensor_runs_over_the_channels(tmp_path):
    model = minidl.Sequential([layers.Input((4, 4, 3)), layers.Conv2D(5, 1), layers.Softmax()])
    model.export(tmp_path / "m.onnx")
    x = images((4, 4, 3))
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), model.predict(x), atol=1e-5, rtol=0)


def test_the_graph_declares_opset_17_and_a_free_batch_axis(tmp_path):
    model = minidl.Sequential([layers.Input((6, 6, 1)), layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(3)])
    model.export(tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.opset_import[0].version == onnx_export.OPSET == 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 6, 6, 1]
    assert run_onnx(tmp_path / "m.onnx", images((6, 6, 1), count=7)).shape == (7, 3)


def test_a_float64_model_exports_a_float64_graph(tmp_path):
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(3, activation="tanh")]).cast("float64")
    model.export(tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = np.random.default_rng(0).random((2, 4))
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), model.predict(x), atol=1e-12, rtol=0)


def test_an_unknown_export_format_or_an_unbuilt_model_is_refused_and_nothing_is_written(tmp_path):
    built = minidl.Sequential([layers.Input((3,)), layers.Dense(2)])
    with pytest.raises(ValueError, match="format 'tflite' is not supported; minidl exports format='onnx'"):
        built.export(tmp_path / "m.tflite", format="tflite")
    with pytest.raises(ValueError, match="not built"):
        minidl.Sequential([layers.Dense(2)]).export(tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_a_failed_export_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the previous file")

    def checker_refuses(*args, **kwargs):
        raise onnx.checker.ValidationError("refused")
    monkeypatch.setattr(onnx.checker, "check_model", checker_refuses)
    with pytest.raises(onnx.checker.ValidationError):
        minidl.Sequential([layers.Input((3,)), layers.Dense(2)]).export(path)
    assert path.read_bytes() == b"the previous file" and os.listdir(tmp_path) == ["m.onnx"]
