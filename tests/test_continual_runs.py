"""Tests for course_lib.continual_runs: a task sequence trained with fit, its accuracy matrix, methods over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.continual import EWCStep, ReplayStep, Scenario
from course_lib.continual_data import ContinualTask
from course_lib.continual_runs import (
    BENCH_METHODS, PUBLISHED_CLASS_INCREMENTAL, MethodSummary, bench_split_mnist, compare_methods, make_step,
    split_mnist_mlp, summary_table, task_accuracy, train_sequence,
)

from fine_tuning_toys import one_thread  # noqa: F401 (an autouse fixture)

FAST = {"iterations": 40, "batch_size": 32, "lr": 0.01}


def blob_tasks(num_tasks: int = 3, per_class: int = 40, dim: int = 8, seed: int = 0) -> list[ContinualTask]:
    """A class-split sequence of Gaussian blobs: task t holds classes 2t and 2t+1, each around its own centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(2 * num_tasks, dim, generator=generator) * 2.5
    tasks = []
    for t in range(num_tasks):
        classes = (2 * t, 2 * t + 1)
        parts = []
        for n in (per_class, per_class // 2):
            labels = torch.tensor(classes).repeat(n)
            parts += [centres[labels] + torch.randn(len(labels), dim, generator=generator), labels]
        tasks.append(ContinualTask(f"task{t + 1}", t, classes, *parts))
    return tasks


def small_mlp(num_outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, num_outputs))


def test_naive_fine_tuning_forgets_and_joint_training_does_not():
    tasks = blob_tasks()
    naive = train_sequence(small_mlp, tasks, "naive", **FAST)
    joint = train_sequence(small_mlp, tasks, "joint", **FAST)
    for result in (naive, joint):
        R = result.accuracy_matrix
        assert R.shape == (3, 3) and np.isfinite(R).all() and ((0 <= R) & (R <= 1)).all()
        assert (R.diagonal() > 0.9).all() and result.seconds > 0
        assert np.allclose(np.triu(R, 1), 0)  # class-incremental: classes not yet trained are never predicted
    assert naive.backward_transfer < -0.5 and naive.forgetting > 0.5
    assert joint.backward_transfer > -0.1 and joint.average_accuracy > naive.average_accuracy + 0.4


def test_replay_and_the_frozen_nearest_mean_head_remember_and_ewc_is_a_step_too():
    tasks = blob_tasks()
    naive = train_sequence(small_mlp, tasks, "naive", **FAST)
    replay = train_sequence(small_mlp, tasks, "replay", buffer_size=60, **FAST)
    ewc = train_sequence(small_mlp, tasks, EWCStep(Scenario("class-incremental", 2), lambda_=10.0), **FAST)
    ncm = train_sequence(lambda _outputs: nn.Identity(), tasks, "ncm")
    assert replay.average_accuracy > naive.average_accuracy + 0.3
    assert ncm.average_accuracy > 0.9 and ncm.backward_transfer > -0.1
    assert ewc.method == "EWCStep" and ewc.accuracy_matrix.shape == (3, 3)


def test_in_the_task_incremental_scenario_the_nearest_mean_head_forgets_nothing_at_all():
    # Task-incremental NCM compares a task's examples with that task's own class means only, which later tasks
    # never change: every column of R stays at its first value.
    result = train_sequence(lambda _outputs: nn.Identity(), blob_tasks(), "ncm", scenario="task-incremental")
    R = result.accuracy_matrix
    for j in range(3):
        assert np.all(R[j:, j] == R[j, j])
    assert result.backward_transfer == 0.0


def test_each_scenario_builds_the_model_it_needs():
    tasks, outputs = blob_tasks(), []

    def factory(num_outputs: int) -> nn.Module:
        outputs.append(num_outputs)
        return small_mlp(num_outputs)

    for scenario in ("task-incremental", "domain-incremental", "class-incremental"):
        result = train_sequence(factory, tasks, "naive", scenario=scenario, **FAST)
        assert result.scenario == scenario
        if scenario == "task-incremental":  # chance is 1/2 per task, so even untrained tasks score something
            assert result.accuracy_matrix.min() > 0
    assert outputs == [6, 2, 6]


