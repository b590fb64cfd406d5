"""Plots are PNG files of the documented size in pixels (read back with OpenCV)."""

import cv2
import numpy as np
import pytest

import minidl
from minidl import layers

pytest.importorskip("matplotlib", reason="the plots extra (matplotlib) is not installed")
from minidl import plots  # noqa: E402


def png_size(path):
    """``(height, width)`` of the PNG at ``path``; fails if OpenCV cannot decode it."""
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None
    return image.shape[:2]


def conv_model():
    model = minidl.Sequential([layers.Input((8, 8, 1)), layers.Conv2D(6, 3, activation="relu"),
                               layers.Flatten(), layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_history_plot_has_one_500x400_panel_per_quantity(tmp_path):
    history = {"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.6], "accuracy": [0.3, 0.6, 0.7],
               "val_accuracy": [0.2, 0.5, 0.6], "learning_rate": [0.1, 0.1, 0.01]}
    assert png_size(plots.plot_history(history, tmp_path / "curves.png")) == (400, 1000)


def test_history_plot_from_a_real_fit(tmp_path):
    rng = np.random.default_rng(0)
    history = conv_model().fit(rng.random((12, 8, 8, 1)), np.arange(12) % 3, epochs=2, verbose=0)
    assert png_size(plots.plot_history(history, tmp_path / "h" / "curves.png")) == (400, 1000)


def test_confusion_matrix_plot_is_500x400(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 6]])
    path = plots.plot_confusion_matrix(matrix, tmp_path / "cm.png", class_names=["a", "b", "c"])
    assert png_size(path) == (400, 500)


def test_filter_grid_has_one_100px_cell_per_filter(tmp_path):
    # 6 filters -> 2 rows x 3 columns
    assert png_size(plots.plot_filters(conv_model(), tmp_path / "filters.png")) == (200, 300)


def test_feature_map_grid_has_one_cell_per_channel(tmp_path):
    image = np.random.default_rng(0).random((8, 8, 1))
    assert png_size(plots.plot_feature_maps(conv_model(), image, tmp_path / "maps.png")) == (200, 300)


def test_feature_maps_of_a_dense_layer_are_refused():
    model = conv_model()
    with pytest.raises(ValueError, match="not feature maps"):
        plots.plot_feature_maps(model, np.zeros((8, 8, 1)), "unused.png", layer_name=model.layers[-1].name)


def test_feature_maps_are_the_first_conv_outputs_channels_first():
    model = conv_model()
    image = np.random.default_rng(0).random((8, 8, 1))
    maps = plots.feature_maps(model, image)
    assert maps.shape == (6, 6, 6)
    np.testing.assert_allclose(maps, np.moveaxis(model.layers[0](image[None])[0], -1, 0))
    with pytest.raises(ValueError, match=r"takes images of shape \(8, 8, 1\), got \(9, 9, 1\)"):
        plots.feature_maps(model, np.zeros((9, 9, 1)))


def test_network_drawing_is_700_pixels_wide_and_60_per_layer(tmp_path):
    model = conv_model()
    path = plots.plot_network(model, tmp_path / "network.png")
    assert png_size(path) == (60 * (len(model.layers) + 1), 700)
