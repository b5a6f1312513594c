"""Metrics: the numbers the chapters measure about a model's outputs and representations.

- :func:`accuracy` of logits against class labels (every chapter; ``fit`` logs it);
- :func:`linear_cka` and :func:`cka_matrix`: how similar two representations are (19.1);
- :func:`smooth_energy_fraction`: how much of a first-layer filter bank is smooth (19.1);
- :func:`box_iou`, :func:`box_iou_matched` and :func:`mask_iou`: how well predicted boxes and
  masks overlap the true ones (19.6);
- :func:`mean_confidence_interval`: a mean over seeds or few-shot episodes with its 95% interval (19.5).

What *training* changed (weight drift, an old task's accuracy, the accuracy matrix of a task
sequence) is measured in :mod:`course_lib.forgetting`. Every function here checks its input,
so that a wrong shape fails with a message rather than as a silently wrong number in a plot,
and none of them trains anything or changes what it measures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "accuracy", "box_iou", "box_iou_matched", "cka_matrix", "linear_cka", "mask_iou", "mean_confidence_interval",
    "smooth_energy_fraction",
]

Array = torch.Tensor | np.ndarray
_MATRIX_POOLS = ("flatten", "avg")


# ---------------------------------------------------------------------------------------------
# Accuracy and confidence intervals


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose highest logit is the target class (soft-label targets: their top class).

    ``logits`` is ``(N, classes)``; ``targets`` int64 class indices ``(N,)`` or soft labels
    shaped like the logits. Returns a Python float in [0, 1].
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"logits must be a tensor shaped (N, classes), got {getattr(logits, 'shape', type(logits).__name__)}.")
    labels = targets if targets.ndim == 1 else targets.argmax(dim=1)
    if labels.shape != (len(logits),):
        raise ValueError(f"targets must hold one class per row of logits ({len(logits)}), got shape {tuple(targets.shape)}.")
    if len(logits) == 0:
        raise ValueError("logits is empty: accuracy needs at least one example.")
    return (logits.argmax(dim=1) == labels).double().mean().item()


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


# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Similarity of representations: linear CKA (19.1)


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear centred kernel alignment between two representations of the same N examples (19.1).

    ``x`` is ``(N, D1)`` and ``y`` is ``(N, D2)``: row ``i`` of both describes example ``i``; the
    widths may differ. With the columns centred,

        CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

    (Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited"). It lies in
    [0, 1], is 1 for identical representations, and does not change when either representation is
    rotated (an orthogonal transform) or scaled by a number, but it *does* change under a general
    invertible linear map: stretching some directions more than others changes what is similar.
    Independent features do *not* give 0: for independent isotropic Gaussian features the
    expected value is about ``sqrt(D1 * D2 / ((N + D1) * (N + D2)))``, which is close to
    ``sqrt(D1 * D2) / N`` only while both widths are much smaller than N, and approaches 1 as
    the widths grow past N (N = 256: about 0.06 at D = 16, but 0.67 at D = 512). So compare CKA
    values with a control measured on the same N and widths, e.g. the same pair with the rows of
    one representation shuffled.

    Computed in float64. Returns a Python float.
    """
    x, y = _as_feature_matrix(x, "x"), _as_feature_matrix(y, "y")
    _check_same_examples(x, y)
    x, y = _centre_columns(x, "x"), _centre_columns(y, "y")
    n = x.shape[0]
    if x.shape[1] + y.shape[1] <= 2 * n:
        # Narrow features: work with the (D, D) matrices of the formula.
        cross = (y.T @ x).square().sum()
        norm_x, norm_y = torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)
    else:
        # Wide features (flattened feature maps): the same numbers from (N, N) Gram matrices, since
        # ||Y^T X||_F^2 = trace(X X^T Y Y^T) and ||X^T X||_F = ||X X^T||_F. Much cheaper when D >> N.
        gram_x, gram_y = x @ x.T, y @ y.T
        cross = (gram_x * gram_y).sum()
        norm_x, norm_y = torch.linalg.matrix_norm(gram_x), torch.linalg.matrix_norm(gram_y)
    return _clip_unit(float(cross / (norm_x * norm_y)))


def smooth_energy_fraction(weight: torch.Tensor | np.ndarray) -> float:
    """Share of a convolution's weight energy in the smooth patterns of each kernel (19.1).

    ``weight`` is a convolution's ``(C_out, C_in, k, k)`` weight (square kernels, ``k >= 2``).
    Every ``k x k`` kernel (one per output and input channel) is projected onto three orthonormal
    patterns: the constant, a left-to-right linear ramp and a top-to-bottom linear ramp (each
    centred on the kernel and scaled to unit norm). The result pools all kernels: the projected
    squared norm summed over kernels divided by the total squared norm, so a kernel with large
    weights counts more. Colour blobs (constant kernels) and dark/light edges (ramps) score high;
    weights drawn independently with mean zero score ``3 / k**2`` on average (1/3 for 3x3), since
    their energy is spread evenly over the ``k**2`` orthonormal patterns of a kernel.

    Computed in float64. Returns a Python float in [0, 1].
    """
    weight = torch.as_tensor(weight)
    if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] < 2:
        raise ValueError(
            f"Expected a convolution weight shaped (C_out, C_in, k, k) with square kernels, k >= 2; "
            f"got shape {tuple(weight.shape)}. Pass e.g. `conv.weight.detach()` of an nn.Conv2d."
        )
    kernels = weight.detach().double().reshape(-1, weight.shape[-2], weight.shape[-1])
    total = kernels.square().sum()
    if total == 0:
        raise ValueError("The weight is all zeros, so it has no energy to divide: pass a trained or initialised weight.")
    size = kernels.shape[-1]
    ramp = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    patterns = torch.stack([torch.ones(size, size, dtype=torch.float64),
                            ramp[None, :].expand(size, size), ramp[:, None].expand(size, size)])
    patterns = patterns / torch.linalg.vector_norm(patterns, dim=(1, 2), keepdim=True)
    projections = torch.einsum("kij,pij->kp", kernels, patterns)
    return _clip_unit(float(projections.square().sum() / total))


