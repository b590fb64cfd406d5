"""``explain``: equations with the live shapes of the batch, costs, and the planner's passes."""

import collections
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl import engine, layers, presets
from minidl.cli import main
from minidl.layers import base
from minidl.model import Sequential
from minidl.teaching.explain import PASS_EFFECTS, explain_model


def test_the_seed_cnn_shows_its_first_gemm_with_the_batch_shapes():
    text = explain_model(presets.seed_cnn(), 32)
    assert "(32*26*26=21632, 3*3*1=9)" in text
    assert "(21632, 9) @ (9, 32) -> (21632, 32)" in text
    assert "dL/dW2d = cols^T G" in text and "(9, 21632) @ (21632, 32) -> (9, 32)" in text


def test_every_line_fits_100_columns_at_any_batch_size():
    for batch_size in (1, 32, 4096):
        assert max(len(line) for line in explain_model(presets.seed_cnn(), batch_size).splitlines()) <= 100


def test_conv_flops_are_twice_the_gemm_multiply_adds_plus_bias_and_activation():
    model = Sequential([layers.Input((6, 6, 2)), layers.Conv2D(4, 3, activation="relu")])
    text = explain_model(model, 2)
    gemm = 2 * (2 * 4 * 4) * (3 * 3 * 2) * 4   # 2 M K F with M = N*OH*OW, K = KH*KW*C
    elementwise = 2 * (2 * 4 * 4) * 4          # bias and activation on every output
    assert f"forward {(gemm + elementwise) / 1e3:.3g} kFLOP" in text


def test_the_passes_named_are_those_of_the_plan():
    model = presets.seed_cnn()
    text = explain_model(model, 32)
    for step in model.plan.steps:
        for name in step.passes:
            assert f"- {name}:" in text
    assert "16 GEMMs V (16, 800, 32) @ U (16, 32, 64)" in text  # conv2d_1: 10x10 outputs read, 5x5 tiles
    assert "dL/dx is not computed" in text.split(f"{model.layers[2].name} (Conv2D)")[0]  # the direct first conv


def test_a_conv_computed_image_by_image_shows_one_gemm_per_image(monkeypatch):
    from minidl.engine import conv_choice

    monkeypatch.setattr(conv_choice, "modelled_choice", lambda conv, names: "im2col_by_image")
    model = Sequential([layers.Input((12, 12, 3)), layers.Conv2D(8, 5, strides=2, padding="same"),
                        layers.Flatten(), layers.Dense(2)])
    model.compile("sgd", "mse")
    text = explain_model(model, 16)
    assert "method: im2col image by image, 16 GEMMs cols[n] (36, 75) @ (75, 8)" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_a_winograd_conv_computed_image_by_image_shows_its_gemms_per_image(monkeypatch):
    from minidl.engine import conv_choice

    monkeypatch.setattr(conv_choice, "modelled_choice", lambda conv, names: "winograd_4x4_by_image")
    model = Sequential([layers.Input((12, 12, 8)), layers.Conv2D(16, 3, padding="same"),
                        layers.Flatten(), layers.Dense(2)])
    model.compile("sgd", "mse")
    text = explain_model(model, 4)
    assert ("method: Winograd F(4x4, 3x3) image by image, 36 GEMMs per image V[n] (36, 9, 8) @ U (36, 8, 16)"
            in " ".join(line.strip() for line in text.splitlines()))
    assert max(len(line) for line in text.splitlines()) <= 100


def test_a_conv_with_another_method_outside_training_names_it(monkeypatch):
    from minidl.engine import passes

    monkeypatch.setattr(passes, "choose_method", lambda conv, pads, grad, inference_bytes=None:
                        "im2col" if inference_bytes is None else "winograd_4x4")
    model = Sequential([layers.Input((12, 12, 3)), layers.Conv2D(8, 3), layers.Flatten(), layers.Dense(2)])
    model.compile("sgd", "mse")
    assert "method outside training: winograd_4x4" in explain_model(model, 4)


def test_the_plain_plan_shows_no_pass_and_skips_the_input_gradient_of_a_first_conv():
    model = presets.seed_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy", optimize=False)
    text = explain_model(model, 8)
    assert "planner   none" in text and "- winograd" not in text
    first_conv, second_conv = model.layers[0].name, model.layers[2].name
    assert "dL/dx is not computed" in text.split(f"{second_conv} (Conv2D)")[0]
    assert f"{first_conv} (Conv2D)" in text


