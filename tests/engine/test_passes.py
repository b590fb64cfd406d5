"""The planner's passes: where each applies, that each gives the plain layers' outputs and gradients,
and that each passes the gradient check on its own."""

import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minidl
from minidl import gradcheck, layers
from minidl.engine import PASSES, build_plan, conv_choice
from minidl.engine.conv_methods import ConvLinear, Im2colByImage, Im2colGemm, Winograd
from minidl.presets import seed_cnn

TOLERANCE = 1e-6


def only(pass_name):
    """``optimize`` with one pass on and every other off."""
    return {name: name == pass_name for name in PASSES}


def passes_of(model, layer_index):
    return model.plan.step_of(model.layers[layer_index]).passes


def test_optimize_takes_true_false_or_a_dict_of_known_passes():
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(2)])
    with pytest.raises(ValueError, match="unknown pass 'fusion'; the passes are"):
        model.compile(optimizer="sgd", loss="mse", optimize={"fusion": False})
    with pytest.raises(ValueError, match="switched by True or False, got {'conv_algorithm': 'no'}"):
        model.compile(optimizer="sgd", loss="mse", optimize={"conv_algorithm": "no"})
    with pytest.raises(ValueError, match="optimize must be True, False or a dict"):
        model.compile(optimizer="sgd", loss="mse", optimize="fast")


def test_the_conv_layer_file_names_no_algorithm_chunk_or_pooling():
    source = (pathlib.Path(minidl.__file__).parent / "layers" / "conv.py").read_text().lower()
    assert not [word for word in ("winograd", "chunk", "pool", "direct") if word in source]


@pytest.mark.parametrize("options, input_shape, expected", [
    ({}, (13, 13, 32), True),
    ({}, (28, 28, 3), False),  # too few input channels for its 16 GEMMs to pay off
    ({"kernel_size": 5}, (13, 13, 32), False),
    ({"strides": 2}, (13, 13, 32), False),
    ({"kernel_size": (3, 1)}, (13, 13, 32), False),
    ({"padding": "same"}, (13, 13, 64), True),
])
def test_the_cost_model_picks_winograd_for_3x3_stride_1_convs_over_enough_channels(options, input_shape, expected):
    model = minidl.Sequential([layers.Input(input_shape), layers.Conv2D(4, options.pop("kernel_size", 3), **options)])
    step = model.plan.step_of(model.layers[0])
    assert ("conv_algorithm" in step.passes) == expected
    if expected:
        assert step.linear.method.name == "winograd"


def conv_then_pool(input_shape=(9, 8, 1), conv_options=None, pool_options=None, first=True, dtype="float32"):
    """``[Input, (Conv2D 1x1,) Conv2D(relu), MaxPooling2D, Flatten, Dense]``; with ``first=False`` a
    1x1 conv before the conv makes the conv's input gradient needed."""
    model = minidl.Sequential([layers.Input(input_shape)])
    if not first:
        model.add(layers.Conv2D(input_shape[-1], 1, dtype=dtype))
    model.add(layers.Conv2D(3, **{"kernel_size": 3, "activation": "relu", "dtype": dtype, **(conv_options or {})}))
    model.add(layers.MaxPooling2D(**{"pool_size": 2, **(pool_options or {})}))
    model.add(layers.Flatten())
    model.add(layers.Dense(2, dtype=dtype))
    return model


@pytest.mark.parametrize("conv_options, pool_options, input_shape, first, expected", [
    ({}, {}, (9, 8, 1), True, True),
    ({"activation": "tanh"}, {}, (9, 8, 1), True, True),  # any non-decreasing activation
    ({"activation": "softmax"}, {}, (9, 8, 1), True, False),
    ({"padding": "same"}, {}, (9, 8, 1), True, False),
    ({"strides": 2}, {}, (9, 8, 1), True, False),
    ({"kernel_size": 5}, {}, (9, 8, 1), True, False),
    ({}, {}, (9, 8, 3), True, False),  # three input channels
    ({}, {}, (9, 8, 1), False, False),  # not the first layer: its input gradient is needed
    ({}, {"pool_size": 3}, (9, 8, 1), True, False),
    ({}, {"strides": 1}, (9, 8, 1), True, False),
    ({}, {"padding": "same"}, (9, 9, 1), True, False),  # a 7x7 output, padded by one for its last window
])
def test_a_gray_first_conv_runs_with_its_pooling_as_one_kernel_only_where_that_kernel_applies(
        conv_options, pool_options, input_shape, first, expected):
    model = conv_then_pool(input_shape, conv_options, pool_options, first)
    conv_index = 0 if first else 1
    assert ("direct_conv_pool" in passes_of(model, conv_index)) == expected
    lines = []
    model.summary(print_fn=lines.append)
    conv, pool = model.layers[conv_index:conv_index + 2]
    assert (f"{conv.name} + {pool.name}: direct_conv_pool" in lines[0]) == expected


