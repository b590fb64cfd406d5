"""Save and load models as one file that holds data only: JSON and ``.npy`` arrays, never pickle.

A model file is a zip archive (readable by ``np.load`` for its arrays)::

    manifest.json       {"format": "minidl.model", "format_version": 1, "sha256": {member: digest}}
    model.json          architecture (the model's get_config: a Sequential's, or a functional Model's
                        graph of layers with the names of the tensors each reads), compile config,
                        training state
    weights/0000.npy    model.get_weights()[0], ...
    optimizer/0000/m.npy  optimizer slot arrays (velocities, moments), one folder per parameter

``model.json`` also keeps ``model.class_names`` and ``model.run_arguments`` (the settings a
``minidl train`` run started with) when the model has them.  Its training state is the number of
finished epochs, the optimizer's step count, the global random generator's state, those of layers with
their own generator (seeded Dropout) and the state of the callbacks of the last ``fit``
(:meth:`minidl.callbacks.CallbackList.states`; arrays such as ``EarlyStopping``'s best weights are
members ``callbacks/<key>/<field>/0000.npy``).  Loading sets the layers' generators and keeps the
rest for the ``fit`` that resumes the run (``initial_epoch=model.initial_epoch``): that ``fit``
restores the global generator and the callbacks' state, so it continues exactly as the uninterrupted
run would have.  Loading itself leaves the global generator alone.
A weights file (:func:`save_weights`) has the same layout with ``"format": "minidl.weights"`` and
no optimizer or training state.

Every member's SHA-256 is checked before anything is used, arrays are read with
``np.load(..., allow_pickle=False)`` and JSON with ``json``; a file that is truncated, altered, of
another format version or that holds object (pickled) arrays raises :class:`ModelFileError` naming the
file and the problem.  The checksums catch corruption, not a deliberate forgery: a forged file can
only hold numbers and JSON, which load as data and never run, and every size is checked before
anything is allocated: members must be stored uncompressed (as minidl writes them) and sum to no more
than the file; an array's header must describe exactly its bytes, with a float dtype; JSON is at most
:data:`MAX_JSON_BYTES` and refused when nested too deep; the architecture is built with placeholder
parameters (no memory) and its shapes checked against the file's arrays before the weights are set.

Writes are atomic: the archive goes to a temporary file in the target folder, is fsync'ed, then
renamed over the target, so a crash leaves either the old file or the new one.

Keras's own files: :func:`save_model` writes ``.keras`` and ``.h5`` paths in Keras's formats and
:func:`load_model` reads Keras files, both through :mod:`minidl.keras_format`.  Weights alone from
Keras: build the same architecture in minidl and call ``model.set_weights(keras_model.get_weights())``
(both are channels-last with the same kernel layouts).
"""

import hashlib
import io
import json
import math
import os
import zipfile

import numpy as np

from minidl import initializers, losses, metrics, optimizers, validation
from minidl.model import model_from_config
from minidl.utils import atomic_write, get_rng_state

FORMAT_VERSION = 1
#: the largest JSON member read (an architecture with its training state is a few kB)
MAX_JSON_BYTES = 16 * 2**20
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


def callback_state_members(model):
    """The last ``fit``'s callback states as JSON data, and their arrays as ``.npy`` members: a field
    holding a list of arrays is stored as ``callbacks/<key>/<field>/0000.npy`` ... and replaced in the
    JSON by ``{"arrays": count}``."""
    fit_callbacks = getattr(model, "fit_callbacks", None)
    states = fit_callbacks.states() if fit_callbacks is not None else {}
    members, json_states = {}, {}
    for key, state in states.items():
        json_states[key] = dict(state)
        for field, value in state.items():
            if isinstance(value, list) and all(isinstance(item, np.ndarray) for item in value):
                members.update({f"callbacks/{key}/{field}/{index:04d}.npy": npy_bytes(array)
                                for index, array in enumerate(value)})
                json_states[key][field] = {"arrays": len(value)}
    return json_states, members


#: file suffixes written in Keras's formats (:mod:`minidl.keras_format`)
KERAS_SUFFIXES = (".keras", ".h5")

#: the file name suffixes each save writes: minidl's own format, and for whole models Keras's
SAVE_SUFFIXES = {"save_model": (".minidl", *KERAS_SUFFIXES), "save_weights": (".weights",)}


