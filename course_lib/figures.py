"""Figure plumbing shared by :mod:`course_lib.plots` and :mod:`course_lib.image_grids`.

Tensors to NumPy, a new figure or the lesson's own ``ax=``, a grid of panels that can take an
``ax``'s place, class names for labels. Nothing here draws anything a lesson would look at.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["class_name", "figure_and_axes", "grid_of_axes", "to_numpy"]


def to_numpy(values, name: str) -> np.ndarray:
    """A NumPy copy of a tensor, array or list (tensors may require grad or live on a GPU)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a tensor, array or list, got {type(values).__name__}.") from error


def figure_and_axes(ax: Axes | None, figsize=None) -> tuple[Figure, Axes]:
    """``(figure, axes)`` to draw in: a new figure, or the one that holds the ``ax`` a lesson passed."""
    if ax is None:
        return plt.subplots(figsize=figsize)
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes (e.g. from plt.subplots()), got {type(ax).__name__}.")
    return ax.figure, ax


def grid_of_axes(nrows: int, ncols: int, ax: Axes | None, figsize) -> tuple[Figure, object, np.ndarray]:
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


def class_name(label, class_names: Sequence[str] | None) -> str:
    """The name of class ``label`` (the label itself when there are no names), checked against ``class_names``."""
    if class_names is None or isinstance(label, str):
        return str(label)
    index = int(label)
    if not 0 <= index < len(class_names):
        raise ValueError(f"label {index} has no entry in class_names (which has {len(class_names)} names).")
    return str(class_names[index])