def test_the_direct_kernel_needs_no_input_gradient_so_a_gradient_check_of_the_input_plans_without_it():
    model = conv_then_pool()
    model.input_grad_needed = True
    assert "direct_conv_pool" not in passes_of(model, 0)
    model.input_grad_needed = False
    assert "direct_conv_pool" in passes_of(model, 0)


def outputs_and_gradients(model, x, grad_out, training):
    """``(y, dL/dx, [every parameter gradient])`` of one forward and one backward pass (backward from
    ``dL/dy``: the models here are compiled with MSE)."""
    y = np.array(model.forward(x, training=training))
    grad_x = model.backward(grad_out)
    grads = [np.array(layer.grads[key]) for layer in model.layers for key in sorted(layer.grads)]
    return y, None if grad_x is None else np.array(grad_x), grads


def assert_same_results(planned, plain, rtol, atol):
    for actual, expected in zip(planned[:2], plain[:2]):
        if expected is None:
            assert actual is None
        else:
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
    assert len(planned[2]) == len(plain[2])
    for actual, expected in zip(planned[2], plain[2]):
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


CONV_POOL_CASES = [
    ({"kernel_size": 3}, {"pool_size": 2}, (13, 12, 2)),  # 11 x 10 -> 5 x 5: the last row is never read
    ({"kernel_size": 3, "strides": 2, "padding": "same"}, {"pool_size": 2}, (13, 12, 2)),
    ({"kernel_size": (2, 3), "padding": "same"}, {"pool_size": (3, 2), "strides": (3, 1)}, (13, 12, 2)),
    ({"kernel_size": 3}, {"pool_size": 2, "padding": "same"}, (13, 12, 2)),  # 'same' pooling reads every output
    ({"kernel_size": 3, "activation": "sigmoid"}, {"pool_size": 2}, (13, 12, 1)),
    ({"kernel_size": 3, "padding": "same"}, {"pool_size": (3, 2), "strides": (3, 1)}, (13, 12, 2)),
]


