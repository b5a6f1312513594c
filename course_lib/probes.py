"""Linear probes: how much class information can a linear classifier read from frozen features? (19.1, 19.2)

- :func:`linear_probe_accuracy` trains a logistic-regression probe on standardised features and
  reports its test accuracy. It is written out by hand (Adam on the cross-entropy, from zero
  weights) because writing it is chapter 19.1's second exercise, and the exercise's tests compare
  with it; :func:`course_lib.heads.logistic_regression_accuracy` is scikit-learn's converged solver.
- :func:`transferability_curve` probes every stage of a backbone on a new task;
- :func:`nearest_neighbours` finds the examples whose features are closest to a query's.

A lesson cell::

    pretrained = load_backbone("course-resnet")
    random = load_backbone("course-resnet", pretrained=False)
    for model in (pretrained, random):
        print(transferability_curve(model, train, test, cache=FeatureCache()))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from course_lib.activations import named_layers
from course_lib.feature_cache import FeatureCache
from course_lib.features import extract_layers
from course_lib.models import stage_names
from course_lib.validation import (
    check_class_labels, check_feature_matrix, check_non_negative_int, check_positive_int, check_positive_number,
    check_same_feature_space,
)

__all__ = ["METRICS", "linear_probe_accuracy", "nearest_neighbours", "transferability_curve"]

METRICS = ("cosine", "euclidean")
_CURVE_POOLS = ("avg", "flatten")


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
) -> float:
    """Test accuracy of a linear classifier trained on frozen features (19.1, 19.2).

    The probe: features are standardised with the *training* set's mean and standard deviation
    (the test set must not leak into training), then a linear softmax classifier (logistic
    regression) is trained with Adam on the cross-entropy plus an L2 penalty on its weights
    (``weight_decay``) for ``epochs`` passes over the training set, in full batches
    (``batch_size=None``) or seeded, shuffled mini-batches.

    On frozen features the loss is convex in the weights and bias. Convex is not enough: on
    features that separate the training classes (as good frozen features of a few hundred images
    do) the plain cross-entropy has *no* finite minimiser, since scaling a separating ``W`` up
    always lowers it, and the weights grow for as long as training runs. The L2 penalty
    ``weight_decay / 2 * ||W||^2`` (``weight_decay > 0``) makes the objective strictly convex in
    ``W`` and bounded below by a term that grows with ``||W||``, so it has a unique minimiser
    (unique up to adding the same constant to every bias, which changes no prediction).
    ``weight_decay=0`` is allowed, to show the difference, but then the result depends on how
    long training runs. The probe starts from zero weights, so the result depends on the
    features, not on a random initialisation, and is the same on every call for a given ``seed``.
    Features are ``(N, D)`` float tensors, labels int64 class indices ``(N,)``.
    Returns the fraction of test examples classified correctly, a Python float.
    """
    train_features = check_feature_matrix(train_features, "train_features")
    test_features = check_feature_matrix(test_features, "test_features")
    train_labels = check_class_labels(train_labels, train_features, "train_labels", "train_features")
    test_labels = check_class_labels(test_labels, test_features, "test_labels", "test_features")
    check_same_feature_space(train_features, test_features, "train_features", "test_features")
    unseen = sorted(set(test_labels.tolist()) - set(train_labels.tolist()))
    if unseen:
        raise ValueError(
            f"test_labels contain classes {unseen} that never occur in train_labels, so the probe cannot learn them; "
            "give the training set examples of every class."
        )
    _check_training_settings(epochs, lr, weight_decay, batch_size, seed)

    train_x, test_x = _standardise(train_features, test_features)
    weight, bias = _train_linear_classifier(train_x, train_labels, epochs, lr, weight_decay, batch_size, seed)
    with torch.no_grad():
        predictions = nn.functional.linear(test_x, weight, bias).argmax(dim=1)
    return float((predictions == test_labels).double().mean())


def _standardise(train_features: torch.Tensor, test_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets centred and scaled with the training set's per-feature mean and standard deviation."""
    mean = train_features.mean(dim=0)
    std = train_features.std(dim=0, correction=0)
    # A constant feature has zero spread: dividing it by 1 instead leaves it at 0 after centring.
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train_features - mean) / std, (test_features - mean) / std


