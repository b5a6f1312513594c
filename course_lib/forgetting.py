"""Forgetting: what training on something new did to a model, and to what it knew (19.3, 19.7).

- :func:`weight_drift`: how far fine-tuning moved each layer group from its pretrained weights (19.3);
- :func:`old_task_accuracy`: how well a fine-tuned backbone still does its source task (19.3, 19.7);
- the **accuracy matrix** ``R`` of a task sequence, ``R[i, j]`` = accuracy on task ``j`` after
  training on task ``i``, and what it says: :func:`average_accuracy`, :func:`backward_transfer`,
  :func:`forward_transfer` (Lopez-Paz & Ranzato, 2017) and :func:`forgetting` (Chaudhry et al., 2018).

Scores of a model's outputs (accuracy, IoU, CKA, confidence intervals) are in :mod:`course_lib.metrics`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from course_lib.core import model_device
from course_lib.models import get_head, layer_groups, remove_head
from course_lib.training import evaluate
from course_lib.validation import check_module

__all__ = ["average_accuracy", "backward_transfer", "forgetting", "forward_transfer", "old_task_accuracy", "weight_drift"]

Array = torch.Tensor | np.ndarray
Matrix = Array | Sequence[Sequence[float]]
_WHOLE_MODEL = "the whole model (a torch.nn.Module)"


# ---------------------------------------------------------------------------------------------
# How far the weights moved, and what the source task lost (19.3)


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
    return evaluate(nn.Sequential(body, copy.deepcopy(old_head).to(model_device(model))), loader)["accuracy"]


# ---------------------------------------------------------------------------------------------
# The accuracy matrix of a task sequence (19.7)


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


