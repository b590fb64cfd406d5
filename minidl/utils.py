"""Seeding: one global random generator that initializers, shuffling and dropout draw from."""

import random

import numpy as np

_state = {"rng": np.random.default_rng()}


def set_random_seed(seed):
    """Seed minidl's global generator (and Python's ``random`` and NumPy's legacy one, as Keras does).

    After ``set_random_seed(s)`` the same model code trains to the same weights on the same backend.
    """
    random.seed(seed)
    np.random.seed(seed)
    _state["rng"] = np.random.default_rng(seed)


def global_rng():
    """The generator behind every random choice minidl makes without an explicit seed."""
    return _state["rng"]


def get_rng_state():
    """The global generator's state (a JSON-able dict), for checkpoints that resume bit-for-bit."""
    return _state["rng"].bit_generator.state


def set_rng_state(state):
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    _state["rng"] = rng
