"""Keras's own model files, read and written as data: Keras 3 ``.keras`` archives and legacy ``.h5``.

A ``.keras`` file is a zip archive::

    metadata.json      {"keras_version": "3...", "date_saved": ...}
    config.json        {"class_name": "Sequential" | "Functional", "config": {"layers": [...]},
                        "compile_config": {"optimizer": ..., "loss": ..., "metrics": [...]}}
    model.weights.h5   HDF5: layers/<path>/vars/0, 1, ... a layer's weights in Keras's order, where
                       <path> is the snake-case class name made unique (conv2d, conv2d_1, dense, ...)

A legacy ``.h5`` file is one HDF5 file: the config as JSON in the attribute ``model_config``, the
compile settings in ``training_config``, and each layer's weights in the group
``model_weights/<layer name>``, in the order its ``weight_names`` attribute lists them.

Reading never runs code.  There is no TensorFlow, Keras, pickle or ``eval`` here: the config is JSON
parsed as data and checked against :data:`KERAS_LAYERS`, a table of the layer classes minidl reads and
the arguments each accepts.  ``Lambda`` layers, custom objects, unknown classes and arguments minidl
does not implement are refused, naming them.  Sizes are checked before anything is allocated: archive
members against :data:`MEMBER_LIMITS`, the input shape against
:data:`minidl.validation.MAX_SAMPLE_SIZE`, the parameters the config declares against the weight
file's size, and every weight dataset must have exactly its layer's shape with its bytes stored in the
file (no compression filters, external files, links or virtual datasets).  Any problem raises
:class:`minidl.saving.ModelFileError` naming the file, the layer and what was wrong.

Each entry of :data:`KERAS_LAYERS` is one Keras class: the minidl layer it becomes, the Keras
arguments passed on to it (minidl uses Keras's names), and the Keras arguments minidl does not
implement with the only values accepted for them (their Keras defaults, which are also written).
A layer's weights are its ``get_weights()``, which follow Keras's order.  Sequential models become a
minidl ``Sequential``, functional ones a ``Model`` with the same graph (:func:`functional_graph`:
one input, one output, each layer called once).
"""

import dataclasses
import datetime
import io
import json
import math
import os
import re
import warnings
import zipfile

import numpy as np

from minidl import initializers, layers, losses, metrics, optimizers, validation
from minidl.layers.activations import ACTIVATION_NAMES
from minidl.model import Model, Sequential
from minidl.saving import MAX_JSON_BYTES, ModelFileError, parameter_shapes, require_built
from minidl.utils import atomic_write

#: the members a ``.keras`` archive may hold, with the most bytes each may declare
MEMBER_LIMITS = {"metadata.json": 2**16, "config.json": MAX_JSON_BYTES, "model.weights.h5": 2**34}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: the Keras version written into metadata.json: the oldest Keras 3 that reads what minidl writes
KERAS_VERSION_WRITTEN = "3.0.0"


class KerasFileProblem(ValueError):
    """What is wrong in a Keras file; :func:`load_keras_model` adds the file's name."""


def refuse(problem):
    raise KerasFileProblem(problem)


# ------------------------------------------------------------------------- argument values


def read_activation(value, where):
    if value not in ACTIVATION_NAMES:
        refuse(f"{where}: activation {value!r} is not one minidl implements; known: {ACTIVATION_NAMES}")
    return value


#: Keras initializer classes -> (minidl name, config keys accepted)
KERAS_INITIALIZERS = {
    "GlorotUniform": ("glorot_uniform", ()), "GlorotNormal": ("glorot_normal", ()),
    "HeNormal": ("he_normal", ()), "HeUniform": ("he_uniform", ()), "Zeros": ("zeros", ()),
    "Ones": ("ones", ()), "RandomNormal": ("random_normal", ("mean", "stddev")),
}
#: initializer config keys that only matter for fresh weights drawn by Keras (a file brings its own)
INITIALIZER_KEYS_WITHOUT_EFFECT = ("seed", "input_axes", "output_axes")


def read_initializer(value, where):
    """A minidl initializer from a Keras name (``"he_normal"``) or class config."""
    if isinstance(value, str) and value in initializers.INITIALIZERS:
        return value
    class_name, config = keras_object(value, KERAS_INITIALIZERS, "initializer", where)
    name, keys = KERAS_INITIALIZERS[class_name]
    refuse_unexpected(config, (*keys, *INITIALIZER_KEYS_WITHOUT_EFFECT), f"{where}: initializer {class_name}")
    return {"class_name": name, "config": {key: config[key] for key in keys if key in config}}


def write_initializer(initializer):
    config = initializers.serialize(initializers.get(initializer))
    class_name = next(keras for keras, (name, _) in KERAS_INITIALIZERS.items() if name == config["class_name"])
    seed = {} if class_name in ("Zeros", "Ones") else {"seed": None}
    return keras_object_config("keras.initializers", class_name, {**seed, **config["config"]})


KERAS_REGULARIZERS = {"L1": ("l1",), "L2": ("l2",), "L1L2": ("l1", "l2")}


def read_regularizer(value, where):
    if value is None:
        return None
    class_name, config = keras_object(value, KERAS_REGULARIZERS, "regularizer", where)
    refuse_unexpected(config, KERAS_REGULARIZERS[class_name], f"{where}: regularizer {class_name}")
    return {"class_name": "L1L2", "config": dict(config)}


def write_regularizer(config):
    return None if config is None else keras_object_config("keras.regularizers", "L1L2", config["config"])


#: readers (Keras value -> minidl argument) and writers (minidl config value -> Keras value) of the
#: arguments that are objects rather than plain numbers and strings
INITIALIZER_ARGUMENTS = ("kernel_initializer", "bias_initializer", "beta_initializer", "gamma_initializer",
                         "moving_mean_initializer", "moving_variance_initializer")
