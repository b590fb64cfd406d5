"""Functional models: symbolic calls and their errors, graphs with fan-out and merges run on the
plan, gradient checks of whole graphs, saving, the summary, and the planner's passes on DAGs."""

import json

import numpy as np
import pytest

import minidl
from minidl import gradcheck, layers
from minidl.engine import PASSES

TOLERANCE = 1e-6


def residual_model(input_shape=(8, 8, 2), filters=3, name="residual"):
    """Conv -> Conv -> Add with the skip from the first conv, then pooling and a classifier."""
    inputs = minidl.Input(shape=input_shape, name="images")
    stem = layers.Conv2D(filters, 3, padding="same", activation="relu", name="stem")(inputs)
    branch = layers.Conv2D(filters, 3, padding="same", activation="relu", name="branch_a")(stem)
    branch = layers.Conv2D(filters, 3, padding="same", name="branch_b")(branch)
    merged = layers.Add(name="skip_add")([stem, branch])
    pooled = layers.MaxPooling2D(2, name="pool")(layers.Activation("relu", name="after_add")(merged))
    outputs = layers.Dense(3, activation="softmax", name="classifier")(layers.Flatten(name="flat")(pooled))
    return minidl.Model(inputs, outputs, name=name)


def inception_model(input_shape=(8, 8, 2), name="inception"):
    """Three parallel towers (1x1, 3x3, pooling) joined on the channels by Concatenate."""
    inputs = minidl.Input(shape=input_shape)
    tower_1 = layers.Conv2D(2, 1, activation="relu")(inputs)
    tower_3 = layers.Conv2D(3, 3, padding="same", activation="tanh")(layers.Conv2D(2, 1, activation="relu")(inputs))
    tower_pool = layers.Conv2D(2, 1)(layers.MaxPooling2D(3, strides=1, padding="same")(inputs))
    joined = layers.Concatenate(axis=-1)([tower_1, tower_3, tower_pool])
    outputs = layers.Dense(4, activation="softmax")(layers.Flatten()(layers.AveragePooling2D(2)(joined)))
    return minidl.Model(inputs, outputs, name=name)


def random_batch(model, count=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *model.input_shape)).astype(np.float32), \
        rng.integers(0, model.output_shape[-1], count)


# ------------------------------------------------------------------------------- symbolic calls


def test_input_is_a_symbolic_tensor_with_keras_shape_and_layers_called_on_it_are_built():
    inputs = minidl.Input(shape=(28, 28, 1), name="pixels", batch_size=16)
    assert inputs.shape == (16, 28, 28, 1) and inputs.sample_shape == (28, 28, 1)
    assert minidl.layers.Input is minidl.Input
    conv = layers.Conv2D(4, 3)
    features = conv(inputs)
    assert conv.built and conv.input_shape == (28, 28, 1)
    assert features.shape == (16, 26, 26, 4) and features.layer is conv and features.inputs == (inputs,)
    assert layers.Flatten()(features).shape == (16, 2704)


def test_input_refuses_bad_arguments():
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        minidl.Input(shape=(28, 0))
    with pytest.raises(ValueError, match="dtype must be one of"):
        minidl.Input(shape=(4,), dtype="int32")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        minidl.Input(shape=(4,), batch_size=0)


