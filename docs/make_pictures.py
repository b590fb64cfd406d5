"""Regenerate the pictures of the README and the lessons, docs/img/*.png, from a short real training.

    python docs/make_pictures.py [--train-samples 12000] [--epochs 3] [--output docs/img]

Trains the seed CNN on the first samples of Fashion-MNIST (seed 0), then draws with minidl.plots:
training curves, the test confusion matrix, the first conv's filters, the feature maps of one test
image and the network drawing; and, for lesson 5, the paths of minidl's optimizers on a 2-D loss
surface.  Needs matplotlib (the ``plots`` extra) and the Fashion-MNIST IDX files.
"""

import argparse
import os

import numpy as np

import minidl
from minidl import metrics, optimizers, plots, presets
from minidl.datasets import fashion_mnist

IMAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "img")


def train_seed_cnn(train_samples, epochs):
    (x_train, y_train), (x_test, y_test) = minidl.data.load_fashion_mnist()
    x_train = x_train[:train_samples, ..., None].astype("float32") / 255
    x_test = x_test[..., None].astype("float32") / 255
    minidl.utils.set_random_seed(0)
    model = presets.seed_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train[:train_samples], batch_size=64, epochs=epochs,
                        validation_split=0.1, verbose=2, seed=0)
    return model, history, x_test, y_test


def loss_surface(point):
    """A narrow, tilted valley: ``L(a, b) = 0.5 a^2 + 5 b^2 + 0.5 a b``, its minimum at the origin."""
    a, b = point
    return 0.5 * a * a + 5 * b * b + 0.5 * a * b


def loss_gradient(point):
    a, b = point
    return np.array([a + 0.5 * b, 10 * b + 0.5 * a])


def optimizer_path(optimizer, start, steps):
    """The points an optimizer visits from ``start`` on :func:`loss_surface`."""
    point = np.array(start, dtype=np.float64)
    path = [point.copy()]
    for _ in range(steps):
        optimizer.apply_gradients([(point, loss_gradient(point))])
        path.append(point.copy())
    return np.array(path)


def plot_optimizer_paths(path):
    plt = plots.pyplot()
    contenders = {"SGD lr 0.09": optimizers.SGD(0.09),
                  "momentum 0.9": optimizers.SGD(0.02, momentum=0.9),
                  "Nesterov 0.9": optimizers.SGD(0.02, momentum=0.9, nesterov=True),
                  "RMSprop lr 0.1": optimizers.RMSprop(0.1),
                  "Adam lr 0.3": optimizers.Adam(0.3)}
    a, b = np.meshgrid(np.linspace(-5, 5, 200), np.linspace(-2.5, 2.5, 200))
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.contour(a, b, loss_surface((a, b)), levels=np.logspace(-1, 1.8, 12), cmap="Greys", linewidths=0.7)
    for label, optimizer in contenders.items():
        points = optimizer_path(optimizer, (-4.5, 2.0), 40)
        axis.plot(points[:, 0], points[:, 1], marker=".", markersize=3, linewidth=1, label=label)
    axis.plot(0, 0, "k*", markersize=10)
    axis.set_title("40 steps on L = 0.5 a^2 + 5 b^2 + 0.5 ab", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return plots.save_figure(figure, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", default=IMAGES, help="folder of the pictures (default docs/img)")
    args = parser.parse_args(argv)
    model, history, x_test, y_test = train_seed_cnn(args.train_samples, args.epochs)
    predicted = model.predict(x_test, batch_size=256).argmax(axis=1)
    print(f"test accuracy {np.mean(predicted == y_test):.4f}")
    written = [plots.plot_history(history, os.path.join(args.output, "training_curves.png")),
               plots.plot_confusion_matrix(metrics.confusion_matrix(y_test, predicted, 10),
                                           os.path.join(args.output, "confusion_matrix.png"), fashion_mnist.class_names),
               plots.plot_filters(model, os.path.join(args.output, "filters.png")),
               plots.plot_feature_maps(model, x_test[0], os.path.join(args.output, "feature_maps.png")),
               plots.plot_network(model, os.path.join(args.output, "network.png")),
               plot_optimizer_paths(os.path.join(args.output, "optimizer_paths.png"))]
    for path in written:
        print(f"{path}: {os.path.getsize(path) // 1024} KiB")


if __name__ == "__main__":
    main()
