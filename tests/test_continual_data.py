"""Tests for course_lib.continual_data: the tensor batch iterator, Split MNIST (real files), the world's sequences."""

from __future__ import annotations

import pytest
import torch

from course_lib.continual import Scenario
from course_lib.continual_data import ContinualTask, TensorBatches, classes_per_task, split_mnist, world_tasks
from course_lib.training import evaluate, fit

from fine_tuning_toys import one_thread  # noqa: F401 (an autouse fixture)

# Examples per digit pair in MNIST's training and test files (0/1, 2/3, 4/5, 6/7, 8/9).
MNIST_TRAIN_PER_TASK = [5923 + 6742, 5958 + 6131, 5842 + 5421, 5918 + 6265, 5851 + 5949]
MNIST_TEST_PER_TASK = [980 + 1135, 1032 + 1010, 982 + 892, 958 + 1028, 974 + 1009]


def numbered(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose only feature is the row's index, and labels equal to it: a batch says which rows it holds."""
    return torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)


# ---------------------------------------------------------------------------------------------
# TensorBatches


def test_one_shuffled_pass_holds_every_example_once():
    inputs, labels = numbered(50)
    batches = list(TensorBatches(inputs, labels, batch_size=16, seed=0))
    assert len(batches) == len(TensorBatches(inputs, labels, batch_size=16)) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(50)) and seen.tolist() != list(range(50))
    assert all(torch.equal(x[:, 0].long(), y) for x, y in batches)  # rows stay paired


def test_without_shuffling_batches_are_the_rows_in_order():
    inputs, labels = numbered(10)
    batches = list(TensorBatches(inputs, labels, batch_size=4, shuffle=False))
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_fixed_budget_gives_full_batches_and_reshuffles_at_each_pass():
    inputs, labels = numbered(30)
    batches = TensorBatches(inputs, labels, batch_size=8, num_batches=20, seed=1)
    drawn = [y for _, y in batches]
    assert len(drawn) == len(batches) == 20 and all(len(y) == 8 for y in drawn)
    stream = torch.cat(drawn)
    for start in range(0, 150, 30):  # the stream is a run of permutations of the 30 rows
        assert sorted(stream[start:start + 30].tolist()) == list(range(30))
    assert not torch.equal(stream[:30], stream[30:60])
    tiny = TensorBatches(*numbered(3), batch_size=8, num_batches=2)  # fewer rows than a batch: still full
    assert [len(y) for _, y in tiny] == [8, 8]


