"""Metrics the chapters report: box and mask IoU (19.6), continual learning (19.7), confidence intervals (19.5).

Every function takes torch tensors or NumPy arrays and checks its input, so that a wrong shape fails
here, with a message, rather than as a silently wrong number in a plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "average_accuracy", "backward_transfer", "box_iou", "box_iou_matched", "forgetting", "forward_transfer",
    "mask_iou", "mean_confidence_interval",
]

Array = torch.Tensor | np.ndarray
Matrix = Array | Sequence[Sequence[float]]

# Boxes and masks (19.6)


def _check_boxes(boxes: Array, name: str) -> torch.Tensor:
    """``boxes`` as a float tensor of valid ``(x0, y0, x1, y1)`` rows, or an error saying what is wrong."""
    boxes = torch.as_tensor(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), one (x0, y0, x1, y1) box a row; got {tuple(boxes.shape)}. "
                         "For a single box use box[None].")
    if boxes.dtype == torch.bool:
        raise TypeError(f"{name} must hold pixel coordinates (float or int), got {boxes.dtype}.")
    boxes = boxes if boxes.is_floating_point() else boxes.float()
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates; check the predictions that produced it.")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError(f"{name} has boxes with x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1) corners, not "
                         "(x, y, width, height). Sort predicted corners with torch.minimum/torch.maximum.")
    return boxes


def _iou_of_corners(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``a`` and ``b`` of broadcastable shapes ``(..., 4)``."""
    # Corners are (x0, y0) = [..., :2] and (x1, y1) = [..., 2:]; the overlap's sides are clamped at 0.
    overlap = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    intersection = overlap.prod(dim=-1)
    union = (a[..., 2:] - a[..., :2]).prod(dim=-1) + (b[..., 2:] - b[..., :2]).prod(dim=-1) - intersection
    # Two zero-area boxes have an empty union: their IoU is 0, not 0 / 0. The clamp keeps the unused
    # branch of torch.where finite too, so gradients stay finite when IoU is used in a loss.
    return torch.where(union > 0, intersection / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def box_iou(boxes_a: Array, boxes_b: Array) -> torch.Tensor:
    """Intersection over union of every box in ``boxes_a`` ``(N, 4)`` with every box in ``boxes_b`` ``(M, 4)`` (19.6).

    Boxes are ``(x0, y0, x1, y1)`` in pixels with ``x1``/``y1`` exclusive, as ``ShapeWorld.boxes`` stores
    them (``course_lib.world.render.boxes_from_masks``): a box's area is ``(x1 - x0) * (y1 - y0)``, with
    no ``+ 1``, and boxes that only touch along an edge have IoU 0. Returns an ``(N, M)`` tensor; two
    zero-area boxes have IoU 0. Plain torch, so it runs where ``torchvision.ops`` kernels do not.
    """
    a, b = _check_boxes(boxes_a, "boxes_a"), _check_boxes(boxes_b, "boxes_b")
    return _iou_of_corners(a[:, None, :], b[None, :, :])


def box_iou_matched(pred: Array, target: Array) -> torch.Tensor:
    """IoU of each predicted box with *its own* target box: ``(N, 4)`` and ``(N, 4)`` give ``(N,)`` (19.6).

    The diagonal of :func:`box_iou`, without computing the rest; same box convention.
    """
    pred, target = _check_boxes(pred, "pred"), _check_boxes(target, "target")
    if len(pred) != len(target):
        raise ValueError(f"pred has {len(pred)} boxes but target has {len(target)}; they must be matched one to one.")
    return _iou_of_corners(pred, target)


def _binary_mask(mask: Array, name: str, threshold: float | None) -> torch.Tensor:
    """``mask`` as bool; floats in [0, 1] are thresholded when ``threshold`` is given (predictions only)."""
    mask = torch.as_tensor(mask)
    if mask.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W); got {tuple(mask.shape)}. For one mask use mask[None].")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() and threshold is not None:
        if not ((mask >= 0) & (mask <= 1)).all():  # NaN fails both comparisons
            raise ValueError(f"{name} has NaN or values outside [0, 1]; if these are logits, apply torch.sigmoid first.")
        return mask > threshold
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{name} must be bool or hold only 0 and 1 (no NaN); for a class-index mask compare first (mask == k).")
    return mask == 1


