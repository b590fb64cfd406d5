"""Keras's ``keras.preprocessing``: :mod:`minidl.preprocessing.image` holds ``ImageDataGenerator``."""

from minidl.preprocessing import image

__all__ = ["image"]