def test_a_wrong_shape_fails_at_the_call_naming_the_layer_and_both_shapes():
    images = minidl.Input(shape=(28, 28, 1))
    with pytest.raises(ValueError, match=r"'dense_on_images' \(Dense\) expects inputs of shape "
                                         r"\(None, features\), got \(None, 28, 28, 1\)"):
        layers.Dense(10, name="dense_on_images")(images)
    declared = layers.Dense(10, input_shape=(784,), name="declared")
    with pytest.raises(ValueError, match=r"'declared' \(Dense\) expects input of shape \(None, 784\), but is "
                                         r"called on \(None, 100\)"):
        declared(minidl.Input(shape=(100,)))
    built = layers.Dense(3, name="built_for_8")
    built.build((8,))
    with pytest.raises(ValueError, match=r"expects input of shape \(None, 8\), but is called on \(None, 5\)"):
        built(minidl.Input(shape=(5,)))
    a, b = layers.Conv2D(3, 3)(images), layers.Conv2D(3, 1)(images)
    with pytest.raises(ValueError, match=r"\(Add\) needs inputs of one shape, got \(None, 26, 26, 3\), "
                                         r"\(None, 28, 28, 3\)"):
        layers.Add()([a, b])
    with pytest.raises(ValueError, match=r"\(Concatenate\) needs inputs of equal shapes except on axis -1"):
        layers.Concatenate()([a, b])


def test_list_and_single_inputs_are_checked_against_the_layer_kind():
    x = minidl.Input(shape=(4,))
    with pytest.raises(TypeError, match=r"\(Add\) is called on a list of inputs, got SymbolicTensor"):
        layers.Add()(x)
    with pytest.raises(TypeError, match=r"\(Dense\) is called on one tensor, not a list"):
        layers.Dense(2)([x, x])


def test_a_layer_instance_is_called_once_shared_layers_are_refused():
    x = minidl.Input(shape=(4,))
    dense = layers.Dense(4, name="once")
    dense(x)
    with pytest.raises(ValueError, match=r"'once' \(Dense\) is already called in a functional model.*shared "
                                         r"layers are not supported"):
        dense(x)


def test_model_takes_one_input_and_one_output_and_refuses_foreign_inputs_clearly():
    a, b = minidl.Input(shape=(4,)), minidl.Input(shape=(4,))
    out = layers.Dense(2)(a)
    with pytest.raises(ValueError, match="exactly one input and one output; inputs holds 2"):
        minidl.Model([a, b], out)
    with pytest.raises(ValueError, match="exactly one input and one output; outputs holds 2"):
        minidl.Model(a, [out, layers.Dense(2)(a)])
    with pytest.raises(ValueError, match=f"depends on Input {b.name!r}, which is not the model's input"):
        minidl.Model(a, layers.Add()([layers.Dense(4)(a), layers.Dense(4)(b)]))
    with pytest.raises(TypeError, match="inputs must be a symbolic tensor"):
        minidl.Model(np.zeros((1, 4)), out)
    with pytest.raises(TypeError, match=r"Model\(inputs, outputs\) takes a minidl.Input"):
        minidl.Model()
    with pytest.raises(ValueError, match=r"layer names must be unique in a model, \['twin'\]"):
        minidl.Model(a, layers.Dense(2, name="twin")(layers.Dense(3, name="twin")(a)))


def test_sequential_still_takes_an_input_first_and_refuses_merge_layers():
    model = minidl.Sequential([minidl.Input(shape=(6,)), layers.Dense(3)])
    assert model.built and model.output_shape == (3,)
    added = minidl.Sequential()
    added.add(layers.Input(shape=(6,)))
    added.add(layers.Dense(2))
    assert added.built
    with pytest.raises(ValueError, match="merges several inputs, which a chain cannot give it"):
        added.add(layers.Add())
    with pytest.raises(ValueError, match="add takes layers .*got the output of layer"):
        minidl.Sequential().add(layers.Dense(2)(minidl.Input(shape=(3,))))
    assert isinstance(model, minidl.Model)


# ------------------------------------------------------------------------------------ running


def test_residual_model_predicts_what_its_layers_compute_one_by_one(backend):
    model = residual_model()
    x, _ = random_batch(model)
    stem = model.get_layer("stem")(x)
    branch = model.get_layer("branch_b")(model.get_layer("branch_a")(stem))
    merged = layers.Activation("relu")(stem + branch)
    pooled = model.get_layer("pool")(merged)
    expected = model.get_layer("classifier")(pooled.reshape(len(x), -1))
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_inception_model_concatenates_its_towers_on_the_channels(backend):
    model = inception_model()
    joined = next(layer for layer in model.layers if isinstance(layer, layers.Concatenate))
    assert joined.output_shape == (8, 8, 7)
    x, y = random_batch(model, count=8)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert model.predict(x).shape == (8, 4)


