"""Seeding (one global random generator that initializers, shuffling and dropout draw from), atomic
file writes, and Keras's :func:`to_categorical`."""

import contextlib
import os
import random
import re
import socket
import stat
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
    flushed, fsync'ed and renamed over ``path``; on an exception the temporary file is deleted and
    ``path`` keeps its old content.

    A symbolic link is written through: the file it points to is replaced and the link stays.  The
    new file keeps the old one's permission bits (a 0600 file stays 0600); a new file gets those a
    plain ``open`` would give (``0o666`` less the umask).  Temporary files are named
    ``.<name>.<host>-<pid>.<random>.tmp``; those a killed process of this host left for the same
    file are deleted on the next write.
    """
    target = os.path.realpath(os.fspath(path))
    directory, name = os.path.split(target)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.{socket.gethostname()}-{os.getpid()}.",
                                         suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, permission_bits_for(target))
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    sync_directory(directory)
    remove_stale_temporaries(target)


def permission_bits_for(target):
    """The existing ``target``'s permission bits, or a plain ``open``'s for a new file."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def remove_stale_temporaries(target):
    """Delete the temporary files of ``target`` left by processes of this host that no longer run
    (POSIX only: elsewhere there is no harmless way to ask whether a process runs)."""
    if os.name != "posix":
        return
    directory, name = os.path.split(target)
    pattern = re.compile(re.escape(f".{name}.{socket.gethostname()}-") + r"(\d+)\.[^.]+\.tmp")
    for entry in os.listdir(directory):
        match = pattern.fullmatch(entry)
        if match and not process_is_running(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))


def process_is_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


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


def to_categorical(y, num_classes=None, dtype="float32"):
    """One-hot rows for integer class labels, as Keras's ``utils.to_categorical``.

    ``y``: labels ``(N,)`` (or ``(N, 1)``, or any shape ``S``) in ``[0, num_classes)``; returns
    ``(N, num_classes)`` (``(*S, num_classes)``) of ``dtype`` with ``out[n, y[n]] = 1``.
    ``num_classes`` defaults to ``max(y) + 1``.
    """
    labels = np.asarray(y)
    if labels.ndim > 1 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise ValueError(f"to_categorical: labels must be integers, got {labels.dtype} values such as "
                         f"{labels.flat[np.flatnonzero(np.mod(labels, 1))[0]]}")
    labels = labels.astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"to_categorical: labels must be in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    one_hot = np.zeros((*labels.shape, num_classes), dtype=dtype)
    np.put_along_axis(one_hot, labels[..., np.newaxis], 1, axis=-1)
    return one_hot
