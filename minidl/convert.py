"""``minidl convert IN OUT``: rewrite a model file in another format, chosen by OUT's suffix.

IN is any file :func:`minidl.load_model` reads (``.minidl``, Keras 3 ``.keras``, legacy ``.h5``);
OUT is ``.keras``, ``.h5`` or ``.minidl`` (:func:`minidl.saving.save_model`) or ``.onnx``
(:func:`minidl.onnx_export.export`).  Nothing is written when IN cannot be read.
"""

import os

from minidl.saving import SAVE_SUFFIXES, load_model

TARGET_SUFFIXES = (*SAVE_SUFFIXES["save_model"], ".onnx")


def convert(source, target):
    """Load ``source`` and write it to ``target`` in the format ``target``'s suffix names; returns
    the model.  A ``target`` suffix that names no format is refused before ``source`` is read."""
    suffix = os.path.splitext(os.fspath(target))[1].lower()
    if suffix not in TARGET_SUFFIXES:
        raise ValueError(f"{os.fspath(target)}: OUT must end in {', '.join(TARGET_SUFFIXES)} (the format to "
                         f"write), got {suffix or 'no suffix'!r}")
    model = load_model(source)
    if suffix == ".onnx":
        model.export(target, format="onnx")
    else:
        model.save(target)
    return model


def command_convert(args):
    model = convert(args.source, args.target)
    print(f"{args.target}: {model.name} ({len(model.layers)} layers, {model.count_params():,} parameters) "
          f"from {args.source}")
    return 0


def add_command(commands):
    """Register ``convert`` on the CLI's sub-command parsers; returns its parser."""
    parser = commands.add_parser("convert", help="rewrite a model file as .keras, .h5, .minidl or .onnx",
                                 description="Read IN (.minidl, .keras or legacy .h5; Keras files are read "
                                             "as data, never run) and write OUT in the format its suffix "
                                             "names: .keras, .h5, .minidl or .onnx.")
    parser.add_argument("source", metavar="IN")
    parser.add_argument("target", metavar="OUT")
    parser.set_defaults(run=command_convert)
    return parser