def test_a_first_layer_without_separate_parameter_gradients_computes_the_input_gradient_and_the_plan_drops_it():
    model = Sequential([layers.Input((4, 4, 2)), layers.BatchNormalization(), layers.Flatten(),
                        layers.Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy", optimize=False)
    text = explain_model(model, 8)
    assert "dL/dx is computed by the layer's backward and dropped" in text


def test_every_pass_has_a_sentence():
    assert set(PASS_EFFECTS) == set(engine.PASSES)


def test_one_layer_by_name_and_an_unknown_name_is_refused():
    model = presets.seed_cnn()
    dense = model.layers[5].name
    text = explain_model(model, 4, layer=dense)
    assert f"{dense} (Dense)" in text and "(Conv2D)" not in text and "total:" not in text
    with pytest.raises(ValueError, match=f"no layer named 'nope'.*{model.layers[0].name}"):
        explain_model(model, 4, layer="nope")
    with pytest.raises(ValueError, match="batch_size"):
        explain_model(model, 0)


def test_model_explain_prints_or_returns_the_text():
    model = presets.tiny_cnn()
    printed = []
    assert model.explain(8, print_fn=printed.append) is None
    assert printed == [model.explain(8, print_fn=None)]


def test_the_command_prints_one_layer(capsys, monkeypatch):
    monkeypatch.setattr(base, "_names_used", collections.Counter())  # Keras's names, as in a fresh process
    assert main(["explain", "--model", "seed-cnn", "--batch-size", "32", "--layer", "conv2d_1"]) == 0
    out = capsys.readouterr().out
    assert "conv2d_1 (Conv2D)  (32, 13, 13, 32) -> (32, 11, 11, 64)" in out
    assert main(["explain", "--layer", "nope"]) == 1


def test_the_seed_cnn_costs_about_15_mflop_per_training_sample_as_the_design_notes_say():
    text = explain_model(presets.seed_cnn(), 32)
    forward, backward = (float(value) for value in
                         re.search(r"total: forward ([0-9.]+) MFLOP, backward ([0-9.]+) MFLOP", text).groups())
    assert 14 < (forward + backward) / 32 < 16


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 512), size=st.integers(5, 40), channels=st.integers(1, 64),
       filters=st.integers(1, 128), kernel=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2),
       padding=st.sampled_from(["valid", "same"]))
def test_any_conv_shows_its_gemm_with_consistent_shapes_within_100_columns(batch, size, channels, filters,
                                                                           kernel, stride, padding):
    model = Sequential([layers.Input((size, size, channels)),
                        layers.Conv2D(filters, kernel, strides=stride, padding=padding)])
    text = explain_model(model, batch)
    out_h, out_w, _ = model.layers[0].output_shape
    rows, k = batch * out_h * out_w, kernel * kernel * channels
    assert f"({rows}, {k}) @ ({k}, {filters}) -> ({rows}, {filters})" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_every_layer_class_has_its_own_equations():
    from minidl.layers import LAYER_CLASSES
    from minidl.teaching.explain import EXPLAINERS

    explained = tuple(layer_type for layer_type, _ in EXPLAINERS)
    assert [name for name, cls in LAYER_CLASSES.items() if not issubclass(cls, explained)] == []


def test_a_functional_model_with_merges_and_batch_norm_is_explained_within_100_columns():
    import minidl

    inputs = layers.Input((8, 8, 3))
    scaled = layers.Rescaling(1 / 255)(inputs)
    branch = layers.Conv2D(4, 3, activation="relu")(layers.ZeroPadding2D(1)(scaled))
    shortcut = layers.Conv2D(4, 1)(scaled)
    merged = layers.Concatenate()([layers.Add()([branch, shortcut]), shortcut])
    pooled = layers.GlobalAveragePooling2D()(layers.BatchNormalization()(merged))
    model = minidl.Model(inputs, layers.Dense(3, activation="softmax")(pooled))
    text = model.explain(4, print_fn=None)
    assert "(4, 8, 8, 4), (4, 8, 8, 4) -> (4, 8, 8, 8)" in text                      # Concatenate's inputs
    assert "dL/dx = gamma / sqrt(var + eps) (g - mean(g) - x^ mean(g x^))" in text
    assert "over the 256 values of each channel" in text                           # N*H*W = 4*8*8
    assert "y = x0 + x1" in text and "FLOPs and bytes not counted" not in text
    assert max(len(line) for line in text.splitlines()) <= 100
