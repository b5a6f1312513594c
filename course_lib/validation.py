"""Input checks shared by the library: counts, rates, models, features and class labels.

Bottom layer of ``course_lib`` (it imports nothing else from the library). Every check either
returns the value (sometimes converted, e.g. a NumPy integer to an ``int``) or raises an error
that names the argument, says what it got, and, through ``hint``, what to do instead. A
lesson's function starts with a few of these lines rather than with a page of ``if``s.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

__all__ = [
    "check_class_labels",
    "check_dataset_labels",
    "check_feature_matrix",
    "check_module",
    "check_non_negative_int",
    "check_positive_int",
    "check_positive_number",
    "check_same_feature_space",
    "is_int",
]


def is_int(value: object) -> bool:
    """True for Python and NumPy integers, False for bools (``True`` is an int to Python, not a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _with_hint(message: str, hint: str | None) -> str:
    return f"{message} {hint}" if hint else message


def check_positive_int(value: Any, name: str, hint: str | None = None) -> int:
    """``value`` as an ``int`` if it is a positive integer, else a ValueError naming ``name``."""
    if not is_int(value) or value < 1:
        raise ValueError(_with_hint(f"{name} must be a positive int, got {value!r}.", hint))
    return int(value)


def check_non_negative_int(value: Any, name: str, hint: str | None = None) -> int:
    """``value`` as an ``int`` if it is an integer >= 0 (a seed, an index), else a ValueError."""
    if not is_int(value) or value < 0:
        raise ValueError(_with_hint(f"{name} must be a non-negative int, got {value!r}.", hint))
    return int(value)


def check_positive_number(value: Any, name: str, hint: str | None = None) -> float:
    """``value`` as a ``float`` if it is a number > 0 (a learning rate, a temperature), else a ValueError."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(_with_hint(f"{name} must be a positive number, got {value!r}.", hint))
    return float(value)


def check_module(value: Any, function: str, hint: str | None = None, *, what: str = "a torch.nn.Module") -> nn.Module:
    """``value`` if it is a ``torch.nn.Module``, else a TypeError saying which function needed ``what``."""
    if not isinstance(value, nn.Module):
        raise TypeError(_with_hint(f"{function} needs {what}, got {type(value).__name__}.", hint))
    return value


def check_feature_matrix(features: Any, name: str) -> torch.Tensor:
    """A finite, non-empty float ``(N, D)`` tensor (detached, float32), or an error saying what is wrong."""
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        got = f"{features.dtype} tensor" if isinstance(features, torch.Tensor) else type(features).__name__
        raise TypeError(f"{name} must be a float tensor shaped (N, D), got a {got}; convert with .float().")
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (examples, features), got shape {tuple(features.shape)}; extract them with "
            "pool='avg' or 'flatten', or flatten with x.flatten(start_dim=1)."
        )
    if len(features) == 0:
        raise ValueError(f"{name} is empty: there is nothing to train or test on.")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the model and data that produced them.")
    return features.detach().float()


def check_class_labels(labels: Any, features: torch.Tensor, name: str, features_name: str) -> torch.Tensor:
    """int64 class indices ``(N,)``, one per row of ``features``, moved to the features' device."""
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        got = f"{labels.dtype} tensor of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"{name} must be an int64 tensor of class indices shaped (N,), got a {got}; convert with .long().")
    if len(labels) != len(features):
        raise ValueError(f"{features_name} has {len(features)} rows but {name} has {len(labels)} labels; they must match one to one.")
    if labels.min() < 0:
        raise ValueError(f"{name} must be class indices 0, 1, 2, ..., got {int(labels.min())}.")
    return labels.to(features.device)


def check_dataset_labels(labels: Any) -> torch.Tensor:
    """A dataset's class labels: a non-empty 1-D int64 tensor (what ``data.dataset_targets`` returns)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        raise TypeError(
            "labels must be a 1-D int64 tensor of class indices (e.g. the labels from extract_features); "
            "convert with torch.as_tensor(labels).long()."
        )
    if len(labels) == 0:
        raise ValueError("labels is empty: pass the class labels of the whole training set.")
    return labels


def check_same_feature_space(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Two feature matrices must come from the same layer (same width) and sit on one device."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} have {a.shape[1]} columns but {name_b} have {b.shape[1]}: "
            "extract both from the same layer with the same pooling."
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} are on {a.device} but {name_b} on {b.device}; move both to one device.")
