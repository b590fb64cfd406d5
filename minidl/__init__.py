"""minidl: a from-scratch deep-learning engine for image classification with a Keras-shaped API.

    import minidl
    from minidl import layers
    model = minidl.Sequential([layers.Input((28, 28, 1)), layers.Conv2D(32, 3, activation="relu"), ...])
"""

from minidl import callbacks, initializers, layers, losses, metrics, optimizers, regularizers, schedules
from minidl import data, presets, saving, utils
from minidl import datasets, models, preprocessing
from minidl.backend import get_backend, set_backend
from minidl.functional import Input
from minidl.model import Model, Sequential
from minidl.saving import load_model

__version__ = "0.1.0"

__all__ = ["Input", "Model", "Sequential", "callbacks", "data", "datasets", "get_backend", "initializers",
           "layers", "load_model", "losses", "metrics", "models", "optimizers", "preprocessing", "presets",
           "regularizers", "saving", "schedules", "set_backend", "utils"]
