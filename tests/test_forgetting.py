"""Tests for course_lib.forgetting: the accuracy matrix of a task sequence and what it says."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.forgetting import average_accuracy, backward_transfer, forgetting, forward_transfer


# The accuracy matrix

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
