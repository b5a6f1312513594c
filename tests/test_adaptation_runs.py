"""Tests for course_lib.adaptation_runs: fixed-budget batches, adapted and fine-tuned copies, accuracy, gap closed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from course_lib.adaptation_runs import (
    UNSUPERVISED_METHODS, adapt_copy, domain_accuracy, fine_tune_on_target, gap_closed, random_batches,
)

from fine_tuning_toys import one_thread  # noqa: F401 (an autouse fixture)

NUM_CLASSES = 3
RUN = {"steps": 4, "batch_size": 8, "lr": 0.05, "seed": 0}


def images(n: int, seed: int, brighter: float = 0.0, labels: torch.Tensor | None = None) -> TensorDataset:
    """8x8 toy images: class k is noise plus a bright channel k; ``brighter`` shifts the domain."""
    generator = torch.Generator().manual_seed(seed)
    true_labels = torch.arange(n) % NUM_CLASSES
    x = torch.rand(n, 3, 8, 8, generator=generator) * 0.5
    x[torch.arange(n), true_labels] += 0.5
    return TensorDataset(x * (1 + brighter) + brighter, true_labels if labels is None else labels)


SOURCE = images(24, seed=0)
TARGET = images(16, seed=1, brighter=0.5)


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, NUM_CLASSES))


class FcNet(nn.Module):
    """A backbone-like model whose head is ``.fc``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        return self.fc(self.body(x))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def same(a: dict[str, torch.Tensor] | nn.Module, b: dict[str, torch.Tensor] | nn.Module) -> bool:
    a, b = (weights(x) if isinstance(x, nn.Module) else x for x in (a, b))
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def in_eval_mode(model: nn.Module) -> bool:
    return not any(module.training for module in model.modules())


def indices_of(loader) -> list[list[int]]:
    return [batch[0].tolist() for batch in loader]


# ---------------------------------------------------------------------------------------------
# random_batches

NUMBERS = TensorDataset(torch.arange(10))  # each example is its own index


def test_random_batches_yields_exactly_steps_batches_of_batch_size():
    loader = random_batches(SOURCE, steps=5, batch_size=4, seed=0)
    batches = list(loader)
    assert len(loader) == 5 and len(batches) == 5
    for x, y in batches:
        assert x.shape == (4, 3, 8, 8) and y.shape == (4,)


def test_random_batches_is_fixed_by_its_seed_and_repeats_on_every_pass():
    loader = random_batches(NUMBERS, steps=6, batch_size=5, seed=3)
    first = indices_of(loader)
    assert indices_of(loader) == first  # the same draw on a second pass
    assert indices_of(random_batches(NUMBERS, steps=6, batch_size=5, seed=3)) == first
    assert indices_of(random_batches(NUMBERS, steps=6, batch_size=5, seed=4)) != first


def test_random_batches_draws_with_replacement_from_a_small_dataset():
    small = TensorDataset(torch.arange(5))
    drawn = [i for batch in indices_of(random_batches(small, steps=4, batch_size=8, seed=0)) for i in batch]
    assert len(drawn) == 32 and set(drawn) == set(range(5))  # every example, most of them several times


def test_random_batches_takes_any_indexable_sequence():
    assert len(list(random_batches([(torch.zeros(2), 0)] * 3, steps=2, batch_size=4, seed=0))) == 2


@pytest.mark.parametrize("not_a_dataset", [iter([1, 2, 3]), 7, None])
def test_random_batches_needs_a_dataset(not_a_dataset):
    with pytest.raises(TypeError, match="needs a dataset \\(indexable, with a length\\)"):
        random_batches(not_a_dataset, steps=2, batch_size=2, seed=0)


