"""Save and load models as one file that holds data only: JSON and ``.npy`` arrays, never pickle.

A model file is a zip archive (readable by ``np.load`` for its arrays)::

    manifest.json       {"format": "minidl.model", "format_version": 1, "sha256": {member: digest}}
    model.json          architecture (Sequential.get_config), compile config, training state
    weights/0000.npy    model.get_weights()[0], ...
    optimizer/0000/m.npy  optimizer slot arrays (velocities, moments), one folder per parameter

``model.json`` also keeps ``model.class_names`` when the model has them.  Its training state is the number of finished epochs, the optimizer's step count, the
global random generator's state and those of layers with their own generator (seeded Dropout):
with it, training resumed from a checkpoint continues exactly as the uninterrupted run would have.
A weights file (:func:`save_weights`) has the same layout with ``"format": "minidl.weights"`` and
no optimizer or training state.

Every member's SHA-256 is checked before anything is used, arrays are read with
``np.load(..., allow_pickle=False)`` and JSON with ``json``; a file that is truncated, altered, of
another format version or that holds object (pickled) arrays raises :class:`ModelFileError` naming the
file and the problem.  The checksums catch corruption, not a deliberate forgery: a forged file can
only hold numbers and JSON, which load as data and never run.

Writes are atomic: the archive goes to a temporary file in the target folder, is fsync'ed, then
renamed over the target, so a crash leaves either the old file or the new one.

Weights from Keras: build the same architecture in minidl and call ``model.set_weights(
keras_model.get_weights())`` (both are channels-last with the same kernel layouts).
"""

import hashlib
import io
import json
import os
import zipfile

import numpy as np

from minidl import losses, metrics, optimizers
from minidl.model import Sequential
from minidl.utils import atomic_write, get_rng_state, set_rng_state

FORMAT_VERSION = 1
MODEL_FORMAT, WEIGHTS_FORMAT = "minidl.model", "minidl.weights"


class ModelFileError(ValueError):
    """A model or weights file that cannot be loaded; the message names the file and the problem."""

    def __init__(self, path, problem):
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path, self.problem = os.fspath(path), problem


# --------------------------------------------------------------------------------- writing


def npy_bytes(array):
    """``array`` in ``.npy`` format (no pickle: object arrays are refused)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_archive(path, file_format, members):
    """Write ``members`` (``{name: bytes}``) plus a manifest of their SHA-256 to ``path`` atomically."""
    path = os.fspath(path)
    manifest = {"format": file_format, "format_version": FORMAT_VERSION,
                "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}}
    with atomic_write(path) as file:
        with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("manifest.json", json.dumps(manifest, indent=1))
            for name, data in members.items():
                archive.writestr(name, data)


def weight_members(model):
    weights = model.get_weights()
    return {f"weights/{index:04d}.npy": npy_bytes(w) for index, w in enumerate(weights)}


def layer_rng_states(model):
    """States of the layers that draw from their own generator (e.g. ``Dropout(seed=...)``)."""
    return {layer.name: layer.own_rng.bit_generator.state
            for layer in model.layers if getattr(layer, "own_rng", None) is not None}


def completed_epochs(model):
    """Finished epochs: from the last ``fit``'s history, else what the model was loaded with."""
    history = getattr(model, "history", None)
    if history is not None and getattr(history, "epoch", None):
        return history.epoch[-1] + 1
    return getattr(model, "initial_epoch", 0)


def compile_config(model):
    if model.loss is None:
        return None
    return {"optimizer": optimizers.serialize(model.optimizer), "loss": losses.serialize(model.loss),
            "metrics": [metrics.serialize(m) for m in model.metric_names]}


def save_model(model, path, epoch=None):
    """Save architecture, weights, compile config, optimizer state, ``epoch`` (finished epochs;
    by default taken from the last ``fit``) and random state to the single file ``path``."""
    require_built(model, "save_model")
    members = weight_members(model)
    state = model.optimizer.get_state() if model.optimizer is not None else {"iterations": 0, "slots": []}
    for index, slot in enumerate(state["slots"]):
        members.update({f"optimizer/{index:04d}/{name}.npy": npy_bytes(slot[name]) for name in slot})
    description = {
        "architecture": model.get_config(),
        "compile": compile_config(model),
        "weight_count": len(model.get_weights()),
        "class_names": getattr(model, "class_names", None),
        "training": {
            "epoch": completed_epochs(model) if epoch is None else int(epoch),
            "optimizer_iterations": state["iterations"],
            "optimizer_slots": [sorted(slot) for slot in state["slots"]],
            "rng_state": get_rng_state(),
            "layer_rng_states": layer_rng_states(model),
        },
    }
    members["model.json"] = json.dumps(description, indent=1).encode()
    write_archive(path, MODEL_FORMAT, members)


def save_weights(model, path):
    """Save only the weights (``model.get_weights()``) and the layer names they belong to."""
    require_built(model, "save_weights")
    members = weight_members(model)
    description = {"layers": [[layer.name, len(layer.get_weights())] for layer in model.layers],
                   "weight_count": len(model.get_weights())}
    members["model.json"] = json.dumps(description, indent=1).encode()
    write_archive(path, WEIGHTS_FORMAT, members)


