"""Layers, one module per family, with Keras's class names and arguments."""

from minidl.layers.activations import Activation, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from minidl.layers.base import Layer
from minidl.layers.conv import Conv2D
from minidl.layers.dense import Dense
from minidl.layers.dropout import Dropout
from minidl.layers.global_pooling import (GlobalAveragePooling2D, GlobalAvgPool2D, GlobalMaxPool2D,
                                          GlobalMaxPooling2D)
from minidl.layers.merging import Add, Concatenate
from minidl.layers.normalization import BatchNormalization
from minidl.layers.padding import ZeroPadding2D
from minidl.layers.pooling import AveragePooling2D, AvgPool2D, MaxPool2D, MaxPooling2D
from minidl.layers.rescaling import Rescaling
from minidl.layers.reshape import Flatten, Reshape
from minidl.functional import Input

LAYER_CLASSES = {cls.__name__: cls for cls in (
    Activation, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh, Conv2D, Dense, Dropout,
    AveragePooling2D, MaxPooling2D, Flatten, BatchNormalization, GlobalAveragePooling2D,
    GlobalMaxPooling2D, Reshape, Rescaling, ZeroPadding2D, Add, Concatenate)}


def serialize(layer):
    """``{"class_name": ..., "config": ...}``: a layer as plain JSON data."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(config):
    """Rebuild a layer from :func:`serialize`'s output; only known layer classes are accepted."""
    class_name = config.get("class_name")
    if class_name not in LAYER_CLASSES:
        raise ValueError(f"unknown layer class {class_name!r}; known: {sorted(LAYER_CLASSES)}")
    return LAYER_CLASSES[class_name].from_config(config["config"])


__all__ = ["Activation", "Add", "AveragePooling2D", "AvgPool2D", "BatchNormalization", "Concatenate", "Conv2D", "Dense", "Dropout",
           "Flatten", "GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "GlobalMaxPooling2D",
           "Input", "Layer", "LeakyReLU", "MaxPool2D", "MaxPooling2D", "ReLU", "Rescaling", "Reshape",
           "Sigmoid", "Softmax", "Tanh", "ZeroPadding2D", "deserialize", "serialize"]