def test_random_batches_refuses_an_empty_dataset():
    with pytest.raises(ValueError, match="empty"):
        random_batches(TensorDataset(torch.zeros(0, 3)), steps=2, batch_size=2, seed=0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
@pytest.mark.parametrize("name", ["steps", "batch_size"])
def test_random_batches_refuses_non_positive_counts(name, bad):
    arguments = {"steps": 2, "batch_size": 2, "seed": 0, name: bad}
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        random_batches(NUMBERS, **arguments)


@pytest.mark.parametrize("bad", [-1, 0.5, None])
def test_random_batches_refuses_a_bad_seed(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        random_batches(NUMBERS, steps=2, batch_size=2, seed=bad)


# ---------------------------------------------------------------------------------------------
# adapt_copy


@pytest.mark.parametrize("method", UNSUPERVISED_METHODS)
def test_adapt_copy_trains_a_copy_in_eval_mode_and_leaves_the_model_alone(method):
    model = cnn()
    before = weights(model)
    adapted = adapt_copy(model, method, SOURCE, TARGET, **RUN)
    assert adapted is not model and in_eval_mode(adapted)
    assert same(model, before) and model.training  # not even its mode changed
    assert not same(adapted, before)
    assert not torch.equal(adapted[-1].weight, before["5.weight"])  # the head trained too
    # The copy trains channels-last (faster convolutions on a CPU); the model keeps its layout.
    assert adapted[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous() and not model[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("method", UNSUPERVISED_METHODS)
def test_adapt_copy_is_deterministic_for_a_seed(method):
    first = adapt_copy(cnn(), method, SOURCE, TARGET, **RUN)
    assert same(adapt_copy(cnn(), method, SOURCE, TARGET, **RUN), first)
    assert not same(adapt_copy(cnn(), method, SOURCE, TARGET, **(RUN | {"seed": 1})), first)


@pytest.mark.parametrize("method", UNSUPERVISED_METHODS)
@pytest.mark.parametrize("garbage", [-1, 999])
def test_adapt_copy_never_reads_the_target_labels(method, garbage):
    unlabelled = TensorDataset(TARGET.tensors[0], torch.full((len(TARGET),), garbage))
    assert same(adapt_copy(cnn(), method, SOURCE, unlabelled, **RUN), adapt_copy(cnn(), method, SOURCE, TARGET, **RUN))


def test_adapt_copy_takes_a_target_without_labels():
    images_only = TensorDataset(TARGET.tensors[0])
    assert same(adapt_copy(cnn(), "CORAL", SOURCE, images_only, **RUN), adapt_copy(cnn(), "CORAL", SOURCE, TARGET, **RUN))


def test_source_only_ignores_the_target_images():
    other_target = images(5, seed=7, brighter=2.0)
    assert same(adapt_copy(cnn(), "source-only", SOURCE, other_target, **RUN),
                adapt_copy(cnn(), "source-only", SOURCE, TARGET, **RUN))


@pytest.mark.parametrize("method", [m for m in UNSUPERVISED_METHODS if m != "source-only"])
def test_the_adaptation_methods_learn_from_the_target_images(method):
    other_target = images(16, seed=7, brighter=2.0)
    assert not same(adapt_copy(cnn(), method, SOURCE, other_target, **RUN), adapt_copy(cnn(), method, SOURCE, TARGET, **RUN))
    assert not same(adapt_copy(cnn(), method, SOURCE, TARGET, **RUN), adapt_copy(cnn(), "source-only", SOURCE, TARGET, **RUN))


@pytest.mark.parametrize("method", UNSUPERVISED_METHODS)
def test_adapt_copy_works_on_a_model_with_an_fc_head(method):
    model = FcNet()
    adapted = adapt_copy(model, method, SOURCE, TARGET, **RUN)
    assert isinstance(adapted, FcNet) and in_eval_mode(adapted) and not same(adapted, model)


def test_dann_needs_a_linear_head():
    headless = nn.Sequential(nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(TypeError, match="DANN needs the model's linear classifier"):
        adapt_copy(headless, "DANN", SOURCE, TARGET, **RUN)


@pytest.mark.parametrize("method", ["coral", "MMD", "", None])
def test_adapt_copy_lists_the_methods_for_an_unknown_one(method):
    with pytest.raises(ValueError, match="Unknown method") as info:
        adapt_copy(cnn(), method, SOURCE, TARGET, **RUN)
    assert all(repr(name) in str(info.value) for name in UNSUPERVISED_METHODS)


def test_adapt_copy_needs_a_model():
    with pytest.raises(TypeError, match="adapt_copy needs the source model"):
        adapt_copy(cnn().state_dict(), "CORAL", SOURCE, TARGET, **RUN)


def test_adapt_copy_needs_at_least_two_steps():
    with pytest.raises(ValueError, match="steps must be at least 2"):
        adapt_copy(cnn(), "CORAL", SOURCE, TARGET, **(RUN | {"steps": 1}))


@pytest.mark.parametrize("steps", [3, 5])
def test_source_batches_must_have_steps_batches(steps):
    wrong = random_batches(SOURCE, steps=steps, batch_size=8, seed=0)
    with pytest.raises(ValueError, match=f"source_batches yields {steps} batches but steps=4"):
        adapt_copy(cnn(), "CORAL", SOURCE, TARGET, source_batches=wrong, **RUN)


@pytest.mark.parametrize("one_pass", [
    lambda loader: iter(loader),  # has a length, but can be read only once
    lambda loader: (batch for batch in loader),  # no length either
])
def test_source_batches_must_be_re_iterable_with_a_length(one_pass):
    batches = one_pass(random_batches(SOURCE, steps=4, batch_size=8, seed=0))
    with pytest.raises(TypeError, match="source_batches must be re-iterable with a length"):
        adapt_copy(cnn(), "CORAL", SOURCE, TARGET, source_batches=batches, **RUN)


@pytest.mark.parametrize("method", ["source-only", "CORAL"])
def test_source_batches_replace_the_source_draw(method):
    default = adapt_copy(cnn(), method, SOURCE, TARGET, **RUN)
    # The default draw is random_batches(source, ...) with the run's seed.
    same_draw = random_batches(SOURCE, steps=4, batch_size=8, seed=0)
    assert same(adapt_copy(cnn(), method, SOURCE, TARGET, source_batches=same_draw, **RUN), default)
    other = random_batches(images(24, seed=5), steps=4, batch_size=8, seed=1)
    with_other = adapt_copy(cnn(), method, SOURCE, TARGET, source_batches=other, **RUN)
    assert not same(with_other, default)
    # The source dataset is then not read at all; one loader gives every run the same batches.
    assert same(adapt_copy(cnn(), method, images(3, seed=9), TARGET, source_batches=other, **RUN), with_other)


# ---------------------------------------------------------------------------------------------
# fine_tune_on_target

FEW = [0, 3, 4, 8]


def changed_example(dataset: TensorDataset, index: int) -> TensorDataset:
    """``dataset`` with example ``index`` replaced: other image, other label."""
    x, y = (t.clone() for t in dataset.tensors)
    x[index] = torch.rand(x[index].shape, generator=torch.Generator().manual_seed(1)) * 3
    y[index] = (y[index] + 1) % NUM_CLASSES
    return TensorDataset(x, y)


def test_fine_tune_on_target_trains_a_copy_in_eval_mode_and_leaves_the_model_alone():
    model = cnn()
    before = weights(model)
    tuned = fine_tune_on_target(model, TARGET, FEW, **RUN)
    assert tuned is not model and in_eval_mode(tuned)
    assert same(model, before) and model.training
    assert not same(tuned, before)


def test_fine_tune_on_target_is_deterministic_for_a_seed():
    first = fine_tune_on_target(cnn(), TARGET, FEW, **RUN)
    assert same(fine_tune_on_target(cnn(), TARGET, FEW, **RUN), first)
    assert not same(fine_tune_on_target(cnn(), TARGET, FEW, **(RUN | {"seed": 1})), first)


def test_fine_tune_on_target_trains_on_the_indexed_examples_only():
    tuned = fine_tune_on_target(cnn(), TARGET, FEW, **RUN)
    assert same(fine_tune_on_target(cnn(), Subset(TARGET, FEW), **RUN), tuned)
    assert same(fine_tune_on_target(cnn(), changed_example(TARGET, 5), FEW, **RUN), tuned)  # 5 is not among them
    assert not same(fine_tune_on_target(cnn(), changed_example(TARGET, 3), FEW, **RUN), tuned)


def test_fine_tune_on_target_defaults_to_every_example_and_reads_the_labels():
    every = fine_tune_on_target(cnn(), TARGET, **RUN)
    assert same(fine_tune_on_target(cnn(), TARGET, list(range(len(TARGET))), **RUN), every)
    assert not same(fine_tune_on_target(cnn(), TARGET, FEW, **RUN), every)
    relabelled = TensorDataset(TARGET.tensors[0], (TARGET.tensors[1] + 1) % NUM_CLASSES)
    assert not same(fine_tune_on_target(cnn(), relabelled, **RUN), every)


@pytest.mark.parametrize("kind", [torch.tensor, np.array, tuple])
def test_fine_tune_on_target_takes_indices_as_a_tensor_an_array_or_a_sequence(kind):
    assert same(fine_tune_on_target(cnn(), TARGET, kind(FEW), **RUN), fine_tune_on_target(cnn(), TARGET, FEW, **RUN))


@pytest.mark.parametrize("empty", [[], torch.tensor([], dtype=torch.int64), np.array([], dtype=int)])
def test_fine_tune_on_target_refuses_empty_indices(empty):
    with pytest.raises(ValueError, match="indices is empty"):
        fine_tune_on_target(cnn(), TARGET, empty, **RUN)


@pytest.mark.parametrize(("indices", "match"), [
    ([0, 16], "range over 0..16 but the target dataset has 16 examples"),
    ([-1, 2], "range over -1..2"),
    (torch.arange(16) < 4, "1-D sequence of integer positions.*mask.nonzero"),  # a boolean mask, not indices
    ([0.0, 1.5], "integer positions"),
    (torch.tensor([[0, 1], [2, 3]]), "integer positions"),
    (torch.tensor(3), "integer positions"),
])
def test_fine_tune_on_target_refuses_bad_indices(indices, match):
    with pytest.raises(ValueError, match=match):
        fine_tune_on_target(cnn(), TARGET, indices, **RUN)


# ---------------------------------------------------------------------------------------------
# domain_accuracy


def argmax_model() -> nn.Sequential:
    """Predicts the class of the largest of an example's first three features."""
    linear = nn.Linear(4, NUM_CLASSES, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(NUM_CLASSES, 4))
    return nn.Sequential(linear).eval()


def test_domain_accuracy_matches_a_hand_count():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 4, generator=generator), torch.randint(NUM_CLASSES, (10,), generator=generator)
    expected = (x[:, :3].argmax(dim=1) == y).sum().item() / 10
    assert 0 < expected < 1
    model = argmax_model()
    # Batches of 3, 3, 3 and 1: the last one must count for one example, not a quarter of them.
    assert domain_accuracy(model, TensorDataset(x, y), batch_size=3) == pytest.approx(expected)
    assert domain_accuracy(model, TensorDataset(x, x[:, :3].argmax(dim=1))) == 1.0
    assert in_eval_mode(model)


def test_domain_accuracy_uses_the_stored_batchnorm_statistics_and_restores_the_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(NUM_CLASSES), nn.Linear(NUM_CLASSES, NUM_CLASSES))
    with torch.no_grad():
        model[0].running_mean.copy_(torch.tensor([2.0, 0.0, 0.0]))
        model[1].weight.copy_(torch.eye(NUM_CLASSES))
        model[1].bias.zero_()
    x = torch.rand(12, NUM_CLASSES)
    y = x.argmax(dim=1)
    stored = weights(model)
    with torch.no_grad():
        eval_accuracy = (model.eval()(x).argmax(dim=1) == y).float().mean().item()
        train_accuracy = (model.train()(x).argmax(dim=1) == y).float().mean().item()
    model.load_state_dict(stored)  # the train-mode pass moved the running statistics
    assert eval_accuracy != train_accuracy  # the two modes tell apart here
    assert domain_accuracy(model, TensorDataset(x, y), batch_size=5) == pytest.approx(eval_accuracy)
    assert model.training and same(model, stored)  # its mode back, its statistics untouched
    model.eval()
    assert domain_accuracy(model, TensorDataset(x, y)) == pytest.approx(eval_accuracy) and in_eval_mode(model)


def test_domain_accuracy_of_an_adapted_copy_is_a_fraction():
    accuracy = domain_accuracy(adapt_copy(cnn(), "CORAL", SOURCE, TARGET, **RUN), TARGET)
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0


# ---------------------------------------------------------------------------------------------
# gap_closed


def test_gap_closed_is_the_fraction_of_the_gap_from_source_only_to_the_oracle():
    assert gap_closed(0.4, source_only=0.4, oracle=0.9) == 0.0
    assert gap_closed(0.9, source_only=0.4, oracle=0.9) == 1.0
    assert gap_closed(0.65, source_only=0.4, oracle=0.9) == pytest.approx(0.5)
    assert gap_closed(0.3, source_only=0.4, oracle=0.9) == pytest.approx(-0.2)
    assert gap_closed(1.0, source_only=0.4, oracle=0.9) == pytest.approx(1.2)  # better than the oracle
    assert gap_closed(np.float32(0.65), np.float64(0.4), 0.9) == pytest.approx(0.5)
    assert gap_closed(1, 0, 1) == 1.0


@pytest.mark.parametrize(("source_only", "oracle"), [(0.6, 0.6), (0.7, 0.5)])
def test_gap_closed_needs_an_oracle_better_than_source_only(source_only, oracle):
    with pytest.raises(ValueError, match="no gap to close"):
        gap_closed(0.5, source_only, oracle)


@pytest.mark.parametrize("position", range(3))
@pytest.mark.parametrize("bad", [-0.1, 1.1, 50, math.nan, True, False, "0.5", None, torch.tensor(0.5)])
def test_gap_closed_needs_accuracies_in_zero_one(position, bad):
    values = [0.5, 0.2, 0.8]
    values[position] = bad
    with pytest.raises(ValueError, match="must be an accuracy in \\[0, 1\\]"):
        gap_closed(*values)