def cka_matrix(
    acts_a: Mapping[str, torch.Tensor],
    acts_b: Mapping[str, torch.Tensor],
    *,
    pool: str = "flatten",
) -> torch.Tensor:
    """Linear CKA between every layer of ``acts_a`` and every layer of ``acts_b`` (19.1).

    ``acts_a`` and ``acts_b`` map layer names to activations of the *same* N examples, as
    :func:`capture_activations` returns them (pass the same dict twice to compare a network's
    layers with each other, or two networks' dicts to compare the networks). Activations with more
    than two dimensions are made 2-D first: ``pool="flatten"`` keeps every position as its own
    feature, ``(N, C*H*W)``, as Kornblith et al. do; ``pool="avg"`` averages over positions, ``(N, C)``.

    Returns a float64 tensor shaped ``(len(acts_a), len(acts_b))``; entry ``[i, j]`` compares the
    i-th layer of ``acts_a`` with the j-th of ``acts_b`` (in the dicts' order), ready for
    ``plot_heatmap(matrix, list(acts_a), list(acts_b), title=...)``.
    """
    if pool not in _MATRIX_POOLS:
        raise ValueError(f"Unknown pool {pool!r}: use one of {_MATRIX_POOLS}.")
    grams_a = _centred_grams(acts_a, "acts_a", pool)
    grams_b = grams_a if acts_b is acts_a else _centred_grams(acts_b, "acts_b", pool)
    sizes = {len(gram) for gram in [*grams_a.values(), *grams_b.values()]}
    if len(sizes) != 1:
        raise ValueError(
            f"The activations describe different numbers of examples ({sorted(sizes)}); CKA compares "
            "representations of the same examples, so capture every layer from the same images."
        )
    matrix = torch.empty(len(grams_a), len(grams_b), dtype=torch.float64)
    for i, gram_a in enumerate(grams_a.values()):
        for j, gram_b in enumerate(grams_b.values()):
            similarity = (gram_a * gram_b).sum() / (torch.linalg.matrix_norm(gram_a) * torch.linalg.matrix_norm(gram_b))
            matrix[i, j] = _clip_unit(float(similarity))
    return matrix


def _centred_grams(activations: Mapping[str, torch.Tensor], name: str, pool: str) -> dict[str, torch.Tensor]:
    """Each layer's (N, N) Gram matrix of centred features, computed once and reused for every pair."""
    if not isinstance(activations, Mapping) or len(activations) == 0:
        raise TypeError(
            f"{name} must be a non-empty dict {{layer name: activation}}, got {type(activations).__name__}; "
            "use the result of capture_activations(model, images, layers)."
        )
    grams = {}
    for layer, activation in activations.items():
        if not isinstance(activation, (torch.Tensor, np.ndarray)) or activation.ndim < 2:
            raise ValueError(
                f"{name}[{layer!r}] must be a tensor with a batch dimension, (N, D) or (N, C, H, W), got "
                f"{type(activation).__name__} of shape {tuple(getattr(activation, 'shape', ()))}."
            )
        activation = torch.as_tensor(activation)
        if activation.ndim > 2:
            activation = activation.flatten(start_dim=1) if pool == "flatten" else activation.flatten(start_dim=2).mean(dim=2)
        features = _centre_columns(_as_feature_matrix(activation, f"{name}[{layer!r}]"), f"{name}[{layer!r}]")
        grams[layer] = features @ features.T
    return grams


def _as_feature_matrix(features: Any, name: str) -> torch.Tensor:
    """Check that ``features`` is a real-valued, finite (N, D) matrix with N >= 2; return it in float64."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or NumPy array shaped (N, D), got {type(features).__name__}.")
    if features.dtype == torch.bool or features.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {features.dtype}; convert it with .float().")
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (examples, features), got shape {tuple(features.shape)}. Flatten feature maps "
            "with x.flatten(start_dim=1) or average them with x.mean(dim=(2, 3)) first (cka_matrix does this for you)."
        )
    if features.shape[0] < 2:
        raise ValueError(f"{name} has {features.shape[0]} example(s); comparing representations needs at least 2 (use many more).")
    if features.shape[1] < 1:
        raise ValueError(f"{name} has no feature columns (shape {tuple(features.shape)}).")
    features = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values; find where they come from (e.g. a diverged model) first.")
    return features


def _check_same_examples(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} rows but y has {y.shape[0]}: CKA compares two representations of the same "
            "examples, so row i of both must describe example i."
        )


def _centre_columns(features: torch.Tensor, name: str) -> torch.Tensor:
    centred = features - features.mean(dim=0, keepdim=True)
    # A representation that is the same for every example carries no information to compare.
    if not centred.abs().amax() > 0:
        raise ValueError(f"{name} is the same for every example (zero variance), so its CKA is undefined.")
    return centred


def _clip_unit(value: float) -> float:
    # Rounding can push a true 1.0 a hair above 1; the exact value always lies in [0, 1].
    return min(max(value, 0.0), 1.0)
