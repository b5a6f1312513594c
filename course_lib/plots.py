"""Charts for the lessons: training curves, named curves, heatmaps, confusion matrices, embeddings.

Every function draws into a new figure, or into the ``ax=`` you pass (so that a lesson can put
several plots side by side), and returns the matplotlib Figure. None calls ``plt.show()`` or
changes matplotlib's global style. Tensors may be passed directly, on any device. Pictures
(image batches, filters, feature maps) are in :mod:`course_lib.image_grids`; both use the small
helpers of :mod:`course_lib.figures`.

In a notebook, end the cell with ``;`` (or assign ``fig = ...``) so the figure is drawn once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from course_lib.figures import class_name, figure_and_axes, grid_of_axes, to_numpy

__all__ = ["plot_confusion_matrix", "plot_curves", "plot_embedding", "plot_heatmap", "plot_history"]

# Marker shapes that tell domains apart in plot_embedding (colours are taken by the classes).
_DOMAIN_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def _history_as_dict(history, what: str) -> dict:
    if hasattr(history, "as_dict"):
        history = history.as_dict()
    if not isinstance(history, Mapping):
        raise TypeError(
            f"{what} must be a dict like {{'train_loss': [...], 'val_loss': [...]}} or have an as_dict() "
            f"method (course_lib.history.History), got {type(history).__name__}."
        )
    return dict(history)


def _runs(history_or_dict) -> dict[str, dict]:
    """``{run label: history dict}``: one run labelled "" for a single history, else one per run."""
    top = _history_as_dict(history_or_dict, "history_or_dict")
    if not top:
        raise ValueError("the history is empty: train for at least one epoch first.")
    if all(isinstance(v, Mapping) or hasattr(v, "as_dict") for v in top.values()):
        return {str(k): _history_as_dict(v, f"run {k!r}") for k, v in top.items()}
    return {"": top}


def _draw_metric(axis: Axes, runs: dict[str, dict], metric: str) -> None:
    """One panel of plot_history: each run in its own colour, train solid and validation dashed."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for run_index, (run_label, run) in enumerate(runs.items()):
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}_{metric}"
            if key not in run:
                continue
            values = to_numpy(run[key], key).astype(float)
            if values.ndim != 1:
                raise ValueError(f"{key} must be a list with one number per epoch, got shape {values.shape}.")
            epochs = np.arange(1, len(values) + 1)
            label = f"{run_label} {split}".strip()
            axis.plot(epochs, values, style, color=colours[run_index % len(colours)], label=label, marker=".")
    axis.set(xlabel="epoch", ylabel=metric, title=metric)
    axis.legend(fontsize=8)


def plot_history(
    history_or_dict, metrics: Sequence[str] = ("loss", "accuracy"), *,
    title: str | None = None, ax: Axes | None = None, figsize: tuple[float, float] | None = None,
) -> Figure:
    """Plot training curves, train (solid) vs validation (dashed), one panel per metric.

    Accepts a dict of per-epoch lists such as ``{"train_loss": [...], "val_loss": [...],
    "train_accuracy": [...], "val_accuracy": [...]}``, an object with ``as_dict()`` returning one
    (``course_lib.training.History``), or ``{run label: history}`` to compare several runs (e.g.
    frozen vs fine-tuned in 19.3).
    """
    runs = _runs(history_or_dict)
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    available = sorted({key.split("_", 1)[1] for run in runs.values() for key in run if key.startswith(("train_", "val_"))})
    for metric in metrics:
        if metric not in available:
            raise ValueError(
                f"the history has no 'train_{metric}' or 'val_{metric}'; it has the metrics {available}: "
                f"pass metrics=(...) with some of those."
            )
    fig, panel, axes = grid_of_axes(1, len(metrics), ax, figsize or (4.5 * len(metrics), 3.5))
    for axis, metric in zip(axes[0], metrics):
        _draw_metric(axis, runs, metric)
    if title:
        panel.suptitle(title)
    if ax is None:
        fig.tight_layout()
    return fig


