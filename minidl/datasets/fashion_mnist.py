"""Fashion-MNIST (Zalando's clothing images) as Keras's ``keras.datasets.fashion_mnist`` gives them."""

from minidl.data.datasets import load_fashion_mnist

#: label ``i`` names the article ``class_names[i]`` (the dataset's own names)
class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


def load_data():
    """``(x_train, y_train), (x_test, y_test)``: uint8 images ``(60000, 28, 28)`` / ``(10000, 28, 28)``
    and uint8 labels ``(60000,)`` / ``(10000,)``, as Keras returns them.

    The files are looked for on disk first (``MINIDL_DATA_DIR``, the user cache, Debian's
    ``dataset-fashion-mnist`` package), then downloaded and checked against their SHA-256.  To read
    them from a folder of your own: ``minidl.data.load_fashion_mnist(path=...)``.
    """
    return load_fashion_mnist()