def require_built(model, function):
    if not model.built:
        raise ValueError(f"{function}: model {model.name!r} is not built yet; give it an Input or "
                         f"call build() / fit() first")


# --------------------------------------------------------------------------------- reading


class Archive:
    """The checked members of a minidl file: every SHA-256 verified on opening."""

    def __init__(self, path, expected_format):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such model file")
        try:
            with zipfile.ZipFile(self.path) as archive:
                self.members = {name: archive.read(name) for name in archive.namelist()}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
            raise ModelFileError(self.path, f"not a minidl file, or truncated/corrupt ({error})") from None
        self.check_manifest(expected_format)

    def check_manifest(self, expected_format):
        manifest = self.json("manifest.json")
        if not isinstance(manifest, dict) or manifest.get("format") not in (MODEL_FORMAT, WEIGHTS_FORMAT):
            raise ModelFileError(self.path, "not a minidl file (no minidl manifest)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(self.path, f"format version {manifest.get('format_version')!r}; this "
                                            f"minidl reads version {FORMAT_VERSION}")
        if manifest["format"] != expected_format:
            raise ModelFileError(self.path, f"holds {manifest['format']!r}, expected {expected_format!r}"
                                            + ("; use load_weights" if expected_format == MODEL_FORMAT
                                               else "; use load_model"))
        digests = manifest.get("sha256")
        if not isinstance(digests, dict):
            raise ModelFileError(self.path, "the manifest has no checksums")
        listed, present = set(digests), set(self.members) - {"manifest.json"}
        if listed != present:
            raise ModelFileError(self.path, f"members missing {sorted(listed - present)} or unexpected "
                                            f"{sorted(present - listed)}")
        for name, digest in digests.items():
            if hashlib.sha256(self.members[name]).hexdigest() != digest:
                raise ModelFileError(self.path, f"checksum mismatch in {name!r}: the file was altered "
                                                f"or corrupted")

    def json(self, name):
        if name not in self.members:
            raise ModelFileError(self.path, f"member {name!r} is missing")
        try:
            return json.loads(self.members[name].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFileError(self.path, f"member {name!r} is not valid JSON ({error})") from None

    def array(self, name):
        """A numeric array member, read without pickle."""
        if name not in self.members:
            raise ModelFileError(self.path, f"member {name!r} is missing")
        try:
            array = np.load(io.BytesIO(self.members[name]), allow_pickle=False)
        except ValueError as error:
            raise ModelFileError(self.path, f"member {name!r} is not a plain numeric array "
                                            f"(object arrays / pickled data are never loaded): {error}") from None
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
            raise ModelFileError(self.path, f"member {name!r} has dtype {getattr(array, 'dtype', None)}, "
                                            f"expected a numeric array")
        return array

    def weights(self, count):
        if not isinstance(count, int):
            raise ModelFileError(self.path, f"bad weight count {count!r}")
        return [self.array(f"weights/{index:04d}.npy") for index in range(count)]


def load_model(path):
    """Rebuild the model saved by :func:`save_model`: architecture, weights, compile state (optimizer
    state included) and random state.  ``model.initial_epoch`` is the number of epochs it had
    finished; pass it to ``fit(initial_epoch=...)`` to resume."""
    archive = Archive(path, MODEL_FORMAT)
    description = archive.json("model.json")
    try:
        model = Sequential.from_config(description["architecture"])
        model.set_weights(archive.weights(description["weight_count"]))
        training = description["training"]
        if description["compile"] is not None:
            restore_compile_state(model, description["compile"], training, archive)
        for layer in model.layers:
            if layer.name in training["layer_rng_states"]:
                layer.own_rng.bit_generator.state = training["layer_rng_states"][layer.name]
        set_rng_state(training["rng_state"])
        model.initial_epoch = int(training["epoch"])
        model.class_names = description.get("class_names")
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(path, f"invalid model description: {type(error).__name__}: {error}") from None
    return model


def restore_compile_state(model, compile_config, training, archive):
    model.compile(optimizer=optimizers.deserialize(compile_config["optimizer"]),
                  loss=losses.deserialize(compile_config["loss"]),
                  metrics=[metrics.deserialize(m) for m in compile_config["metrics"]])
    slots = [{name: archive.array(f"optimizer/{index:04d}/{name}.npy") for name in names}
             for index, names in enumerate(training["optimizer_slots"])]
    model.optimizer.set_state({"iterations": training["optimizer_iterations"], "slots": slots})


def load_weights(model, path):
    """Set ``model``'s weights from a file written by :func:`save_weights` (a full model file is read
    with :func:`load_model`).  Nothing changes if the count or any shape differs."""
    archive = Archive(path, WEIGHTS_FORMAT)
    description = archive.json("model.json")
    try:
        weights = archive.weights(description["weight_count"])
    except (KeyError, TypeError) as error:
        raise ModelFileError(path, f"invalid weights description: {error}") from None
    require_built(model, "load_weights")
    try:
        model.set_weights(weights)
    except ValueError as error:
        raise ModelFileError(path, f"weights do not fit model {model.name!r}: {error}") from None
