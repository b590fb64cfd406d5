"""A Keras program: a functional model with a residual Add and an Inception-style Concatenate,
trained on a Fashion-MNIST subset read from the IDX files.  Written for Keras; minidl runs it with
the import line changed (``import keras`` -> ``import minidl as keras``).  Prints the test accuracy."""

import gzip
import os

import numpy as np

import keras
from keras import layers

DATA_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
TRAIN_IMAGES, TEST_IMAGES = 4000, 1000


def read_idx(name, header_bytes):
    with gzip.open(os.path.join(DATA_DIR, name)) as file:
        return np.frombuffer(file.read(), dtype=np.uint8)[header_bytes:]


x_train = read_idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:TRAIN_IMAGES] / 255.0
y_train = read_idx("train-labels-idx1-ubyte.gz", 8)[:TRAIN_IMAGES]
x_test = read_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:TEST_IMAGES] / 255.0
y_test = read_idx("t10k-labels-idx1-ubyte.gz", 8)[:TEST_IMAGES]

keras.utils.set_random_seed(0)

inputs = keras.Input(shape=(28, 28, 1))
x = layers.Conv2D(16, 3, activation="relu")(inputs)
x = layers.MaxPooling2D(2)(x)
branch = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
branch = layers.Conv2D(16, 3, padding="same")(branch)
x = layers.Activation("relu")(layers.Add()([x, branch]))
narrow = layers.Conv2D(8, 1, activation="relu")(x)
wide = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
x = layers.Concatenate()([narrow, wide])
x = layers.MaxPooling2D(2)(x)
x = layers.Flatten()(x)
outputs = layers.Dense(10, activation="softmax")(x)
model = keras.Model(inputs, outputs, name="residual_inception")

model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.summary()
model.fit(x_train, y_train, batch_size=64, epochs=3, validation_split=0.1, verbose=2)
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print("test accuracy:", accuracy)