def test_the_seed_fixes_the_batches():
    inputs, labels = numbered(40)
    first = [y for _, y in TensorBatches(inputs, labels, batch_size=10, num_batches=6, seed=3)]
    again = [y for _, y in TensorBatches(inputs, labels, batch_size=10, num_batches=6, seed=3)]
    other = [y for _, y in TensorBatches(inputs, labels, batch_size=10, num_batches=6, seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_fit_and_evaluate_accept_tensor_batches():
    inputs = torch.randn(64, 3)
    labels = (inputs[:, 0] > 0).long()
    model = torch.nn.Linear(3, 2)
    batches = TensorBatches(inputs, labels, batch_size=16, num_batches=40)
    history = fit(model, batches, epochs=1, lr=0.05, progress=False)
    assert len(history) == 1
    assert evaluate(model, TensorBatches(inputs, labels, batch_size=100, shuffle=False))["accuracy"] > 0.9


def test_tensor_batches_refuse_bad_inputs():
    inputs, labels = numbered(10)
    with pytest.raises(ValueError, match="int64"):
        TensorBatches(inputs, labels.float(), batch_size=4)
    with pytest.raises(ValueError, match="one per row"):
        TensorBatches(inputs, labels[:5], batch_size=4)
    with pytest.raises(TypeError, match="tensors"):
        TensorBatches(inputs.tolist(), labels, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(inputs, labels, batch_size=0)
    with pytest.raises(ValueError, match="num_batches"):
        TensorBatches(inputs, labels, batch_size=4, num_batches=0)


# ---------------------------------------------------------------------------------------------
# The labelling convention


def fake_task(t: int, classes: tuple[int, ...]) -> ContinualTask:
    labels = torch.tensor(classes)
    inputs = torch.zeros(len(labels), 2)
    return ContinualTask(f"task{t}", t, classes, inputs, labels, inputs, labels)


def test_classes_per_task_accepts_class_splits_and_domain_sequences_only():
    assert classes_per_task([fake_task(0, (0, 1)), fake_task(1, (2, 3))]) == 2
    assert classes_per_task([fake_task(0, (0, 1, 2)), fake_task(1, (0, 1, 2))]) == 3
    with pytest.raises(ValueError, match="Relabel"):
        classes_per_task([fake_task(0, (0, 1)), fake_task(1, (3, 2))])
    with pytest.raises(TypeError, match="ContinualTask"):
        classes_per_task([])


# ---------------------------------------------------------------------------------------------
# Split MNIST


def test_split_mnist_has_five_tasks_with_the_right_labels_in_every_scenario(shared_data):
    tasks = split_mnist(shared_data)
    assert [task.task_id for task in tasks] == [0, 1, 2, 3, 4]
    assert [task.classes for task in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [len(task.train_labels) for task in tasks] == MNIST_TRAIN_PER_TASK
    assert [len(task.test_labels) for task in tasks] == MNIST_TEST_PER_TASK
    for t, task in enumerate(tasks):
        for labels in (task.train_labels, task.test_labels):
            assert labels.dtype == torch.int64 and set(labels.unique().tolist()) == {2 * t, 2 * t + 1}
            assert torch.equal(Scenario("class-incremental", 2).targets(labels), labels)  # global 0-9
            for scenario in ("task-incremental", "domain-incremental"):
                assert set(Scenario(scenario, 2).targets(labels).unique().tolist()) == {0, 1}  # within the task
            assert (labels // 2 == task.task_id).all()  # what task-incremental learning is told
        assert task.train_inputs.shape == (len(task.train_labels), 784) and task.train_inputs.dtype == torch.float32
    pixels = torch.cat([task.train_inputs for task in tasks])
    assert abs(pixels.mean().item()) < 0.05 and abs(pixels.std().item() - 1) < 0.05  # normalised


def test_split_mnist_keeps_images_and_subsets_on_request(shared_data):
    tasks = split_mnist(shared_data, flatten=False, train_per_task=100, test_per_task=30, seed=1)
    assert all(task.train_inputs.shape == (100, 1, 28, 28) and len(task.test_labels) == 30 for task in tasks)
    again = split_mnist(shared_data, flatten=False, train_per_task=100, test_per_task=30, seed=1)
    other = split_mnist(shared_data, flatten=False, train_per_task=100, test_per_task=30, seed=2)
    assert torch.equal(tasks[2].train_inputs, again[2].train_inputs)
    assert not torch.equal(tasks[2].train_inputs, other[2].train_inputs)
    # Both digits of a task are there, in a random order.
    assert 20 < int((tasks[0].train_labels == 0).sum()) < 80


def test_missing_mnist_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        split_mnist(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "$COURSE_DATA_DIR/MNIST/raw" in message
    assert "train-images-idx3-ubyte" in message and "COURSE_DATA_DIR" in message and "world_tasks" in message


# ---------------------------------------------------------------------------------------------
# The course's world


def test_the_worlds_class_incremental_sequence_is_labelled_like_split_mnist():
    tasks = world_tasks("class-incremental", train_per_class=3, test_per_class=2, image_size=16, cache_dir=False)
    assert [task.classes for task in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert classes_per_task(tasks) == 2
    for task in tasks:
        assert task.train_inputs.shape == (6, 3, 16, 16) and task.test_inputs.shape == (4, 3, 16, 16)
        assert sorted(task.train_labels.tolist()) == sorted(list(task.classes) * 3)
    assert "heptagon" in tasks[0].name and not torch.equal(tasks[0].train_inputs[:4], tasks[0].test_inputs)


def test_the_worlds_domain_incremental_sequence_has_the_same_classes_in_every_domain():
    tasks = world_tasks("domain-incremental", train_per_class=2, test_per_class=1, image_size=16, flatten=True,
                        cache_dir=False)
    assert [task.name.split(": ")[1] for task in tasks] == ["studio", "phone", "sketch", "night"]
    assert classes_per_task(tasks) == 10
    for task in tasks:
        assert task.classes == tuple(range(10)) and task.train_inputs.shape == (20, 3 * 16 * 16)
    assert not torch.allclose(tasks[0].train_inputs, tasks[3].train_inputs)  # night is not studio


def test_world_tasks_refuse_unknown_sequences():
    with pytest.raises(ValueError, match="Unknown task sequence"):
        world_tasks("task-incremental")
    with pytest.raises(ValueError, match="train_per_class"):
        world_tasks(train_per_class=0)
