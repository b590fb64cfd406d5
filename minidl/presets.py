"""Ready-made architectures."""

from minidl import layers
from minidl.model import Sequential


def seed_cnn(input_shape=(28, 28, 1), classes=10, name="seed_cnn"):
    """The seed articles' CNN: Conv32-Pool-Conv64-Pool-Flatten-Dense64-Dense(classes, softmax).

    121,930 parameters for 28x28x1 inputs and 10 classes, the same as the Keras original.
    """
    return Sequential([
        layers.Input(tuple(input_shape)),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(classes, activation="softmax"),
    ], name=name)


def tiny_cnn(input_shape=(28, 28, 1), classes=10, name="tiny_cnn"):
    """Conv8-Pool-Flatten-Dense(classes, softmax): trains in seconds, for demos and tests."""
    return Sequential([
        layers.Input(tuple(input_shape)),
        layers.Conv2D(8, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(classes, activation="softmax"),
    ], name=name)


def mlp(input_shape=(28, 28, 1), classes=10, name="mlp"):
    """Flatten-Dense128-Dense(classes, softmax)."""
    return Sequential([
        layers.Input(tuple(input_shape)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(classes, activation="softmax"),
    ], name=name)


PRESETS = {"seed-cnn": seed_cnn, "tiny-cnn": tiny_cnn, "mlp": mlp}
