"""Metrics: the numbers the chapters measure, in one place.

- :func:`accuracy` of logits against class labels (every chapter; ``fit`` logs it);
- :func:`linear_cka` and :func:`cka_matrix`: how similar two representations are (19.1);
- :func:`weight_drift`: how far fine-tuning moved each layer group from its pretrained weights (19.3);
- :func:`old_task_accuracy`: how well a fine-tuned backbone still does its source task (19.3, 19.7).

Metrics are plain functions of tensors (or of a model and a loader); none of them trains
anything or changes the model it measures.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from course_lib.core import eval_mode, model_device
from course_lib.models import get_head, layer_groups, remove_head
from course_lib.validation import check_module

__all__ = ["accuracy", "cka_matrix", "linear_cka", "old_task_accuracy", "weight_drift"]

_MATRIX_POOLS = ("flatten", "avg")
_WHOLE_MODEL = "the whole model (a torch.nn.Module)"


# ---------------------------------------------------------------------------------------------
# Accuracy


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
    Independent random features give a value near 0 (about ``sqrt(D1 * D2) / N``).

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


# ---------------------------------------------------------------------------------------------
# What fine-tuning changed (19.3) and what it forgot (19.7)


def weight_drift(model: nn.Module, pretrained: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, float]:
    """How far each layer group has moved from the pretrained weights: ``||w - w0|| / ||w0||`` per group.

    ``pretrained`` is the model before fine-tuning, or a *copy* of its state
    (``copy.deepcopy(model.state_dict())``: a plain ``state_dict()`` shares memory with the model
    and moves with it). The head is left out when its shape differs (a new head has no pretrained
    weights to drift from). 0 means untouched; 0.1 means the group moved by a tenth of its size.
    """
    model = check_module(model, "weight_drift", what=_WHOLE_MODEL)
    reference = pretrained.state_dict() if isinstance(pretrained, nn.Module) else pretrained
    if not isinstance(reference, Mapping):
        raise TypeError(f"pretrained must be a model or its state_dict(), got {type(pretrained).__name__}.")
    names = {id(p): name for name, p in model.named_parameters()}
    drift = {}
    for group, params in layer_groups(model):
        pairs = [(names[id(p)], p, reference.get(names[id(p)])) for p in params]
        missing = [name for name, _, w0 in pairs if w0 is None]
        mismatched = [name for name, p, w0 in pairs if w0 is not None and w0.shape != p.shape]
        if group == "head" and (missing or mismatched):
            continue  # a replaced head: nothing to compare with
        if missing or mismatched:
            raise ValueError(
                f"The pretrained weights do not match the model's {group!r} "
                f"({'missing ' + repr(missing[0]) if missing else 'a different shape for ' + repr(mismatched[0])}): "
                "pass the state of the same architecture before fine-tuning."
            )
        moved = sum(float((p.detach().cpu() - w0.cpu()).pow(2).sum()) for _, p, w0 in pairs)
        size = sum(float(w0.cpu().pow(2).sum()) for _, _, w0 in pairs)
        drift[group] = (moved / size) ** 0.5 if size > 0 else 0.0
    return drift


def old_task_accuracy(model: nn.Module, old_head: nn.Linear, loader: Iterable) -> float:
    """Accuracy on the source task of ``model``'s backbone *as it is now*, with the source model's head put back.

    Fine-tuning replaced the head, so the source task can only be scored by giving the moved
    backbone its old head again. Tracked during fine-tuning (19.3) with
    ``TrackMetric(lambda m: old_task_accuracy(m, source_head, source_loader), "source_accuracy")``;
    the fall of this number is the catastrophic forgetting of chapter 19.7.
    """
    if not isinstance(old_head, nn.Linear):
        raise TypeError(f"old_head must be the source model's nn.Linear head (get_head(source_model)), got {type(old_head).__name__}.")
    body = remove_head(copy.deepcopy(check_module(model, "old_task_accuracy", what=_WHOLE_MODEL)))
    feature_dim = get_head(model).in_features
    if old_head.in_features != feature_dim:
        raise ValueError(f"old_head takes {old_head.in_features} features but the backbone gives {feature_dim}: "
                         "pass the head of the same architecture's source model.")
    device = model_device(model)
    source_model = nn.Sequential(body, copy.deepcopy(old_head).to(device))
    correct, count = 0, 0
    with torch.no_grad(), eval_mode(source_model):
        for inputs, targets in loader:
            predicted = source_model(inputs.to(device)).argmax(dim=1)
            correct += int((predicted == targets.to(device)).sum())
            count += len(targets)
    if count == 0:
        raise ValueError("The loader yielded no batches: is the dataset empty?")
    return correct / count
