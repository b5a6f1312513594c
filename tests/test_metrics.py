"""Tests for course_lib.metrics: accuracy, box and mask IoU, confidence intervals, linear CKA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import jaccard_score

from course_lib.activations import capture_activations
from course_lib.metrics import (
    accuracy, box_iou, box_iou_matched, cka_matrix, linear_cka, mask_iou, mean_confidence_interval,
    smooth_energy_fraction,
)
from course_lib.models import load_backbone
from course_lib.world.render import boxes_from_masks


def random_boxes(n: int, size: int = 16, seed: int = 0, integer: bool = True) -> torch.Tensor:
    """``n`` valid (x0, y0, x1, y1) boxes inside a ``size`` x ``size`` image (some of them zero-area)."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(n, 2, 2, generator=generator) * size
    corners = corners.floor() if integer else corners
    low, high = corners.min(dim=1).values, corners.max(dim=1).values
    return torch.cat([low, high], dim=1)


def rasterise(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bool masks ``(N, size, size)`` covering pixel columns x0..x1-1 and rows y0..y1-1 of integer boxes."""
    ys, xs = torch.arange(size)[:, None], torch.arange(size)[None, :]
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def reference_box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two boxes with plain Python arithmetic, independent of the module's tensor code."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


# box_iou


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),  # overlap 1, union 4 + 4 - 1
        ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16),  # one inside the other
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),  # identical
        ([0, 0, 1, 1], [5, 5, 6, 6], 0.0),  # disjoint
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),  # touching along an edge: x1 is exclusive
        ([0, 0, 2, 1], [1, 0, 3, 1], 1 / 3),  # side by side, half overlapping
        ([0.5, 0.5, 1.5, 2.5], [1.0, 0.5, 2.0, 2.5], 1 / 3),  # sub-pixel coordinates
        ([1, 1, 1, 3], [1, 1, 1, 3], 0.0),  # two zero-area boxes: defined as 0
    ],
)
def test_box_iou_known_values(a, b, expected):
    assert box_iou(torch.tensor([a], dtype=torch.float32), torch.tensor([b])).item() == pytest.approx(expected)
    assert box_iou_matched(torch.tensor([b]), torch.tensor([a])).item() == pytest.approx(expected)  # symmetric


def test_box_iou_is_pairwise_and_matched_is_its_diagonal():
    a, b = random_boxes(5, seed=1, integer=False), random_boxes(7, seed=2, integer=False)
    pairwise = box_iou(a, b)
    assert pairwise.shape == (5, 7)
    expected = torch.tensor([[reference_box_iou(x, y) for y in b.tolist()] for x in a.tolist()])
    torch.testing.assert_close(pairwise, expected)
    torch.testing.assert_close(box_iou_matched(a, b[:5]), pairwise.diagonal())
    assert ((pairwise >= 0) & (pairwise <= 1)).all()


def test_box_iou_accepts_numpy_and_integer_boxes():
    iou = box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2]]))
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0]]))


def test_box_convention_matches_the_world_and_mask_iou():
    """Boxes follow boxes_from_masks (x1, y1 exclusive), so a box's IoU equals the IoU of its pixels."""
    size = 16
    a, b = random_boxes(200, size, seed=3), random_boxes(200, size, seed=4)
    a, b = a[_non_empty(a)], b[_non_empty(a)]
    masks_a, masks_b = rasterise(a, size), rasterise(b, size)
    np.testing.assert_array_equal(boxes_from_masks(masks_a.numpy()), a.numpy())
    torch.testing.assert_close(box_iou_matched(a, b), mask_iou(masks_a, masks_b))


def _non_empty(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def test_box_iou_gradients_are_finite_even_for_zero_area_boxes():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    box_iou_matched(pred, torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0]])).sum().backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize(
    "boxes, error, match",
    [
        (torch.zeros(4), ValueError, r"shape \(N, 4\)"),
        (torch.zeros(2, 5), ValueError, r"shape \(N, 4\)"),
        (torch.zeros(2, 4, dtype=torch.bool), TypeError, "pixel coordinates"),
        (torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), ValueError, "NaN"),
        (torch.tensor([[2.0, 0.0, 1.0, 1.0]]), ValueError, "x1 < x0"),
        (torch.tensor([[0.0, 3.0, 1.0, 1.0]]), ValueError, "y1 < y0"),
    ],
)
def test_box_iou_rejects_bad_boxes(boxes, error, match):
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(error, match=match):
        box_iou(boxes, good)
    with pytest.raises(error, match=match):
        box_iou_matched(good, boxes)