@pytest.mark.parametrize("build", [residual_model, inception_model])
@pytest.mark.parametrize("check_input", [True, False])
def test_whole_functional_models_pass_the_float64_gradient_check(backend, build, check_input):
    minidl.utils.set_random_seed(1)
    model = build(input_shape=(6, 6, 2))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = random_batch(model, count=3)
    report = gradcheck.check_model(model, x, y, check_input=check_input)
    assert report.passed(TOLERANCE), str(report)
    assert len([name for name in report.errors if name != "input"]) == sum(len(layer.params) for layer in model.layers)


def test_fan_out_gradients_are_summed_a_tensor_read_twice_gets_both_gradients(backend):
    inputs = minidl.Input(shape=(3,))
    hidden = layers.Dense(3, activation="tanh")(inputs)
    outputs = layers.Dense(2)(layers.Concatenate()([hidden, layers.Dense(3)(hidden), hidden]))
    model = minidl.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    report = gradcheck.check_model(model, rng.standard_normal((4, 3)), rng.standard_normal((4, 2)))
    assert report.passed(TOLERANCE), str(report)


@pytest.mark.parametrize("build", [residual_model, inception_model])
def test_optimized_plan_gives_the_plain_plan_predictions_and_training_step(backend, build):
    results = []
    for optimize in (True, False):
        minidl.utils.set_random_seed(5)
        model = build(input_shape=(10, 10, 1))
        model.compile(optimizer=minidl.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                      optimize=optimize)
        x, y = random_batch(model, count=6)
        before = model.predict(x)
        model.train_on_batch(x, y)
        results.append((before, model.get_weights()))
    (planned, planned_weights), (plain, plain_weights) = results
    np.testing.assert_allclose(planned, plain, rtol=1e-5, atol=1e-6)
    for fast, slow in zip(planned_weights, plain_weights):
        np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6)


def conv_read_by_pool_and(other_reader):
    """A grayscale first conv (relu) read by a 2x2 max pooling and, with ``other_reader``, by a
    strided 1x1 conv too, the two added."""
    inputs = minidl.Input(shape=(10, 10, 1))
    conv = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    pooled = layers.MaxPooling2D(2, name="pool")(conv)
    if other_reader:
        pooled = layers.Add()([pooled, layers.Conv2D(4, 1, strides=2)(conv)])
    return minidl.Model(inputs, layers.Dense(2)(layers.Flatten()(pooled)))


def test_conv_pool_fusions_do_not_fire_when_the_conv_output_has_another_reader(backend):
    alone = conv_read_by_pool_and(other_reader=False)
    fused_step = alone.plan.step_of(alone.get_layer("conv"))
    assert len(fused_step.layers) == 2 and "direct_conv_pool" in fused_step.passes
    shared = conv_read_by_pool_and(other_reader=True)
    step = shared.plan.step_of(shared.get_layer("conv"))
    assert step.layers == (shared.get_layer("conv"),)
    assert not {"direct_conv_pool", "activation_after_max_pool", "crop_unread_outputs"} & set(step.passes)
    shared.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = random_batch(shared, count=3)
    report = gradcheck.check_model(shared, x, y, check_input=False)
    assert report.passed(TOLERANCE), str(report)


# ---------------------------------------------------------------------------- structure, saving


def test_summary_lists_the_input_each_layer_and_what_it_is_connected_to():
    model = residual_model()
    lines = []
    model.summary(print_fn=lines.append)
    text = lines[0]
    assert "Connected to" in text and "images (InputLayer)" in text
    add_row = next(line for line in text.splitlines() if line.startswith("skip_add (Add)"))
    assert "(None, 8, 8, 3)" in add_row and add_row.rstrip().endswith("stem, branch_b")
    assert f"Total params: {model.count_params():,}" in text
    sequential_lines = []
    minidl.Sequential([minidl.Input((3,)), layers.Dense(2)]).summary(print_fn=sequential_lines.append)
    assert "Connected to" not in sequential_lines[0]