REGULARIZER_ARGUMENTS = ("kernel_regularizer", "bias_regularizer", "beta_regularizer", "gamma_regularizer")
VALUE_READERS = {"activation": read_activation, **dict.fromkeys(INITIALIZER_ARGUMENTS, read_initializer),
                 **dict.fromkeys(REGULARIZER_ARGUMENTS, read_regularizer)}
VALUE_WRITERS = {**dict.fromkeys(INITIALIZER_ARGUMENTS, write_initializer),
                 **dict.fromkeys(REGULARIZER_ARGUMENTS, write_regularizer)}


def keras_object(value, known, kind, where):
    """``(class_name, config)`` of a serialized Keras object whose class is in ``known``; custom
    objects (another module or a registered name) are refused."""
    if not isinstance(value, dict) or not isinstance(value.get("class_name"), str):
        refuse(f"{where}: {kind} {value!r:.200} is not one minidl reads; known: {sorted(known)}")
    refuse_custom_object(value, where)
    refuse_unexpected(value, ("class_name", "config", "module", "registered_name"), f"{where}: {kind}")
    if value["class_name"] not in known:
        refuse(f"{where}: {kind} class {value['class_name']!r} is not one minidl reads; known: {sorted(known)}")
    config = value.get("config", {})
    if not isinstance(config, dict):
        refuse(f"{where}: {kind} config must be an object, got {config!r:.200}")
    return value["class_name"], config


def keras_object_config(module, class_name, config):
    return {"module": module, "class_name": class_name, "config": config, "registered_name": None}


def refuse_custom_object(value, where):
    module, registered = value.get("module"), value.get("registered_name")
    if module is not None and (not isinstance(module, str) or not re.fullmatch(r"keras(\.[a-z_.]+)?", module)):
        refuse(f"{where}: class {value['class_name']!r} comes from module {module!r:.200}; minidl reads "
               f"Keras's own classes only (custom objects may hold code and are never loaded)")
    if registered not in (None, value["class_name"]):
        refuse(f"{where}: {registered!r:.200} is a registered custom object; minidl reads Keras's own "
               f"classes only (custom objects may hold code and are never loaded)")


def refuse_unexpected(config, allowed, where):
    unexpected = sorted(set(config) - set(allowed))
    if unexpected:
        refuse(f"{where}: unexpected argument{'s' * (len(unexpected) > 1)} {', '.join(map(repr, unexpected))}"
               f"; minidl reads {sorted(allowed)}")


def read_dtype(value, where):
    """``"float32"`` or ``"float64"`` from a dtype name or a Keras dtype policy."""
    name = value
    if isinstance(value, dict):
        if value.get("class_name") not in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
            refuse(f"{where}: dtype policy {value.get('class_name')!r:.100} is not one minidl reads")
        refuse_custom_object(value, where)
        name = value.get("config", {}).get("name") if isinstance(value.get("config"), dict) else None
    if name not in ("float32", "float64"):
        refuse(f"{where}: dtype {name!r:.100} is not one minidl computes in (float32, float64)")
    return name


def write_dtype(name):
    return keras_object_config("keras", "DTypePolicy", {"name": name})


# ------------------------------------------------------------------------------ the table

CHANNELS_LAST = ("channels_last", None)
NO_CONSTRAINTS = {"activity_regularizer": (None,), "kernel_constraint": (None,), "bias_constraint": (None,)}
KERNEL_ARGUMENTS = ("activation", "use_bias", "kernel_initializer", "bias_initializer",
                    "kernel_regularizer", "bias_regularizer")
POOLING_ARGUMENTS = ("pool_size", "strides", "padding")
#: arguments every layer has: handled by :func:`read_layer` and :func:`write_layer`
COMMON_ARGUMENTS = ("name", "trainable", "dtype", "batch_input_shape", "batch_shape")


@dataclasses.dataclass(frozen=True)
class LayerFormat:
    """How one Keras layer class is read and written.

    ``arguments``: the Keras arguments passed to ``minidl_class`` under the same name (values go
    through :data:`VALUE_READERS` / :data:`VALUE_WRITERS` where they are objects).
    ``fixed``: Keras arguments minidl does not implement, each with the only values accepted (its
    Keras default first, which is what minidl writes).
    """

    minidl_class: type
    arguments: tuple = ()
    fixed: dict = dataclasses.field(default_factory=dict)


