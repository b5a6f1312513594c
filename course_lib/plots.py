"""Figures for the lessons: image grids, training curves, confusion matrices, embeddings, heatmaps.

Every function draws into a new figure, or into the ``ax=`` you pass (so that a lesson can put
several plots side by side), and returns the matplotlib Figure. None calls ``plt.show()`` or
changes matplotlib's global style. Tensors may be passed directly, on any device.

In a notebook, end the cell with ``;`` (or assign ``fig = ...``) so the figure is drawn once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Marker shapes that tell domains apart in plot_embedding (colours are taken by the classes).
_DOMAIN_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def _to_numpy(values, name: str) -> np.ndarray:
    """A NumPy copy of a tensor, array or list (tensors may require grad or live on a GPU)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a tensor, array or list, got {type(values).__name__}.") from error


def _figure_and_axes(ax: Axes | None, figsize=None) -> tuple[Figure, Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (e.g. from plt.subplots()), got {type(ax).__name__}.")
    return ax.figure, ax


def _grid_of_axes(nrows: int, ncols: int, ax: Axes | None, figsize) -> tuple[Figure, object, np.ndarray]:
    """Return ``(figure, panel, axes)``: an ``nrows x ncols`` grid in a new figure or in ``ax``'s place.

    ``panel`` is what carries the grid's title: the figure itself, or the subfigure that replaces ``ax``.
    """
    if ax is None:
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
        return fig, fig, axes
    if not isinstance(ax, Axes) or ax.get_subplotspec() is None:
        raise TypeError("ax must be an Axes made by plt.subplots() (or fig.add_subplot()) so that a grid can take its place.")
    fig = ax.figure
    panel = fig.add_subfigure(ax.get_subplotspec())
    ax.remove()
    return fig, panel, panel.subplots(nrows, ncols, squeeze=False)


def _class_name(label, class_names: Sequence[str] | None) -> str:
    if class_names is None or isinstance(label, str):
        return str(label)
    index = int(label)
    if not 0 <= index < len(class_names):
        raise ValueError(f"label {index} has no entry in class_names (which has {len(class_names)} names).")
    return str(class_names[index])


def _images_for_display(images, mean, std) -> np.ndarray:
    """Turn a batch into float (N, H, W, C) or (N, H, W) arrays in [0, 1] for imshow."""
    array = _to_numpy(images, "images")
    if array.size == 0:
        raise ValueError(f"images is empty (shape {array.shape}): there is nothing to show.")
    if array.ndim == 4:
        if array.shape[1] not in (1, 3):
            raise ValueError(
                f"images of shape {array.shape} should be (N, 3, H, W) or (N, 1, H, W): channels come second "
                "in PyTorch; if yours are last, use images.permute(0, 3, 1, 2)."
            )
    elif array.ndim != 3:
        raise ValueError(
            f"images must be a batch (N, 3, H, W), (N, 1, H, W) or (N, H, W), got shape {array.shape}; "
            "for a single image use images.unsqueeze(0) (or images[None])."
        )
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    else:
        raise TypeError(f"images must be uint8 (0-255) or floating point, got dtype {array.dtype}.")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean= and std= (the values the images were normalised with), or neither.")
    if mean is not None:
        channels = 1 if array.ndim == 3 else array.shape[1]
        mean_array = np.asarray(mean, np.float32).reshape(-1)
        std_array = np.asarray(std, np.float32).reshape(-1)
        if mean_array.size not in (1, channels) or std_array.size not in (1, channels):
            raise ValueError(f"mean and std need 1 or {channels} values (one per channel), got {mean_array.size} and {std_array.size}.")
        per_channel = (1, -1, 1, 1) if array.ndim == 4 else (-1, 1, 1)
        array = array * std_array.reshape(per_channel) + mean_array.reshape(per_channel)
    low, high = float(array.min()), float(array.max())
    if low < -1e-3 or high > 1 + 1e-3:  # a little slack for rounding after un-normalising
        raise ValueError(
            f"float images must lie in [0, 1], but these range from {low:.2f} to {high:.2f}: if they were "
            "normalised, pass the same mean= and std= (e.g. IMAGENET_MEAN, IMAGENET_STD from course_lib.data)."
        )
    array = np.clip(array, 0, 1)
    if array.ndim == 4:
        array = array.transpose(0, 2, 3, 1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    return array


def show_images(
    images,
    labels=None,
    class_names: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
    predictions=None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Show a batch of images in a grid, captioned with their labels (every chapter's first look at data).

    ``images`` are uint8 (N, 3, H, W), float (N, 3, H, W) in [0, 1], normalised floats (pass the
    ``mean`` and ``std`` used, to undo it) or grayscale (N, H, W) / (N, 1, H, W). With
    ``predictions`` each caption shows the prediction, green when it matches the label, red when not.
    """
    pictures = _images_for_display(images, mean, std)
    n = len(pictures)
    for other, what in ((labels, "labels"), (predictions, "predictions")):
        if other is not None and len(other) != n:
            raise ValueError(f"got {n} images but {len(other)} {what}: pass one per image.")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}.")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    captioned = labels is not None or predictions is not None
    figsize = figsize or (1.5 * ncols, (1.5 + 0.4 * captioned) * nrows + 0.4 * (title is not None))
    fig, panel, axes = _grid_of_axes(nrows, ncols, ax, figsize)
    label_list = _to_numpy(labels, "labels").tolist() if labels is not None else None
    prediction_list = _to_numpy(predictions, "predictions").tolist() if predictions is not None else None
    for i, axis in enumerate(axes.flat):
        axis.axis("off")
        if i >= n:
            continue
        axis.imshow(pictures[i], cmap="gray" if pictures[i].ndim == 2 else None, vmin=0, vmax=1)
        if prediction_list is not None:
            predicted = _class_name(prediction_list[i], class_names)
            if label_list is None:
                axis.set_title(f"pred: {predicted}", fontsize=8)
            else:
                right = prediction_list[i] == label_list[i]
                truth = _class_name(label_list[i], class_names)
                axis.set_title(f"{predicted}\n(true: {truth})", fontsize=8, color="green" if right else "red")
        elif label_list is not None:
            axis.set_title(_class_name(label_list[i], class_names), fontsize=8)
    if title:
        panel.suptitle(title)
    return fig


def _history_as_dict(history, what: str) -> dict:
    if hasattr(history, "as_dict"):
        history = history.as_dict()
    if not isinstance(history, Mapping):
        raise TypeError(
            f"{what} must be a dict like {{'train_loss': [...], 'val_loss': [...]}} or have an as_dict() "
            f"method (course_lib.training.History), got {type(history).__name__}."
        )
    return dict(history)


def plot_history(
    history_or_dict,
    metrics: Sequence[str] = ("loss", "accuracy"),
    *,
    title: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Plot training curves, train (solid) vs validation (dashed), one panel per metric.

    Accepts a dict of per-epoch lists such as ``{"train_loss": [...], "val_loss": [...],
    "train_accuracy": [...], "val_accuracy": [...]}``, an object with ``as_dict()`` returning one
    (``course_lib.training.History``), or ``{run label: history}`` to compare several runs (e.g.
    frozen vs fine-tuned in 19.3).
    """
    top = _history_as_dict(history_or_dict, "history_or_dict")
    if not top:
        raise ValueError("the history is empty: train for at least one epoch first.")
    is_several_runs = bool(top) and all(isinstance(v, Mapping) or hasattr(v, "as_dict") for v in top.values())
    runs = {str(k): _history_as_dict(v, f"run {k!r}") for k, v in top.items()} if is_several_runs else {"": top}
    if isinstance(metrics, str):
        metrics = (metrics,)
    available = sorted({key.split("_", 1)[1] for run in runs.values() for key in run if key.startswith(("train_", "val_"))})
    for metric in metrics:
        if metric not in available:
            raise ValueError(
                f"the history has no 'train_{metric}' or 'val_{metric}'; it has the metrics {available}: "
                f"pass metrics=(...) with some of those."
            )
    figsize = figsize or (4.5 * len(metrics), 3.5)
    fig, panel, axes = _grid_of_axes(1, len(metrics), ax, figsize)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, metric in zip(axes[0], metrics):
        for run_index, (run_label, run) in enumerate(runs.items()):
            for split, style in (("train", "-"), ("val", "--")):
                key = f"{split}_{metric}"
                if key not in run:
                    continue
                values = _to_numpy(run[key], key).astype(float)
                if values.ndim != 1:
                    raise ValueError(f"{key} must be a list with one number per epoch, got shape {values.shape}.")
                label = f"{run_label} {split}".strip()
                epochs = np.arange(1, len(values) + 1)
                axis.plot(epochs, values, style, color=colours[run_index % len(colours)], label=label, marker=".")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title(metric)
        axis.legend(fontsize=8)
    if title:
        panel.suptitle(title)
    if ax is None:
        fig.tight_layout()
    return fig


def plot_confusion_matrix(
    y_true,
    y_pred,
    class_names: Sequence[str] | None = None,
    *,
    normalize: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Plot the confusion matrix: row = true class, column = predicted class.

    With ``normalize=True`` each row is divided by the number of examples of that class, so the
    diagonal shows per-class recall (classes without examples stay 0).
    """
    from sklearn.metrics import confusion_matrix

    truth = _to_numpy(y_true, "y_true")
    predicted = _to_numpy(y_pred, "y_pred")
    for values, what in ((truth, "y_true"), (predicted, "y_pred")):
        if values.ndim != 1:
            raise ValueError(
                f"{what} must be 1-D class indices, got shape {values.shape}; for logits use logits.argmax(dim=1)."
            )
    if len(truth) != len(predicted):
        raise ValueError(f"y_true has {len(truth)} labels but y_pred has {len(predicted)}: pass one prediction per example.")
    if len(truth) == 0:
        raise ValueError("y_true and y_pred are empty.")
    for values, what in ((truth, "y_true"), (predicted, "y_pred")):
        if not np.issubdtype(values.dtype, np.integer) or values.min() < 0:
            raise ValueError(
                f"{what} must hold class indices (non-negative ints); for logits use y_pred = logits.argmax(dim=1)."
            )
    n_classes = len(class_names) if class_names is not None else int(max(truth.max(), predicted.max())) + 1
    if max(truth.max(), predicted.max()) >= n_classes:
        raise ValueError(f"a label is {int(max(truth.max(), predicted.max()))} but class_names has only {n_classes} names.")
    matrix = confusion_matrix(truth, predicted, labels=np.arange(n_classes)).astype(float)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    fig = plot_heatmap(
        matrix,
        names,
        names,
        title="Confusion matrix" + (" (rows normalised)" if normalize else ""),
        fmt=".2f" if normalize else ".0f",
        cmap="Blues",
        ax=ax,
    )
    axis = ax if ax is not None else fig.axes[0]
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    return fig


def plot_embedding(
    features,
    labels,
    *,
    method: str = "pca",
    class_names: Sequence[str] | None = None,
    domains=None,
    title: str | None = None,
    ax: Axes | None = None,
    seed: int = 0,
) -> Figure:
    """Project (N, D) features to 2-D with PCA or t-SNE and scatter them, coloured by class (19.1, 19.2).

    ``domains`` (N ints or strings) gives each domain its own marker shape, to see whether source
    and target features overlap (19.4 domain adaptation). The class legend is drawn for up to 20 classes.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    points = _to_numpy(features, "features").astype(np.float64)
    if points.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {points.shape}: flatten them with features.flatten(1).")
    n = len(points)
    if n < 3 or points.shape[1] < 2:
        raise ValueError(f"need at least 3 examples with at least 2 feature dimensions, got shape {points.shape}.")
    if not np.isfinite(points).all():
        raise ValueError("features contain NaN or infinite values: check the model's output (is training diverging?).")
    label_array = _to_numpy(labels, "labels").reshape(-1)
    if len(label_array) != n:
        raise ValueError(f"got {n} feature vectors but {len(label_array)} labels: pass one label per row.")
    domain_array = None if domains is None else _to_numpy(domains, "domains").reshape(-1)
    if domain_array is not None and len(domain_array) != n:
        raise ValueError(f"got {n} feature vectors but {len(domain_array)} domains: pass one domain per row.")
    if method == "pca":
        projector = PCA(n_components=2, random_state=seed)
        xy = projector.fit_transform(points)
        share = projector.explained_variance_ratio_ * 100
        axis_names = (f"PC 1 ({share[0]:.0f}% of variance)", f"PC 2 ({share[1]:.0f}% of variance)")
    elif method == "tsne":
        # Perplexity must stay below the number of points; 30 is the usual value for larger sets.
        perplexity = min(30.0, max(1.0, (n - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
        axis_names = ("t-SNE 1", "t-SNE 2")
    else:
        raise ValueError(f"unknown method {method!r}: use 'pca' (fast, linear) or 'tsne' (slower, keeps neighbourhoods).")

    fig, axis = _figure_and_axes(ax, figsize=(6, 5))
    classes = sorted(set(label_array.tolist()))
    palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    domain_values = [None] if domain_array is None else sorted(set(domain_array.tolist()))
    if len(domain_values) > len(_DOMAIN_MARKERS):
        raise ValueError(f"plot_embedding can mark at most {len(_DOMAIN_MARKERS)} domains, got {len(domain_values)}.")
    for class_index, label in enumerate(classes):
        for domain_index, domain in enumerate(domain_values):
            chosen = label_array == label
            if domain is not None:
                chosen &= domain_array == domain
            axis.scatter(
                xy[chosen, 0], xy[chosen, 1], s=12, alpha=0.7,
                color=palette(class_index % palette.N), marker=_DOMAIN_MARKERS[domain_index],
            )
    # Two legends: colours name the classes, shapes name the domains.
    if len(classes) <= 20:
        class_handles = [
            axis.scatter([], [], color=palette(i % palette.N), marker="o", label=_class_name(label, class_names))
            for i, label in enumerate(classes)
        ]
        class_legend = axis.legend(handles=class_handles, title="class", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        axis.add_artist(class_legend)
    if domain_array is not None:
        domain_handles = [
            axis.scatter([], [], color="gray", marker=_DOMAIN_MARKERS[i], label=str(d)) for i, d in enumerate(domain_values)
        ]
        axis.legend(handles=domain_handles, title="domain", fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0))
    axis.set_xlabel(axis_names[0])
    axis.set_ylabel(axis_names[1])
    axis.set_title(title or f"{'PCA' if method == 'pca' else 't-SNE'} of {n} feature vectors")
    return fig


def plot_curves(
    x,
    ys: Mapping[str, object],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Line plot of several named curves over the same ``x``, with optional ±std bands.

    Each value of ``ys`` is a 1-D array (one curve), a tuple ``(mean, std)`` (curve with a band),
    or a 2-D array of shape (runs, len(x)), e.g. one row per seed, drawn as mean ± std. Used for
    data-efficiency curves (19.2, 19.3) and transferability across stages (19.1).
    """
    x_values = _to_numpy(x, "x").astype(float)
    if x_values.ndim != 1 or len(x_values) == 0:
        raise ValueError(f"x must be a non-empty 1-D sequence, got shape {x_values.shape}.")
    if logx and (x_values <= 0).any():
        raise ValueError("logx=True needs every x > 0 (the log of 0 or a negative number is undefined).")
    if not isinstance(ys, Mapping) or not ys:
        raise TypeError("ys must be a non-empty dict {curve label: values}, e.g. {'linear probe': accuracies}.")
    fig, axis = _figure_and_axes(ax, figsize=(6, 4))
    for label, values in ys.items():
        if isinstance(values, tuple) and len(values) == 2 and np.ndim(_to_numpy(values[0], label)) == 1:
            mean, std = (_to_numpy(v, label).astype(float) for v in values)
        else:
            array = _to_numpy(values, label).astype(float)
            if array.ndim == 2:
                mean, std = array.mean(axis=0), array.std(axis=0)
            else:
                mean, std = array, None
        for part, what in ((mean, "values"), (std, "std values")):
            if part is not None and part.shape != x_values.shape:
                raise ValueError(
                    f"curve {label!r}: its {what} have shape {part.shape} but x has {len(x_values)} points; pass one "
                    "value per x (or (mean, std) of that length, or an array of shape (runs, len(x)))."
                )
        (line,) = axis.plot(x_values, mean, marker="o", label=label)
        if std is not None:
            axis.fill_between(x_values, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if logx:
        axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    return fig


def plot_heatmap(
    matrix,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    fmt: str = ".2f",
    cmap: str = "viridis",
    ax: Axes | None = None,
) -> Figure:
    """An annotated heatmap with a colour bar: CKA similarity between layers (19.1), strategy grids (19.3).

    Cells are labelled with their value formatted by ``fmt`` (NaN shows as a blank cell), unless
    the matrix has more than 400 cells, where the text would be unreadable.
    """
    values = _to_numpy(matrix, "matrix").astype(float)
    if values.ndim != 2:
        raise ValueError(f"matrix must be 2-D (rows, columns), got shape {values.shape}.")
    if len(row_labels) != values.shape[0] or len(col_labels) != values.shape[1]:
        raise ValueError(
            f"matrix has shape {values.shape} but there are {len(row_labels)} row labels and "
            f"{len(col_labels)} column labels: pass one label per row and per column."
        )
    try:
        format(0.5, fmt)
    except ValueError as error:
        raise ValueError(f"fmt={fmt!r} is not a number format; use e.g. '.2f' or '.0%'.") from error
    figsize = (min(2 + 0.6 * values.shape[1], 14), min(1.5 + 0.5 * values.shape[0], 12))
    fig, axis = _figure_and_axes(ax, figsize=figsize)
    image = axis.imshow(values, cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=axis)
    axis.set_xticks(range(values.shape[1]), [str(c) for c in col_labels], rotation=45, ha="right")
    axis.set_yticks(range(values.shape[0]), [str(r) for r in row_labels])
    if values.size <= 400:
        for (row, col), value in np.ndenumerate(values):
            if np.isnan(value):
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            # Dark text on light cells and light text on dark cells (perceived brightness).
            text_colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            axis.text(col, row, format(value, fmt), ha="center", va="center", color=text_colour, fontsize=8)
    axis.set_title(title)
    return fig


def show_filters(weight, *, ncols: int = 8, title: str | None = None, ax: Axes | None = None) -> Figure:
    """Show first-layer convolution filters (C_out, 3, k, k) as small colour images (19.1).

    Each filter is scaled to [0, 1] on its own, so that weak and strong filters are equally visible.
    """
    if isinstance(weight, torch.nn.Module):
        raise TypeError("show_filters needs the weight tensor, not the layer: pass e.g. model.conv1.weight.")
    kernels = _to_numpy(weight, "weight").astype(float)
    if kernels.ndim != 4:
        raise ValueError(f"weight must be a conv weight (C_out, C_in, k, k), got shape {kernels.shape}.")
    if kernels.shape[1] not in (1, 3):
        raise ValueError(
            f"weight has {kernels.shape[1]} input channels: only first-layer filters (3 = RGB or 1 = gray input) "
            "can be shown as images; pass the first convolution's weight (e.g. model.conv1.weight or model.stem[0].weight)."
        )
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}.")
    n, channels, height, width = kernels.shape
    low = kernels.min(axis=(1, 2, 3), keepdims=True)
    high = kernels.max(axis=(1, 2, 3), keepdims=True)
    kernels = (kernels - low) / np.maximum(high - low, 1e-12)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    # One mosaic image with a 1-pixel white border between filters.
    mosaic = np.ones((nrows * (height + 1) + 1, ncols * (width + 1) + 1, channels))
    for i, kernel in enumerate(kernels):
        row, col = divmod(i, ncols)
        top, left = 1 + row * (height + 1), 1 + col * (width + 1)
        mosaic[top : top + height, left : left + width] = kernel.transpose(1, 2, 0)
    fig, axis = _figure_and_axes(ax, figsize=(0.6 * ncols + 0.5, 0.6 * nrows + 0.8))
    axis.imshow(mosaic[..., 0] if channels == 1 else mosaic, cmap="gray" if channels == 1 else None, interpolation="nearest")
    axis.axis("off")
    axis.set_title(title or f"{n} filters of size {channels}x{height}x{width}")
    return fig


def show_feature_maps(
    activation, *, max_maps: int = 16, title: str | None = None, ax: Axes | None = None
) -> Figure:
    """Show the first ``max_maps`` channels of one image's activation (C, H, W), one panel each (19.1)."""
    maps = _to_numpy(activation, "activation").astype(float)
    if maps.ndim == 4 and maps.shape[0] == 1:
        raise ValueError(f"activation has shape {maps.shape}: pass one image's maps (C, H, W), e.g. activation[0].")
    if maps.ndim != 3:
        raise ValueError(f"activation must be (C, H, W) for one image, got shape {maps.shape}.")
    if not isinstance(max_maps, int) or max_maps < 1:
        raise ValueError(f"max_maps must be a positive int, got {max_maps!r}.")
    shown = maps[:max_maps]
    ncols = min(8, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, panel, axes = _grid_of_axes(nrows, ncols, ax, (1.4 * ncols, 1.5 * nrows + 0.5))
    for i, axis in enumerate(axes.flat):
        axis.axis("off")
        if i < len(shown):
            axis.imshow(shown[i], cmap="viridis")
            axis.set_title(f"channel {i}", fontsize=7)
    panel.suptitle(title or f"first {len(shown)} of {len(maps)} feature maps ({maps.shape[1]}x{maps.shape[2]})")
    return fig