@pytest.mark.parametrize("pass_name", [*PASSES, "all"])
@pytest.mark.parametrize("conv, pool, input_shape", CONV_POOL_CASES)
@pytest.mark.parametrize("training", [True, False], ids=["training", "after an inference pass"])
@pytest.mark.parametrize("input_grad_needed", [False, True], ids=["", "with dL/dx"])
def test_each_pass_gives_the_plain_outputs_and_gradients(backend, pass_name, conv, pool, input_shape, training,
                                                         input_grad_needed, monkeypatch):
    monkeypatch.setattr(conv_choice, "WINOGRAD_MIN_CHANNELS", 1)
    models = []
    for optimize in (True if pass_name == "all" else only(pass_name), False):
        model = minidl.Sequential([layers.Input(input_shape), layers.Conv2D(3, **{"activation": "relu", **conv}),
                                   layers.MaxPooling2D(**pool), layers.Flatten(), layers.Dense(2)]).cast("float64")
        model.compile(optimizer="sgd", loss="mse", optimize=optimize, max_workspace_bytes=1)  # one image a chunk
        model.input_grad_needed = input_grad_needed
        models.append(model)
    models[0].set_weights(models[1].get_weights())
    rng = np.random.default_rng(0)
    x, grad_out = rng.standard_normal((3, *input_shape)), rng.standard_normal((3, 2))
    planned = outputs_and_gradients(models[0], x, grad_out, training)
    plain = outputs_and_gradients(models[1], x, grad_out, training=True)
    assert_same_results(planned, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pass_name", list(PASSES))
@pytest.mark.parametrize("check_input", [False, True])
def test_each_pass_alone_passes_the_gradient_check(backend, pass_name, check_input, monkeypatch):
    monkeypatch.setattr(conv_choice, "WINOGRAD_MIN_CHANNELS", 1)
    minidl.utils.set_random_seed(4)  # weights whose ReLU and max-pool kinks lie beyond the check's steps
    model = minidl.Sequential([layers.Input((10, 9, 1)), layers.Conv2D(3, 3, activation="tanh"), layers.MaxPooling2D(2),
                               layers.Conv2D(4, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
                               layers.Flatten(), layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", optimize=only(pass_name), max_workspace_bytes=1)
    rng = np.random.default_rng(2)
    report = gradcheck.check_model(model, rng.standard_normal((3, 10, 9, 1)), np.eye(3)[[0, 2, 1]],
                                   check_input=check_input)
    assert report.passed(TOLERANCE), str(report)


AVG_POOL_CASES = [
    ({"kernel_size": 3}, {"pool_size": 2}, (13, 12, 2)),  # 11 x 10 -> 5 x 5: the last row is never read
    ({"kernel_size": 5, "strides": 2, "padding": "same", "activation": "tanh"}, {"pool_size": 2}, (13, 12, 3)),
    ({"kernel_size": (2, 3), "padding": "same", "activation": "sigmoid"},
     {"pool_size": (3, 2), "strides": (3, 1), "padding": "same"}, (13, 12, 2)),  # windows cut by the padding
    ({"kernel_size": 3, "activation": "linear", "use_bias": False}, {"pool_size": 3, "strides": 2}, (13, 12, 2)),
]


def conv_avg_pool(conv, pool, input_shape, first):
    """``[Input, (Conv2D 1x1,) Conv2D, AveragePooling2D, Flatten, Dense]`` in float64."""
    stack = [layers.Input(input_shape)] + ([] if first else [layers.Conv2D(input_shape[-1], 1)])
    stack += [layers.Conv2D(3, **{"activation": "relu", **conv}), layers.AveragePooling2D(**pool),
              layers.Flatten(), layers.Dense(2)]
    return minidl.Sequential(stack).cast("float64")


@pytest.mark.parametrize("optimize", [only("activation_with_average_pool"), True], ids=["alone", "all passes"])
@pytest.mark.parametrize("conv, pool, input_shape", AVG_POOL_CASES)
@pytest.mark.parametrize("training", [True, False], ids=["training", "after an inference pass"])
@pytest.mark.parametrize("first", [True, False], ids=["first", "dL/dx needed"])
def test_a_conv_with_its_average_pooling_in_one_step_gives_the_plain_outputs_and_gradients(
        backend, optimize, conv, pool, input_shape, training, first):
    models = []
    for options in (optimize, False):
        model = conv_avg_pool(conv, pool, input_shape, first)
        model.compile(optimizer="sgd", loss="mse", optimize=options, max_workspace_bytes=1)
        models.append(model)
    models[0].set_weights(models[1].get_weights())
    conv_layer = models[0].layers[0 if first else 1]
    assert "activation_with_average_pool" in models[0].plan.step_of(conv_layer).passes
    rng = np.random.default_rng(0)
    x, grad_out = rng.standard_normal((3, *input_shape)), rng.standard_normal((3, 2))
    planned = outputs_and_gradients(models[0], x, grad_out, training)
    plain = outputs_and_gradients(models[1], x, grad_out, training=True)
    assert_same_results(planned, plain, rtol=1e-10, atol=1e-12)


def test_a_softmax_conv_keeps_its_average_pooling_apart():
    model = conv_avg_pool({"kernel_size": 3, "activation": "softmax"}, {"pool_size": 2}, (9, 8, 2), True)
    assert "activation_with_average_pool" not in passes_of(model, 0)


@pytest.mark.parametrize("optimize", [only("activation_with_average_pool"), True], ids=["alone", "all passes"])
@pytest.mark.parametrize("check_input", [False, True])
def test_a_conv_with_its_average_pooling_in_one_step_passes_the_gradient_check(backend, optimize, check_input):
    minidl.utils.set_random_seed(4)
    model = strided_cnn((12, 11, 3))
    model.compile(optimizer="sgd", loss="categorical_crossentropy", optimize=optimize)
    assert "activation_with_average_pool" in passes_of(model, 0)
    rng = np.random.default_rng(2)
    report = gradcheck.check_model(model, rng.standard_normal((3, 12, 11, 3)), np.eye(3)[[0, 2, 1]],
                                   check_input=check_input)
    assert report.passed(TOLERANCE), str(report)


def strided_cnn(input_shape):
    """Two 5x5 stride-2 'same' convs (the second needs dL/dx), average pooling between them."""
    return minidl.Sequential([layers.Input(input_shape),
                              layers.Conv2D(4, 5, strides=2, padding="same", activation="tanh"),
                              layers.AveragePooling2D(2), layers.Conv2D(3, 5, strides=2, padding="same"),
                              layers.Flatten(), layers.Dense(3, activation="softmax")]).cast("float64")


@pytest.mark.parametrize("build, input_shape", [
    *[(lambda shape, conv=conv, pool=pool: minidl.Sequential([
        layers.Input(shape), layers.Conv2D(3, **{"activation": "relu", **conv}), layers.MaxPooling2D(**pool),
        layers.Flatten(), layers.Dense(3)]).cast("float64"), shape) for conv, pool, shape in CONV_POOL_CASES],
    (strided_cnn, (12, 11, 3)),
])
@pytest.mark.parametrize("training", [True, False], ids=["training", "after an inference pass"])
def test_convs_image_by_image_give_the_plain_outputs_and_gradients_and_run_unchunked(backend, build, input_shape,
                                                                                     training, monkeypatch):
    monkeypatch.setattr(conv_choice, "modelled_choice", lambda conv, names: "im2col_by_image")
    models = []
    for optimize in (True, False):
        model = build(input_shape)
        model.compile(optimizer="sgd", loss="mse", optimize=optimize, max_workspace_bytes=1)
        model.input_grad_needed = True
        models.append(model)
    models[0].set_weights(models[1].get_weights())
    convs = [layer for layer in models[0].layers if isinstance(layer, layers.Conv2D)]
    for conv in convs:
        linear = models[0].plan.step_of(conv).linear
        assert linear.method.name == "im2col_by_image"
        assert linear.images_per_chunk is None and linear.inference_images_per_chunk is None
    rng = np.random.default_rng(0)
    x, grad_out = rng.standard_normal((3, *input_shape)), rng.standard_normal((3, 3))
    planned = outputs_and_gradients(models[0], x, grad_out, training)
    plain = outputs_and_gradients(models[1], x, grad_out, training=True)
    assert_same_results(planned, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("check_input", [False, True])
def test_convs_image_by_image_pass_the_gradient_check(backend, check_input, monkeypatch):
    monkeypatch.setattr(conv_choice, "modelled_choice", lambda conv, names: "im2col_by_image")
    minidl.utils.set_random_seed(4)
    model = strided_cnn((12, 11, 3))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    rng = np.random.default_rng(2)
    report = gradcheck.check_model(model, rng.standard_normal((3, 12, 11, 3)), np.eye(3)[[0, 2, 1]],
                                   check_input=check_input)
    assert report.passed(TOLERANCE), str(report)


@pytest.mark.parametrize("training_method, inference_method", [("im2col", "winograd_4x4"),
                                                               ("winograd", "im2col_by_image"),
                                                               ("im2col_by_image", "winograd")])
def test_outside_training_a_conv_runs_by_its_inference_method_and_a_backward_after_it_by_its_training_one(
        backend, training_method, inference_method, monkeypatch):
    from minidl.engine import passes

    def chosen(conv, pads, input_grad_needed, inference_bytes=None):
        return training_method if inference_bytes is None else inference_method

    monkeypatch.setattr(passes, "choose_method", chosen)
    models = []
    for optimize in (True, False):
        model = minidl.Sequential([layers.Input((10, 9, 3)), layers.Conv2D(4, 3, padding="same", activation="tanh"),
                                   layers.MaxPooling2D(2), layers.Conv2D(3, 3, activation="relu"),
                                   layers.Flatten(), layers.Dense(3)]).cast("float64")
        model.compile(optimizer="sgd", loss="mse", optimize=optimize, max_workspace_bytes=1)
        models.append(model)
    models[0].set_weights(models[1].get_weights())
    for conv in (models[0].layers[0], models[0].layers[2]):
        step = models[0].plan.step_of(conv)
        assert step.linear.method.name == training_method and step.linear.inference_method.name == inference_method
        assert "inference_conv_algorithm" in step.passes
        # inference chunks sized by the inference method's scratch (max_workspace_bytes=1: one image, or none)
        assert step.linear.inference_images_per_chunk == step.linear.images_within(1, training=False)
    rng = np.random.default_rng(0)
    x, grad_out = rng.standard_normal((3, 10, 9, 3)), rng.standard_normal((3, 3))
    pooled_step = models[0].plan.step_of(models[0].layers[0])
    kernel_matrices = []
    monkeypatch.setattr(pooled_step.linear, "kernel_matrix_for",
                        lambda training, made_by=pooled_step.linear.kernel_matrix_for:
                        kernel_matrices.append(training) or made_by(training))
    np.testing.assert_allclose(models[0].predict(x, batch_size=3), models[1].predict(x, batch_size=3), rtol=1e-10)
    assert kernel_matrices == [False]  # made once for the pass, pooled in one-image chunks
    planned = outputs_and_gradients(models[0], x, grad_out, training=False)  # a backward after an inference pass
    plain = outputs_and_gradients(models[1], x, grad_out, training=True)
    assert_same_results(planned, plain, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- random models, planned against plain


@st.composite
def small_models(draw):
    """Layer configs for ``Input -> [conv/pool/activation/dropout blocks] -> Flatten -> Dense -> Dense``
    over a small image, and that image's shape."""
    height, width, channels = draw(st.integers(6, 10)), draw(st.integers(6, 10)), draw(st.integers(1, 3))
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "conv", "max", "average", "activation", "leaky", "dropout",
                                     "batch_norm", "zero_pad", "rescaling"]))
        if kind == "conv":
            blocks.append(("conv", {"filters": draw(st.integers(1, 4)), "kernel_size": draw(st.sampled_from([1, 2, 3])),
                                    "strides": draw(st.sampled_from([1, 1, 2])),
                                    "padding": draw(st.sampled_from(["valid", "same"])),
                                    "activation": draw(st.sampled_from([None, "relu", "tanh", "sigmoid"])),
                                    "use_bias": draw(st.booleans())}))
        elif kind in ("max", "average"):
            blocks.append((kind, {"pool_size": draw(st.sampled_from([1, 2])), "padding": draw(st.sampled_from(["valid", "same"]))}))
        elif kind == "activation":
            blocks.append(("activation", {"activation": draw(st.sampled_from(["relu", "tanh", "sigmoid"]))}))
        else:
            blocks.append((kind, {}))
    return (height, width, channels), blocks, draw(st.sampled_from(["mse", "categorical_crossentropy"]))


def model_from(input_shape, blocks, seed):
    made = {"conv": lambda o: layers.Conv2D(**o), "max": lambda o: layers.MaxPooling2D(**o),
            "average": lambda o: layers.AveragePooling2D(**o), "activation": lambda o: layers.Activation(**o),
            "leaky": lambda o: layers.LeakyReLU(0.1), "dropout": lambda o: layers.Dropout(0.3, seed=seed),
            "batch_norm": lambda o: layers.BatchNormalization(), "zero_pad": lambda o: layers.ZeroPadding2D(1),
            "rescaling": lambda o: layers.Rescaling(0.5, offset=0.1)}
    model = minidl.Sequential([layers.Input(input_shape)])
    for kind, options in blocks:
        try:
            model.add(made[kind](options))
        except ValueError:  # a window that no longer fits the shrunken image
            return None
    model.add(layers.Flatten())
    model.add(layers.Dense(4, activation="relu"))
    model.add(layers.Dense(3, activation="softmax"))
    return model


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=small_models())
def test_random_models_give_the_plain_outputs_and_gradients_when_planned(case, monkeypatch):
    input_shape, blocks, loss = case
    monkeypatch.setattr(conv_choice, "WINOGRAD_MIN_CHANNELS", 1)
    models = [model_from(input_shape, blocks, seed=7) for _ in range(2)]
    if models[0] is None:
        return
    for model, optimize in zip(models, (True, False)):
        model.compile(optimizer="sgd", loss=loss, optimize=optimize, max_workspace_bytes=4096)
    models[0].set_weights(models[1].get_weights())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, *input_shape)).astype(np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0]]
    results = []
    for model in models:
        y_pred = model.forward(x, training=True)
        _, grad = model.loss_and_grad(y_pred, y)
        model.backward(grad)
        results.append((np.array(y_pred), None, [np.array(layer.grads[key]) for layer in model.layers
                                                 for key in sorted(layer.grads)]))
    assert_same_results(*results, rtol=1e-4, atol=1e-5)