KERAS_LAYERS = {
    "Conv2D": LayerFormat(layers.Conv2D, ("filters", "kernel_size", "strides", "padding", *KERNEL_ARGUMENTS),
                          {**NO_CONSTRAINTS, "data_format": CHANNELS_LAST, "dilation_rate": ([1, 1], 1),
                           "groups": (1,)}),
    "Dense": LayerFormat(layers.Dense, ("units", *KERNEL_ARGUMENTS),
                         {**NO_CONSTRAINTS, "quantization_config": (None,), "lora_rank": (None,),
                          "lora_alpha": (None,)}),
    "MaxPooling2D": LayerFormat(layers.MaxPooling2D, POOLING_ARGUMENTS, {"data_format": CHANNELS_LAST}),
    "AveragePooling2D": LayerFormat(layers.AveragePooling2D, POOLING_ARGUMENTS, {"data_format": CHANNELS_LAST}),
    "Flatten": LayerFormat(layers.Flatten, (), {"data_format": CHANNELS_LAST}),
    "Dropout": LayerFormat(layers.Dropout, ("rate", "seed"), {"noise_shape": (None,)}),
    "Activation": LayerFormat(layers.Activation, ("activation",)),
    "ReLU": LayerFormat(layers.ReLU, (), {"max_value": (None,), "negative_slope": (0.0,), "threshold": (0.0,)}),
    "LeakyReLU": LayerFormat(layers.LeakyReLU, ("negative_slope", "alpha")),
    "Softmax": LayerFormat(layers.Softmax, (), {"axis": (-1,)}),
    "BatchNormalization": LayerFormat(
        layers.BatchNormalization,
        ("axis", "momentum", "epsilon", "center", "scale", "beta_initializer", "gamma_initializer",
         "moving_mean_initializer", "moving_variance_initializer", "beta_regularizer", "gamma_regularizer"),
        {"beta_constraint": (None,), "gamma_constraint": (None,), "synchronized": (False,),
         "renorm": (False,), "renorm_clipping": (None,), "renorm_momentum": (0.99,)}),
    "GlobalAveragePooling2D": LayerFormat(layers.GlobalAveragePooling2D, ("keepdims",),
                                          {"data_format": CHANNELS_LAST}),
    "GlobalMaxPooling2D": LayerFormat(layers.GlobalMaxPooling2D, ("keepdims",), {"data_format": CHANNELS_LAST}),
    "Reshape": LayerFormat(layers.Reshape, ("target_shape",)),
    "Rescaling": LayerFormat(layers.Rescaling, ("scale", "offset")),
    "ZeroPadding2D": LayerFormat(layers.ZeroPadding2D, ("padding",), {"data_format": CHANNELS_LAST}),
    "Add": LayerFormat(layers.Add),
    "Concatenate": LayerFormat(layers.Concatenate, ("axis",)),
}
#: Keras 2 class names of the same layers
KERAS_ALIASES = {"MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D",
                 "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D"}
#: arguments at their defaults that minidl leaves out when writing, so that every Keras 3 reads the file
ARGUMENTS_OF_RECENT_KERAS = ("quantization_config", "lora_rank", "lora_alpha", "renorm", "renorm_clipping",
                             "renorm_momentum")
#: InputLayer's arguments: the shape is read, the rest must be Keras's defaults
INPUT_LAYER_FIXED = {"sparse": (False,), "ragged": (False,), "optional": (False,)}


# ------------------------------------------------------------------------- reading configs


def keras_class_name(entry, where):
    """The Keras class of a layer entry, refused unless it is in :data:`KERAS_LAYERS` (or InputLayer)."""
    class_name = entry.get("class_name")
    if not isinstance(class_name, str):
        refuse(f"{where}: a layer without a class_name")
    refuse_custom_object(entry, where)
    class_name = KERAS_ALIASES.get(class_name, class_name)
    if class_name != "InputLayer" and class_name not in KERAS_LAYERS:
        code_note = " (a Lambda layer holds Python code, which minidl never runs)" if class_name == "Lambda" else ""
        refuse(f"{where}: layer class {class_name!r:.100} is not one minidl reads{code_note}; readable: "
               f"{sorted(['InputLayer', *KERAS_LAYERS])}")
    return class_name


def fixed_value_accepted(value, accepted):
    """``value`` equals one of ``accepted``; booleans equal only booleans (``True`` is not ``1``)."""
    return any(value == choice and isinstance(value, bool) == isinstance(choice, bool) for choice in accepted)


def refuse_unsupported_values(config, fixed, where):
    for argument, accepted in fixed.items():
        if argument in config and not fixed_value_accepted(config[argument], accepted):
            refuse(f"{where}: {argument}={config[argument]!r:.100} is not implemented in minidl (it "
                   f"takes {' or '.join(map(repr, accepted))})")


def declared_input_shape(config, where):
    """The per-sample input shape a layer config declares (``batch_shape`` / ``batch_input_shape``),
    checked against minidl's size limit, or ``None``."""
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    if shape is None:
        return None
    if not isinstance(shape, list) or len(shape) < 2 or shape[0] is not None:
        refuse(f"{where}: batch shape {shape!r:.200} must be a list starting with null (the batch axis)")
    try:
        validation.input_shape_within_limits(shape[1:], f"{where}: input shape")
    except ValueError as error:
        refuse(str(error))
    return tuple(shape[1:])


def read_layer(entry, index):
    """``(minidl layer or None, declared input shape or None)`` of one layer entry; an InputLayer
    gives no layer, only its shape."""
    where = f"layer {index}"
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        refuse(f"{where}: expected {{\"class_name\": ..., \"config\": {{...}}}}, got {entry!r:.200}")
    class_name = keras_class_name(entry, where)
    config = entry["config"]
    name = config.get("name", entry.get("name"))
    if not isinstance(name, str):
        refuse(f"{where} ({class_name}): its name must be a string, got {name!r:.100}")
    where = f"layer {name!r:.100} ({class_name})"
    refuse_unexpected(entry, ("class_name", "config", "module", "registered_name", "build_config", "name",
                              "inbound_nodes"), where)
    dtype = read_dtype(config.get("dtype", "float32"), where)
    if class_name == "InputLayer":
        refuse_unexpected(config, (*COMMON_ARGUMENTS, *INPUT_LAYER_FIXED), where)
        refuse_unsupported_values(config, INPUT_LAYER_FIXED, where)
        shape = declared_input_shape(config, where)
        if shape is None:
            refuse(f"{where}: an InputLayer without batch_shape")
        return None, shape
    layer_format = KERAS_LAYERS[class_name]
    refuse_unexpected(config, (*COMMON_ARGUMENTS, *layer_format.arguments, *layer_format.fixed), where)
    refuse_unsupported_values(config, layer_format.fixed, where)
    arguments = {argument: VALUE_READERS.get(argument, lambda value, _: value)(config[argument], where)
                 for argument in layer_format.arguments if argument in config}
    trainable = config.get("trainable", True)
    if not isinstance(trainable, bool):
        refuse(f"{where}: trainable must be true or false, got {trainable!r:.100}")
    try:
        layer = layer_format.minidl_class(name=name, dtype=dtype, trainable=trainable, **arguments)
    except (TypeError, ValueError) as error:
        refuse(f"{where}: {error}")
    return layer, declared_input_shape(config, where)


