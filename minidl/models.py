"""Keras's ``keras.models``: the model classes and :func:`load_model`, where Keras users import them.

    from minidl.models import Model, Sequential, load_model    # was: from keras.models import ...
"""

from minidl.model import Model, Sequential
from minidl.saving import load_model

__all__ = ["Model", "Sequential", "load_model"]
