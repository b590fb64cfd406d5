"""Seeding (one global random generator that initializers, shuffling and dropout draw from) and
atomic file writes."""

import contextlib
import os
import random
import tempfile

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


@contextlib.contextmanager
def atomic_write(path):
    """Write ``path`` all or nothing: yields a binary file beside it; on a clean exit the data is
    flushed, fsync'ed, given the permissions a plain ``open`` would give (``0o666`` less the umask)
    and renamed over ``path``; on an exception the temporary file is deleted and ``path`` keeps its
    old content."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    sync_directory(directory)


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sync_directory(directory):
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