def sequential_layers(model_config):
    """The layer entries of a Sequential config, in order."""
    config = model_config.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        refuse("the Sequential config has no 'layers' list")
    return config["layers"]


#: keyword arguments a functional config may record for a call, accepted at their default (None)
CALL_KEYWORDS_AT_DEFAULT = ("mask", "training")


def tensor_sources(call):
    """The layer names whose outputs one call of a layer takes: Keras 3 writes
    ``{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}}]}``,
    Keras 2 ``[[name, 0, 0, {}], ...]``."""
    if isinstance(call, dict):
        arguments, keywords = call.get("args"), call.get("kwargs") or {}
        if (not isinstance(arguments, list) or not isinstance(keywords, dict)
                or any(key not in CALL_KEYWORDS_AT_DEFAULT or value is not None for key, value in keywords.items())):
            refuse(f"a layer call with arguments minidl does not read: {call!r:.200}")
        if len(arguments) == 1 and isinstance(arguments[0], list):
            arguments = arguments[0]
        histories = [argument["config"].get("keras_history")
                     if isinstance(argument, dict) and isinstance(argument.get("config"), dict) else None
                     for argument in arguments]
    elif isinstance(call, list):
        histories = call
    else:
        histories = [None]
    if not all(isinstance(history, list) and history and isinstance(history[0], str) for history in histories):
        refuse(f"a layer call minidl cannot read: {call!r:.200}")
    return [history[0] for history in histories]


