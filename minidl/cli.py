"""The ``minidl`` command: ``train``, ``evaluate``, ``predict``, ``gradcheck``, ``bench``, ``convert``, and
the teaching commands ``explain``, ``museum`` and ``grade`` (:mod:`minidl.teaching.cli`).

Exit status: 0 success, 1 an error (one line on stderr, no traceback unless ``--debug``), 2 a usage
error (from argparse).  ``python -m minidl.cli`` works the same as the installed ``minidl`` script.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from minidl import __version__, convert

DATASETS = ("fashion_mnist", "mnist", "shapes")
SHAPES_TRAIN_SAMPLES, SHAPES_TEST_SAMPLES = 3000, 600


# ------------------------------------------------------------------------------- models


PRESETS = ("seed-cnn", "tiny-cnn", "mlp")  # minidl.presets.PRESETS, listed without importing it


def build_model(spec, input_shape, num_classes):
    """A model from a preset name or a JSON architecture file (a model's ``get_config()`` output)."""
    from minidl import presets, validation
    from minidl.model import model_from_config

    if spec.endswith(".json") or os.path.isfile(spec):
        with open(spec) as file:
            try:
                config = json.load(file)
            except (json.JSONDecodeError, RecursionError) as error:
                raise ValueError(f"{spec}: not valid JSON ({type(error).__name__}: {error})") from None
        config = validation.architecture(config, spec)
        require_usable_layer_configs(config["layers"], spec)
        try:
            model = model_from_config(config)
            if not model.built:
                model.build(input_shape)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{spec}: the architecture does not build: {error}") from None
        return model
    if spec not in presets.PRESETS:
        raise ValueError(f"unknown model preset {spec!r}; choose one of {sorted(presets.PRESETS)} or give "
                         f"a JSON architecture file")
    return presets.PRESETS[spec](input_shape, num_classes)


def require_usable_layer_configs(layer_configs, source):
    """Make each layer of an architecture file once, so that a bad one is named by the file, its
    position and its class rather than by a bare Python error."""
    from minidl import layers

    for index, layer_config in enumerate(layer_configs):
        try:
            layers.deserialize(layer_config)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: layer {index} ({layer_config['class_name']}): {error}") from None


# ------------------------------------------------------------------------------- data


def as_float_images(x):
    """uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, H, W, C)`` in [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    return x.astype(np.float32) / 255.0


def require_dataset_files(name, data_dir):
    """Refuse a ``--data-dir`` that is not a folder holding the dataset's IDX files, rather than
    silently reading them from somewhere else."""
    from minidl.data import datasets

    if not os.path.isdir(data_dir):
        raise ValueError(f"--data-dir {data_dir}: no such directory")
    if name not in ("fashion_mnist", "mnist"):
        raise ValueError(f"--data-dir applies to fashion_mnist and mnist, not to --dataset {name}")
    spec = datasets.FASHION_MNIST if name == "fashion_mnist" else datasets.MNIST
    missing = [idx_file.name for idx_file in spec.files if datasets.file_path(data_dir, idx_file) is None]
    if missing:
        raise ValueError(f"--data-dir {data_dir}: missing the {spec.title} files {', '.join(missing)} "
                         f"(plain or .gz)")


def load_dataset(name, data_dir=None, image_size=(28, 28), color_mode="grayscale", seed=0):
    """``(x_train, y_train), (x_test, y_test), class_names`` with float images in [0, 1]."""
    from minidl import data, datasets

    if data_dir is not None:
        require_dataset_files(name, data_dir)
    if name in ("fashion_mnist", "mnist"):
        loader = data.load_fashion_mnist if name == "fashion_mnist" else data.load_mnist
        (x_train, y_train), (x_test, y_test) = loader(path=data_dir)
        class_names = list(getattr(datasets, name).class_names)
    elif name == "shapes":
        x_train, y_train = data.make_shapes(SHAPES_TRAIN_SAMPLES, size=image_size[0], seed=seed)
        x_test, y_test = data.make_shapes(SHAPES_TEST_SAMPLES, size=image_size[0], seed=seed + 1)
        class_names = list(data.SHAPE_NAMES)
    elif os.path.isdir(name):
        training, validation = data.image_dataset_from_directory(
            name, image_size=image_size, color_mode=color_mode, validation_split=0.2, subset="both",
            seed=seed)
        (x_train, y_train), (x_test, y_test) = (training.x, training.y), (validation.x, validation.y)
        class_names = list(training.class_names)
    else:
        raise ValueError(f"unknown dataset {name!r}: use one of {list(DATASETS)} or an image folder "
                         f"(one sub-folder per class)")
    return (as_float_images(x_train), y_train), (as_float_images(x_test), y_test), class_names


def first(limit, *arrays):
    return arrays if limit is None else tuple(array[:limit] for array in arrays)


def image_geometry(input_shape):
    """``(height, width)`` and OpenCV colour mode for a model input ``(H, W, C)``."""
    height, width, channels = input_shape
    return (height, width), "grayscale" if channels == 1 else "rgb"


# ------------------------------------------------------------------------------- commands


#: the ``train`` arguments that decide what a run computes: a resumed run must repeat them
RUN_ARGUMENTS = ("dataset", "model", "optimizer", "learning_rate", "seed", "limit", "batch_size",
                 "validation_split", "augment", "image_size", "color_mode")


def run_arguments(args):
    return {name: getattr(args, name) for name in RUN_ARGUMENTS}


def require_same_run(model, args, x_train, class_names):
    """Refuse to resume ``args.resume`` with a dataset, model or settings other than its own, naming
    each saved and given value."""
    saved = getattr(model, "run_arguments", None) or {}
    mismatches = [f"--{name.replace('_', '-')}: saved {saved[name]!r}, given {value!r}"
                  for name, value in run_arguments(args).items() if name in saved and saved[name] != value]
    if model.input_shape != x_train.shape[1:]:
        mismatches.append(f"input shape: saved {model.input_shape}, the dataset's {x_train.shape[1:]}")
    if model.output_shape != (len(class_names),):
        mismatches.append(f"classes: the saved model has {model.output_shape[-1]} outputs, the dataset "
                          f"{len(class_names)} classes")
    if mismatches:
        raise ValueError(f"--resume {args.resume} was trained otherwise; give the run's own arguments "
                         f"({'; '.join(mismatches)})")


def require_writable_file(path, option):
    """Refuse ``path`` for ``option`` unless it can be written: its folder exists and is writable and
    it is not itself a folder.  Checked before training, so a run is never lost to a typo."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a directory; give a file name, e.g. {os.path.join(path, 'model.minidl')}")
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: the folder {folder} is not writable")


