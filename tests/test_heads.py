"""Tests for course_lib.heads: k-nearest neighbours and logistic regression on frozen features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from course_lib.heads import knn_accuracy, knn_predict, logistic_regression_accuracy


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def blobs(n_per_class: int, num_classes: int = 4, dim: int = 8, spread: float = 0.5, seed: int = 0):
    """Gaussian clusters around well-separated centres: separable features with labels."""
    centres = 4 * torch.eye(num_classes, dim)
    labels = torch.arange(num_classes).repeat(n_per_class)
    return centres[labels] + spread * randn(len(labels), dim, seed=seed), labels


def on_a_line(*positions: float) -> torch.Tensor:
    """Points on the x axis of the plane: their Euclidean distance to the origin is their position."""
    return torch.tensor([[p, 0.0] for p in positions])


# ---------------------------------------------------------------------------------------------
# knn_predict


def test_k1_returns_the_nearest_neighbours_class():
    train, query = randn(30, 5, seed=0), randn(12, 5, seed=1)
    labels = torch.arange(30) % 4
    for metric, nearest in [
        ("euclidean", torch.cdist(query, train).argmin(dim=1)),
        ("cosine", (torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(train, dim=1).T).argmax(dim=1)),
    ]:
        predictions = knn_predict(train, labels, query, k=1, metric=metric)
        assert predictions.dtype == torch.int64 and predictions.shape == (12,)
        assert torch.equal(predictions, labels[nearest]), metric


def test_the_majority_wins_even_when_the_nearest_neighbour_disagrees():
    train, labels = on_a_line(1, 2, 3), torch.tensor([1, 0, 0])
    assert knn_predict(train, labels, on_a_line(0), k=3, metric="euclidean").tolist() == [0]


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([1, 0, 0, 1], 1),  # 2-2 tie: class 1 has the nearest neighbour (argmax alone would say 0)
        ([0, 1, 1, 0], 0),
        ([2, 1, 1, 2], 2),
        ([3, 1, 2, 3, 2], 3),  # 2-2 tie between 2 and 3 (1 has one vote): 3's best neighbour is nearer
    ],
)
def test_a_tie_goes_to_the_class_with_the_nearest_neighbour(labels, expected):
    train = on_a_line(*range(1, len(labels) + 1))  # the i-th example is the i-th nearest to the origin
    assert knn_predict(train, torch.tensor(labels), on_a_line(0), k=len(labels), metric="euclidean").tolist() == [expected]


def test_cosine_and_euclidean_can_disagree():
    # The query points the same way as the far example (class 0) but lies closest to the other (class 1).
    train, labels, query = torch.tensor([[3.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([[1.0, 1.0]])
    assert knn_predict(train, labels, query, k=1, metric="cosine").tolist() == [0]
    assert knn_predict(train, labels, query, k=1, metric="euclidean").tolist() == [1]


def test_labels_above_the_classes_present_are_allowed():
    train, labels = on_a_line(1, 2, 3), torch.tensor([7, 7, 2])
    assert knn_predict(train, labels, on_a_line(0, 3.1), k=1, metric="euclidean").tolist() == [7, 2]


# ---------------------------------------------------------------------------------------------
# knn_accuracy


def test_knn_accuracy_is_perfect_on_separable_clusters():
    train_features, train_labels = blobs(20, seed=0)
    test_features, test_labels = blobs(10, seed=1)
    for metric in ("cosine", "euclidean"):
        for k in (1, 5):
            accuracy = knn_accuracy(train_features, train_labels, test_features, test_labels, k=k, metric=metric)
            assert isinstance(accuracy, float) and accuracy == 1.0, (metric, k)


def test_knn_accuracy_is_near_chance_on_random_labels():
    generator = torch.Generator().manual_seed(0)
    train_labels = torch.randint(0, 4, (400,), generator=generator)
    test_labels = torch.randint(0, 4, (400,), generator=generator)
    accuracy = knn_accuracy(randn(400, 8, seed=1), train_labels, randn(400, 8, seed=2), test_labels, k=5)
    assert 0.15 < accuracy < 0.35  # chance is 0.25


def test_knn_accuracy_counts_the_right_fraction():
    train, labels = on_a_line(1, 2, 3, 4), torch.tensor([0, 0, 1, 1])
    query = on_a_line(1.1, 1.9, 3.2, 3.9)
    assert knn_accuracy(train, labels, query, torch.tensor([0, 1, 1, 0]), k=1, metric="euclidean") == 0.5


# ---------------------------------------------------------------------------------------------
# logistic_regression_accuracy


def test_logistic_regression_is_accurate_on_separable_clusters():
    train_features, train_labels = blobs(20, seed=0)
    test_features, test_labels = blobs(10, seed=1)
    accuracy = logistic_regression_accuracy(train_features, train_labels, test_features, test_labels)
    assert isinstance(accuracy, float) and accuracy == 1.0


def test_logistic_regression_standardises_with_the_training_statistics_only():
    # Training classes at -1 and +1; every test example of class 1 sits at +3. Standardised with the
    # training statistics they are all clearly class 1; standardised with their own statistics
    # (the leak) they would be centred on 0, right on the decision boundary, and half would flip.
    train_labels = torch.tensor([0, 1]).repeat(20)
    train_features = (2.0 * train_labels - 1).unsqueeze(1) + 0.1 * randn(40, 1, seed=0)
    test_features = 3.0 + 0.1 * randn(40, 1, seed=1)
    test_labels = torch.ones(40, dtype=torch.long)

    assert logistic_regression_accuracy(train_features, train_labels, test_features, test_labels) == 1.0

    # The leak this guards against really gives another answer on this data.
    own = lambda x: (x - x.mean(0)) / x.std(0)
    leaky = LogisticRegression().fit(own(train_features).numpy(), train_labels.numpy())
    assert np.mean(leaky.predict(own(test_features).numpy()) == 1) < 0.8


# ---------------------------------------------------------------------------------------------
# bad inputs


FEATURES, LABELS = blobs(5, seed=0)  # 20 examples of 4 classes, 8 dimensions


@pytest.mark.parametrize(
    "train_features, train_labels, test_features, test_labels, error, message",
    [
        (FEATURES, LABELS.float(), FEATURES, LABELS, TypeError, r"train_labels must be an int64.*\.long\(\)"),
        (FEATURES, LABELS, FEATURES, LABELS.float(), TypeError, r"test_labels must be an int64.*\.long\(\)"),
        (FEATURES, LABELS[:-1], FEATURES, LABELS, TypeError, r"one class index per row of train_features \(20\)"),
        (FEATURES[:, 0], LABELS, FEATURES, LABELS, TypeError, r"train_features must be a float tensor shaped \(N, D\)"),
        (FEATURES, LABELS, FEATURES[:, 0], LABELS, TypeError, r"test_features must be a float tensor shaped \(N, D\)"),
        (FEATURES.long(), LABELS, FEATURES, LABELS, TypeError, "train_features must be a float tensor"),
        (FEATURES.numpy(), LABELS, FEATURES, LABELS, TypeError, "got ndarray"),
        (FEATURES, LABELS - 1, FEATURES, LABELS, ValueError, r"class indices 0, 1, 2.*got -1"),
    ],
)
@pytest.mark.parametrize("function", [knn_accuracy, logistic_regression_accuracy])
def test_bad_features_and_labels_are_explained(function, train_features, train_labels, test_features, test_labels, error, message):
    with pytest.raises(error, match=message):
        function(train_features, train_labels, test_features, test_labels)


def test_dimension_mismatch_is_explained():
    with pytest.raises(ValueError, match="same layer"):
        knn_accuracy(FEATURES, LABELS, FEATURES[:, :5], LABELS)
    with pytest.raises(ValueError, match=r"train_features have 8 dimensions but test_features 5.*same layer"):
        logistic_regression_accuracy(FEATURES, LABELS, FEATURES[:, :5], LABELS)


def test_logistic_regression_needs_two_classes():
    with pytest.raises(ValueError, match=r"at least two classes, got classes \[2\].*sample_per_class"):
        logistic_regression_accuracy(FEATURES[:4], torch.full((4,), 2), FEATURES, LABELS)


def test_bad_k_and_metric_are_explained():
    with pytest.raises(ValueError, match=r"between 1 and the number of training examples \(20\), got 21"):
        knn_predict(FEATURES, LABELS, FEATURES, k=21)
    with pytest.raises(ValueError, match="got 0"):
        knn_predict(FEATURES, LABELS, FEATURES, k=0)
    with pytest.raises(ValueError, match="Unknown metric 'l2'"):
        knn_predict(FEATURES, LABELS, FEATURES, metric="l2")


def test_mlp_head_learns_a_non_linear_task_a_linear_probe_cannot():
    from course_lib.heads import mlp_head_accuracy
    from course_lib.probes import linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    def xor(count):
        x = torch.randn(count, 2, generator=g)
        return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    train_x, train_y = xor(400)
    test_x, test_y = xor(400)
    state = torch.random.get_rng_state()
    mlp = mlp_head_accuracy(train_x, train_y, test_x, test_y, hidden=32, steps=400, lr=1e-2)
    assert torch.equal(state, torch.random.get_rng_state()), "the MLP head must not touch the global random state"
    assert mlp > 0.9 and linear_probe_accuracy(train_x, train_y, test_x, test_y) < 0.7
    assert mlp == mlp_head_accuracy(train_x, train_y, test_x, test_y, hidden=32, steps=400, lr=1e-2)


def test_mlp_head_rejects_bad_settings():
    from course_lib.heads import mlp_head_accuracy

    x, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match="hidden"):
        mlp_head_accuracy(x, y, x, y, hidden=0)
    with pytest.raises(ValueError, match="dimensions"):
        mlp_head_accuracy(x, y, torch.randn(10, 5), y)