def test_runs_are_repeatable_and_seeds_differ():
    tasks = blob_tasks()
    first = train_sequence(small_mlp, tasks, "replay", buffer_size=30, seed=1, **FAST)
    again = train_sequence(small_mlp, tasks, "replay", buffer_size=30, seed=1, **FAST)
    other = train_sequence(small_mlp, tasks, "replay", buffer_size=30, seed=2, **FAST)
    assert np.array_equal(first.accuracy_matrix, again.accuracy_matrix)
    assert not np.array_equal(first.accuracy_matrix, other.accuracy_matrix)


def test_compare_methods_reports_mean_and_spread_over_seeds():
    summaries = compare_methods(small_mlp, blob_tasks(num_tasks=2), ("naive", "joint"), seeds=(0, 1, 2), **FAST)
    assert list(summaries) == ["naive", "joint"]
    for summary in summaries.values():
        assert isinstance(summary, MethodSummary) and len(summary.results) == 3
        assert summary.mean == pytest.approx(np.mean(summary.accuracies))
        assert summary.spread == pytest.approx(np.std(summary.accuracies, ddof=1)) and summary.seconds > 0
    one_seed = compare_methods(small_mlp, blob_tasks(num_tasks=2), ["naive"], seeds=[0], **FAST)
    assert one_seed["naive"].spread == 0.0
    table = summary_table(summaries, PUBLISHED_CLASS_INCREMENTAL)
    assert "naive" in table and "joint" in table and "98%" in table


def test_task_accuracy_scores_a_task_in_a_scenario():
    task = blob_tasks()[1]
    always_class_3 = nn.Linear(8, 6)
    with torch.no_grad():
        always_class_3.weight.zero_()
        always_class_3.bias.copy_(torch.tensor([0.0, 0, 0, 1, 0, 0]))
    assert task_accuracy(always_class_3, task, Scenario("class-incremental", 2)) == pytest.approx(0.5)
    assert task_accuracy(always_class_3, task, Scenario("task-incremental", 2)) == pytest.approx(0.5)
    assert task_accuracy(always_class_3, blob_tasks()[0], Scenario("class-incremental", 2)) == 0.0


def test_run_mistakes_get_clear_errors():
    tasks = blob_tasks()
    with pytest.raises(ValueError, match="Unknown method"):
        make_step("ewc++", Scenario("class-incremental", 2))
    with pytest.raises(ValueError, match="Unknown method"):
        train_sequence(small_mlp, tasks, "ewc++", **FAST)
    with pytest.raises(ValueError, match="Unknown scenario"):
        train_sequence(small_mlp, tasks, "naive", scenario="class-IL")
    with pytest.raises(ValueError, match="the run's scenario"):
        train_sequence(small_mlp, tasks, ReplayStep(Scenario("task-incremental", 2), 10), **FAST)
    with pytest.raises(TypeError, match="model_factory"):
        train_sequence(small_mlp(6), tasks, "naive")
    with pytest.raises(TypeError, match="ContinualTask"):
        train_sequence(small_mlp, [], "naive")
    with pytest.raises(TypeError, match="seeds"):
        compare_methods(small_mlp, tasks, ["naive"], seeds=0)
    with pytest.raises(TypeError, match="method options"):
        train_sequence(lambda _: nn.Identity(), tasks, "ncm", buffer_size=10)


def test_the_split_mnist_mlp_is_784_400_400():
    model = split_mnist_mlp(10)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [400, 400, 10]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow
def test_the_split_mnist_benchmark_runs_every_method_end_to_end(shared_data):
    # A handful of iterations a task: this checks the protocol's plumbing, not the accuracies.
    summaries = bench_split_mnist(seeds=(0,), root=shared_data, iterations=5, fisher_samples=500)
    assert list(summaries) == list(BENCH_METHODS)
    for summary in summaries.values():
        assert summary.results[0].accuracy_matrix.shape == (5, 5) and 0 <= summary.mean <= 1
