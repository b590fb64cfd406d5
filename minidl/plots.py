"""Pictures of training, for reports and for teaching: learning curves, a confusion matrix, the first
conv layer's filters, one image's feature maps and a drawing of the network with its shapes.  Each function writes a PNG and returns its path.

Needs matplotlib (``pip install 'minidl[plots]'``), imported only when a plot is drawn and always
with the non-interactive Agg backend, so it works on servers without a display.  Figures have a
fixed size in pixels (``dpi=100``), given in each docstring.
"""

import math
import os

import numpy as np

DPI = 100
PANEL_INCHES = (5, 4)  # one learning-curve or confusion-matrix panel: 500 x 400 pixels
CELL_INCHES = 1  # one filter or feature map in a grid: 100 x 100 pixels


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend; a clear ``ImportError`` when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("minidl.plots needs matplotlib: pip install 'minidl[plots]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path):
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    pyplot().close(figure)
    return path


def history_panels(history):
    """``{"loss": ("loss", "val_loss"), "accuracy": (...)}``: each logged quantity with its
    validation twin (or ``None``), from a :class:`~minidl.callbacks.History` or its ``history`` dict."""
    logs = getattr(history, "history", history)
    return {key: (key, f"val_{key}" if f"val_{key}" in logs else None)
            for key in logs if not key.startswith("val_") and key != "learning_rate"}


def plot_history(history, path):
    """Loss and each metric per epoch, training vs validation, one panel per quantity side by side.

    Size: ``500 * panels`` x 400 pixels.  Returns ``path``.
    """
    plt = pyplot()
    logs = getattr(history, "history", history)
    epochs = list(getattr(history, "epoch", range(len(next(iter(logs.values()), [])))))
    panels = history_panels(history)
    if not panels:
        raise ValueError("plot_history: the history holds no logged quantities")
    figure, axes = plt.subplots(1, len(panels), squeeze=False,
                                figsize=(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1]))
    epoch_numbers = [epoch + 1 for epoch in epochs]
    for axis, (name, (train_key, val_key)) in zip(axes[0], panels.items()):
        axis.plot(epoch_numbers, logs[train_key], marker="o", label="training")
        if val_key is not None:
            axis.plot(epoch_numbers, logs[val_key], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def plot_confusion_matrix(matrix, path, class_names=None):
    """The confusion matrix ``(K, K)`` (rows: true class, columns: predicted) with its counts.

    Size: 500 x 400 pixels.  Returns ``path``.
    """
    plt = pyplot()
    matrix = np.asarray(matrix)
    names = [str(i) for i in range(len(matrix))] if class_names is None else [str(n) for n in class_names]
    figure, axis = plt.subplots(figsize=PANEL_INCHES)
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if len(matrix) <= 20:
        threshold = matrix.max() / 2
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    figure.tight_layout()
    return save_figure(figure, path)


def grid_shape(count):
    """``(rows, columns)`` of a near-square grid holding ``count`` cells."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def plot_image_grid(images, path, title, cmap="gray"):
    """``images`` ``(count, H, W)`` (or ``(count, H, W, 3)`` in [0, 1]) in a grid, each scaled to its
    own range.  Size: ``100 * columns`` x ``100 * rows`` pixels."""
    plt = pyplot()
    rows, columns = grid_shape(len(images))
    figure, axes = plt.subplots(rows, columns, squeeze=False,
                                figsize=(CELL_INCHES * columns, CELL_INCHES * rows))
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index], cmap=cmap, interpolation="nearest")
    figure.suptitle(title, fontsize=8)
    return save_figure(figure, path)


def first_conv_layer(model):
    for layer in model.layers:
        if hasattr(layer, "filters") and "kernel" in layer.params:
            return layer
    raise ValueError(f"model {model.name!r} has no Conv2D layer")


def rescale_each(images):
    """Scale each image to [0, 1] by its own min and max (a constant image becomes 0)."""
    images = np.asarray(images, dtype=np.float64)
    axes = tuple(range(1, images.ndim))
    low, high = images.min(axis=axes, keepdims=True), images.max(axis=axes, keepdims=True)
    return np.divide(images - low, high - low, out=np.zeros_like(images), where=high > low)


def plot_filters(model, path):
    """The first Conv2D layer's kernels ``(KH, KW, C_in, F)`` as ``F`` small images: in colour when
    ``C_in == 3``, else the mean over the input channels.  Size: a grid of 100 x 100 pixel cells."""
    layer = first_conv_layer(model)
    kernel = layer.get_weights()[0]
    filters = np.moveaxis(kernel, -1, 0)  # (F, KH, KW, C_in)
    images = rescale_each(filters) if filters.shape[-1] == 3 else rescale_each(filters.mean(axis=-1))
    return plot_image_grid(images, path, f"filters of {layer.name} {kernel.shape[:2]}")


def feature_maps(model, image, layer_name=None):
    """The outputs of one layer (default: the first Conv2D) for one ``image`` ``(H, W, C)``, as
    ``(channels, OH, OW)``: the layers up to it run in inference mode."""
    target = first_conv_layer(model) if layer_name is None else next(
        (layer for layer in model.layers if layer.name == layer_name), None)
    if target is None:
        raise ValueError(f"model {model.name!r} has no layer named {layer_name!r}")
    image = np.asarray(image, dtype=model.dtype)
    if image.shape != tuple(model.input_shape):
        raise ValueError(f"feature_maps: model {model.name!r} takes images of shape {model.input_shape}, "
                         f"got {image.shape}")
    activations = image[np.newaxis]
    for layer in model.layers:
        activations = layer(activations)
        if layer is target:
            break
    if activations.ndim != 4:
        raise ValueError(f"layer {target.name!r} outputs {activations.shape[1:]}, not feature maps (H, W, C)")
    return np.moveaxis(activations[0], -1, 0)


def plot_feature_maps(model, image, path, layer_name=None):
    """:func:`feature_maps` of one ``image`` as a grid, one cell per channel.  Size: a grid of
    100 x 100 pixel cells."""
    maps = feature_maps(model, image, layer_name)
    name = layer_name or first_conv_layer(model).name
    return plot_image_grid(rescale_each(maps), path, f"feature maps of {name}", cmap="viridis")


NETWORK_ROW_INCHES = 0.6  # one layer's box in the network drawing: 60 pixels high


def plot_network(model, path):
    """A drawing of the model: one box per layer, top to bottom, with its type, name, output shape
    and parameter count, each box's width growing with the log of its output size.

    Size: 700 x ``60 * (layers + 1)`` pixels.  Returns ``path``.
    """
    plt = pyplot()
    from matplotlib.patches import FancyBboxPatch

    rows = [("Input", "input", tuple(model.input_shape), 0)]
    rows += [(type(layer).__name__, layer.name, tuple(layer.output_shape), layer.count_params())
             for layer in model.layers]
    largest = max(math.log10(math.prod(shape) + 1) for _, _, shape, _ in rows)
    figure, axis = plt.subplots(figsize=(7, NETWORK_ROW_INCHES * len(rows)))
    axis.set_xlim(-0.5, 0.5)
    axis.set_ylim(len(rows) - 0.5, -0.5)
    axis.axis("off")
    colors = {"Conv2D": "#9ecae1", "MaxPooling2D": "#fdd0a2", "AveragePooling2D": "#fdd0a2",
              "Dense": "#a1d99b", "Input": "#dddddd"}
    for index, (kind, name, shape, params) in enumerate(rows):
        width = 0.3 + 0.6 * math.log10(math.prod(shape) + 1) / largest
        axis.add_patch(FancyBboxPatch((-width / 2, index - 0.32), width, 0.64, boxstyle="round,pad=0.01",
                                      facecolor=colors.get(kind, "#eeeeee"), edgecolor="#555555"))
        label = f"{kind} ({name})  {(None, *shape)}" + (f"  {params:,} params" if params else "")
        axis.text(0, index, label, ha="center", va="center", fontsize=8)
        if index:
            axis.annotate("", (0, index - 0.33), (0, index - 0.67), arrowprops={"arrowstyle": "->"})
    figure.suptitle(f"{model.name}: {model.count_params():,} parameters", fontsize=9)
    figure.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.3 / len(rows))
    return save_figure(figure, path)
