"""Tests for course_lib.representations: activations, linear CKA, linear probes, neighbours, curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.features import FeatureCache
from course_lib.models import load_backbone, stage_names
from course_lib.representations import (
    capture_activations,
    cka_matrix,
    linear_cka,
    linear_probe_accuracy,
    nearest_neighbours,
    transferability_curve,
)
from course_lib.world import ShapeWorld


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA written as in the paper, with HSIC and the centring matrix H (independent of the module's code)."""
    x, y = x.double().numpy(), y.double().numpy()
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    hsic = lambda k, l: np.trace(k @ h @ l @ h)
    k, l = x @ x.T, y @ y.T
    return float(hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l)))


def blobs(n_per_class: int, num_classes: int = 4, dim: int = 8, spread: float = 0.5, seed: int = 0):
    """Gaussian clusters around well-separated centres: linearly separable features with labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4 * torch.eye(num_classes, dim)
    labels = torch.arange(num_classes).repeat(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


class TwoStages(nn.Module):
    """A toy CNN with BatchNorm and an in-place ReLU right after the layer named `conv`."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.norm(self.relu(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


class SharedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(3, 3)

    def forward(self, x):
        return self.block(self.block(x))


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = nn.LSTM(3, 3, batch_first=True)

    def forward(self, x):
        return self.pair(x)[0]


def hook_count(model: nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


# ---------------------------------------------------------------------------------------------
# capture_activations


def test_capture_gives_each_stage_of_the_course_model_with_its_shape():
    torch.manual_seed(0)
    model = load_backbone("course-resnet", pretrained=False)
    images = randn(6, 3, 64, 64)
    acts = capture_activations(model, images, stage_names(model))
    assert list(acts) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    shapes = {name: tuple(a.shape) for name, a in acts.items()}
    assert shapes == {"stem": (6, 16, 32, 32), "stage1": (6, 16, 32, 32), "stage2": (6, 32, 16, 16),
                      "stage3": (6, 64, 8, 8), "stage4": (6, 128, 4, 4)}
    assert all(a.dtype == torch.float32 and not a.requires_grad for a in acts.values())
    with torch.no_grad():
        torch.testing.assert_close(acts["stage4"].mean(dim=(2, 3)), model.forward_features(images))


def test_capture_copies_before_an_in_place_relu_and_leaves_modes_and_statistics_alone():
    torch.manual_seed(0)
    model = TwoStages().train()
    model.head.eval()  # a layer deliberately left in eval mode must stay there afterwards
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = randn(4, 3, 8, 8)
    acts = capture_activations(model, images, ["conv", "norm"])
    with torch.no_grad():
        expected_conv = model.conv(images)
    torch.testing.assert_close(acts["conv"], expected_conv)  # negative values survive the in-place ReLU
    assert (acts["conv"] < 0).any()
    assert model.training and model.norm.training and not model.head.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=f"{key} changed")  # eval mode: no running-stat update
    assert hook_count(model) == 0


def test_hooks_are_removed_and_modes_restored_even_when_the_forward_pass_fails():
    model = load_backbone("course-resnet", pretrained=False).train()
    with pytest.raises(ValueError, match="RGB"):
        capture_activations(model, randn(2, 1, 64, 64), ["stage1"])
    assert hook_count(model) == 0
    assert model.training and model.stage1.training


def test_unknown_layer_lists_the_valid_names_and_suggests_one():
    model = load_backbone("course-resnet", pretrained=False)
    with pytest.raises(ValueError, match=r"no layer 'stage5'.*Did you mean.*'stage4'.*Valid names"):
        capture_activations(model, randn(2, 3, 64, 64), ["stage1", "stage5"])
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "images, layers, error, message",
    [
        ("not a tensor", ["conv"], TypeError, "tensor batch"),
        (torch.zeros(3), ["conv"], ValueError, "unsqueeze"),
        (torch.zeros(2, 3, 8, 8), "conv", TypeError, "list of layer names"),
        (torch.zeros(2, 3, 8, 8), [], ValueError, "empty"),
        (torch.zeros(2, 3, 8, 8), ["conv", "conv"], ValueError, "repeated"),
    ],
)
def test_capture_explains_bad_input(images, layers, error, message):
    with pytest.raises(error, match=message):
        capture_activations(TwoStages(), images, layers)


def test_capture_refuses_layers_without_a_single_tensor_output():
    with pytest.raises(RuntimeError, match="ran 2 times"):
        capture_activations(SharedTwice(), randn(2, 3), ["block"])
    lstm_model = ReturnsTuple()
    with pytest.raises(TypeError, match="not a tensor"):
        capture_activations(lstm_model, randn(2, 5, 3), ["pair"])
    assert hook_count(lstm_model) == 0
    with pytest.raises(TypeError, match="nn.Module"):
        capture_activations(lambda x: x, randn(2, 3), ["block"])


# ---------------------------------------------------------------------------------------------
# linear_cka


def test_cka_matches_the_hsic_formula_for_narrow_and_wide_features():
    x = randn(40, 5, seed=1)
    y = x @ randn(5, 7, seed=2) + 0.5 * randn(40, 7, seed=3)
    wide_x, wide_y = randn(30, 100, seed=4), randn(30, 80, seed=5)  # D > N: the Gram-matrix route
    wide_y[:, :50] += wide_x[:, :50]
    for a, b in ((x, y), (wide_x, wide_y)):
        assert linear_cka(a, b) == pytest.approx(reference_cka(a, b), abs=1e-10)
    assert 0.2 < linear_cka(wide_x, wide_y) < 0.95  # the wide pair is neither unrelated nor identical