def test_box_iou_matched_needs_as_many_targets_as_predictions():
    with pytest.raises(ValueError, match="matched one to one"):
        box_iou_matched(random_boxes(3), random_boxes(2))


# mask_iou


def test_mask_iou_known_values_and_empty_masks():
    pred = torch.zeros(4, 2, 3, dtype=torch.bool)
    target = torch.zeros(4, 2, 3, dtype=torch.bool)
    pred[0, 0, :2], target[0, 0, 1:] = True, True  # 1 shared pixel of 3
    pred[1], target[1] = True, True  # identical
    pred[2, 0, 0], target[2, 1, 2] = True, True  # disjoint
    # mask 3: both empty
    torch.testing.assert_close(mask_iou(pred, target), torch.tensor([1 / 3, 1.0, 0.0, 1.0]))
    assert mask_iou(torch.zeros(1, 2, 2), torch.ones(1, 2, 2)).item() == 0.0  # empty prediction, full target


def test_mask_iou_accepts_bool_01_and_probabilities():
    target = torch.tensor([[[1, 1], [0, 0]]])
    probabilities = torch.tensor([[[0.9, 0.4], [0.6, 0.1]]])
    assert mask_iou(probabilities, target).item() == pytest.approx(1 / 3)  # > 0.5: pixels (0,0), (1,0)
    assert mask_iou(probabilities, target, threshold=0.3).item() == pytest.approx(2 / 3)
    assert mask_iou(target.bool(), target.float()).item() == 1.0
    assert mask_iou(target.numpy().astype(np.uint8), target).item() == 1.0


def test_mask_iou_matches_sklearn_jaccard():
    generator = torch.Generator().manual_seed(5)
    pred = torch.rand(20, 8, 8, generator=generator)
    target = torch.rand(20, 8, 8, generator=generator) > 0.6
    expected = [jaccard_score(t.flatten().numpy(), (p > 0.5).flatten().numpy(), zero_division=1.0)
                for p, t in zip(pred, target)]
    torch.testing.assert_close(mask_iou(pred, target), torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize(
    "pred, target, kwargs, match",
    [
        (torch.zeros(2, 2), torch.zeros(2, 2), {}, r"\(N, H, W\)"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 3, 2), {}, "same shape"),
        (torch.full((1, 2, 2), 3.0), torch.zeros(1, 2, 2), {}, "logits"),
        (torch.full((1, 2, 2), float("nan")), torch.zeros(1, 2, 2), {}, "NaN"),
        (torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5), {}, "only 0 and 1"),
        (torch.full((1, 2, 2), 2), torch.zeros(1, 2, 2), {}, "mask == k"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), {"threshold": 1.0}, "threshold"),
    ],
)
def test_mask_iou_rejects_bad_input(pred, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mask_iou(pred, target, **kwargs)


# mean_confidence_interval


def test_mean_confidence_interval_known_value():
    # mean 3, sample std sqrt(2.5), t(0.975, df=4) = 2.776 from a t table: 2.776 * sqrt(2.5) / sqrt(5) = 1.963
    mean, half_width = mean_confidence_interval([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert half_width == pytest.approx(2.776 * math.sqrt(2.5 / 5), abs=1e-3)


def test_mean_confidence_interval_matches_scipy_and_widens_with_confidence():
    values = torch.from_numpy(np.random.default_rng(0).normal(0.6, 0.1, size=30))
    mean, half_width = mean_confidence_interval(values, confidence=0.9)
    low, high = stats.t.interval(0.9, len(values) - 1, loc=values.mean().item(), scale=stats.sem(values.numpy()))
    assert (mean - half_width, mean + half_width) == pytest.approx((low, high))
    assert mean_confidence_interval(values, 0.99)[1] > half_width > mean_confidence_interval(values, 0.5)[1]
    assert mean_confidence_interval([0.5, 0.5, 0.5]) == (0.5, 0.0)


@pytest.mark.parametrize(
    "values, confidence, match",
    [
        ([0.5], 0.95, "at least 2"),
        ([], 0.95, "at least 2"),
        ([[0.5, 0.6], [0.7, 0.8]], 0.95, "1-D"),
        ([0.5, float("nan")], 0.95, "NaN"),
        ([0.5, 0.6], 1.0, "strictly between 0 and 1"),
        ([0.5, 0.6], 95, "strictly between 0 and 1"),
    ],
)
def test_mean_confidence_interval_rejects_bad_input(values, confidence, match):
    with pytest.raises(ValueError, match=match):
        mean_confidence_interval(values, confidence)


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


# ---------------------------------------------------------------------------------------------
# accuracy


def test_accuracy_counts_top_logits_and_soft_labels():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 4.0]])
    assert accuracy(logits, torch.tensor([0, 1, 2, 2])) == pytest.approx(0.75)
    soft = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.1, 0.1, 0.8]])
    assert accuracy(logits, soft) == pytest.approx(0.75), "soft labels count as their top class"
    with pytest.raises(ValueError, match=r"one class per row of logits \(4\)"):
        accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shaped \(N, classes\)"):
        accuracy(logits[0], torch.tensor([0]))