def endpoint_names(value, what):
    """Layer names of ``input_layers`` / ``output_layers``: ``[name, 0, 0]`` or a list of those."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, list) and item and isinstance(item[0], str)
                                              for item in value):
        refuse(f"the functional config's {what} {value!r:.200} is not a list of [name, 0, 0]")
    return [item[0] for item in value]


def functional_graph(model_config):
    """``(input entry, [(layer entry, source names)])`` of a functional config, in the config's order
    (Keras writes a layer after the layers it reads).  One input and one output; each layer called
    once on tensors that earlier entries write."""
    config = model_config.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        refuse("the functional config has no 'layers' list")
    inputs = endpoint_names(config.get("input_layers"), "input_layers")
    outputs = endpoint_names(config.get("output_layers"), "output_layers")
    if len(inputs) != 1 or len(outputs) != 1:
        refuse(f"the model has inputs {inputs} and outputs {outputs}; minidl reads one of each")
    input_entry, calls, written = None, [], set()
    for entry in config["layers"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in written:
            refuse(f"the functional config has a layer without a unique name: {entry!r:.200}")
        written.add(name)
        if name == inputs[0]:
            input_entry = entry
            continue
        nodes = entry.get("inbound_nodes")
        if not isinstance(nodes, list) or len(nodes) != 1:
            refuse(f"layer {name!r:.100} is called {len(nodes) if isinstance(nodes, list) else 'an unknown number of'}"
                   f" times; minidl reads layers called once (no shared layers)")
        sources = tensor_sources(nodes[0])
        if not sources:
            refuse(f"layer {name!r:.100} is called on no tensor")
        unknown = [source for source in sources if source not in written or source == name]
        if unknown:
            refuse(f"layer {name!r:.100} reads {unknown}, which no earlier layer writes")
        calls.append((entry, sources))
    if input_entry is None or outputs[0] not in written:
        refuse(f"the functional config does not define its input {inputs[0]!r:.100} and output {outputs[0]!r:.100}")
    return input_entry, calls


def sequential_from_config(model_config, name):
    """``(Sequential, its layers in the file's order)`` from a Sequential config."""
    model = Sequential(name=name)
    for index, entry in enumerate(sequential_layers(model_config)):
        layer, shape = read_layer(entry, index)
        if shape is not None and model.input_shape is None and not model.layers:
            model.add(layers.Input(shape))
        if layer is not None:
            try:
                model.add(layer)
            except (TypeError, ValueError) as error:
                refuse(f"layer {layer.name!r}: {error}")
    return model, model.layers


def functional_from_config(model_config, name):
    """``(Model, its layers in the file's order)`` from a functional config: each layer called on
    the tensors its entry names, as the model was built."""
    input_entry, calls = functional_graph(model_config)
    _, shape = read_layer(input_entry, 0)
    tensors = {input_entry["name"]: layers.Input(shape, name=input_entry["name"],
                                                 dtype=read_dtype(input_entry["config"].get("dtype", "float32"),
                                                                  "the input"))}
    ordered = []
    for index, (entry, sources) in enumerate(calls, start=1):
        layer, _ = read_layer(entry, index)
        if layer is None:
            refuse(f"layer {entry['name']!r:.100}: a second InputLayer; minidl models have one input")
        inbound = [tensors[source] for source in sources]
        try:
            tensors[entry["name"]] = layer(inbound if layer.takes_several_inputs else inbound[0])
        except (TypeError, ValueError) as error:
            refuse(f"layer {layer.name!r}: {error}")
        ordered.append(layer)
    output = endpoint_names(model_config["config"]["output_layers"], "output_layers")[0]
    try:
        return Model(tensors[input_entry["name"]], tensors[output], name=name), ordered
    except (TypeError, ValueError) as error:
        refuse(str(error))


MODEL_READERS = {"Sequential": sequential_from_config, "Functional": functional_from_config,
                 "Model": functional_from_config}


def model_from_config(model_config):
    """``(model, its layers in the file's order)`` with placeholder parameters (no memory) from a
    Keras model config: a ``Sequential``, or a functional ``Model``."""
    class_name = model_config.get("class_name") if isinstance(model_config, dict) else model_config
    if not isinstance(class_name, str) or class_name not in MODEL_READERS:
        refuse(f"the model class {class_name!r:.100} is not one minidl reads; readable: {sorted(MODEL_READERS)}")
    refuse_custom_object(model_config, "the model")
    if not isinstance(model_config.get("config"), dict):
        refuse("the model has no config")
    name = model_config["config"].get("name")
    with initializers.placeholders():
        model, ordered = MODEL_READERS[model_config["class_name"]](
            model_config, name if isinstance(name, str) else "model")
    if not model.layers or not model.built:
        refuse("the model declares no input shape (no InputLayer or batch_shape), or no layers")
    return model, ordered


# ------------------------------------------------------------------------- compile settings


#: Keras optimizer classes -> the arguments minidl's optimizer of the same name takes
KERAS_OPTIMIZERS = {"SGD": ("learning_rate", "momentum", "nesterov"),
                    "Adam": ("learning_rate", "beta_1", "beta_2", "epsilon"),
                    "RMSprop": ("learning_rate", "rho", "epsilon")}
#: Keras optimizer features minidl lacks, accepted only when switched off
OPTIMIZER_FEATURES_OFF = {"weight_decay": (None, 0, 0.0), "clipnorm": (None,), "global_clipnorm": (None,),
                          "clipvalue": (None,), "use_ema": (False,), "amsgrad": (False,),
                          "centered": (False,), "momentum": (0, 0.0), "decay": (0, 0.0),
                          "loss_scale_factor": (None,), "gradient_accumulation_steps": (None,)}
#: bookkeeping keys of Keras optimizer configs with no effect on the updates
OPTIMIZER_KEYS_WITHOUT_EFFECT = ("name", "ema_momentum", "ema_overwrite_frequency", "jit_compile",
                                 "is_legacy_optimizer")
KERAS_LOSSES = {"CategoricalCrossentropy", "SparseCategoricalCrossentropy", "BinaryCrossentropy",
                "MeanSquaredError", "MeanAbsoluteError"}
LOSS_DEFAULTS = {"label_smoothing": (0, 0.0), "axis": (-1,), "reduction": ("sum_over_batch_size", "auto"),
                 "ignore_class": (None,)}


def read_optimizer(value):
    if isinstance(value, str):
        return optimizers.get(value)
    class_name, config = keras_object(value, KERAS_OPTIMIZERS, "optimizer", "compile_config")
    arguments = KERAS_OPTIMIZERS[class_name]
    features = {key: accepted for key, accepted in OPTIMIZER_FEATURES_OFF.items() if key not in arguments}
    refuse_unexpected(config, (*arguments, *features, *OPTIMIZER_KEYS_WITHOUT_EFFECT),
                      f"optimizer {class_name}")
    refuse_unsupported_values(config, features, f"optimizer {class_name}")
    if not isinstance(config.get("learning_rate", 0.0), (int, float)):
        refuse(f"optimizer {class_name}: learning-rate schedules are not read from Keras files")
    return getattr(optimizers, class_name)(**{key: config[key] for key in arguments if key in config})


def read_loss(value):
    if isinstance(value, str):
        return losses.get(value)
    class_name, config = keras_object(value, KERAS_LOSSES, "loss", "compile_config")
    takes_logits = class_name.endswith("Crossentropy")
    refuse_unexpected(config, ("name", *(("from_logits",) if takes_logits else ()), *LOSS_DEFAULTS),
                      f"loss {class_name}")
    refuse_unsupported_values(config, LOSS_DEFAULTS, f"loss {class_name}")
    return losses.deserialize({"class_name": class_name,
                               "config": {"from_logits": config.get("from_logits", False)} if takes_logits else {}})


def read_metric_names(value):
    """Metric names from Keras's ``metrics`` (a list, possibly nested per output); each must be a name
    minidl knows."""
    names = []
    for item in value or []:
        for name in (item if isinstance(item, list) else [item]):
            if not isinstance(name, str):
                refuse(f"metric {name!r:.100} is not a name")
            metrics.get(name)
            names.append(name)
    return names


def compile_from(model, compile_config):
    """Compile ``model`` with the optimizer, loss and metrics of a Keras compile config when minidl
    has them; otherwise leave it uncompiled with a warning naming what it lacks (the layers and
    weights are what a file must hold; the compile settings are a convenience)."""
    if not isinstance(compile_config, dict) or compile_config.get("loss") is None:
        return
    try:
        optimizer = read_optimizer(compile_config.get("optimizer", "rmsprop"))
        loss = read_loss(compile_config["loss"])
        metric_names = read_metric_names(compile_config.get("metrics"))
    except (KerasFileProblem, ValueError, TypeError) as error:
        warnings.warn(f"{model.name}: the model is loaded uncompiled; its compile settings are not ones "
                      f"minidl has: {error}", stacklevel=3)
        return
    model.compile(optimizer=optimizer, loss=loss, metrics=metric_names)


# ------------------------------------------------------------------------------ weights


def layer_weight_shapes(layer):
    return [tuple(array.shape) for _, array in layer.weights()]


def hdf5_member(group, name, where):
    """``group[name]`` after refusing soft and external links (which point elsewhere, even to
    other files) and names that leave the group."""
    import h5py
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        refuse(f"{where}: HDF5 member name {name!r:.100} leaves its group")
    link = group.get(name, getlink=True)
    if link is None:
        refuse(f"{where}: HDF5 member {name!r:.100} is missing")
    if not isinstance(link, h5py.HardLink):
        refuse(f"{where}: HDF5 member {name!r:.100} is a link to data elsewhere ({type(link).__name__}); "
               f"minidl reads only data stored in the file itself")
    return group[name]


def checked_weight(dataset, expected_shape, where):
    """A weight array, read after checking (from its header) that it is a float dataset of exactly
    ``expected_shape`` whose bytes are stored plainly in this file; ``where`` names the layer and
    the weight's path."""
    import h5py
    if not isinstance(dataset, h5py.Dataset):
        refuse(f"{where}: expected a weight array, found an HDF5 {type(dataset).__name__}")
    if tuple(dataset.shape) != tuple(expected_shape):
        refuse(f"{where} has shape {tuple(dataset.shape)}, the layer needs {tuple(expected_shape)}")
    if dataset.dtype.kind != "f":
        refuse(f"{where} has dtype {dataset.dtype}, expected a float array")
    if dataset.is_virtual or dataset.external or dataset.id.get_create_plist().get_nfilters():
        refuse(f"{where} is stored virtually, in an external file or through a filter; minidl reads "
               f"weights stored plainly in the file")
    if dataset.id.get_storage_size() != dataset.size * dataset.dtype.itemsize:
        refuse(f"{where} declares {dataset.size * dataset.dtype.itemsize:,} bytes but the file stores "
               f"{dataset.id.get_storage_size():,}")
    return np.asarray(dataset[()])


def refuse_more_parameters_than_bytes(model, file_bytes):
    """A config that declares more parameters than its weight file could hold (at 2 bytes each, the
    smallest float) is refused before any weight is read."""
    declared = sum(math.prod(shape) for shape in parameter_shapes(model))
    if declared * 2 > file_bytes:
        refuse(f"the config declares {declared:,} parameters, more than the {file_bytes:,}-byte weight file "
               f"can hold")


def keras3_layer_paths(ordered_layers):
    """Each layer's group in a Keras 3 weights file: its Keras class in snake case, made unique in
    the model's order (``conv2d``, ``conv2d_1``, ...), as Keras names them."""
    used, paths = {}, []
    for layer in ordered_layers:
        name = snake_case(keras_class_of(layer)[0])
        used[name] = used.get(name, -1) + 1
        paths.append(name if used[name] == 0 else f"{name}_{used[name]}")
    return paths


def snake_case(class_name):
    """``MaxPooling2D`` -> ``max_pooling2d``, as Keras writes class names in weight paths."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def keras3_weights(model, ordered_layers, h5_file):
    """Every weight of ``model`` from a Keras 3 ``model.weights.h5``, in ``get_weights`` order;
    ``ordered_layers`` are the layers in the file's order, which names their groups."""
    paths = dict(zip(map(id, ordered_layers), keras3_layer_paths(ordered_layers)))
    weights = []
    for layer in model.layers:
        path = paths[id(layer)]
        shapes = layer_weight_shapes(layer)
        if not shapes:
            continue
        where = f"layer {layer.name!r}"
        stored = hdf5_member(h5_file, f"layers/{path}/vars", where)
        if sorted(stored) != sorted(str(index) for index in range(len(shapes))):
            refuse(f"{where}: layers/{path}/vars holds weights {sorted(stored)}, the layer has {len(shapes)}")
        weights += [checked_weight(hdf5_member(stored, str(index), where), shape,
                                   f"{where}: weight layers/{path}/vars/{index}")
                    for index, shape in enumerate(shapes)]
    return weights


def text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def legacy_weights(model, model_weights):
    """Every weight of ``model`` from a legacy file's ``model_weights`` group, found by layer name."""
    weights = []
    for layer in model.layers:
        shapes = layer_weight_shapes(layer)
        if not shapes:
            continue
        where = f"layer {layer.name!r}"
        group = hdf5_member(model_weights, layer.name, where)
        names = [text(name) for name in group.attrs.get("weight_names", [])]
        if len(names) != len(shapes):
            refuse(f"{where}: model_weights/{layer.name} lists {len(names)} weights, the layer has {len(shapes)}")
        weights += [checked_weight(hdf5_member(group, name, where), shape,
                                   f"{where}: weight model_weights/{layer.name}/{name}")
                    for name, shape in zip(names, shapes)]
    return weights


# ------------------------------------------------------------------------------ loading


def parse_json(data, what):
    if len(data) > MAX_JSON_BYTES:
        refuse(f"{what} has {len(data):,} bytes, more than the {MAX_JSON_BYTES:,} minidl reads")
    try:
        return json.loads(text(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        refuse(f"{what} is not valid JSON ({error})")
    except RecursionError:
        refuse(f"{what} is nested too deeply to be a model config")


def archive_members(path):
    """The members of a ``.keras`` archive as bytes, after refusing unknown, duplicate or oversized
    members (sizes are checked from the directory before anything is read or decompressed)."""
    members = {}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        for info in infos:
            name = info.filename
            if name not in MEMBER_LIMITS:
                traversal = name.startswith("/") or "\\" in name or ".." in name.split("/")
                refuse(f"archive member {name!r:.200} is not part of a Keras model file"
                       + (" (a path outside the archive: refused, nothing is extracted)" if traversal else "")
                       + f"; minidl reads {sorted(MEMBER_LIMITS)}")
            if sum(other.filename == name for other in infos) > 1:
                refuse(f"archive member {name!r} appears twice")
            if info.file_size > MEMBER_LIMITS[name]:
                refuse(f"archive member {name!r} declares {info.file_size:,} bytes, more than the "
                       f"{MEMBER_LIMITS[name]:,} minidl reads")
        for info in infos:
            with archive.open(info) as member:
                members[info.filename] = member.read(MEMBER_LIMITS[info.filename] + 1)
    missing = sorted({"config.json", "model.weights.h5"} - set(members))
    if missing:
        refuse(f"not a Keras model archive: member{'s' * (len(missing) > 1)} {', '.join(missing)} missing")
    return members


def refuse_keras_2_archive(members):
    if "metadata.json" in members:
        metadata = parse_json(members["metadata.json"], "metadata.json")
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
        if isinstance(version, str) and not version.startswith("3."):
            refuse(f"written by Keras {version:.20}; minidl reads .keras files of Keras 3 (and legacy .h5 files)")


def model_from_keras_archive(path):
    import h5py
    members = archive_members(path)
    refuse_keras_2_archive(members)
    model_config = parse_json(members["config.json"], "config.json")
    model, ordered_layers = model_from_config(model_config)
    refuse_more_parameters_than_bytes(model, len(members["model.weights.h5"]))
    with h5py.File(io.BytesIO(members["model.weights.h5"]), "r") as h5_file:
        model.set_weights(keras3_weights(model, ordered_layers, h5_file))
    compile_from(model, model_config.get("compile_config"))
    return model


def model_from_legacy_h5(path):
    import h5py
    with h5py.File(path, "r") as h5_file:
        if "model_config" not in h5_file.attrs:
            refuse("an HDF5 file without a 'model_config' attribute: not a Keras model file (a weights-only "
                   "file? build the model and use set_weights)")
        model_config = parse_json(h5_file.attrs["model_config"], "the model_config attribute")
        model, _ = model_from_config(model_config)
        refuse_more_parameters_than_bytes(model, os.path.getsize(path))
        model.set_weights(legacy_weights(model, hdf5_member(h5_file, "model_weights", "the file")))
        if "training_config" in h5_file.attrs:
            training_config = parse_json(h5_file.attrs["training_config"], "the training_config attribute")
            if isinstance(training_config, dict):
                compile_from(model, {**training_config, "optimizer": training_config.get("optimizer_config")})
    return model


def is_hdf5(path):
    with open(path, "rb") as file:
        return file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


def is_keras_file(path):
    """True for an HDF5 file, a zip archive with a Keras ``config.json`` and no minidl manifest, or a
    file named ``.keras`` / ``.h5`` that is not a readable zip (a truncated one: the Keras reader names
    the problem)."""
    if is_hdf5(path):
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return os.path.splitext(os.fspath(path))[1].lower() in (".keras", ".h5")
    return "manifest.json" not in names and ("config.json" in names or os.fspath(path).lower().endswith(".keras"))


def require_h5py(path):
    """Keras files keep their weights in HDF5: without h5py, say which extra installs it."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise ImportError(f"{os.fspath(path)}: Keras files (.keras, .h5) need h5py: "
                          f"pip install 'minidl[keras-files]'") from None


def load_keras_model(path):
    """A minidl model from a Keras 3 ``.keras`` archive or a legacy Keras ``.h5`` file (compiled when
    the file's compile settings are ones minidl has).  Needs ``h5py`` (``pip install minidl[keras-files]``)."""
    path = os.fspath(path)
    require_h5py(path)
    try:
        return model_from_legacy_h5(path) if is_hdf5(path) else model_from_keras_archive(path)
    except KerasFileProblem as problem:
        raise ModelFileError(path, str(problem)) from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as error:
        raise ModelFileError(path, f"not a readable Keras file, or truncated/corrupt ({error})") from None
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError) as error:  # unforeseen values
        raise ModelFileError(path, f"invalid Keras model: {type(error).__name__}: {error}") from None


# ------------------------------------------------------------------------------ writing


def keras_class_of(layer):
    """``(Keras class name, LayerFormat)`` of a minidl layer; the fixed-activation layers (``Tanh``,
    ``Sigmoid``) are Keras ``Activation`` layers."""
    for class_name, layer_format in KERAS_LAYERS.items():
        if type(layer) is layer_format.minidl_class:
            return class_name, layer_format
    if isinstance(layer, layers.Activation):
        return "Activation", KERAS_LAYERS["Activation"]
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no Keras file format in minidl; "
                     f"writable: {sorted({f.minidl_class.__name__ for f in KERAS_LAYERS.values()})}")


def write_layer(layer):
    """A layer's Keras config: its arguments, the Keras defaults of what minidl lacks, and its dtype."""
    class_name, layer_format = keras_class_of(layer)
    minidl_config = {**layer.get_config(), "activation": getattr(layer, "activation", None)}
    config = {"name": layer.name, "trainable": layer.trainable, "dtype": write_dtype(layer.dtype.name)}
    for argument in layer_format.arguments:
        if argument in minidl_config:
            config[argument] = VALUE_WRITERS.get(argument, lambda value: value)(minidl_config[argument])
    config.update({argument: accepted[0] for argument, accepted in layer_format.fixed.items()
                   if argument not in ARGUMENTS_OF_RECENT_KERAS})
    input_shape = ([[None, *shape] for shape in layer.input_shape] if layer.takes_several_inputs
                   else [None, *layer.input_shape])
    return {"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": None,
            "build_config": {"input_shape": input_shape}}


def input_layer_config(model, name="input_layer"):
    return {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
            "config": {"batch_shape": [None, *model.input_shape], "dtype": model.dtype.name,
                       "sparse": False, "name": name}}


def keras_tensor(tensor):
    """How a functional config names a layer's input: the tensor's shape and the layer that wrote it."""
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [None, *tensor.sample_shape], "dtype": tensor.dtype.name,
                       "keras_history": [tensor.name, 0, 0]}}


