"""The seed's program as Keras users wrote it (Keras 2 style): the CNN on Fashion-MNIST with SGD,
Nesterov momentum and the old ``lr=`` spelling.  Trains on the first 6000 images to keep the test short."""

from keras.datasets import fashion_mnist
from keras.layers import Conv2D, Dense, Flatten, MaxPooling2D
from keras.models import Sequential
from keras.optimizers import SGD

(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
x_train, y_train = x_train[:6000], y_train[:6000]
x_test, y_test = x_test[:2000], y_test[:2000]
x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255.0
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255.0

model = Sequential()
model.add(Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)))
model.add(MaxPooling2D((2, 2)))
model.add(Conv2D(64, (3, 3), activation="relu"))
model.add(MaxPooling2D((2, 2)))
model.add(Flatten())
model.add(Dense(64, activation="relu"))
model.add(Dense(10, activation="softmax"))
model.summary()

model.compile(optimizer=SGD(lr=0.01, momentum=0.9, nesterov=True), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
history = model.fit(x_train, y_train, epochs=4, batch_size=32, validation_split=0.1)
test_loss, test_acc = model.evaluate(x_test, y_test)
print("test accuracy:", test_acc)
