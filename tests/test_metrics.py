"""Tests for course_lib.metrics: box and mask IoU, continual-learning metrics, confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import jaccard_score

from course_lib.metrics import (
    average_accuracy, backward_transfer, box_iou, box_iou_matched, forgetting, forward_transfer, mask_iou,
    mean_confidence_interval,
)
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


# Continual learning

# R[i, j] = accuracy on task j after training on task i. Task 0's accuracy rises after task 1 (0.95),
# so forgetting (from the best earlier value) and -BWT (from the value right after training) differ.
R = [
    [0.90, 0.20, 0.10],
    [0.95, 0.80, 0.30],
    [0.60, 0.60, 0.95],
]
BASELINE = [0.10, 0.15, 0.05]


def test_continual_metrics_on_a_hand_made_matrix():
    assert average_accuracy(R) == pytest.approx((0.60 + 0.60 + 0.95) / 3)
    assert backward_transfer(R) == pytest.approx(((0.60 - 0.90) + (0.60 - 0.80)) / 2)  # -0.25
    assert forward_transfer(R, BASELINE) == pytest.approx(((0.20 - 0.15) + (0.30 - 0.05)) / 2)  # 0.15
    assert forgetting(R) == pytest.approx(((0.95 - 0.60) + (0.80 - 0.60)) / 2)  # 0.275


def test_continual_metrics_with_two_tasks_and_no_forgetting():
    perfect = np.array([[1.0, 0.5], [1.0, 1.0]])
    assert average_accuracy(perfect) == 1.0
    assert backward_transfer(perfect) == 0.0
    assert forgetting(perfect) == 0.0
    assert forward_transfer(perfect, [0.5, 0.5]) == 0.0


def reference_continual(R: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """The four metrics written as loops straight from the papers' formulas."""
    T = len(R)
    acc = sum(R[T - 1, j] for j in range(T)) / T
    bwt = sum(R[T - 1, j] - R[j, j] for j in range(T - 1)) / (T - 1)
    fwt = sum(R[j - 1, j] - b[j] for j in range(1, T)) / (T - 1)
    f = sum(max(R[l, j] for l in range(T - 1)) - R[T - 1, j] for j in range(T - 1)) / (T - 1)  # noqa: E741
    return acc, bwt, fwt, f


@pytest.mark.parametrize("T", [2, 3, 6])
def test_continual_metrics_match_loops_on_random_matrices(T):
    rng = np.random.default_rng(T)
    R_random, b = rng.uniform(size=(T, T)), rng.uniform(size=T)
    got = (average_accuracy(R_random), backward_transfer(R_random), forward_transfer(R_random, b),
           forgetting(R_random))
    assert got == pytest.approx(reference_continual(R_random, b))
    assert forgetting(R_random) >= -backward_transfer(R_random) - 1e-12


def test_continual_metrics_ignore_unused_nan_and_name_used_ones():
    partial = np.array(R)
    partial[1, 2] = np.nan  # task 2 not evaluated after task 1: only forward transfer needs it
    assert average_accuracy(partial) == pytest.approx(2.15 / 3)
    assert backward_transfer(partial) == pytest.approx(-0.25)
    assert forgetting(partial) == pytest.approx(0.275)
    with pytest.raises(ValueError, match=r"R\[1, 2\].*evaluate task 2 after training task 1"):
        forward_transfer(partial, BASELINE)
    partial[1, 2], partial[0, 1] = 0.3, np.nan  # the paper's maximum runs over every earlier row
    assert backward_transfer(partial) == pytest.approx(-0.25)
    with pytest.raises(ValueError, match=r"R\[0, 1\]"):
        forgetting(partial)


@pytest.mark.parametrize("metric", [average_accuracy, backward_transfer, forgetting,
                                    lambda R: forward_transfer(R, [0.0] * len(R))])
def test_continual_metrics_reject_non_square_matrices(metric):
    with pytest.raises(ValueError, match=r"square \(T, T\)"):
        metric(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"square \(T, T\)"):
        metric(np.zeros(3))
    with pytest.raises(ValueError, match=r"\(T, T\) matrix of accuracies"):
        metric([[0.5, 0.5], [0.5]])  # a ragged list of rows


@pytest.mark.parametrize("metric", [backward_transfer, forgetting, lambda R: forward_transfer(R, [0.0])])
def test_transfer_metrics_need_two_tasks(metric):
    assert average_accuracy([[0.7]]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        metric([[0.7]])


def test_forward_transfer_checks_the_baseline():
    with pytest.raises(ValueError, match="3 finite accuracies"):
        forward_transfer(R, [0.1, 0.1])
    with pytest.raises(ValueError, match="3 finite accuracies"):
        forward_transfer(R, [0.1, float("nan"), 0.1])


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