def keras_layer_order(model):
    """``model``'s layers in the order Keras keeps them, which names their weight groups (and pairs
    them with a legacy file's by position): a Sequential's own order; for a functional graph, the
    layers farthest from the output first (depth: the longest path to it), ties in the order a
    depth-first walk from the output, inputs in order, first reaches them."""
    if isinstance(model, Sequential):
        return list(model.layers)
    tensors, graph = {}, model.graph
    first_reached, pending = {}, [graph.output]
    while pending:
        tensor = pending.pop()
        if tensor.layer is None or id(tensor) in first_reached:
            continue
        first_reached[id(tensor)] = len(first_reached)
        tensors[id(tensor)] = tensor
        pending.extend(reversed(tensor.inputs))
    depth = {id(graph.output): 0}
    for tensor in reversed(graph.tensors):  # the output first, each tensor before those it reads
        for source in tensor.inputs:
            depth[id(source)] = max(depth.get(id(source), 0), depth.get(id(tensor), 0) + 1)
    ordered = sorted(tensors.values(), key=lambda t: (-depth[id(t)], first_reached[id(t)]))
    return [tensor.layer for tensor in ordered]


def functional_layers(model):
    """A functional Model's layer entries: the InputLayer, then each layer (in Keras's order) with
    the call that feeds it."""
    graph = model.graph
    entries = [{**input_layer_config(model, graph.input.name), "name": graph.input.name, "inbound_nodes": []}]
    tensor_of = {id(tensor.layer): tensor for tensor in graph.tensors}
    for tensor in (tensor_of[id(layer)] for layer in keras_layer_order(model)):
        arguments = [keras_tensor(source) for source in tensor.inputs]
        call = {"args": [arguments if tensor.layer.takes_several_inputs else arguments[0]], "kwargs": {}}
        entries.append({**write_layer(tensor.layer), "name": tensor.layer.name, "inbound_nodes": [call]})
    return entries


