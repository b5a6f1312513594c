"""Tests for course_lib.experiments: data-efficiency curves and the from-scratch baseline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from course_lib.data import sample_per_class
from course_lib.experiments import (
    compare_with_rule, data_efficiency_curve, fine_tune_copy, rule_of_thumb, scratch_accuracy, scratch_epochs,
)
from course_lib.callbacks import LambdaCallback
from course_lib.forgetting import weight_drift
from course_lib.models import get_head, replace_head

from fine_tuning_toys import images_loader, one_thread, tiny_resnet  # noqa: F401 (one_thread is an autouse fixture)
from toy import NUM_CLASSES, colour_images

# 3 classes with 10, 7 and 5 examples, interleaved as in a real dataset.
LABELS = torch.tensor([0, 1, 2] * 5 + [0, 1] * 2 + [0] * 3)


# ---------------------------------------------------------------------------------------------
# data_efficiency_curve


class Recorder:
    """A stand-in method: records the indices and seed it was given, returns a value that encodes them."""

    def __init__(self, offset: float = 0.0):
        self.offset, self.calls = offset, []

    def __call__(self, indices: torch.Tensor, seed: int) -> float:
        self.calls.append((len(indices) // 3, seed, indices.tolist()))
        return self.offset + len(indices) + seed / 10


def test_curve_has_one_row_per_size_and_one_column_per_seed():
    a, b = Recorder(), Recorder(offset=100)
    results = data_efficiency_curve({"a": a, "b": b}, LABELS, shots=[1, 4, 2], seeds=3, progress=False)
    assert set(results) == {"a", "b"}
    assert results["a"].shape == (3, 3) and results["a"].dtype == np.float64
    expected = np.array([[3 * n + seed / 10 for seed in range(3)] for n in (1, 4, 2)])
    np.testing.assert_allclose(results["a"], expected)
    np.testing.assert_allclose(results["b"], expected + 100)


def test_every_method_sees_the_same_draw_for_each_size_and_seed():
    a, b = Recorder(), Recorder()
    data_efficiency_curve({"a": a, "b": b}, LABELS, shots=[2, 5], seeds=2, progress=False)
    assert a.calls == b.calls
    assert [(n, seed) for n, seed, _ in a.calls] == [(2, 0), (2, 1), (5, 0), (5, 1)]
    for n, seed, indices in a.calls:
        assert indices == sample_per_class(LABELS, n, seed=seed).tolist()
    assert a.calls[0][2] != a.calls[1][2]  # the seeds draw different examples


def test_a_method_that_edits_its_indices_does_not_change_the_next_methods():
    def shuffles_in_place(indices: torch.Tensor, seed: int) -> float:
        indices.copy_(indices.flip(0))
        indices[0] = -1
        return 0.0

    recorder = Recorder()
    data_efficiency_curve({"shuffles": shuffles_in_place, "recorder": recorder}, LABELS, shots=[3], seeds=2, progress=False)
    for n, seed, indices in recorder.calls:
        assert indices == sample_per_class(LABELS, n, seed=seed).tolist()


def test_curve_accepts_numpy_shots():
    results = data_efficiency_curve({"a": Recorder()}, LABELS, shots=np.arange(1, 4), seeds=np.int64(1), progress=False)
    assert results["a"].shape == (3, 1)


def test_a_size_too_large_for_a_class_fails_before_any_method_runs():
    recorder = Recorder()
    with pytest.raises(ValueError, match="class 2 has 5"):
        data_efficiency_curve({"a": recorder}, LABELS, shots=[1, 2, 6], seeds=2, progress=False)
    assert recorder.calls == []


@pytest.mark.parametrize(
    "methods, shots, seeds, message",
    [
        ({}, [1], 1, "methods is empty"),
        ({"a": Recorder()}, [], 1, "shots must be positive ints"),
        ({"a": Recorder()}, [1, 0], 1, "shots must be positive ints"),
        ({"a": Recorder()}, [1.5], 1, "shots must be positive ints"),
        ({"a": Recorder()}, [True], 1, "shots must be positive ints"),
        ({"a": Recorder()}, [1], 0, "seeds must be a positive int"),
        ({"a": Recorder()}, [1], 2.0, "seeds must be a positive int"),
        ({"a": Recorder()}, [1], True, "seeds must be a positive int"),
    ],
)
def test_curve_bad_arguments(methods, shots, seeds, message):
    with pytest.raises(ValueError, match=message):
        data_efficiency_curve(methods, LABELS, shots=shots, seeds=seeds, progress=False)


# ---------------------------------------------------------------------------------------------
# scratch_epochs


@pytest.mark.parametrize(
    "num_images, epochs",
    [(1, 80), (30, 80), (37, 80), (38, 79), (100, 30), (375, 8), (374, 9), (3000, 8), (10**6, 8)],
)
def test_scratch_epochs_sees_about_3000_images_within_the_bounds(num_images, epochs):
    assert scratch_epochs(num_images) == epochs


def test_scratch_epochs_custom_bounds():
    assert scratch_epochs(10, images_seen=100, min_epochs=2, max_epochs=5) == 5
    assert scratch_epochs(50, images_seen=100, min_epochs=2, max_epochs=5) == 2
    assert scratch_epochs(25, images_seen=100, min_epochs=2, max_epochs=5) == 4


@pytest.mark.parametrize("num_images", [0, -3, 2.5, True, "10"])
def test_scratch_epochs_rejects_non_counts(num_images):
    with pytest.raises(ValueError, match="num_images must be a positive int"):
        scratch_epochs(num_images)


# ---------------------------------------------------------------------------------------------
# scratch_accuracy


class TinyCNN(nn.Module):
    """A randomly initialised CNN small enough to train in a fraction of a second; records every instance."""

    built: list[TinyCNN] = []

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, NUM_CLASSES)
        self.initial = {name: tensor.clone() for name, tensor in self.state_dict().items()}
        TinyCNN.built.append(self)

    def forward(self, x):
        return self.head(self.body(x))


def run_scratch(seed: int, epochs: int | None = 4) -> tuple[float, TinyCNN]:
    TinyCNN.built.clear()
    accuracy = scratch_accuracy(TinyCNN, colour_images(48, seed=0), colour_images(30, seed=1), epochs=epochs, batch_size=16, seed=seed)
    (model,) = TinyCNN.built
    return accuracy, model


def test_scratch_accuracy_is_reproducible_for_a_seed():
    first_accuracy, first = run_scratch(seed=0)
    second_accuracy, second = run_scratch(seed=0)
    assert isinstance(first_accuracy, float) and 0.0 <= first_accuracy <= 1.0
    assert first_accuracy == second_accuracy
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name  # same initialisation, same batches, same result
    assert not torch.equal(first.head.weight, first.initial["head.weight"])  # it did train


def test_scratch_accuracy_seed_sets_the_initialisation():
    _, first = run_scratch(seed=0, epochs=1)
    _, other = run_scratch(seed=1, epochs=1)
    assert not torch.equal(first.initial["head.weight"], other.initial["head.weight"])


@pytest.mark.slow
def test_scratch_accuracy_learns_a_learnable_task_with_the_default_epochs():
    accuracy, _ = run_scratch(seed=0, epochs=None)  # scratch_epochs(48) = 63 epochs
    assert accuracy > 0.9


def test_scratch_accuracy_trains_on_a_subset():
    data = colour_images(60, seed=0)
    accuracy = scratch_accuracy(TinyCNN, Subset(data, list(range(9))), data, epochs=1, seed=0)
    assert 0.0 <= accuracy <= 1.0


def test_make_model_must_return_a_module():
    with pytest.raises(TypeError, match=r"make_model\(\) must return a torch\.nn\.Module, got NoneType.*return"):
        scratch_accuracy(lambda: None, colour_images(6, seed=0), colour_images(6, seed=1), epochs=1)


def test_passing_a_model_instead_of_a_function_is_explained():
    with pytest.raises(TypeError, match=r"make_model must be a function that builds a new model.*lambda"):
        scratch_accuracy(TinyCNN(), colour_images(6, seed=0), colour_images(6, seed=1), epochs=1)


def test_empty_training_data_is_explained():
    empty = TensorDataset(torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="train_data is empty"):
        scratch_accuracy(TinyCNN, empty, colour_images(6, seed=1), epochs=1)


# ---------------------------------------------------------------------------------------------
# fine_tune_copy, rule_of_thumb, compare_with_rule


def test_fine_tune_copy_trains_a_copy_on_a_fixed_budget_and_leaves_the_original():
    pretrained = tiny_resnet()
    before = copy.deepcopy(pretrained.state_dict())
    dataset = images_loader(n=12).dataset
    seen = []
    counter = LambdaCallback(on_batch_end=lambda state: seen.append(state.epoch))
    model, history = fine_tune_copy(pretrained, dataset, [0, 1, 2, 3], num_classes=5, seed=0, epochs=3,
                                    batches_per_epoch=4, batch_size=2, strategy="full", lr=1e-3, callbacks=[counter])
    assert model is not pretrained and get_head(model).out_features == 5
    assert all(torch.equal(before[k], v) for k, v in pretrained.state_dict().items()), "the pretrained model changed"
    assert len(history) == 3 and seen == [1] * 4 + [2] * 4 + [3] * 4, "3 epochs of exactly 4 batches, whatever the data size"
    assert weight_drift(model, pretrained)["stem"] > 0


def test_fine_tune_copy_is_reproducible_per_seed():
    pretrained, dataset = tiny_resnet(), images_loader(n=12).dataset
    runs = [fine_tune_copy(pretrained, dataset, torch.arange(6), num_classes=3, seed=seed, epochs=2, batches_per_epoch=2,
                           batch_size=3, strategy="linear probe", lr=1e-3)[0] for seed in (0, 0, 1)]
    assert torch.equal(get_head(runs[0]).weight, get_head(runs[1]).weight)
    assert not torch.equal(get_head(runs[0]).weight, get_head(runs[2]).weight)


def test_fine_tune_copy_starts_from_a_given_head_without_changing_it():
    pretrained, dataset = tiny_resnet(), images_loader(n=12).dataset
    start = nn.Linear(get_head(replace_head(tiny_resnet(), 3)).in_features, 3)
    before = copy.deepcopy(start.state_dict())
    model, _ = fine_tune_copy(pretrained, dataset, torch.arange(6), num_classes=3, seed=0, epochs=1,
                              batches_per_epoch=1, batch_size=3, strategy="linear probe", lr=1e-9, head=start)
    assert get_head(model) is not start and all(torch.equal(before[k], v) for k, v in start.state_dict().items())
    assert torch.allclose(get_head(model).weight, start.weight, atol=1e-6), "the run starts from the given head"
    with pytest.raises(ValueError, match="head must be a layer like the model's own head"):
        fine_tune_copy(pretrained, dataset, torch.arange(6), num_classes=3, seed=0, epochs=1, batches_per_epoch=1,
                       batch_size=3, strategy="full", lr=1e-3, head=nn.Linear(7, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batches_per_epoch=0), "positive ints"),
    (dict(batch_size=True), "positive ints"),
    (dict(indices=[]), "indices is empty"),
])
def test_fine_tune_copy_rejects_bad_budgets(kwargs, message):
    arguments = dict(indices=[0, 1], num_classes=3, seed=0, epochs=2, batches_per_epoch=1, batch_size=2,
                     strategy="full", lr=1e-3) | kwargs
    with pytest.raises(ValueError, match=message):
        fine_tune_copy(tiny_resnet(), images_loader().dataset, **arguments)


@pytest.mark.parametrize("images, expected", [(1, "linear probe"), (499, "linear probe"), (500, "partial"),
                                              (5000, "partial"), (5001, "full"), (10**6, "full")])
def test_rule_of_thumb_boundaries(images, expected):
    assert rule_of_thumb(images) == expected


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_rule_of_thumb_rejects_non_counts(bad):
    with pytest.raises(ValueError, match="positive int"):
        rule_of_thumb(bad)


def test_compare_with_rule_names_the_best_strategy_and_the_gap():
    accuracy = {  # sizes 10 and 100 per class, 2 seeds; 10 classes -> 100 and 1,000 images
        "probe": np.array([[0.50, 0.52], [0.60, 0.60]]),
        "partial": np.array([[0.40, 0.40], [0.59, 0.60]]),
        "full": np.array([[0.70, 0.72], [0.50, 0.50]]),
    }
    rows = compare_with_rule(accuracy, [10, 100], 10, {"linear probe": "probe", "partial": "partial", "full": "full"})
    assert [r["images"] for r in rows] == [100, 1000]
    small, large = rows
    assert (small["pick"], small["best"], small["held"]) == ("probe", "full", False)
    assert small["gap"] == pytest.approx(0.20) and small["pick_accuracy"] == pytest.approx(0.51)
    assert (large["pick"], large["best"], large["held"]) == ("partial", "probe", True)  # 0.5 points behind
    assert large["gap"] == pytest.approx(0.005)


def test_compare_with_rule_needs_the_rules_strategies():
    with pytest.raises(KeyError, match="not in accuracy's strategies"):
        compare_with_rule({"probe": np.zeros((1, 2))}, [100], 10, {"partial": "partial (last stage)"})


def test_scratch_curve_entry_e_is_scratch_accuracy_at_e_epochs():
    from course_lib.experiments import scratch_curve

    train, test = colour_images(48, seed=0), colour_images(30, seed=1)
    curve = scratch_curve(TinyCNN, train, test, epochs=3, batch_size=16, seed=2)
    assert len(curve) == 3 and all(0.0 <= value <= 1.0 for value in curve)
    for epochs in (1, 3):
        assert curve[epochs - 1] == scratch_accuracy(TinyCNN, train, test, epochs=epochs, batch_size=16, seed=2)
    with pytest.raises(TypeError, match="function"):
        scratch_curve(TinyCNN(), train, test, epochs=2)


def test_scratch_curve_with_the_pretraining_recipe_ends_at_scratch_accuracy():
    from course_lib.experiments import scratch_curve

    train, test = colour_images(48, seed=0), colour_images(30, seed=1)
    curve = scratch_curve(TinyCNN, train, test, epochs=3, recipe="pretraining", batch_size=16, seed=2)
    assert curve[-1] == scratch_accuracy(TinyCNN, train, test, epochs=3, recipe="pretraining", batch_size=16, seed=2)
    # The schedule depends on the budget, so a shorter run is not the curve's earlier entry.
    shorter = scratch_accuracy(TinyCNN, train, test, epochs=1, recipe="pretraining", batch_size=16, seed=2)
    assert 0.0 <= shorter <= 1.0


def test_the_pretraining_recipe_uses_the_source_models_optimizer_and_schedule(monkeypatch):
    import course_lib.experiments as experiments

    seen = {}

    def spy(model, *, lr, weight_decay, total_steps):
        seen.update(lr=lr, weight_decay=weight_decay, total_steps=total_steps)
        return real(model, lr=lr, weight_decay=weight_decay, total_steps=total_steps)

    real = experiments.pretraining_optimizer
    monkeypatch.setattr(experiments, "pretraining_optimizer", spy)
    scratch_accuracy(TinyCNN, colour_images(48, seed=0), colour_images(6, seed=1), epochs=2, recipe="pretraining",
                     batch_size=16)
    assert seen == {"lr": 0.05, "weight_decay": 5e-4, "total_steps": 2 * 3}


def test_pretraining_optimizer_warms_up_then_anneals():
    from course_lib.finetuning import pretraining_optimizer

    model = nn.Linear(2, 2)
    optimizer, scheduler = pretraining_optimizer(model, lr=0.1, weight_decay=1e-4, total_steps=20)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = int(np.argmax(rates))
    assert 3 <= peak <= 6 and abs(max(rates) - 0.1) < 1e-9 and rates[-1] < 1e-3
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="at least 2 training steps"):
        pretraining_optimizer(model, lr=0.1, weight_decay=0.0, total_steps=1)


def test_scratch_accuracy_refuses_an_unknown_recipe():
    with pytest.raises(ValueError, match="Unknown recipe 'sgd'.*'adam', 'pretraining'"):
        scratch_accuracy(TinyCNN, colour_images(6, seed=0), colour_images(6, seed=1), epochs=1, recipe="sgd")


def test_pretraining_optimizer_runs_the_shortest_schedules():
    from course_lib.finetuning import pretraining_optimizer

    for steps in (2, 3, 5):
        optimizer, scheduler = pretraining_optimizer(nn.Linear(2, 2), lr=0.1, weight_decay=0.0, total_steps=steps)
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
