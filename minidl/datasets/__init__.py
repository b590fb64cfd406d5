"""Keras's ``keras.datasets``: ``mnist`` and ``fashion_mnist``, each with ``load_data()`` and its
``class_names``.

    from minidl.datasets import fashion_mnist           # was: from keras.datasets import fashion_mnist
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()

Both read the checksummed IDX files that :mod:`minidl.data.datasets` finds on disk (or downloads);
the search path and the error that says what to do when nothing is found are described there.
"""

from minidl.datasets import fashion_mnist, mnist

__all__ = ["fashion_mnist", "mnist"]