def write_compile_config(model):
    """Keras's compile config of a compiled model, or ``None`` (with a warning) when its optimizer
    has no Keras equivalent or uses a schedule."""
    if model.loss is None:
        return None
    optimizer_name = type(model.optimizer).__name__
    optimizer_config = model.optimizer.get_config()
    if optimizer_name not in KERAS_OPTIMIZERS or not isinstance(optimizer_config["learning_rate"], float):
        warnings.warn(f"{model.name}: the optimizer {optimizer_name} (or its learning-rate schedule) has no "
                      f"Keras equivalent; the file is written without compile settings", stacklevel=4)
        return None
    loss = losses.serialize(model.loss)
    return {"optimizer": keras_object_config("keras.optimizers", optimizer_name, optimizer_config),
            "loss": keras_object_config("keras.losses", loss["class_name"], loss["config"]),
            "metrics": [name for name in model.metric_names if isinstance(name, str)] or None,
            "loss_weights": None, "weighted_metrics": None, "run_eagerly": False,
            "steps_per_execution": 1, "jit_compile": False}


def keras_model_config(model):
    """Keras's config of ``model``: a ``Sequential``, or a ``Functional`` with its graph."""
    base = {"name": model.name, "trainable": True, "dtype": write_dtype(model.dtype.name)}
    if isinstance(model, Sequential):
        config = {"module": "keras", "class_name": "Sequential", "registered_name": None,
                  "config": {**base, "layers": [input_layer_config(model), *map(write_layer, model.layers)]}}
    else:
        config = {"module": "keras.src.models.functional", "class_name": "Functional",
                  "registered_name": "Functional",
                  "config": {**base, "layers": functional_layers(model),
                             "input_layers": [model.graph.input.name, 0, 0],
                             "output_layers": [model.graph.output.name, 0, 0]}}
    config["build_config"] = {"input_shape": [None, *model.input_shape]}
    compile_config = write_compile_config(model)
    if compile_config is not None:
        config["compile_config"] = compile_config
    return config