def test_cka_of_a_representation_with_itself_is_one():
    x = randn(50, 12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x + 100.0, x) == pytest.approx(1.0, abs=1e-6)  # columns are centred first (float32 input)


def test_cka_is_invariant_to_rotations_and_isotropic_scaling():
    # float64 inputs, so that the transforms themselves add no float32 rounding to compare against
    x, y = randn(60, 10, seed=1).double(), randn(60, 6, seed=2).double() + randn(60, 10, seed=1)[:, :6].double()
    rotation, _ = torch.linalg.qr(randn(10, 10, seed=3).double())
    base = linear_cka(x, y)
    assert linear_cka(x @ rotation, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x @ rotation, x) == pytest.approx(1.0, abs=1e-10)


def test_cka_is_not_invariant_to_a_general_invertible_linear_map():
    x = randn(200, 10)
    stretch = torch.diag(torch.logspace(0, 2, 10))  # invertible, but stretches directions unequally
    assert linear_cka(x @ stretch, x) < 0.8
    assert torch.linalg.matrix_rank(stretch) == 10


def test_cka_is_symmetric_and_lies_between_zero_and_one():
    for seed in range(5):
        x = randn(30, 4 + seed, seed=seed)
        y = randn(30, 9, seed=seed + 10)
        y[:, :3] += seed * x[:, :3]
        value = linear_cka(x, y)
        assert 0.0 <= value <= 1.0
        assert linear_cka(y, x) == pytest.approx(value, abs=1e-12)


def test_cka_of_independent_features_is_near_zero_for_many_examples():
    assert linear_cka(randn(5000, 8, seed=1), randn(5000, 8, seed=2)) < 0.01
    assert linear_cka(randn(20, 8, seed=1), randn(20, 8, seed=2)) > 0.1  # small N has a positive bias


def test_cka_accepts_numpy_and_lower_precision_and_returns_a_float():
    x = randn(20, 3)
    value = linear_cka(x.numpy(), x.half())
    assert isinstance(value, float) and value == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "x, y, error, message",
    [
        (torch.zeros(10, 3), torch.zeros(9, 3), ValueError, "10 rows but y has 9"),
        (torch.ones(1, 3), torch.ones(1, 3), ValueError, "at least 2"),
        (torch.zeros(10), torch.zeros(10, 3), ValueError, "2-D"),
        (torch.zeros(10, 3, 2), torch.zeros(10, 3), ValueError, "flatten"),
        (torch.full((10, 3), float("nan")), torch.zeros(10, 3), ValueError, "NaN"),
        (randn(10, 3), torch.zeros(10, 3), ValueError, "zero variance"),
        (torch.ones(10, 3, dtype=torch.bool), torch.zeros(10, 3), TypeError, "real numbers"),
        ([[1.0, 2.0], [3.0, 4.0]], torch.zeros(2, 2), TypeError, "tensor or NumPy"),
    ],
)
def test_cka_explains_bad_input(x, y, error, message):
    with pytest.raises(error, match=message):
        linear_cka(x, y)


# ---------------------------------------------------------------------------------------------
# cka_matrix


def test_cka_matrix_compares_every_pair_of_layers():
    acts = {"a": randn(20, 4, 3, 3, seed=1), "b": randn(20, 6, seed=2), "c": randn(20, 2, 5, 5, seed=3)}
    acts["b"][:, :4] += acts["a"].mean(dim=(2, 3))
    matrix = cka_matrix(acts, acts)
    assert matrix.shape == (3, 3) and matrix.dtype == torch.float64
    torch.testing.assert_close(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(matrix, matrix.T)
    assert matrix[0, 1] == pytest.approx(linear_cka(acts["a"].flatten(1), acts["b"]), abs=1e-10)
    averaged = cka_matrix(acts, {"b": acts["b"]}, pool="avg")
    assert averaged.shape == (3, 1)
    assert averaged[0, 0] == pytest.approx(linear_cka(acts["a"].mean(dim=(2, 3)), acts["b"]), abs=1e-10)


def test_cka_matrix_of_the_pretrained_model_against_itself_has_ones_on_the_diagonal():
    model = load_backbone("course-resnet")
    acts = capture_activations(model, randn(16, 3, 64, 64), ["stage1", "stage4"])
    matrix = cka_matrix(acts, acts)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(2, dtype=torch.float64))
    assert 0 < matrix[0, 1] < 1


@pytest.mark.parametrize(
    "acts_a, acts_b, kwargs, error, message",
    [
        ({"a": torch.zeros(5, 2)}, {"b": torch.zeros(5, 2)}, {"pool": "max"}, ValueError, "Unknown pool"),
        ({}, {"b": randn(5, 2)}, {}, TypeError, "non-empty dict"),
        ([randn(5, 2)], {"b": randn(5, 2)}, {}, TypeError, "non-empty dict"),
        ({"a": randn(5)}, {"b": randn(5, 2)}, {}, ValueError, "batch dimension"),
        ({"a": randn(5, 2)}, {"b": randn(6, 2)}, {}, ValueError, "different numbers of examples"),
    ],
)
def test_cka_matrix_explains_bad_input(acts_a, acts_b, kwargs, error, message):
    with pytest.raises(error, match=message):
        cka_matrix(acts_a, acts_b, **kwargs)


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