DEFAULT_OUTPUT = "model.minidl"


def default_output(args):
    """``--output``, or :data:`DEFAULT_OUTPUT` when none was given; an existing file under the default
    name is refused unless ``--overwrite``, so a second run never silently replaces the first's model."""
    if args.output is not None:
        return args.output
    if os.path.exists(DEFAULT_OUTPUT) and not args.overwrite:
        raise ValueError(f"{DEFAULT_OUTPUT} exists (a model from an earlier run?); give another file with "
                         f"--output NAME.minidl, or --overwrite to replace it")
    return DEFAULT_OUTPUT


def require_model_suffix(path, option):
    """Refuse, before training, a file name the model cannot be saved under."""
    from minidl import saving

    try:
        saving.require_supported_suffix(path, "save_model")
    except ValueError as error:
        raise ValueError(f"{option} {error}") from None


def save_trained_model(model, path):
    """Save to ``path``; if that fails, save to a fresh file in the temporary folder instead and
    raise an error naming both, so a finished training is never lost."""
    try:
        model.save(path)
    except OSError as error:
        handle, rescue_path = tempfile.mkstemp(prefix="minidl-rescued-", suffix=".minidl")
        os.close(handle)
        model.save(rescue_path)
        raise OSError(f"could not write {path} ({error}); the trained model was saved to {rescue_path}") from None


def command_train(args):
    """``minidl train``; with ``--distributed`` every MPI rank runs it, rank 0 alone prints and writes,
    and an error on any rank stops them all (:mod:`minidl.distributed`)."""
    if not args.distributed:
        return train_and_save(args, None)
    from minidl.distributed import DataParallel

    strategy = DataParallel()
    with strategy.failures_stop_every_rank():
        return train_and_save(args, strategy)