def _class_indices(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` as matching 1-D arrays of non-negative ints, or a clear error."""
    truth, predicted = to_numpy(y_true, "y_true"), to_numpy(y_pred, "y_pred")
    for values, what in ((truth, "y_true"), (predicted, "y_pred")):
        if values.ndim != 1:
            raise ValueError(f"{what} must be 1-D class indices, got shape {values.shape}; for logits use logits.argmax(dim=1).")
    if len(truth) != len(predicted):
        raise ValueError(f"y_true has {len(truth)} labels but y_pred has {len(predicted)}: pass one prediction per example.")
    if len(truth) == 0:
        raise ValueError("y_true and y_pred are empty.")
    for values, what in ((truth, "y_true"), (predicted, "y_pred")):
        if not np.issubdtype(values.dtype, np.integer) or values.min() < 0:
            raise ValueError(f"{what} must hold class indices (non-negative ints); for logits use y_pred = logits.argmax(dim=1).")
    return truth, predicted


def plot_confusion_matrix(
    y_true, y_pred, class_names: Sequence[str] | None = None, *, normalize: bool = True, ax: Axes | None = None
) -> Figure:
    """Plot the confusion matrix: row = true class, column = predicted class.

    With ``normalize=True`` each row is divided by the number of examples of that class, so the
    diagonal shows per-class recall (classes without examples stay 0).
    """
    from sklearn.metrics import confusion_matrix

    truth, predicted = _class_indices(y_true, y_pred)
    largest = int(max(truth.max(), predicted.max()))
    n_classes = len(class_names) if class_names is not None else largest + 1
    if largest >= n_classes:
        raise ValueError(f"a label is {largest} but class_names has only {n_classes} names.")
    # normalize="true" divides each row by its class's count; rows of absent classes stay 0.
    matrix = confusion_matrix(truth, predicted, labels=np.arange(n_classes), normalize="true" if normalize else None)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    title = "Confusion matrix" + (" (rows normalised)" if normalize else "")
    fig = plot_heatmap(matrix.astype(float), names, names, title=title, fmt=".2f" if normalize else ".0f", cmap="Blues", ax=ax)
    axis = ax if ax is not None else fig.axes[0]
    axis.set(xlabel="predicted class", ylabel="true class")
    return fig


def _embedding_inputs(features, labels, domains) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Check plot_embedding's inputs; return float64 points (N, D), N labels and N domains (or None)."""
    points = to_numpy(features, "features").astype(np.float64)
    if points.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {points.shape}: flatten them with features.flatten(1).")
    n = len(points)
    if n < 3 or points.shape[1] < 2:
        raise ValueError(f"need at least 3 examples with at least 2 feature dimensions, got shape {points.shape}.")
    if not np.isfinite(points).all():
        raise ValueError("features contain NaN or infinite values: check the model's output (is training diverging?).")
    label_array = to_numpy(labels, "labels").reshape(-1)
    if len(label_array) != n:
        raise ValueError(f"got {n} feature vectors but {len(label_array)} labels: pass one label per row.")
    domain_array = None if domains is None else to_numpy(domains, "domains").reshape(-1)
    if domain_array is not None and len(domain_array) != n:
        raise ValueError(f"got {n} feature vectors but {len(domain_array)} domains: pass one domain per row.")
    if domain_array is not None and len(set(domain_array.tolist())) > len(_DOMAIN_MARKERS):
        raise ValueError(f"plot_embedding can mark at most {len(_DOMAIN_MARKERS)} domains, got {len(set(domain_array.tolist()))}.")
    return points, label_array, domain_array


def _project_2d(points: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, tuple[str, str]]:
    """The (N, 2) projection of ``points`` and the names of its two axes."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method == "pca":
        projector = PCA(n_components=2, random_state=seed)
        xy = projector.fit_transform(points)
        share = projector.explained_variance_ratio_ * 100
        return xy, (f"PC 1 ({share[0]:.0f}% of variance)", f"PC 2 ({share[1]:.0f}% of variance)")
    if method == "tsne":
        # Perplexity must stay below the number of points; 30 is the usual value for larger sets.
        perplexity = min(30.0, max(1.0, (len(points) - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
        return xy, ("t-SNE 1", "t-SNE 2")
    raise ValueError(f"unknown method {method!r}: use 'pca' (fast, linear) or 'tsne' (slower, keeps neighbourhoods).")


def plot_embedding(
    features, labels, *, method: str = "pca", class_names: Sequence[str] | None = None, domains=None,
    title: str | None = None, ax: Axes | None = None, seed: int = 0,
) -> Figure:
    """Project (N, D) features to 2-D with PCA or t-SNE and scatter them, coloured by class (19.1, 19.2).

    ``domains`` (N ints or strings) gives each domain its own marker shape, to see whether source
    and target features overlap (19.4 domain adaptation). The class legend is drawn for up to 20 classes.
    """
    points, label_array, domain_array = _embedding_inputs(features, labels, domains)
    xy, axis_names = _project_2d(points, method, seed)
    fig, axis = figure_and_axes(ax, figsize=(6, 5))
    classes = sorted(set(label_array.tolist()))
    palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    domain_values = [None] if domain_array is None else sorted(set(domain_array.tolist()))
    for class_index, label in enumerate(classes):
        for domain_index, domain in enumerate(domain_values):
            chosen = label_array == label
            if domain is not None:
                chosen &= domain_array == domain
            colour, marker = palette(class_index % palette.N), _DOMAIN_MARKERS[domain_index]
            axis.scatter(xy[chosen, 0], xy[chosen, 1], s=12, alpha=0.7, color=colour, marker=marker)
    # Two legends: colours name the classes, shapes name the domains.
    if len(classes) <= 20:
        names = [class_name(label, class_names) for label in classes]
        handles = [axis.scatter([], [], color=palette(i % palette.N), marker="o", label=name) for i, name in enumerate(names)]
        axis.add_artist(axis.legend(handles=handles, title="class", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)))
    if domain_array is not None:
        handles = [axis.scatter([], [], color="gray", marker=_DOMAIN_MARKERS[i], label=str(d)) for i, d in enumerate(domain_values)]
        axis.legend(handles=handles, title="domain", fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0))
    axis.set(xlabel=axis_names[0], ylabel=axis_names[1])
    axis.set_title(title or f"{'PCA' if method == 'pca' else 't-SNE'} of {len(points)} feature vectors")
    return fig


def _mean_and_std(values, label: str, x_values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """One plot_curves entry as ``(mean, std or None)``, each with one value per x."""
    if isinstance(values, tuple) and len(values) == 2 and np.ndim(to_numpy(values[0], label)) == 1:
        mean, std = (to_numpy(v, label).astype(float) for v in values)
    else:
        array = to_numpy(values, label).astype(float)
        mean, std = (array.mean(axis=0), array.std(axis=0)) if array.ndim == 2 else (array, None)
    for part, what in ((mean, "values"), (std, "std values")):
        if part is not None and part.shape != x_values.shape:
            raise ValueError(
                f"curve {label!r}: its {what} have shape {part.shape} but x has {len(x_values)} points; pass one "
                "value per x (or (mean, std) of that length, or an array of shape (runs, len(x)))."
            )
    return mean, std


def plot_curves(
    x, ys: Mapping[str, object], *, xlabel: str, ylabel: str, title: str, logx: bool = False, ax: Axes | None = None
) -> Figure:
    """Line plot of several named curves over the same ``x``, with optional ±std bands.

    Each value of ``ys`` is a 1-D array (one curve), a tuple ``(mean, std)`` (curve with a band),
    or a 2-D array of shape (runs, len(x)), e.g. one row per seed, drawn as mean ± std. Used for
    data-efficiency curves (19.2, 19.3) and transferability across stages (19.1).
    """
    x_values = to_numpy(x, "x").astype(float)
    if x_values.ndim != 1 or len(x_values) == 0:
        raise ValueError(f"x must be a non-empty 1-D sequence, got shape {x_values.shape}.")
    if logx and (x_values <= 0).any():
        raise ValueError("logx=True needs every x > 0 (the log of 0 or a negative number is undefined).")
    if not isinstance(ys, Mapping) or not ys:
        raise TypeError("ys must be a non-empty dict {curve label: values}, e.g. {'linear probe': accuracies}.")
    fig, axis = figure_and_axes(ax, figsize=(6, 4))
    for label, values in ys.items():
        mean, std = _mean_and_std(values, label, x_values)
        (line,) = axis.plot(x_values, mean, marker="o", label=label)
        if std is not None:
            axis.fill_between(x_values, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if logx:
        axis.set_xscale("log")
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axis.legend()
    axis.grid(alpha=0.3)
    return fig


def plot_heatmap(
    matrix, row_labels: Sequence[str], col_labels: Sequence[str], *,
    title: str, fmt: str = ".2f", cmap: str = "viridis", ax: Axes | None = None,
) -> Figure:
    """An annotated heatmap with a colour bar: CKA similarity between layers (19.1), strategy grids (19.3).

    Cells are labelled with their value formatted by ``fmt`` (NaN shows as a blank cell), unless
    the matrix has more than 400 cells, where the text would be unreadable.
    """
    values = to_numpy(matrix, "matrix").astype(float)
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
    fig, axis = figure_and_axes(ax, figsize=(min(2 + 0.6 * values.shape[1], 14), min(1.5 + 0.5 * values.shape[0], 12)))
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
