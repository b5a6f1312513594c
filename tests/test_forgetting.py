"""Tests for course_lib.forgetting: weight drift, old-task accuracy, the accuracy matrix of a task sequence."""

from __future__ import annotations

import numpy as np
import pytest

import copy

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.callbacks import TrackMetric
from course_lib.finetuning import fine_tune
from course_lib.forgetting import (
    average_accuracy, backward_transfer, forgetting, forward_transfer, old_task_accuracy, weight_drift,
)
from course_lib.models import CourseResNet, get_head, replace_head
from course_lib.training import evaluate

from fine_tuning_toys import COURSE_GROUPS, NUM_CLASSES, images_loader, one_thread, tiny_resnet  # noqa: F401

LR = 1e-2


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


# ---------------------------------------------------------------------------------------------
# weight_drift


def test_drift_from_an_identical_copy_is_zero_everywhere():
    model = tiny_resnet()
    assert weight_drift(model, copy.deepcopy(model)) == {name: 0.0 for name in COURSE_GROUPS}
    assert weight_drift(model, model.state_dict()) == {name: 0.0 for name in COURSE_GROUPS}


def test_a_known_perturbation_of_one_group_gives_its_relative_size():
    model = tiny_resnet()
    pretrained = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.stage4.parameters():
            p.add_(0.1 * p)
        model.stage2.conv1.weight.mul_(-1)  # w - w0 = -2 w0: a single tensor of the group moves
    drift = weight_drift(model, pretrained)
    assert list(drift) == COURSE_GROUPS
    assert drift["stage4"] == pytest.approx(0.1, rel=1e-5)
    conv = pretrained.stage2.conv1.weight
    stage2_norm2 = sum(float(p.detach().pow(2).sum()) for p in pretrained.stage2.parameters())
    assert drift["stage2"] == pytest.approx(2 * float(conv.detach().norm()) / stage2_norm2**0.5, rel=1e-5), \
        "drift is ||w - w0|| / ||w0|| over the whole group, not per tensor"
    for name in ("stem", "stage1", "stage3", "head"):
        assert drift[name] == 0.0, name


def test_weight_drift_accepts_a_module_or_its_state_dict():
    model = tiny_resnet()
    pretrained = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    from_module = weight_drift(model, pretrained)
    from_state = weight_drift(model, {k: v.clone() for k, v in pretrained.state_dict().items()})
    assert from_module == pytest.approx(from_state)
    assert all(value > 0 for value in from_module.values())


def test_a_replaced_head_of_another_shape_is_left_out():
    pretrained = tiny_resnet()
    model = replace_head(copy.deepcopy(pretrained), NUM_CLASSES + 2)
    drift = weight_drift(model, pretrained)
    assert list(drift) == COURSE_GROUPS[:-1], "a new head has no pretrained weights to compare with"
    assert all(value == 0.0 for value in drift.values())


def test_drift_from_another_architectures_weights_is_an_error():
    with pytest.raises(ValueError, match=r"do not match the model's 'stem' \(missing 'stem\.0\.weight'\)"):
        weight_drift(tiny_resnet(), torchvision.models.resnet18(weights=None).state_dict())
    with pytest.raises(ValueError, match="same architecture"):
        weight_drift(tiny_resnet(), torchvision.models.resnet18(weights=None))


def test_drift_from_weights_of_other_shapes_below_the_head_is_an_error():
    model = CourseResNet(num_classes=NUM_CLASSES, widths=(8, 8, 16, 16))
    other = CourseResNet(num_classes=NUM_CLASSES)  # same names, wider layers
    with pytest.raises(ValueError, match="a different shape for 'stem.0.weight'"):
        weight_drift(model, other.state_dict())
    narrower_top = CourseResNet(num_classes=NUM_CLASSES, widths=(8, 8, 16, 32))
    with pytest.raises(ValueError, match="'stage4'"):
        weight_drift(model, narrower_top.state_dict())


def test_weight_drift_checks_its_arguments():
    with pytest.raises(TypeError, match=r"weight_drift needs the whole model \(a torch\.nn\.Module\)"):
        weight_drift(tiny_resnet().state_dict(), tiny_resnet())
    with pytest.raises(TypeError, match="pretrained must be a model or its state_dict"):
        weight_drift(tiny_resnet(), [1, 2, 3])


# old_task_accuracy


def source_and_target(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A 'source' model and a target model: the same backbone with a new 5-class head."""
    source = tiny_resnet(seed)
    target = replace_head(copy.deepcopy(source), 5)
    return source, target


def test_old_task_accuracy_of_an_unmoved_backbone_is_the_source_models_accuracy():
    source, target = source_and_target()
    loader = images_loader(n=24)
    expected = evaluate(source, loader)["accuracy"]
    assert old_task_accuracy(target, get_head(source), loader) == expected
    assert old_task_accuracy(source, get_head(source), loader) == expected


def test_old_task_accuracy_uses_the_backbone_as_it_is_now():
    source, target = source_and_target()
    head = get_head(source)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.0, 1e-3, 0.0]))  # class 1 wins only when the features are all zero
    images, _ = next(iter(images_loader(n=24)))
    all_ones = DataLoader(TensorDataset(images, torch.ones(len(images), dtype=torch.long)), batch_size=8)
    healthy = old_task_accuracy(target, head, all_ones)
    assert healthy == evaluate(source, all_ones)["accuracy"] < 1.0, "precondition: the source model is not constant"
    # Break the backbone: stage4's output is relu(negative) = 0, so the old head sees zero features.
    with torch.no_grad():
        for bn in (target.stage4.bn2, target.stage4.shortcut[1]):
            bn.weight.zero_()
            bn.bias.fill_(-1.0)
    assert old_task_accuracy(target, head, all_ones) == 1.0, "the score must come from the backbone as it is now"


def test_old_task_accuracy_changes_neither_the_model_nor_the_head():
    source, target = source_and_target()
    target.train()
    head = get_head(source)
    before_target, before_head = copy.deepcopy(target.state_dict()), copy.deepcopy(head.state_dict())
    old_task_accuracy(target, head, images_loader())
    assert isinstance(target.head, nn.Linear) and target.head.out_features == 5, "the head must not be removed"
    assert all(torch.equal(before_target[k], v) for k, v in target.state_dict().items()), "BN statistics included"
    assert all(torch.equal(before_head[k], v) for k, v in head.state_dict().items())
    assert all(m.training for m in target.modules()), "the model's mode is left alone"


def test_old_task_accuracy_tracks_forgetting_during_fine_tuning():
    source, target = source_and_target()
    loader = images_loader()
    tracker = TrackMetric(lambda m: old_task_accuracy(m, get_head(source), loader), "source_accuracy")
    history = fine_tune(target, images_loader(n=16, seed=1), "linear probe", epochs=2, lr=LR, callbacks=[tracker])
    start = evaluate(source, loader)["accuracy"]
    assert history["source_accuracy"] == [start, start], "a linear probe does not move the backbone: nothing forgotten"


def test_old_task_accuracy_checks_its_arguments():
    source, target = source_and_target()
    with pytest.raises(TypeError, match="old_head must be the source model's nn.Linear head"):
        old_task_accuracy(target, source, images_loader())
    with pytest.raises(ValueError, match="old_head takes 7 features but the backbone gives 16"):
        old_task_accuracy(target, nn.Linear(7, 3), images_loader())
    with pytest.raises(TypeError, match="old_task_accuracy needs the whole model"):
        old_task_accuracy(target.state_dict(), get_head(source), images_loader())