def train_and_save(args, strategy):
    import minidl
    from minidl import optimizers

    chief = strategy is None or strategy.is_chief
    say = print if chief else lambda *_: None
    args.output = default_output(args)
    for path, option in ((args.output, "--output"), (args.checkpoint, "--checkpoint")):
        if path:
            require_writable_file(path, option)
            require_model_suffix(path, option)
    minidl.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test), class_names = load_dataset(
        args.dataset, args.data_dir, (args.image_size, args.image_size), args.color_mode, args.seed)
    x_train, y_train = first(args.limit, x_train, y_train)
    x_test, y_test = first(args.limit, x_test, y_test)
    if args.resume:
        model = minidl.load_model(args.resume)
        require_same_run(model, args, x_train, class_names)
        say(f"resuming {args.resume} after epoch {model.initial_epoch}")
    else:
        model = build_model(args.model, x_train.shape[1:], len(class_names))
        optimizer_class = optimizers.OPTIMIZERS[args.optimizer]
        optimizer = optimizer_class() if args.learning_rate is None else optimizer_class(args.learning_rate)
        model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.class_names = class_names
    model.run_arguments = run_arguments(args)
    if args.verbose and chief:
        model.summary()
    checkpoints = [minidl.callbacks.ModelCheckpoint(args.checkpoint)] if args.checkpoint else []
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_split=args.validation_split, verbose=args.verbose, seed=args.seed,
                        augment=augmentation() if args.augment else None,
                        initial_epoch=model.initial_epoch, callbacks=checkpoints, distributed=strategy)
    test_logs = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0, return_dict=True,
                               distributed=strategy)
    say(f"test ({len(x_test)} samples): " + minidl.callbacks.format_logs(test_logs))
    if not chief:
        return 0
    if args.output:
        save_trained_model(model, args.output)
        print(f"saved model to {args.output}")
    if args.plots:
        write_training_plots(args.plots, model, history, x_test, y_test, class_names)
    return 0


def augmentation():
    """Small random affine warps (rotation, shift, zoom), the usual augmentation for digits/clothes."""
    from minidl.data import RandomAffine

    return RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))


def write_training_plots(directory, model, history, x_test, y_test, class_names):
    from minidl import metrics, plots

    probabilities = model.predict(x_test)
    paths = [plots.plot_history(history, os.path.join(directory, "training_curves.png")),
             plots.plot_confusion_matrix(metrics.confusion_matrix(y_test, probabilities, len(class_names)),
                                         os.path.join(directory, "confusion_matrix.png"), class_names)]
    if any(hasattr(layer, "filters") for layer in model.layers):
        paths.append(plots.plot_filters(model, os.path.join(directory, "filters.png")))
        paths.append(plots.plot_feature_maps(model, x_test[0], os.path.join(directory, "feature_maps.png")))
    print("plots: " + ", ".join(paths))


def command_evaluate(args):
    import minidl
    from minidl import metrics

    model = minidl.load_model(args.model)
    image_size, color_mode = image_geometry(model.input_shape)
    _, (x_test, y_test), class_names = load_dataset(args.dataset, args.data_dir, image_size, color_mode,
                                                    args.seed)
    x_test, y_test = first(args.limit, x_test, y_test)
    if model.loss is None:
        model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.class_names = class_names
    logs, report = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0, return_dict=True,
                                  report=True)
    print(f"{args.model} on {args.dataset} ({len(x_test)} samples): " + minidl.callbacks.format_logs(logs))
    print(report)
    if args.plots:
        from minidl import plots

        probabilities = model.predict(x_test, batch_size=args.batch_size)
        matrix = metrics.confusion_matrix(y_test, probabilities, len(class_names))
        print("plot: " + plots.plot_confusion_matrix(matrix, os.path.join(args.plots, "confusion_matrix.png"),
                                                     class_names))
    return 0