def mask_iou(pred: Array, target: Array, threshold: float = 0.5) -> torch.Tensor:
    """IoU of each predicted mask with its target mask: ``(N, H, W)`` and ``(N, H, W)`` give ``(N,)`` (19.6).

    ``|pred AND target| / |pred OR target|`` per mask. ``target`` is bool or 0/1; ``pred`` may also hold
    probabilities, foreground where ``> threshold``. When both masks are empty the prediction is exactly
    right, so their IoU is 1 (a plain division would give 0 / 0).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}.")
    pred, target = _binary_mask(pred, "pred", threshold), _binary_mask(target, "target", None)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    intersection = (pred & target).sum(dim=(1, 2)).double()
    union = (pred | target).sum(dim=(1, 2)).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0).float()


# Continual learning (19.7): R[i, j] = accuracy on task j after training on tasks 0..i in order


def _accuracy_matrix(R: Matrix, function: str, min_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``R`` as a float64 tensor, and an all-False mask for the metric to mark the entries it uses."""
    try:
        R = torch.as_tensor(R, dtype=torch.float64).cpu()
    except (TypeError, ValueError) as error:  # ragged rows or non-numbers
        raise ValueError(f"{function}: R must be a (T, T) matrix of accuracies; could not read it ({error}).") from None
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"{function}: R must be a square (T, T) matrix, R[i, j] = accuracy on task j after "
                         f"training on task i; got shape {tuple(R.shape)}. Evaluate every task after every task.")
    if len(R) < min_tasks:
        raise ValueError(f"{function} needs at least {min_tasks} tasks; got a ({len(R)}, {len(R)}) R.")
    return R, torch.zeros(R.shape, dtype=torch.bool)


def _check_measured(R: torch.Tensor, used: torch.Tensor, function: str) -> None:
    """Entries a metric does not use may be NaN (not evaluated); the ones it uses may not."""
    missing = (used & ~torch.isfinite(R)).nonzero()
    if len(missing):
        i, j = missing[0].tolist()
        raise ValueError(f"{function} uses R[{i}, {j}], which is {R[i, j].item()}: "
                         f"evaluate task {j} after training task {i}.")


def average_accuracy(R: Matrix) -> float:
    """Mean accuracy over all T tasks after training on the last one: ``ACC = (1/T) sum_j R[T-1, j]`` (19.7)."""
    R, used = _accuracy_matrix(R, "average_accuracy", 1)
    used[-1] = True
    _check_measured(R, used, "average_accuracy")
    return float(R[-1].mean())


def backward_transfer(R: Matrix) -> float:
    """How later tasks changed earlier ones: ``BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])`` (19.7).

    Negative means forgetting. Lopez-Paz & Ranzato (2017), "Gradient Episodic Memory for Continual Learning".
    """
    R, used = _accuracy_matrix(R, "backward_transfer", 2)
    used[-1, :-1] = True
    used.diagonal()[:-1] = True
    _check_measured(R, used, "backward_transfer")
    return float((R[-1, :-1] - R.diagonal()[:-1]).mean())


def forward_transfer(R: Matrix, baseline: Array | Sequence[float]) -> float:
    """How earlier tasks help a task before it is trained: ``FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b[j])`` (19.7).

    ``baseline[j]`` is the accuracy on task j of a randomly initialised model (``baseline[0]`` is unused).
    Lopez-Paz & Ranzato (2017), "Gradient Episodic Memory for Continual Learning".
    """
    R, used = _accuracy_matrix(R, "forward_transfer", 2)
    b = torch.as_tensor(baseline, dtype=torch.float64).cpu()
    if b.shape != (len(R),) or not torch.isfinite(b[1:]).all():
        raise ValueError(f"baseline must hold {len(R)} finite accuracies, one per task; got shape {tuple(b.shape)}.")
    used.diagonal(1)[:] = True
    _check_measured(R, used, "forward_transfer")
    return float((R.diagonal(1) - b[1:]).mean())


def forgetting(R: Matrix) -> float:
    """Average forgetting after the last task: ``F = 1/(T-1) sum_{j<T-1} (max_{l<T-1} R[l, j] - R[T-1, j])`` (19.7).

    Each earlier task's drop from its best accuracy before the last task; at least -BWT. The maximum runs
    over every earlier row, as in Chaudhry et al. (2018), "Riemannian Walk for Incremental Learning"; code
    that starts it at ``l = j`` differs only where a task scored higher before it was trained.
    """
    R, used = _accuracy_matrix(R, "forgetting", 2)
    used[:, :-1] = True
    _check_measured(R, used, "forgetting")
    return float((R[:-1, :-1].amax(dim=0) - R[-1, :-1]).mean())


# Confidence intervals over episodes and seeds (19.5)


def mean_confidence_interval(values: Array | Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean of ``values`` and the half-width of its Student-t confidence interval (19.5).

    ``half_width = t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation;
    report ``mean ± half_width`` over independent few-shot episodes or seeds.
    """
    from scipy import stats  # imported here: scipy.stats is slow to import and only this function needs it

    values = torch.as_tensor(values, dtype=torch.float64).cpu().numpy()
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"values must be a 1-D sequence of at least 2 numbers; got shape {values.shape}. "
                         "One run has no spread: run more episodes or seeds.")
    if not np.isfinite(values).all():
        raise ValueError("values contains NaN or infinite numbers; drop the failed runs or fix them.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}.")
    t = stats.t.ppf((1 + confidence) / 2, df=len(values) - 1)
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))
