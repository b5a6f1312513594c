"""Tests for course_lib.probes: linear probes, nearest neighbours, the transferability curve."""

from __future__ import annotations

import pytest
import torch

from course_lib.feature_cache import FeatureCache
from course_lib.models import load_backbone
from course_lib.probes import linear_probe_accuracy, nearest_neighbours, transferability_curve
from course_lib.world import ShapeWorld


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def blobs(n_per_class: int, num_classes: int = 4, dim: int = 8, spread: float = 0.5, seed: int = 0):
    """Gaussian clusters around well-separated centres: linearly separable features with labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4 * torch.eye(num_classes, dim)
    labels = torch.arange(num_classes).repeat(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


# ---------------------------------------------------------------------------------------------
# linear_probe_accuracy


def test_probe_reads_separable_classes_but_not_random_labels():
    train_x, train_y = blobs(50, seed=1)
    test_x, test_y = blobs(50, seed=2)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) > 0.95
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    test_shuffled = test_y[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(1))]
    assert linear_probe_accuracy(train_x, shuffled, test_x, test_shuffled) < 0.45  # chance is 0.25


def test_probe_is_deterministic_for_a_seed_and_leaves_the_global_random_state_alone():
    train_x, train_y = blobs(30, spread=3.0, seed=1)
    test_x, test_y = blobs(30, spread=3.0, seed=2)
    state = torch.random.get_rng_state()
    full = [linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=20) for _ in range(2)]
    mini = [linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=5, batch_size=16, seed=3) for _ in range(2)]
    assert full[0] == full[1] and mini[0] == mini[1]
    assert torch.equal(torch.random.get_rng_state(), state)


def test_probe_standardises_with_training_statistics_only():
    train_x, train_y = blobs(40, num_classes=2, dim=2, seed=1)
    test_x, test_y = blobs(40, num_classes=2, dim=2, seed=2)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) > 0.95
    # Shifted test features: re-centring them with their own mean would hide the shift and score ~1.
    shift = torch.tensor([20.0, 0.0])  # across the class boundary: every test point now looks like class 0
    assert linear_probe_accuracy(train_x, train_y, test_x + shift, test_y) == pytest.approx(0.5)


def test_probe_handles_huge_scales_constant_columns_and_no_grad_callers():
    train_x, train_y = blobs(30, seed=1)
    test_x, test_y = blobs(30, seed=2)
    constant = torch.full((len(train_x), 1), 7.0)
    wide_train = torch.cat([1e6 * train_x + 1e7, constant], dim=1)
    wide_test = torch.cat([1e6 * test_x + 1e7, torch.full((len(test_x), 1), 7.0)], dim=1)
    with torch.no_grad():
        assert linear_probe_accuracy(wide_train, train_y, wide_test, test_y) > 0.95


GOOD_X, GOOD_Y = blobs(5, num_classes=2, dim=3)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((GOOD_X.long(), GOOD_Y, GOOD_X, GOOD_Y), {}, TypeError, "float tensor"),
        ((GOOD_X[:, :, None], GOOD_Y, GOOD_X, GOOD_Y), {}, ValueError, "2-D"),
        ((GOOD_X, GOOD_Y.float(), GOOD_X, GOOD_Y), {}, TypeError, "int64"),
        ((GOOD_X, GOOD_Y[:-1], GOOD_X, GOOD_Y), {}, ValueError, "match one to one"),
        ((GOOD_X, GOOD_Y, GOOD_X[:, :2], GOOD_Y), {}, ValueError, "same layer"),
        ((GOOD_X, GOOD_Y, GOOD_X * float("nan"), GOOD_Y), {}, ValueError, "NaN"),
        ((GOOD_X[:0], GOOD_Y[:0], GOOD_X, GOOD_Y), {}, ValueError, "empty"),
        ((GOOD_X, GOOD_Y - 1, GOOD_X, GOOD_Y), {}, ValueError, "class indices"),
        ((GOOD_X, torch.zeros_like(GOOD_Y), GOOD_X, GOOD_Y), {}, ValueError, r"classes \[1\] that never occur"),
        ((GOOD_X, GOOD_Y, GOOD_X, GOOD_Y), {"epochs": 0}, ValueError, "epochs"),
        ((GOOD_X, GOOD_Y, GOOD_X, GOOD_Y), {"lr": 0.0}, ValueError, "lr"),
        ((GOOD_X, GOOD_Y, GOOD_X, GOOD_Y), {"weight_decay": -1.0}, ValueError, "weight_decay"),
        ((GOOD_X, GOOD_Y, GOOD_X, GOOD_Y), {"batch_size": 0}, ValueError, "batch_size"),
        ((GOOD_X, GOOD_Y, GOOD_X, GOOD_Y), {"seed": -1}, ValueError, "seed"),
    ],
)
def test_probe_explains_bad_input(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        linear_probe_accuracy(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# nearest_neighbours


def test_nearest_neighbours_by_cosine_and_by_euclidean_distance():
    gallery = torch.tensor([[1.0, 0.0], [10.0, 0.5], [0.0, 1.0], [0.9, 0.9]])
    query = torch.tensor([[1.0, 0.1]])
    assert nearest_neighbours(query, gallery, k=2, metric="euclidean").tolist() == [[0, 3]]
    # By angle, the long vector [10, 0.5] points almost exactly where the query points.
    assert nearest_neighbours(query, gallery, k=2, metric="cosine").tolist() == [[1, 0]]


def test_each_query_taken_from_the_gallery_finds_itself_first():
    gallery = randn(30, 5)
    indices = nearest_neighbours(gallery[[4, 17]], gallery, k=3)
    assert indices.shape == (2, 3) and indices.dtype == torch.int64
    assert indices[:, 0].tolist() == [4, 17]


@pytest.mark.parametrize(
    "query, gallery, kwargs, error, message",
    [
        (randn(2, 3), randn(5, 3), {"k": 0}, ValueError, "k must be"),
        (randn(2, 3), randn(5, 3), {"k": 6}, ValueError, "gallery size 5"),
        (randn(2, 3), randn(5, 3), {"metric": "manhattan"}, ValueError, "Unknown metric"),
        (randn(2, 4), randn(5, 3), {}, ValueError, "same layer"),
        (randn(3), randn(5, 3), {}, ValueError, "2-D"),
    ],
)
def test_nearest_neighbours_explains_bad_input(query, gallery, kwargs, error, message):
    with pytest.raises(error, match=message):
        nearest_neighbours(query, gallery, **kwargs)


# ---------------------------------------------------------------------------------------------
# transferability_curve: the chapter's claim on the real shipped model


@pytest.fixture(scope="module")
def target_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    train = ShapeWorld("target", domain="studio", n_per_class=30, seed=0, cache_dir=folder, progress=False)
    test = ShapeWorld("target", domain="studio", n_per_class=20, seed=1, cache_dir=folder, progress=False)
    return train, test


@pytest.mark.slow
def test_pretrained_stage4_features_transfer_far_better_than_random_ones(target_data, tmp_path):
    # Measured when written: pretrained 0.995, random (torch seed 0) 0.17; chance is 0.10.
    train, test = target_data
    cache = FeatureCache(tmp_path / "features")
    pretrained = load_backbone("course-resnet")
    torch.manual_seed(0)
    random_init = load_backbone("course-resnet", pretrained=False)
    trained_curve = transferability_curve(pretrained, train, test, ["stage4"], cache=cache)
    random_curve = transferability_curve(random_init, train, test, ["stage4"], cache=cache)
    assert trained_curve["stage4"] > 0.9
    assert trained_curve["stage4"] > random_curve["stage4"] + 0.4
    assert len(list(cache.folder.glob("*.pt"))) == 4  # train and test features of two models
    assert transferability_curve(pretrained, train, test, ["stage4"], cache=cache) == trained_curve


@pytest.mark.slow
def test_curve_covers_every_stage_by_default(target_data):
    train, test = target_data
    curve = transferability_curve(load_backbone("course-resnet"), train, test, epochs=30)
    assert list(curve) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert all(0.0 <= accuracy <= 1.0 for accuracy in curve.values())
    assert curve["stage4"] > curve["stem"]  # later stages hold more linearly readable shape information


def test_curve_checks_layers_and_pool_before_extracting(target_data):
    train, test = target_data
    model = load_backbone("course-resnet")
    with pytest.raises(ValueError, match="no layer 'stage9'"):
        transferability_curve(model, train, test, ["stage1", "stage9"])
    with pytest.raises(ValueError, match="2-D features"):
        transferability_curve(model, train, test, ["stage1"], pool="none")


def test_without_a_penalty_separable_features_have_no_finite_minimiser_and_with_one_the_weights_settle():
    # Two well separated clusters: the plain cross-entropy keeps falling as W grows, so its weights
    # grow for as long as training runs; the L2 penalty gives a unique, finite minimiser.
    from course_lib.probes import _train_linear_classifier

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    features = torch.randn(40, 3, generator=g) + 4.0 * (2 * labels[:, None] - 1)

    def weight_norm(epochs, weight_decay):
        weight, _ = _train_linear_classifier(features, labels, epochs, 0.05, weight_decay, None, 0)
        return float(weight.norm())

    free = [weight_norm(epochs, 0.0) for epochs in (200, 800, 1600)]
    assert free[0] < free[1] < free[2] and free[2] > 1.1 * free[0], free  # still growing
    held_short, held_long = weight_norm(800, 0.05), weight_norm(1600, 0.05)
    assert abs(held_long - held_short) < 0.001 * held_short, (held_short, held_long)
    assert held_long < free[2]