def require_supported_suffix(path, function):
    """Refuse a ``path`` whose suffix is not one that ``function`` writes, before anything is
    written: no file gets a name that promises another format than the one inside."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    supported = SAVE_SUFFIXES[function]
    if suffix not in supported:
        given = f"the suffix {suffix!r}" if suffix else "no suffix"
        raise ValueError(f"{function}: {os.fspath(path)} has {given}; it writes files named "
                         f"*{' or *'.join(supported)}")


def save_model(model, path, epoch=None):
    """Save ``model`` to ``path`` in the format its suffix names: ``.keras`` (Keras 3) and ``.h5``
    (legacy Keras) hold the architecture, weights and compile settings in Keras's own layout
    (:mod:`minidl.keras_format`); ``.minidl`` is the native file (:func:`save_native_model`)."""
    require_supported_suffix(path, "save_model")
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in KERAS_SUFFIXES:
        from minidl import keras_format  # it builds on this module
        require_built(model, "save_model")
        (keras_format.save_keras_archive if suffix == ".keras" else keras_format.save_legacy_h5)(model, path)
        return
    save_native_model(model, path, epoch)


def save_native_model(model, path, epoch=None):
    """Save architecture, weights, compile config, optimizer state, ``epoch`` (finished epochs;
    by default taken from the last ``fit``), random state and the last ``fit``'s callback states to
    the single file ``path`` (named ``*.minidl``)."""
    require_supported_suffix(path, "save_model")
    require_built(model, "save_model")
    members = weight_members(model)
    state = model.optimizer.get_state() if model.optimizer is not None else {"iterations": 0, "slots": []}
    for index, slot in enumerate(state["slots"]):
        members.update({f"optimizer/{index:04d}/{name}.npy": npy_bytes(slot[name]) for name in slot})
    callback_states, callback_arrays = callback_state_members(model)
    members.update(callback_arrays)
    description = {
        "architecture": model.get_config(),
        "compile": compile_config(model),
        "weight_count": len(model.get_weights()),
        "class_names": getattr(model, "class_names", None),
        "run_arguments": getattr(model, "run_arguments", None),
        "training": {
            "epoch": completed_epochs(model) if epoch is None else int(epoch),
            "optimizer_iterations": state["iterations"],
            "optimizer_slots": [sorted(slot) for slot in state["slots"]],
            "rng_state": get_rng_state(),
            "layer_rng_states": layer_rng_states(model),
            "callbacks": callback_states,
        },
    }
    members["model.json"] = json.dumps(description, indent=1).encode()
    write_archive(path, MODEL_FORMAT, members)


def save_weights(model, path):
    """Save only the weights (``model.get_weights()``) and the layer names they belong to to ``path``
    (named ``*.weights``)."""
    require_supported_suffix(path, "save_weights")
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
    """The checked members of a minidl file: sizes checked before reading, every SHA-256 verified."""

    def __init__(self, path, expected_format):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such model file")
        try:
            with zipfile.ZipFile(self.path) as archive:
                entries = self.checked_entries(archive)
                self.members = {"manifest.json": self.read_member(archive, entries["manifest.json"])}
                listed = self.check_manifest(expected_format, set(entries))
                self.members.update({name: self.read_member(archive, entries[name]) for name in listed})
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as error:
            if isinstance(error, ModelFileError):
                raise
            raise ModelFileError(self.path, f"not a minidl file, or truncated/corrupt ({error})") from None
        self.check_digests()

    def checked_entries(self, archive):
        """``{name: ZipInfo}``, refused unless every member is stored uncompressed, unique, and all
        of them fit in the file (so reading them takes no more memory than the file's size)."""
        entries = {}
        for info in archive.infolist():
            if info.filename in entries:
                raise ModelFileError(self.path, f"member {info.filename!r} appears twice")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise ModelFileError(self.path, f"member {info.filename!r} is compressed; minidl files "
                                                f"store their members uncompressed")
            entries[info.filename] = info
        total = sum(info.file_size for info in entries.values())
        if total > os.path.getsize(self.path):
            raise ModelFileError(self.path, f"its members claim {total:,} bytes, more than the file's "
                                            f"{os.path.getsize(self.path):,}")
        if "manifest.json" not in entries:
            raise ModelFileError(self.path, "not a minidl file (no minidl manifest)")
        return entries

    def read_member(self, archive, info):
        return archive.read(info)

    def check_manifest(self, expected_format, present):
        """The member names the manifest lists, after checking its format, version and that the
        archive holds exactly those members."""
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
        if not isinstance(digests, dict) or not all(isinstance(d, str) for d in digests.values()):
            raise ModelFileError(self.path, "the manifest has no checksums")
        listed, present = set(digests), present - {"manifest.json"}
        if listed != present:
            raise ModelFileError(self.path, f"members missing {sorted(listed - present)} or unexpected "
                                            f"{sorted(present - listed)}")
        self.digests = digests
        return sorted(listed)

    def check_digests(self):
        for name, digest in self.digests.items():
            if hashlib.sha256(self.members[name]).hexdigest() != digest:
                raise ModelFileError(self.path, f"checksum mismatch in {name!r}: the file was altered "
                                                f"or corrupted")

    def json(self, name):
        if name not in self.members:
            raise ModelFileError(self.path, f"member {name!r} is missing")
        if len(self.members[name]) > MAX_JSON_BYTES:
            raise ModelFileError(self.path, f"member {name!r} has {len(self.members[name]):,} bytes, more "
                                            f"than the {MAX_JSON_BYTES:,} a minidl JSON member may have")
        try:
            return json.loads(self.members[name].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFileError(self.path, f"member {name!r} is not valid JSON ({error})") from None
        except RecursionError:
            raise ModelFileError(self.path, f"member {name!r} is nested too deeply to be a minidl "
                                            f"description") from None

    def array_header(self, name):
        """``(shape, dtype)`` from an ``.npy`` member's header, refused unless the dtype is a float
        and the header describes exactly the bytes that follow it (checked before any allocation)."""
        if name not in self.members:
            raise ModelFileError(self.path, f"member {name!r} is missing")
        stream = io.BytesIO(self.members[name])
        try:
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"npy format version {version}")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(stream)
        except (ValueError, SyntaxError, TypeError) as error:
            raise ModelFileError(self.path, f"member {name!r} is not a plain numeric array "
                                            f"(object arrays / pickled data are never loaded): {error}") from None
        if dtype.hasobject:
            raise ModelFileError(self.path, f"member {name!r} has dtype {dtype}: object arrays (pickled "
                                            f"data) are never loaded; expected a float array")
        if dtype.kind != "f":
            raise ModelFileError(self.path, f"member {name!r} has dtype {dtype}, expected a float array")
        data_bytes = len(self.members[name]) - stream.tell()
        if math.prod(shape) * dtype.itemsize != data_bytes:
            raise ModelFileError(self.path, f"member {name!r} claims shape {shape} of {dtype} "
                                            f"({math.prod(shape) * dtype.itemsize:,} bytes) but holds "
                                            f"{data_bytes:,} bytes")
        return tuple(shape), dtype

    def array(self, name):
        """A float array member, read without pickle after :meth:`array_header`'s checks."""
        self.array_header(name)
        return np.load(io.BytesIO(self.members[name]), allow_pickle=False)

    def weights(self, count, expected_shapes):
        """The ``count`` weight arrays, each checked against ``expected_shapes`` before it is read."""
        if not isinstance(count, int) or isinstance(count, bool) or count != len(expected_shapes):
            raise ModelFileError(self.path, f"the file holds {count!r} weight arrays, its architecture "
                                            f"has {len(expected_shapes)}")
        names = [f"weights/{index:04d}.npy" for index in range(count)]
        for name, expected in zip(names, expected_shapes):
            shape, _ = self.array_header(name)
            if shape != expected:
                raise ModelFileError(self.path, f"member {name!r} has shape {shape}, the architecture "
                                                f"needs {expected}")
        return [self.array(name) for name in names]


def parameter_shapes(model):
    """Every weight's shape in ``get_weights`` order, without copying any weight."""
    return [tuple(array.shape) for layer in model.layers for _, array in layer.weights()]


def architecture_from(archive, description):
    """The saved architecture built with placeholder parameters (no memory used), then given the
    file's weights once every shape is checked."""
    config = validation.architecture(description["architecture"], f"{archive.path}: the architecture")
    with initializers.placeholders():
        model = model_from_config(config)
    if not model.built:
        raise ModelFileError(archive.path, "the architecture has no input shape")
    model.set_weights(archive.weights(description["weight_count"], parameter_shapes(model)))
    return model


def checked_class_names(class_names, model, path):
    """``None``, or a list of one string per output class."""
    if class_names is None:
        return None
    classes = model.output_shape[-1] if len(model.output_shape) == 1 else None
    if (not isinstance(class_names, list) or not all(isinstance(name, str) for name in class_names)
            or (classes is not None and len(class_names) != classes)):
        raise ModelFileError(path, f"class_names must be a list of {classes or 'the'} strings (one per "
                                   f"output class), got {class_names!r:.200}")
    return class_names


def checked_count(value, what, path):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ModelFileError(path, f"{what} must be a non-negative int, got {value!r:.200}")
    return value


def checked_rng_state(state, what, path):
    """A generator state that a PCG64 generator (minidl's) accepts."""
    try:
        np.random.default_rng().bit_generator.state = state
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFileError(path, f"{what} is not a random generator state ({error})") from None
    return state


def load_model(path):
    """Rebuild the model saved by :func:`save_model`: architecture, weights, compile state (optimizer
    state included) and the layers' own random generators.  ``model.initial_epoch`` is the number of
    epochs it had finished; ``fit(initial_epoch=model.initial_epoch)`` resumes the run, restoring
    the global random generator and the callbacks' state saved with it.  Loading changes nothing
    outside the returned model.

    Keras files (a ``.keras`` archive, a legacy HDF5 ``.h5``) are recognised by their content and
    read as data by :func:`minidl.keras_format.load_keras_model`."""
    from minidl import keras_format  # it builds on this module
    if os.path.isfile(path) and keras_format.is_keras_file(path):
        return keras_format.load_keras_model(path)
    archive = Archive(path, MODEL_FORMAT)
    description = archive.json("model.json")
    try:
        model = architecture_from(archive, description)
        training = description["training"]
        model.initial_epoch = checked_count(training["epoch"], "the finished epoch count", path)
        if description["compile"] is not None:
            restore_compile_state(model, description["compile"], training, archive)
        for layer in model.layers:
            if layer.name in training["layer_rng_states"]:
                state = checked_rng_state(training["layer_rng_states"][layer.name],
                                          f"layer {layer.name!r}'s generator state", path)
                layer.own_rng.bit_generator.state = state
        model.saved_run = {"rng_state": checked_rng_state(training["rng_state"], "rng_state", path),
                           "callbacks": saved_callback_states(training.get("callbacks", {}), archive)}
        model.class_names = checked_class_names(description.get("class_names"), model, path)
        model.run_arguments = description.get("run_arguments")
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as error:
        raise ModelFileError(path, f"invalid model description: {type(error).__name__}: {error}") from None
    return model


def saved_callback_states(states, archive):
    """The callback states of :func:`callback_state_members`, with their arrays read back."""
    if not isinstance(states, dict) or not all(isinstance(state, dict) for state in states.values()):
        raise ModelFileError(archive.path, "the saved callback states are not a mapping of dicts")
    loaded = {}
    for key, state in states.items():
        loaded[key] = dict(state)
        for field, value in state.items():
            if isinstance(value, dict) and set(value) == {"arrays"}:
                count = checked_count(value["arrays"], f"callback {key!r} {field!r} array count", archive.path)
                loaded[key][field] = [archive.array(f"callbacks/{key}/{field}/{index:04d}.npy")
                                      for index in range(count)]
    return loaded


def restore_compile_state(model, compile_config, training, archive):
    model.compile(optimizer=optimizers.deserialize(compile_config["optimizer"]),
                  loss=losses.deserialize(compile_config["loss"]),
                  metrics=[metrics.deserialize(m) for m in compile_config["metrics"]])
    trainable_shapes = [tuple(param.shape) for layer in model.layers if layer.trainable
                        for param in layer.params.values()]
    slot_names = training["optimizer_slots"]
    if slot_names and len(slot_names) != len(trainable_shapes):
        raise ModelFileError(archive.path, f"the optimizer state has {len(slot_names)} slots, the model "
                                           f"{len(trainable_shapes)} trainable parameters")
    slots = []
    for index, (names, shape) in enumerate(zip(slot_names, trainable_shapes)):
        slot = {}
        for name in names:
            member = f"optimizer/{index:04d}/{name}.npy"
            if archive.array_header(member)[0] != shape:
                raise ModelFileError(archive.path, f"member {member!r} has shape "
                                                   f"{archive.array_header(member)[0]}, its parameter {shape}")
            slot[name] = archive.array(member)
        slots.append(slot)
    iterations = checked_count(training["optimizer_iterations"], "the optimizer's step count", archive.path)
    model.optimizer.set_state({"iterations": iterations, "slots": slots})


def load_weights(model, path):
    """Set ``model``'s weights from a file written by :func:`save_weights` (a full model file is read
    with :func:`load_model`).  Nothing changes if the count or any shape differs."""
    archive = Archive(path, WEIGHTS_FORMAT)
    description = archive.json("model.json")
    require_built(model, "load_weights")
    try:
        weights = archive.weights(description["weight_count"], parameter_shapes(model))
    except (KeyError, TypeError) as error:
        raise ModelFileError(path, f"invalid weights description: {error}") from None
    except ModelFileError as error:
        raise ModelFileError(path, f"weights do not fit model {model.name!r}: {error.problem}") from None
    model.set_weights(weights)
