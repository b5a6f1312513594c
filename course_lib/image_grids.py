"""Pictures for the lessons: batches of images, first-layer filters, feature maps.

Like :mod:`course_lib.plots` (whose small figure helpers this module shares), every function draws
into a new figure, or into the ``ax=`` you pass, and returns the matplotlib Figure; none calls
``plt.show()``. Tensors may be passed directly, on any device.

``show_filters`` builds its mosaic with ``torchvision.utils.make_grid``. ``show_images`` and
``show_feature_maps`` draw one small panel per picture instead: each picture carries its own
caption (a class name, a prediction in green or red, a channel number) and each feature map its
own colour scale, which one mosaic image could not keep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from course_lib.figures import class_name, figure_and_axes, grid_of_axes, to_numpy

__all__ = ["show_feature_maps", "show_filters", "show_images"]


def _images_for_display(images, mean, std) -> np.ndarray:
    """Turn a batch into float (N, H, W, C) or (N, H, W) arrays in [0, 1] for imshow."""
    array = to_numpy(images, "images")
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


def _captions(n: int, labels, predictions, class_names: Sequence[str] | None) -> list[tuple[str, dict]] | None:
    """One ``(text, title keywords)`` caption per image, or None when there is nothing to write under them.

    A prediction next to a label is coloured: green when it matches, red when not.
    """
    for given, what in ((labels, "labels"), (predictions, "predictions")):
        if given is not None and len(given) != n:
            raise ValueError(f"got {n} images but {len(given)} {what}: pass one per image.")
    label_list = to_numpy(labels, "labels").tolist() if labels is not None else None
    if predictions is None:
        return None if label_list is None else [(class_name(label, class_names), {}) for label in label_list]
    captions = []
    for i, prediction in enumerate(to_numpy(predictions, "predictions").tolist()):
        predicted = class_name(prediction, class_names)
        if label_list is None:
            captions.append((f"pred: {predicted}", {}))
        else:
            truth = class_name(label_list[i], class_names)
            colour = "green" if prediction == label_list[i] else "red"
            captions.append((f"{predicted}\n(true: {truth})", {"color": colour}))
    return captions


def show_images(
    images, labels=None, class_names: Sequence[str] | None = None, *, ncols: int = 8,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, title: str | None = None,
    predictions=None, ax: Axes | None = None, figsize: tuple[float, float] | None = None,
) -> Figure:
    """Show a batch of images in a grid, captioned with their labels (every chapter's first look at data).

    ``images`` are uint8 (N, 3, H, W), float (N, 3, H, W) in [0, 1], normalised floats (pass the
    ``mean`` and ``std`` used, to undo it) or grayscale (N, H, W) / (N, 1, H, W). With
    ``predictions`` each caption shows the prediction, green when it matches the label, red when not.
    """
    pictures = _images_for_display(images, mean, std)
    n = len(pictures)
    captions = _captions(n, labels, predictions, class_names)
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}.")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    figsize = figsize or (1.5 * ncols, (1.5 + 0.4 * (captions is not None)) * nrows + 0.4 * (title is not None))
    fig, panel, axes = grid_of_axes(nrows, ncols, ax, figsize)
    for i, axis in enumerate(axes.flat):
        axis.axis("off")
        if i >= n:
            continue
        axis.imshow(pictures[i], cmap="gray" if pictures[i].ndim == 2 else None, vmin=0, vmax=1)
        if captions is not None:
            text, style = captions[i]
            axis.set_title(text, fontsize=8, **style)
    if title:
        panel.suptitle(title)
    return fig


def show_filters(weight, *, ncols: int = 8, title: str | None = None, ax: Axes | None = None) -> Figure:
    """Show first-layer convolution filters (C_out, 3, k, k) as small colour images (19.1).

    Each filter is scaled to [0, 1] on its own, so that weak and strong filters are equally visible.
    """
    if isinstance(weight, torch.nn.Module):
        raise TypeError("show_filters needs the weight tensor, not the layer: pass e.g. model.conv1.weight.")
    kernels = torch.as_tensor(to_numpy(weight, "weight").astype(float))
    if kernels.ndim != 4:
        raise ValueError(f"weight must be a conv weight (C_out, C_in, k, k), got shape {tuple(kernels.shape)}.")
    if kernels.shape[1] not in (1, 3):
        raise ValueError(
            f"weight has {kernels.shape[1]} input channels: only first-layer filters (3 = RGB or 1 = gray input) "
            "can be shown as images; pass the first convolution's weight (e.g. model.conv1.weight or model.stem[0].weight)."
        )
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}.")
    n, channels, height, width = kernels.shape
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    # scale_each: every filter scaled to [0, 1] by its own min and max; pad_value=1: white borders.
    mosaic = make_grid(kernels, nrow=ncols, padding=1, normalize=True, scale_each=True, pad_value=1.0)
    if n == 1:  # make_grid hands a lone image back without its border
        mosaic = F.pad(mosaic, (1, 1, 1, 1), value=1.0)
    mosaic = mosaic.permute(1, 2, 0).numpy()  # make_grid repeats a gray channel three times: keep one
    fig, axis = figure_and_axes(ax, figsize=(0.6 * ncols + 0.5, 0.6 * nrows + 0.8))
    axis.imshow(mosaic[..., 0] if channels == 1 else mosaic, cmap="gray" if channels == 1 else None, interpolation="nearest")
    axis.axis("off")
    axis.set_title(title or f"{n} filters of size {channels}x{height}x{width}")
    return fig


def show_feature_maps(
    activation, *, max_maps: int = 16, title: str | None = None, ax: Axes | None = None
) -> Figure:
    """Show the first ``max_maps`` channels of one image's activation (C, H, W), one panel each (19.1).

    Each map gets its own colour scale (viridis, darkest = its smallest value) and a "channel i" title.
    """
    maps = to_numpy(activation, "activation").astype(float)
    if maps.ndim == 4 and maps.shape[0] == 1:
        raise ValueError(f"activation has shape {maps.shape}: pass one image's maps (C, H, W), e.g. activation[0].")
    if maps.ndim != 3:
        raise ValueError(f"activation must be (C, H, W) for one image, got shape {maps.shape}.")
    if not isinstance(max_maps, int) or max_maps < 1:
        raise ValueError(f"max_maps must be a positive int, got {max_maps!r}.")
    shown = maps[:max_maps]
    ncols = min(8, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, panel, axes = grid_of_axes(nrows, ncols, ax, (1.4 * ncols, 1.5 * nrows + 0.5))
    for i, axis in enumerate(axes.flat):
        axis.axis("off")
        if i < len(shown):
            axis.imshow(shown[i], cmap="viridis")
            axis.set_title(f"channel {i}", fontsize=7)
    panel.suptitle(title or f"first {len(shown)} of {len(maps)} feature maps ({maps.shape[1]}x{maps.shape[2]})")
    return fig