def read_image_for(model, path):
    """The image file at ``path`` as the model's input ``(H, W, C)`` in [0, 1], resized with OpenCV."""
    import cv2

    (height, width), color_mode = image_geometry(model.input_shape)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    encoded = np.fromfile(path, dtype=np.uint8)
    flag = cv2.IMREAD_GRAYSCALE if color_mode == "grayscale" else cv2.IMREAD_COLOR
    image = cv2.imdecode(encoded, flag) if encoded.size else None
    if image is None:
        raise ValueError(f"{path}: OpenCV cannot decode this image")
    if color_mode == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return as_float_images(image[np.newaxis])[0]


def command_predict(args):
    import minidl

    model = minidl.load_model(args.model)
    images = np.stack([read_image_for(model, path) for path in args.images])
    probabilities = model.predict(images)
    class_names = getattr(model, "class_names", None)
    for path, row in zip(args.images, probabilities):
        label = int(row.argmax())
        name = class_names[label] if class_names else str(label)
        print(f"{path}: {name} ({row[label]:.4f})")
    return 0


def command_gradcheck(args):
    from minidl import gradcheck, presets

    rng = np.random.default_rng(args.seed)
    input_shape = (args.image_size, args.image_size, 1)
    model = presets.PRESETS[args.model](input_shape, args.classes).cast(np.float64)
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = rng.standard_normal((args.batch, *input_shape))
    y = rng.integers(0, args.classes, args.batch)
    reports = [gradcheck.check_model(model, x, y, max_checks=args.max_checks, seed=args.seed)]
    if args.each_layer:
        reports += [gradcheck.check_layer(layer, (args.batch, *layer.input_shape), seed=args.seed,
                                          max_checks=args.max_checks) for layer in model.layers]
    for report in reports:
        print(report, end="\n\n")
    failed = [report.subject for report in reports if not report.passed(args.tolerance)]
    if failed:
        print(f"gradient check FAILED (tolerance {args.tolerance:g}): {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(reports)} gradient checks passed (tolerance {args.tolerance:g})")
    return 0