def keras3_weights_bytes(model):
    """``model.weights.h5`` as Keras 3 lays it out: ``layers/<path>/vars/<index>``."""
    import h5py
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5_file:
        h5_file.create_group("vars")
        ordered = keras_layer_order(model)
        for layer, path in zip(ordered, keras3_layer_paths(ordered)):
            stored = h5_file.create_group(f"layers/{path}/vars")
            for index, weight in enumerate(layer.get_weights()):
                stored.create_dataset(str(index), data=weight)
    return buffer.getvalue()


def save_keras_archive(model, path):
    """Write ``model`` as a Keras 3 ``.keras`` archive that ``keras.models.load_model`` reads
    (atomically: a failure leaves the old file)."""
    require_built(model, "save")
    require_h5py(path)
    members = {"metadata.json": json.dumps({"keras_version": KERAS_VERSION_WRITTEN,
                                            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}),
               "config.json": json.dumps(keras_model_config(model)),
               "model.weights.h5": keras3_weights_bytes(model)}
    with atomic_write(path) as file:
        with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)


def legacy_h5_bytes(model):
    """The legacy HDF5 file: the config in ``model_config``, compile settings in ``training_config``,
    weights in ``model_weights/<layer>/<model>/<layer>/<weight>`` listed by ``weight_names``."""
    import h5py
    model_config = keras_model_config(model)
    compile_config = model_config.pop("compile_config", None)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5_file:
        h5_file.attrs["model_config"] = json.dumps(model_config)
        h5_file.attrs["keras_version"] = KERAS_VERSION_WRITTEN
        h5_file.attrs["backend"] = "numpy"
        if compile_config is not None:
            optimizer_config = compile_config.pop("optimizer")
            h5_file.attrs["training_config"] = json.dumps({**compile_config, "optimizer_config": optimizer_config})
        model_weights = h5_file.create_group("model_weights")
        ordered = keras_layer_order(model)
        model_weights.attrs["layer_names"] = [layer.name.encode() for layer in ordered]
        for layer in ordered:
            group = model_weights.create_group(layer.name)
            names = [f"{model.name}/{layer.name}/{key}" for key, _ in layer.weights()]
            group.attrs["weight_names"] = [name.encode() for name in names]
            for name, weight in zip(names, layer.get_weights()):
                group.create_dataset(name, data=weight)
    return buffer.getvalue()


def save_legacy_h5(model, path):
    """Write ``model`` as a legacy Keras ``.h5`` file (atomically: a failure leaves the old file)."""
    require_built(model, "save")
    require_h5py(path)
    data = legacy_h5_bytes(model)
    with atomic_write(path) as file:
        file.write(data)
