"""A Keras 3 style program: ``Sequential([keras.Input(...), ...])``, one-hot targets from
``to_categorical``, an ``Adam`` object, ``EarlyStopping`` and ``ModelCheckpoint``, and batches from
``ImageDataGenerator(...).flow(...)`` fed to ``fit``.  Trains on the first 6000 images."""

from tensorflow import keras
from tensorflow.keras import layers
from tensorflow.keras.preprocessing.image import ImageDataGenerator
from tensorflow.keras.utils import to_categorical

(x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
x_train, y_train = x_train[:6000].reshape(-1, 28, 28, 1), to_categorical(y_train[:6000], 10)
x_test, y_test = x_test[:2000].reshape(-1, 28, 28, 1) / 255.0, to_categorical(y_test[:2000], 10)
x_val, y_val = x_train[:600] / 255.0, y_train[:600]
x_train, y_train = x_train[600:], y_train[600:]

model = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(),
    layers.Conv2D(64, 3, activation="relu"),
    layers.MaxPooling2D(),
    layers.Flatten(),
    layers.Dropout(0.25),
    layers.Dense(64, activation="relu"),
    layers.Dense(10, activation="softmax"),
])
model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="categorical_crossentropy",
              metrics=["accuracy"])

datagen = ImageDataGenerator(rescale=1 / 255.0, rotation_range=5, width_shift_range=0.05,
                             height_shift_range=0.05, zoom_range=0.05, horizontal_flip=True)
callbacks = [
    keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True),
    # a Keras 3 program names this file best.keras; minidl writes its own format, to *.minidl files
    keras.callbacks.ModelCheckpoint("best.minidl", monitor="val_accuracy", save_best_only=True),
]
history = model.fit(datagen.flow(x_train, y_train, batch_size=32, seed=0), epochs=5,
                    validation_data=(x_val, y_val), callbacks=callbacks)
test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)
print("history keys:", sorted(history.history))
print("test accuracy:", test_acc)