def command_bench(args):
    import minidl
    from minidl.backend import ops

    warmup = getattr(ops, "warmup", None)
    warmup_seconds = None
    if warmup is not None:
        start = time.perf_counter()
        warmup()
        warmup_seconds = time.perf_counter() - start
    minidl.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)
    model = minidl.presets.seed_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    for _ in range(args.warmup_steps):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    steps_per_second = args.steps / seconds
    epoch_seconds = -(-args.epoch_samples // args.batch_size) / steps_per_second
    print(f"backend {minidl.get_backend()}, seed-cnn on random 28x28x1 data, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup_steps} warm-up steps, {os.cpu_count()} CPUs")
    if warmup_seconds is not None:
        cache_report = getattr(ops, "cache_report", None)
        origin = ""
        if cache_report is not None:
            loaded, compiled = cache_report()
            origin = f" ({loaded} kernels loaded from the on-disk cache, {compiled} kernels and helpers compiled)"
        print(f"kernel warm-up: {warmup_seconds:.2f} s{origin}")
    print(f"{steps_per_second:.2f} steps/s, {steps_per_second * args.batch_size:.0f} samples/s, "
          f"{epoch_seconds:.1f} s per epoch of {args.epoch_samples} samples")
    return 0


# ------------------------------------------------------------------------------- arguments


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_common(parser):
    parser.add_argument("--backend", choices=("numpy", "numba", "cuda"),
                        help="kernel backend (default: $MINIDL_BACKEND, else numba)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def add_data_arguments(parser):
    parser.add_argument("--dataset", required=True,
                        help=f"{', '.join(DATASETS)}, or an image folder with one sub-folder per class")
    parser.add_argument("--data-dir", help="folder holding the IDX files (default: minidl's search path)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    parser.add_argument("--limit", type=positive_int, help="use only the first N samples of each split")


def build_parser():
    parser = argparse.ArgumentParser(prog="minidl", description="Train, evaluate and inspect minidl models.")
    parser.add_argument("--version", action="version", version=f"minidl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model on a dataset and save it",
                                description="Train a model (a preset or a JSON architecture) and save it.")
    train.add_argument("--model", default="seed-cnn",
                       help=f"preset ({', '.join(PRESETS)}) or a JSON architecture file (default seed-cnn)")
    add_data_arguments(train)
    train.add_argument("--epochs", type=positive_int, default=1, help="default 1")
    train.add_argument("--optimizer", choices=("adam", "sgd", "rmsprop", "gd"), default="adam")
    train.add_argument("--learning-rate", type=float, help="default: the optimizer's Keras default")
    train.add_argument("--validation-split", type=float, default=0.1, help="default 0.1")
    train.add_argument("--augment", action="store_true", help="random rotations, shifts and zooms")
    train.add_argument("--image-size", type=positive_int, default=28,
                       help="image side for shapes and image folders (default 28)")
    train.add_argument("--color-mode", choices=("grayscale", "rgb"), default="grayscale",
                       help="for image folders (default grayscale)")
    train.add_argument("--output", help=f"model file to write, *.minidl (default {DEFAULT_OUTPUT}, "
                                        f"which is not replaced unless --overwrite)")
    train.add_argument("--overwrite", action="store_true",
                       help=f"replace an existing {DEFAULT_OUTPUT} when no --output is given")
    train.add_argument("--plots", metavar="DIR", help="write learning curves, confusion matrix, filters")
    train.add_argument("--checkpoint", metavar="FILE", help="save a resumable checkpoint after every epoch")
    train.add_argument("--resume", metavar="FILE",
                       help="continue the run saved in this checkpoint (its model, optimizer state and epoch); "
                            "give the run's own --dataset, --model, --optimizer, --learning-rate, --seed, "
                            "--limit, --batch-size and other settings (a mismatch is refused), and any --epochs")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="0 silent, 1 bar, 2 lines")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the MPI ranks of `mpiexec -n N minidl train ...`: --batch-size "
                            "is per rank, rank 0 prints and writes the files")
    add_common(train)
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("evaluate", help="loss, accuracy and per-class report on a test set",
                                   description="Evaluate a saved model on a dataset's test split.")
    evaluate.add_argument("model", metavar="MODEL", help="a file written by minidl train / Sequential.save")
    add_data_arguments(evaluate)
    evaluate.add_argument("--plots", metavar="DIR", help="write the confusion matrix image here")
    add_common(evaluate)
    evaluate.set_defaults(run=command_evaluate)

    predict = commands.add_parser("predict", help="classify image files",
                                  description="Print the predicted class and its probability per image.")
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files OpenCV can read")
    add_common(predict)
    predict.set_defaults(run=command_predict)

    check = commands.add_parser("gradcheck", help="numerical gradient check of a preset",
                                description="Compare every backward pass of a preset with central "
                                            "differences in float64; exit 1 if any error exceeds the "
                                            "tolerance.")
    check.add_argument("--model", choices=PRESETS, default="tiny-cnn", help="default tiny-cnn")
    check.add_argument("--image-size", type=positive_int, default=12, help="default 12")
    check.add_argument("--classes", type=positive_int, default=3, help="default 3")
    check.add_argument("--batch", type=positive_int, default=2, help="default 2")
    check.add_argument("--max-checks", type=positive_int, default=30,
                       help="perturbed elements per tensor (default 30)")
    check.add_argument("--each-layer", action="store_true", help="also check every layer on its own")
    check.add_argument("--tolerance", type=float, default=1e-6, help="default 1e-6")
    add_common(check)
    check.set_defaults(run=command_gradcheck)

    bench = commands.add_parser("bench", help="training throughput of the seed CNN",
                                description="Time training steps of the seed CNN on random data.")
    bench.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    bench.add_argument("--steps", type=positive_int, default=20, help="timed steps (default 20)")
    bench.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first (default 2)")
    bench.add_argument("--epoch-samples", type=positive_int, default=60000,
                       help="samples per epoch for the s/epoch figure (default 60000, Fashion-MNIST)")
    add_common(bench)
    bench.set_defaults(run=command_bench)

    add_common(convert.add_command(commands))
    from minidl.teaching.cli import add_teaching_commands
    add_teaching_commands(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.backend:
            from minidl import set_backend
            set_backend(args.backend)
        return args.run(args)
    except KeyboardInterrupt:
        print("minidl: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every failure becomes one line and exit status 1
        if args.debug:
            raise
        print(f"minidl {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
