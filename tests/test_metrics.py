"""Tests for course_lib.metrics: accuracy, linear CKA, weight drift, old-task accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.activations import capture_activations
from course_lib.metrics import accuracy, cka_matrix, linear_cka
from course_lib.models import load_backbone, stage_names


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