def test_get_layer_finds_by_name_or_index_and_names_the_layers_otherwise():
    model = residual_model()
    assert model.get_layer("skip_add") is model.get_layer(index=model.layers.index(model.get_layer("skip_add")))
    assert model.get_layer(index=-1).name == "classifier"
    with pytest.raises(ValueError, match=r"no layer named 'nope'; the layers are \['stem'"):
        model.get_layer("nope")
    with pytest.raises(ValueError, match="takes a layer name or an index, one of the two"):
        model.get_layer()


def test_weights_round_trip_and_are_checked_before_any_is_set():
    model = residual_model()
    weights = model.get_weights()
    assert len(weights) == 2 * sum(1 for layer in model.layers if layer.params)
    changed = [w + 1 for w in weights]
    model.set_weights(changed)
    for got, expected in zip(model.get_weights(), changed):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError):
        model.set_weights(changed[:-1] + [np.zeros((1, 1))])
    for got, expected in zip(model.get_weights(), changed):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("build", [residual_model, inception_model])
def test_save_and_load_give_the_same_graph_and_predictions(tmp_path, build):
    model = build()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = random_batch(model, count=6)
    model.fit(x, y, batch_size=3, epochs=1, verbose=0)
    json.dumps(model.get_config())
    model.save(tmp_path / "graph.minidl")
    loaded = minidl.load_model(tmp_path / "graph.minidl")
    assert type(loaded) is minidl.Model and [layer.name for layer in loaded.layers] == \
        [layer.name for layer in model.layers]
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    loaded.fit(x, y, batch_size=3, epochs=1, verbose=0)  # the optimizer state came back with it


def test_a_graph_architecture_naming_an_unknown_tensor_is_refused():
    config = residual_model().get_config()
    config["layers"][1]["inbound"] = ["missing"]
    with pytest.raises(ValueError, match=r"layer 'branch_a' reads \['missing'\], which no earlier layer or input "
                                         r"writes"):
        minidl.Model.from_config(config)


def test_a_sequential_file_without_a_model_class_name_still_loads_as_sequential(tmp_path):
    model = minidl.Sequential([minidl.Input((4,)), layers.Dense(2, name="only")])
    model.save(tmp_path / "chain.minidl")
    assert "class_name" not in model.get_config()
    assert type(minidl.load_model(tmp_path / "chain.minidl")) is minidl.Sequential


def test_every_pass_name_is_known_to_the_planner_used_by_functional_models():
    model = residual_model(input_shape=(6, 6, 1))
    model.compile(optimizer="sgd", loss="mse", optimize={name: False for name in PASSES})
    assert all(not step.passes for step in model.plan.steps)


@pytest.mark.parametrize("change, message", [
    (lambda config: config.pop("input"), "needs an 'input' object with a string 'name'"),
    (lambda config: config["layers"][2].update(inbound="stem"), "layer 2 needs an 'inbound' list"),
    (lambda config: config.update(output=3), "needs the 'output' layer's name, got 3"),
])
def test_a_malformed_graph_file_is_refused_naming_the_file_and_the_problem(tmp_path, change, message):
    from minidl import validation
    config = residual_model().get_config()
    change(config)
    with pytest.raises(ValueError, match=f"arch.json: .*{message}"):
        validation.architecture(config, "arch.json")


def test_build_accepts_the_models_own_shape_with_or_without_the_batch_axis_only():
    model = residual_model()
    model.build((None, 8, 8, 2))
    model.build((8, 8, 2))
    with pytest.raises(ValueError, match=r"built for inputs \(None, 8, 8, 2\) by its Input, got \(None, 9, 9, 2\)"):
        model.build((None, 9, 9, 2))
