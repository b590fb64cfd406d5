"""Keras's ``keras.models``: the model classes and :func:`load_model`, where Keras users import them.

    from minidl.models import Sequential, load_model    # was: from keras.models import ...
"""

from minidl.model import Sequential
from minidl.saving import load_model

# The functional API's ``Model`` is exported here too once minidl.model defines it.
__all__ = ["Sequential", "load_model"]