def test_cka_of_independent_features_grows_with_width_over_examples():
    # The expected CKA of independent features is about D / (N + D) for equal widths D: small
    # only while D << N. The docstring's estimate is checked against a measurement.
    g = torch.Generator().manual_seed(0)
    n = 256
    for d in (16, 512):
        values = [linear_cka(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)) for _ in range(4)]
        estimate = math.sqrt(d * d / ((n + d) * (n + d)))
        assert np.mean(values) == pytest.approx(estimate, abs=0.03)
    narrow = linear_cka(torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g))
    wide = linear_cka(torch.randn(n, 512, generator=g), torch.randn(n, 512, generator=g))
    assert narrow < 0.1 and wide > 0.6  # unrelated, yet "similar" when the features are wide


def test_smooth_energy_fraction_known_values():
    constant = torch.ones(4, 3, 3, 3)
    assert smooth_energy_fraction(constant) == pytest.approx(1.0)
    ramp = torch.arange(5.0)[None, :].expand(5, 5) - 2.0
    assert smooth_energy_fraction(ramp.reshape(1, 1, 5, 5)) == pytest.approx(1.0)
    checker = (torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])).reshape(1, 1, 3, 3)
    assert smooth_energy_fraction(checker) == pytest.approx(1 / 81)  # only its mean (1/9) is smooth


def test_smooth_energy_fraction_of_random_weights_is_three_over_k_squared():
    g = torch.Generator().manual_seed(1)
    for k in (3, 5):
        weight = torch.randn(64, 16, k, k, generator=g)
        assert smooth_energy_fraction(weight) == pytest.approx(3 / k**2, abs=0.02)


def test_smooth_energy_fraction_pools_kernels_by_energy():
    smooth = torch.ones(1, 1, 3, 3)
    checker = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    rough = (checker - checker.mean()).reshape(1, 1, 3, 3)  # no smooth part at all
    assert smooth_energy_fraction(rough) == pytest.approx(0.0, abs=1e-12)
    value = smooth_energy_fraction(torch.cat([smooth, 10 * rough]))
    assert value < 0.2  # the large rough kernel dominates; a plain mean of per-kernel shares gives ~0.5


@pytest.mark.parametrize("weight, match", [
    (torch.ones(3, 3), "C_out, C_in, k, k"),
    (torch.ones(2, 3, 3, 5), "square"),
    (torch.ones(2, 3, 1, 1), "k >= 2"),
    (torch.zeros(2, 3, 3, 3), "all zeros"),
])
def test_smooth_energy_fraction_rejects_bad_input(weight, match):
    with pytest.raises(ValueError, match=match):
        smooth_energy_fraction(weight)
