"""MNIST handwritten digits as Keras's ``keras.datasets.mnist`` gives them."""

from minidl.data.datasets import load_mnist

#: label ``i`` is the digit ``class_names[i]``
class_names = [str(digit) for digit in range(10)]


def load_data():
    """``(x_train, y_train), (x_test, y_test)``: uint8 images ``(60000, 28, 28)`` / ``(10000, 28, 28)``
    and uint8 labels ``(60000,)`` / ``(10000,)``, as Keras returns them.

    The files are looked for on disk first (``MINIDL_DATA_DIR``, the user cache), then downloaded and
    checked against their SHA-256; offline with nothing on disk the error lists every place looked at
    and how to get the files.  To read them from a folder of your own: ``minidl.data.load_mnist(path=...)``.
    """
    return load_mnist()