def test_one_sgd_step_of_the_seed_cnn_gives_the_plain_weights(backend):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 64)
    weights = []
    for optimize in (True, False):
        minidl.utils.set_random_seed(3)
        model = seed_cnn()
        model.compile(optimizer=minidl.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", optimize=optimize)
        model.train_on_batch(x, y)
        weights.append(model.get_weights())
    for planned, plain in zip(*weights):
        assert np.linalg.norm(planned - plain) <= 1e-4 * np.linalg.norm(plain)


def test_summary_says_which_passes_shape_which_layers():
    lines = []
    model = seed_cnn()
    model.summary(print_fn=lines.append)
    conv, pool = model.layers[:2]
    assert f"{conv.name} + {pool.name}: direct_conv_pool, inference_maxima" in lines[0]
    assert "activation_after_max_pool, crop_unread_outputs, conv_algorithm" in lines[0]
    plain = seed_cnn()
    plain.compile(optimizer="sgd", loss="mse", optimize=False)
    plain.summary(print_fn=lines.append)
    assert "none: every layer runs its own forward and backward" in lines[1]


@pytest.mark.parametrize("last", [lambda: layers.Dense(3, activation="softmax"),
                                  lambda: layers.Activation("softmax")])
def test_under_cross_entropy_the_last_softmax_keeps_its_logits_and_the_loss_starts_there(backend, last):
    from minidl.engine.steps import SoftmaxLogitsStep
    from minidl.kernels import numpy_ref

    model = minidl.Sequential([layers.Input((3,)), layers.Dense(3), last()]).cast("float64")
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.set_weights([np.eye(3) * 500, np.zeros(3)] + ([np.eye(3), np.zeros(3)] if model.layers[-1].params else []))
    x, targets = np.array([[2.0, 0.0, -2.0]]), np.array([[0.0, 0.0, 1.0]])  # logits 1000 apart
    assert isinstance(model.plan.output_step, SoftmaxLogitsStep)
    assert model.plan.output_step.passes == ["softmax_cross_entropy"]
    loss = model.train_on_batch(x, targets)
    assert loss == pytest.approx(numpy_ref.softmax_cross_entropy(np.array([[1000.0, 0.0, -1000.0]]), targets)[0][0])
    assert np.isfinite(model.get_weights()[0]).all()


@pytest.mark.parametrize("loss, optimize", [("mse", True), ("categorical_crossentropy", False),
                                            ("categorical_crossentropy", {"softmax_cross_entropy": False})])
def test_without_a_cross_entropy_or_the_pass_the_softmax_is_a_plain_step(backend, loss, optimize):
    model = minidl.Sequential([layers.Input((3,)), layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss=loss, optimize=optimize)
    model.predict(np.ones((2, 3)), verbose=0)
    assert model.plan.output_logits() is None
    assert "softmax_cross_entropy" not in model.plan.output_step.passes


# ------------------------------------------------------------------------ chunks and the workspace


@pytest.mark.parametrize("method", [Im2colGemm((3, 3), (1, 1)), Im2colByImage((3, 3), (1, 1)), Winograd(2),
                                    Winograd(4)], ids=["im2col", "im2col_by_image", "winograd", "winograd_4x4"])
def test_chunked_forward_and_backward_equal_the_single_chunk_ones(method):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 9, 9, 3)).astype(np.float32)
    grad_z = rng.standard_normal((5, 9, 9, 4)).astype(np.float32)
    conv = layers.Conv2D(4, 3, padding="same")
    conv.build(x.shape[1:])
    whole, chunked = ConvLinear(conv, method), ConvLinear(conv, method, images_per_chunk=2)
    assert [c.stop - c.start for c in chunked.chunks(5)] == [2, 2, 1]
    np.testing.assert_allclose(chunked.forward(x), whole.forward(x), rtol=1e-5, atol=1e-6)
    grad_x_chunked, grad_kernel_chunked = chunked.backward(grad_z, True), conv.grads["kernel"]
    np.testing.assert_allclose(grad_x_chunked, whole.backward(grad_z, True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_kernel_chunked, conv.grads["kernel"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("winograd, per_image", [(False, 109 * 109 * 3 * 3 * 32 * 4),
                                                 (True, 16 * 55 * 55 * (32 + 64) * 4)])
def test_workspace_of_a_224_pixel_batch_stays_under_the_bound(winograd, per_image):
    conv = layers.Conv2D(64, 3)
    conv.build((111, 111, 32))
    plan = build_plan([(conv, (0,), 1)], 0, 1, optimize={"conv_algorithm": winograd}, max_workspace_bytes=256 * 2**20)
    step = plan.steps[0]
    assert step.linear.images_per_chunk == 256 * 2**20 // per_image
    assert step.workspace_bytes(32) == 2 * step.linear.images_per_chunk * per_image <= 2 * 256 * 2**20


@pytest.mark.parametrize("winograd", [False, True], ids=["im2col", "winograd"])
def test_outside_training_a_conv_runs_in_its_inference_chunks_and_keeps_no_scratch(backend, winograd, monkeypatch):
    from minidl.engine import passes

    monkeypatch.setattr(passes, "INFERENCE_WORKSPACE_BYTES", 2 * 9 * 9 * 27 * 8)  # two images' im2col rows
    monkeypatch.setattr(conv_choice, "WINOGRAD_MIN_CHANNELS", 1 if winograd else 10**6)
    models = []
    for optimize in (True, False):
        model = minidl.Sequential([layers.Input((9, 9, 3)), layers.Conv2D(4, 3, padding="same", activation="tanh"),
                                   layers.Flatten(), layers.Dense(2)]).cast("float64")
        model.compile(optimizer="sgd", loss="mse", optimize=optimize)
        models.append(model)
    models[0].set_weights(models[1].get_weights())
    linear = models[0].plan.step_of(models[0].layers[0]).linear
    assert linear.method.name == ("winograd" if winograd else "im2col")
    assert linear.images_per_chunk >= 5 and linear.inference_images_per_chunk == (1 if winograd else 2)
    unfolded_batches = []
    unfold = linear.method.unfold
    monkeypatch.setattr(linear.method, "unfold", lambda x, pads: unfolded_batches.append(len(x)) or unfold(x, pads))
    x = np.random.default_rng(0).standard_normal((5, 9, 9, 3))
    np.testing.assert_allclose(models[0].predict(x, batch_size=5), models[1].predict(x, batch_size=5), rtol=1e-12)
    assert unfolded_batches == ([1] * 5 if winograd else [2, 2, 1]) and linear.unfolded is None
    unfolded_batches.clear()
    models[0].train_on_batch(x, np.zeros((5, 2)))
    assert unfolded_batches == [5] and linear.unfolded is not None


def test_outside_training_a_pooled_conv_image_by_image_runs_in_chunks_whose_output_fits_the_bound(
        backend, monkeypatch):
    from minidl.engine import passes

    monkeypatch.setattr(conv_choice, "modelled_choice", lambda conv, names: "im2col_by_image")
    monkeypatch.setattr(passes, "INFERENCE_WORKSPACE_BYTES", 2 * 8 * 8 * 4 * 8)  # two images' z
    models = []
    for optimize in (True, False):
        model = minidl.Sequential([layers.Input((8, 8, 3)), layers.Conv2D(4, 3, padding="same", activation="relu"),
                                   layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(2)]).cast("float64")
        model.compile(optimizer="sgd", loss="mse", optimize=optimize)
        models.append(model)
    models[0].set_weights(models[1].get_weights())
    step = models[0].plan.step_of(models[0].layers[0])
    assert type(step).__name__ == "ConvMaxPoolStep" and step.linear.method.name == "im2col_by_image"
    assert step.linear.inference_images_per_chunk is None and step.z_images_per_chunk == 2
    computed = []
    forward = step.linear.forward
    monkeypatch.setattr(step.linear, "forward", lambda x, *args: computed.append(len(x)) or forward(x, *args))
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 3))
    np.testing.assert_allclose(models[0].predict(x, batch_size=5), models[1].predict(x, batch_size=5), rtol=1e-12)
    assert computed == [2, 2, 1]
    computed.clear()
    models[0].train_on_batch(x, np.zeros((5, 2)))
    assert computed == [5]


@pytest.mark.slow
def test_a_training_step_on_224_pixel_images_fits_in_memory():
    script = textwrap.dedent("""
        import resource
        import numpy as np
        import minidl
        from minidl import layers
        model = minidl.Sequential([
            layers.Input((224, 224, 3)),
            layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        loss = model.train_on_batch(rng.random((32, 224, 224, 3), dtype=np.float32), rng.integers(0, 10, 32))
        assert np.isfinite(loss)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_mib = int(completed.stdout.split()[-1])
    # activations and their gradients are about 1.3 GiB at this size; unchunked im2col would add 1.8 GiB
    assert peak_mib < 3000


@pytest.mark.parametrize("between", [lambda: layers.BatchNormalization(), lambda: layers.ZeroPadding2D(1),
                                     lambda: layers.Rescaling(-1.0)])
def test_no_conv_and_pooling_pass_reaches_across_a_layer_between_them(between):
    """A BatchNormalization (or any layer) between a conv and its max pooling keeps both plain: pooling
    before the activation is exact only when the pooled tensor is the conv's own output."""
    model = minidl.Sequential([layers.Input((9, 8, 1)), layers.Conv2D(3, 3, activation="relu"), between(),
                               layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    fusing = {"direct_conv_pool", "activation_after_max_pool", "crop_unread_outputs"}
    assert not fusing & set(passes_of(model, 0)) and not fusing & set(passes_of(model, 2))
    assert model.plan.step_of(model.layers[2]).layers == (model.layers[2],)


@pytest.mark.parametrize("conv, pool, input_shape", CONV_POOL_CASES)
def test_every_pass_gives_the_plain_results_for_a_conv_without_bias(backend, conv, pool, input_shape, monkeypatch):
    monkeypatch.setattr(conv_choice, "WINOGRAD_MIN_CHANNELS", 1)
    models = []
    for optimize in (True, False):
        model = minidl.Sequential([layers.Input(input_shape),
                                   layers.Conv2D(3, **{"activation": "relu", **conv}, use_bias=False),
                                   layers.MaxPooling2D(**pool), layers.Flatten(), layers.Dense(2, use_bias=False)])
        model.cast("float64").compile(optimizer="sgd", loss="mse", optimize=optimize, max_workspace_bytes=1)
        models.append(model)
    models[0].set_weights(models[1].get_weights())
    assert "bias" not in models[0].layers[0].params and models[0].plan.step_of(models[0].layers[0]).passes
    rng = np.random.default_rng(0)
    x, grad_out = rng.standard_normal((3, *input_shape)), rng.standard_normal((3, 2))
    assert_same_results(*(outputs_and_gradients(model, x, grad_out, training=True) for model in models),
                        rtol=1e-10, atol=1e-12)


def test_one_sgd_step_through_batch_normalization_gives_the_plain_weights_and_moving_statistics(backend):
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 12, 12, 1), dtype=np.float32), rng.integers(0, 3, 16)
    weights = []
    for optimize in (True, False):
        minidl.utils.set_random_seed(5)
        model = minidl.Sequential([layers.Input((12, 12, 1)), layers.Conv2D(4, 3, use_bias=False),
                                   layers.BatchNormalization(), layers.ReLU(), layers.MaxPooling2D(2),
                                   layers.Conv2D(4, 3, activation="relu"), layers.GlobalAveragePooling2D(),
                                   layers.Dense(3, activation="softmax")])
        model.compile(optimizer=minidl.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                      optimize=optimize)
        model.train_on_batch(x, y)
        weights.append(model.get_weights())
    for planned, plain in zip(*weights):
        np.testing.assert_allclose(planned, plain, rtol=1e-5, atol=1e-6)


def parameter_free_front(front):
    """``[Input 6x6x2, *front, Conv2D 3x3, Flatten, Dense]``: ``front`` holds parameter-free layers."""
    return minidl.Sequential([layers.Input((6, 6, 2)), *front, layers.Conv2D(3, 3, activation="relu"),
                              layers.Flatten(), layers.Dense(2)])


@pytest.mark.parametrize("front, has_parameters", [
    ([], []),
    ([layers.Rescaling(1 / 255)], [False]),
    ([layers.Rescaling(2.0), layers.ZeroPadding2D(1)], [False, False]),
    ([layers.Conv2D(2, 1)], [True]),
])
def test_parameter_free_layers_over_the_input_need_no_gradient_and_neither_does_the_layer_after_them(
        front, has_parameters):
    model = parameter_free_front(front)
    model.compile(optimizer="sgd", loss="mse")
    conv_step = model.plan.step_of(model.layers[len(front)])
    assert conv_step.input_grad_needed == conv_step.computes_input_grad == any(has_parameters)
    for layer in front:
        step = model.plan.step_of(layer)
        assert not step.input_grad_needed
        assert (step.output in model.plan.nodes_with_grads) == bool(layer.params)
    model.input_grad_needed = True
    assert all(step.input_grad_needed for step in model.plan.steps)
    assert all(step.output in model.plan.nodes_with_grads for step in model.plan.steps)


@pytest.mark.parametrize("optimize", [True, False])
def test_a_model_behind_parameter_free_layers_trains_to_the_same_gradients_with_and_without_the_input_gradient(
        optimize):
    """The plan without ``dL/dx`` of the first layers (Rescaling, Flatten, then a Dense and a conv) gives
    the gradients of the plan that computes every input gradient (a gradient check's)."""
    rng = np.random.default_rng(0)
    dense_first = minidl.Sequential([layers.Input((4, 4, 2)), layers.Rescaling(0.5), layers.Flatten(),
                                     layers.Dense(5, activation="tanh", dtype="float64"),
                                     layers.Dense(3, dtype="float64")])
    conv_first = parameter_free_front([layers.Rescaling(0.5)])
    for model, shape, first_with_parameters in ((dense_first, (4, 4, 4, 2), 2), (conv_first, (4, 6, 6, 2), 1)):
        for layer in model.layers:
            layer.params = {key: rng.standard_normal(value.shape).astype(value.dtype) for key, value in layer.params.items()}
        model.compile(optimizer="sgd", loss="mse", optimize=optimize)
        x = rng.standard_normal(shape).astype(model.layers[-1].dtype)
        grad_out = rng.standard_normal((4, model.layers[-1].output_shape[-1])).astype(x.dtype)
        skipping = outputs_and_gradients(model, x, grad_out, training=True)
        assert skipping[1] is None
        assert not model.plan.step_of(model.layers[first_with_parameters]).computes_input_grad
        model.input_grad_needed = True
        computing = outputs_and_gradients(model, x, grad_out, training=True)
        assert computing[1] is not None
        assert_same_results(skipping[:1] + (None,) + skipping[2:], computing[:1] + (None,) + computing[2:],
                            rtol=1e-6, atol=1e-6)


def test_a_one_channel_first_conv_after_rescaling_runs_as_the_direct_kernel():
    model = minidl.Sequential([layers.Input((9, 8, 1)), layers.Rescaling(1 / 255),
                               layers.Conv2D(3, 3, activation="relu"), layers.MaxPooling2D(2), layers.Flatten(),
                               layers.Dense(2)])
    assert "direct_conv_pool" in passes_of(model, 1)
