"""Classifiers on top of frozen features: k-nearest neighbours, logistic regression and a small MLP (19.2, 19.5).

Once a frozen backbone has turned every image into a feature vector, any classifier can be
trained on the vectors. Chapter 19.2 compares three:

- a linear head trained in PyTorch (``nn.Linear`` with :func:`course_lib.training.fit` on
  :func:`course_lib.features.feature_loader`, or the probe
  :func:`course_lib.probes.linear_probe_accuracy`);
- scikit-learn's logistic regression (:func:`logistic_regression_accuracy`), the same model fitted
  by a second-order solver;
- k-nearest neighbours (:func:`knn_predict`), which trains nothing at all: it only stores the
  labelled vectors and lets the closest ones vote;
- a small MLP head (:func:`mlp_head_accuracy`): one hidden layer, to ask whether a non-linear
  head reads more from the same frozen features than a linear one.

The neighbour search is one ``torch.topk`` (:func:`course_lib.probes.nearest_neighbours`), so it
runs on the GPU with the features; the vote is written out rather than taken from scikit-learn's
``KNeighborsClassifier`` because that one breaks ties by class order, and the course's rule (the
class with the nearest neighbour wins a tie, so ``k=1`` is the nearest neighbour's class) is part
of what chapter 19.2 explains.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from course_lib.probes import nearest_neighbours

__all__ = ["knn_accuracy", "knn_predict", "logistic_regression_accuracy", "mlp_head_accuracy"]


def _check_features_and_labels(features: object, labels: object, name: str) -> None:
    if not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.ndim != 2:
        got = f"{features.dtype} shaped {tuple(features.shape)}" if isinstance(features, torch.Tensor) else type(features).__name__
        raise TypeError(f"{name}_features must be a float tensor shaped (N, D), got {got}; flatten or pool the features first.")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (len(features),):
        got = f"{labels.dtype} shaped {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(
            f"{name}_labels must be an int64 tensor with one class index per row of {name}_features "
            f"({len(features)}), got {got}. Convert with .long()."
        )
    # Checked here because a negative index would otherwise surface as an indexing error deep in knn_predict.
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{name}_labels must be class indices 0, 1, 2, ..., got {int(labels.min())}; map the classes to 0..C-1 first.")


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    *,
    k: int = 5,
    metric: str = "cosine",
) -> torch.Tensor:
    """Class of each query by a vote of its ``k`` nearest training examples: ``(Q,)`` int64 (19.2, 19.5).

    Neighbours are ranked by ``metric`` (``"cosine"``: direction of the feature vectors,
    ``"euclidean"``: distance). Every neighbour casts one vote for its class; when classes tie,
    the one whose best-ranked neighbour is nearest wins (so ``k=1`` is the nearest neighbour's
    class). Nothing is trained: the labelled feature vectors *are* the model.
    """
    _check_features_and_labels(train_features, train_labels, "train")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(train_features):
        raise ValueError(f"k must be an int between 1 and the number of training examples ({len(train_features)}), got {k!r}.")
    neighbours = nearest_neighbours(query_features, train_features, k=k, metric=metric)  # (Q, k), nearest first
    neighbour_labels = train_labels.to(neighbours.device)[neighbours]
    num_classes = int(train_labels.max()) + 1
    votes = torch.zeros(len(neighbours), num_classes, device=neighbours.device)
    votes.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels, dtype=votes.dtype))
    # Tie-break: a bonus below one vote, larger for classes with a nearer neighbour.
    closeness = (k - torch.arange(k, device=votes.device, dtype=votes.dtype)) / (k + 1)
    bonus = torch.zeros_like(votes).scatter_reduce_(1, neighbour_labels, closeness.expand_as(neighbour_labels), reduce="amax")
    return (votes + bonus).argmax(dim=1)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 5,
    metric: str = "cosine",
) -> float:
    """Fraction of test examples that :func:`knn_predict` classifies correctly (19.2, 19.5)."""
    _check_features_and_labels(test_features, test_labels, "test")
    predictions = knn_predict(train_features, train_labels, test_features, k=k, metric=metric)
    return float((predictions.cpu() == test_labels.cpu()).double().mean())


def logistic_regression_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of scikit-learn's logistic regression on standardised features (19.2).

    The same model as a linear head trained with cross-entropy, fitted by scikit-learn's L-BFGS
    solver: a check on the PyTorch head. ``C`` is the inverse strength of the L2 penalty (smaller
    means stronger). The scaler learns the mean and spread of the *training* features only.
    """
    _check_features_and_labels(train_features, train_labels, "train")
    _check_features_and_labels(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train_features have {train_features.shape[1]} dimensions but test_features {test_features.shape[1]}: "
            "extract both from the same layer of the same model."
        )
    classes = torch.unique(train_labels).tolist()
    if len(classes) < 2:
        raise ValueError(
            f"logistic regression needs training examples of at least two classes, got classes {classes}. "
            "Draw examples of every class, e.g. with course_lib.data.sample_per_class."
        )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    classifier.fit(_numpy(train_features), _numpy(train_labels))
    return float(np.mean(classifier.predict(_numpy(test_features)) == _numpy(test_labels)))


def mlp_head_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    hidden: int = 256,
    steps: int = 500,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Test accuracy of a one-hidden-layer MLP head trained on standardised frozen features (19.2).

    ``Linear(D, hidden) -> ReLU -> Linear(hidden, C)``, initialised from ``seed``, trained with
    Adam (``lr``) on the cross-entropy plus an L2 penalty ``weight_decay`` on all weights, in
    ``steps`` full-batch steps. The features are standardised with the *training* set's mean and
    spread, as for the linear probe. Unlike the linear head this loss is not convex: the result
    depends on the initialisation, so compare over several seeds. The global random state is
    not touched (the initialisation uses its own generator).
    """
    _check_features_and_labels(train_features, train_labels, "train")
    _check_features_and_labels(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train_features have {train_features.shape[1]} dimensions but test_features "
            f"{test_features.shape[1]}: extract both from the same layer of the same model."
        )
    for name, value in (("hidden", hidden), ("steps", steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if not lr > 0 or not weight_decay >= 0:
        raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}.")
    train_x, test_x = train_features.float().cpu(), test_features.float().cpu()
    mean, std = train_x.mean(dim=0), train_x.std(dim=0, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    labels = train_labels.cpu()
    num_classes = int(max(int(labels.max()), int(test_labels.max()))) + 1
    generator = torch.Generator().manual_seed(seed)

    def layer(fan_in: int, fan_out: int) -> list[torch.Tensor]:
        bound = 1.0 / fan_in ** 0.5  # nn.Linear's default initialisation, from our own generator
        weight = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
        return [weight.requires_grad_(), bias.requires_grad_()]

    w1, b1 = layer(train_x.shape[1], hidden)
    w2, b2 = layer(hidden, num_classes)
    optimizer = torch.optim.Adam([{"params": [w1, w2], "weight_decay": weight_decay}, {"params": [b1, b2]}], lr=lr)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, w1, b1)), w2, b2)

    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(logits(train_x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        predictions = logits(test_x).argmax(dim=1)
    return float((predictions == test_labels.cpu()).double().mean())


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()