def _train_linear_classifier(
    features: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float, weight_decay: float, batch_size: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of a softmax classifier ``logits = features @ weight.T + bias``, trained with Adam."""
    num_classes, dim, device = int(labels.max()) + 1, features.shape[1], features.device
    # Plain zero tensors rather than nn.Linear, whose random initialisation would draw from (and so
    # change) the global random state of the notebook that calls the probe.
    weight = torch.zeros(num_classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    # Adam's weight_decay adds weight_decay * w to the gradient: an L2 penalty on the weights, not the bias.
    optimizer = torch.optim.Adam([{"params": [weight], "weight_decay": weight_decay}, {"params": [bias]}], lr=lr)
    batch_size = batch_size or len(features)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # the probe trains even when the caller is inside torch.no_grad()
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator).to(device)
            for start in range(0, len(features), batch_size):
                rows = order[start:start + batch_size]
                loss = nn.functional.cross_entropy(nn.functional.linear(features[rows], weight, bias), labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return weight.detach(), bias.detach()


def _check_training_settings(epochs: Any, lr: Any, weight_decay: Any, batch_size: Any, seed: Any) -> None:
    check_positive_int(epochs, "epochs")
    check_positive_number(lr, "lr", hint="For example lr=0.05.")
    if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}; 0 switches the L2 penalty off.")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, or None for full batches, got {batch_size!r}.")
    check_non_negative_int(seed, "seed")


@torch.no_grad()
def nearest_neighbours(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    k: int = 5,
    metric: str = "cosine",
) -> torch.Tensor:
    """Indices of the ``k`` gallery examples closest to each query, nearest first: ``(Q, k)`` int64 (19.1).

    ``metric="cosine"`` ranks by the angle between feature vectors (their direction, not their
    length), ``"euclidean"`` by straight-line distance. Show the images at these indices to see
    what a layer considers similar. If the queries are part of the gallery, each query's nearest
    neighbour is itself.
    """
    query = check_feature_matrix(query_features, "query_features")
    gallery = check_feature_matrix(gallery_features, "gallery_features")
    check_same_feature_space(query, gallery, "query_features", "gallery_features")
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}: use one of {METRICS}.")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(gallery):
        raise ValueError(f"k must be an int between 1 and the gallery size {len(gallery)}, got {k!r}.")
    if metric == "cosine":
        similarity = nn.functional.normalize(query, dim=1) @ nn.functional.normalize(gallery, dim=1).T
        return similarity.topk(k, dim=1).indices
    distances = torch.cdist(query, gallery)
    return distances.topk(k, dim=1, largest=False).indices


def transferability_curve(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    test_data: Dataset | DataLoader,
    layers: Sequence[str] | None = None,
    *,
    cache: FeatureCache | None = None,
    pool: str = "avg",
    epochs: int = 100,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Linear-probe test accuracy of each layer's features on a new task: ``{layer: accuracy}`` (19.1).

    For each layer (default: ``stage_names(model)``, input to output) the frozen ``model``'s
    features of ``train_data`` and ``test_data`` are extracted with
    :func:`course_lib.features.extract_layers`, all in one pass (reused from ``cache`` when given), and scored
    with :func:`linear_probe_accuracy` (``epochs``, ``lr``, ``weight_decay``, ``seed``). Plotting
    the curve of a pretrained and a randomly initialised model shows where in the network the
    transferable knowledge lives.
    """
    if pool not in _CURVE_POOLS:
        raise ValueError(f"Unknown pool {pool!r}: a linear probe needs 2-D features, so use one of {_CURVE_POOLS}.")
    if layers is None:
        layers = stage_names(model)
    named_layers(model, layers)  # every name checked before any slow extraction starts
    # Every layer's features in one pass over each split (not one pass per layer).
    train = extract_layers(model, train_data, list(layers), pool=pool, cache=cache, progress=progress)
    test = extract_layers(model, test_data, list(layers), pool=pool, cache=cache, progress=progress)
    curve = {}
    for layer in layers:
        (train_features, train_labels), (test_features, test_labels) = train[layer], test[layer]
        curve[layer] = linear_probe_accuracy(
            train_features, train_labels, test_features, test_labels,
            epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed,
        )
    return curve
