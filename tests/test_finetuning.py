"""Tests for course_lib.finetuning: layer groups, discriminative rates, (gradual) unfreezing, BatchNorm, drift, fine_tune."""

from __future__ import annotations

import copy

import numpy as np

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.callbacks import LambdaCallback, TrackMetric
from course_lib.experiments import compare_with_rule, fine_tune_copy, rule_of_thumb
from course_lib.finetuning import (
    STRATEGIES, GradualUnfreezing, fine_tune, layerwise_lr_groups, train_last_stages, trainable_groups_at,
)
from course_lib.forgetting import old_task_accuracy, weight_drift
from course_lib.freezing import FreezeBatchNorm, batchnorm_statistics, freeze
from course_lib.history import History
from course_lib.model_checks import check_param_groups_cover
from course_lib.models import CourseResNet, get_head, layer_groups, remove_head, replace_head
from course_lib.training import evaluate, fit

COURSE_GROUPS = ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
NUM_CLASSES = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread; several threads on a busy machine are 10-20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_resnet(seed: int = 0) -> CourseResNet:
    """A small CourseResNet with random weights: the 'pretrained' model of these tests."""
    torch.manual_seed(seed)
    return CourseResNet(num_classes=NUM_CLASSES, widths=(8, 8, 16, 16))


def images_loader(n: int = 16, size: int = 32, seed: int = 0) -> DataLoader:
    """Random images (far from zero mean, unit variance, so BatchNorm statistics move) with labels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=generator) * 2 + 1
    labels = torch.arange(n) % NUM_CLASSES
    return DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=True, generator=generator)


def ids(params) -> list[int]:
    return [id(p) for p in params]


def group_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    return dict(layer_groups(model))


def snapshot(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """A copy of each layer group's parameters."""
    return {name: [p.detach().clone() for p in params] for name, params in layer_groups(model)}


def changed_groups(before: dict[str, list[torch.Tensor]], model: nn.Module) -> set[str]:
    """The layer groups of which at least one parameter differs from ``before``."""
    return {
        name for name, params in layer_groups(model)
        if any(not torch.equal(p.detach(), p0) for p, p0 in zip(params, before[name], strict=True))
    }


def trainable_by_group(model: nn.Module) -> dict[str, bool]:
    """{group: True/False}; fails if a group is only partly trainable."""
    result = {}
    for name, params in layer_groups(model):
        flags = {p.requires_grad for p in params}
        assert len(flags) == 1, f"group {name} is partly trainable: {[p.requires_grad for p in params]}"
        result[name] = flags.pop()
    return result


def trainable_groups(model: nn.Module) -> list[str]:
    return [name for name, trainable in trainable_by_group(model).items() if trainable]


def bn_unchanged(before: dict[str, torch.Tensor], model: nn.Module) -> bool:
    after = batchnorm_statistics(model)
    return all(torch.equal(before[name], after[name]) for name in before)


def bn_changed_layers(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = batchnorm_statistics(model)
    return {name for name in before if not torch.equal(before[name], after[name])}


# ---------------------------------------------------------------------------------------------
# layer_groups


def test_course_model_groups_are_stem_four_stages_and_head_in_order():
    model = tiny_resnet()
    groups = layer_groups(model)
    assert [name for name, _ in groups] == COURSE_GROUPS
    for name, params in groups:
        assert params, f"group {name} is empty"
        assert all(isinstance(p, nn.Parameter) for p in params), name
        assert ids(params) == ids(model.get_submodule(name).parameters()), f"group {name} holds the wrong parameters"


def test_every_parameter_is_in_exactly_one_group():
    for model in (tiny_resnet(), torchvision.models.resnet18(weights=None)):
        grouped = [id(p) for _, params in layer_groups(model) for p in params]
        assert len(grouped) == len(set(grouped)), "a parameter is in more than one group"
        assert sorted(grouped) == sorted(ids(model.parameters())), "the groups do not cover model.parameters()"


def test_torchvision_resnet18_groups_have_conv1_and_bn1_in_the_stem_and_fc_in_the_head():
    model = torchvision.models.resnet18(weights=None)
    groups = dict(layer_groups(model))
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert ids(groups["stem"]) == ids([model.conv1.weight, model.bn1.weight, model.bn1.bias])
    assert ids(groups["head"]) == ids(model.fc.parameters())
    for name in ("layer1", "layer2", "layer3", "layer4"):
        assert ids(groups[name]) == ids(model.get_submodule(name).parameters()), name


def test_a_model_without_stages_is_a_clear_type_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(TypeError, match="stages of a Sequential"):
        layer_groups(model)


@pytest.mark.parametrize("make", [
    lambda: remove_head(tiny_resnet()),
    lambda: remove_head(torchvision.models.resnet18(weights=None)),
], ids=["course", "torchvision"])
def test_a_model_without_a_linear_head_is_a_clear_type_error(make):
    with pytest.raises(TypeError, match=r"no linear head"):
        layer_groups(make())


@pytest.mark.parametrize("bad", ["model", None, [nn.Linear(2, 2)]])
def test_layer_groups_needs_a_module(bad):
    with pytest.raises(TypeError, match=r"layer_groups needs the whole model \(a torch\.nn\.Module\)"):
        layer_groups(bad)


def test_layer_groups_of_parameters_is_a_type_error():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        layer_groups(tiny_resnet().parameters())


# ---------------------------------------------------------------------------------------------
# layerwise_lr_groups


def test_rates_shrink_by_the_factor_per_group_from_the_head_down():
    model = tiny_resnet()
    groups = layerwise_lr_groups(model, head_lr=1e-3)
    assert [g["name"] for g in groups] == COURSE_GROUPS, "groups must run from input to output"
    expected = [1e-3 / 2.6**depth for depth in (5, 4, 3, 2, 1, 0)]
    assert [g["lr"] for g in groups] == pytest.approx(expected, rel=1e-12)
    assert groups[-1]["lr"] == 1e-3 and groups[-2]["lr"] == pytest.approx(1e-3 / 2.6)
    assert groups[0]["lr"] == pytest.approx(1e-3 / 2.6**5)
    by_name = group_params(model)
    for group in groups:
        assert set(group) == {"params", "lr", "name"}
        assert ids(group["params"]) == ids(by_name[group["name"]]), group["name"]


def test_a_custom_factor_and_factor_one():
    model = tiny_resnet()
    assert [g["lr"] for g in layerwise_lr_groups(model, 0.1, factor=10)] == pytest.approx(
        [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    assert [g["lr"] for g in layerwise_lr_groups(model, 0.5, factor=1)] == [0.5] * 6


def test_the_groups_cover_every_trainable_parameter_once_in_an_optimizer():
    model = tiny_resnet()
    groups = layerwise_lr_groups(model, 1e-3)
    optimizer = torch.optim.AdamW(groups)
    check_param_groups_cover(optimizer, model)  # raises if a parameter is missing or repeated
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out_and_empty_groups_dropped_keeping_each_groups_rate():
    model = tiny_resnet()
    freeze(model.stem)
    freeze(model.stage3)  # a gap in the middle
    freeze(model.stage4.conv1)  # a partly frozen group stays, without the frozen parameter
    groups = layerwise_lr_groups(model, 1.0, factor=2)
    assert [g["name"] for g in groups] == ["stage1", "stage2", "stage4", "head"]
    # The rate belongs to the group's depth below the head, not to its position among the trainable ones.
    assert [g["lr"] for g in groups] == pytest.approx([1 / 16, 1 / 8, 1 / 2, 1.0])
    listed = {id(p) for g in groups for p in g["params"]}
    assert id(model.stage4.conv1.weight) not in listed
    assert all(p.requires_grad for g in groups for p in g["params"])
    check_param_groups_cover(torch.optim.AdamW(groups), model)
    assert len(listed) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("head_lr", [0, -1, 0.0, True, "x", None, float("nan")])
def test_a_bad_head_lr_is_a_value_error(head_lr):
    with pytest.raises(ValueError, match="head_lr must be a positive number"):
        layerwise_lr_groups(tiny_resnet(), head_lr)


@pytest.mark.parametrize("factor", [0.5, 0, -2, True, "2.6", None])
def test_a_bad_factor_is_a_value_error(factor):
    with pytest.raises(ValueError, match="factor must be a number >= 1"):
        layerwise_lr_groups(tiny_resnet(), 1e-3, factor=factor)


def test_an_all_frozen_model_is_a_value_error():
    with pytest.raises(ValueError, match="frozen"):
        layerwise_lr_groups(freeze(tiny_resnet()), 1e-3)


def test_layerwise_lr_groups_works_on_torchvision_resnets():
    groups = layerwise_lr_groups(torchvision.models.resnet18(weights=None), 1.0, factor=2)
    assert [g["name"] for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1])


# ---------------------------------------------------------------------------------------------
# train_last_stages


@pytest.mark.parametrize("k", range(6))
def test_train_last_stages_trains_the_head_and_the_last_k_groups(k):
    model = tiny_resnet()
    freeze(model.head)  # the starting state must not matter: the head is unfrozen again
    assert train_last_stages(model, k) is model
    assert trainable_groups(model) == COURSE_GROUPS[len(COURSE_GROUPS) - 1 - k:]


def test_train_last_stages_named_cases():
    model = tiny_resnet()
    train_last_stages(model, 0)
    assert trainable_groups(model) == ["head"]
    train_last_stages(model, 1)
    assert trainable_groups(model) == ["stage4", "head"]
    train_last_stages(model, 5)
    assert all(p.requires_grad for p in model.parameters())
    train_last_stages(model, 1)  # going back down freezes again
    assert trainable_groups(model) == ["stage4", "head"]


def test_train_last_stages_on_a_torchvision_resnet():
    model = train_last_stages(torchvision.models.resnet18(weights=None), 1)
    assert not model.conv1.weight.requires_grad and not model.layer3[0].conv1.weight.requires_grad
    assert all(p.requires_grad for p in model.layer4.parameters())
    assert all(p.requires_grad for p in model.fc.parameters())


def test_train_last_stages_leaves_the_mode_alone():
    model = tiny_resnet().train()
    train_last_stages(model, 0)
    assert all(m.training for m in model.modules()), "BatchNorm is a separate choice (FreezeBatchNorm)"


@pytest.mark.parametrize("k", [-1, 6, 1.0, True, "1", None])
def test_a_bad_k_is_a_value_error_and_changes_nothing(k):
    model = tiny_resnet()
    with pytest.raises(ValueError, match=r"k must be an int from 0 \(head only\) to 5"):
        train_last_stages(model, k)
    assert all(p.requires_grad for p in model.parameters()), "a rejected k must not freeze anything"


def test_train_last_stages_needs_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        train_last_stages(tiny_resnet().parameters(), 1)


# ---------------------------------------------------------------------------------------------
# trainable_groups_at

NAMES = ["stem", "s1", "s2", "head"]


@pytest.mark.parametrize(("epoch", "every", "expected"), [
    (1, 1, ["head"]),
    (2, 1, ["s2", "head"]),
    (3, 1, ["s1", "s2", "head"]),
    (4, 1, NAMES),
    (5, 1, NAMES),  # one past the cap
    (6, 1, NAMES),
    (9, 1, NAMES),
    (1, 2, ["head"]),
    (2, 2, ["head"]),
    (3, 2, ["s2", "head"]),
    (4, 2, ["s2", "head"]),
    (5, 2, ["s1", "s2", "head"]),
    (6, 2, ["s1", "s2", "head"]),
    (7, 2, NAMES),
    (9, 2, NAMES),
    (100, 2, NAMES),
    (3, 3, ["head"]),
    (4, 3, ["s2", "head"]),
    (7, 3, ["s1", "s2", "head"]),
])
def test_trainable_groups_at_table(epoch, every, expected):
    assert trainable_groups_at(epoch, NAMES, every) == expected


def test_trainable_groups_at_keeps_the_order_of_the_names_and_returns_a_fresh_list():
    names = ("a", "c", "b")
    result = trainable_groups_at(2, names, 1)
    assert result == ["c", "b"] and isinstance(result, list)
    names_list = list(NAMES)
    trainable_groups_at(9, names_list, 1).append("x")
    assert names_list == NAMES, "the caller's list must not be returned (or changed)"
    assert trainable_groups_at(1, ["only"], 5) == ["only"]


@pytest.mark.parametrize("epoch", [0, -1, 1.5, True, "1"])
def test_a_bad_epoch_is_a_value_error(epoch):
    with pytest.raises(ValueError, match="epoch must be an int counted from 1"):
        trainable_groups_at(epoch, NAMES, 1)


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_a_bad_every_is_a_value_error(every):
    with pytest.raises(ValueError, match="every must be a positive int"):
        trainable_groups_at(1, NAMES, every)


@pytest.mark.parametrize("names", [[], (), "stem"])
def test_bad_group_names_are_a_value_error(names):
    with pytest.raises(ValueError, match="group_names must be a non-empty list"):
        trainable_groups_at(1, names, 1)


# ---------------------------------------------------------------------------------------------
# GradualUnfreezing


class GroupRecorder:
    """Callbacks that record which groups are trainable at each epoch start, and which changed in the epoch."""

    def __init__(self):
        self.trainable: list[list[str]] = []
        self.changed: list[set[str]] = []
        self._before = None
        self.start = LambdaCallback(on_epoch_start=self._on_start)
        self.end = LambdaCallback(on_epoch_end=self._on_end)

    def _on_start(self, state):
        self.trainable.append(trainable_groups(state.model))
        self._before = snapshot(state.model)

    def _on_end(self, state):
        self.changed.append(changed_groups(self._before, state.model))


@pytest.mark.parametrize(("every", "epochs"), [(1, 3), (2, 3)])
def test_gradual_unfreezing_trains_exactly_the_groups_of_trainable_groups_at(every, epochs):
    model = tiny_resnet()
    recorder = GroupRecorder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = fit(model, images_loader(), epochs=epochs, optimizer=optimizer,
                  callbacks=[GradualUnfreezing(every=every), recorder.start, recorder.end], progress=False)
    assert len(history) == epochs
    expected = [trainable_groups_at(epoch, COURSE_GROUPS, every) for epoch in range(1, epochs + 1)]
    assert recorder.trainable == expected
    # Frozen groups do not move; the trainable ones do.
    assert recorder.changed == [set(names) for names in expected]


def test_gradual_unfreezing_leaves_the_stem_untouched_for_the_first_epochs():
    model = tiny_resnet()
    before = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # weight decay too must skip frozen groups
    fit(model, images_loader(), epochs=2, optimizer=optimizer, callbacks=[GradualUnfreezing(every=1)], progress=False)
    assert changed_groups(before, model) == {"stage4", "head"}
    assert trainable_groups(model) == ["stage4", "head"]


def test_gradual_unfreezing_refreezes_groups_unfrozen_by_hand():
    model = tiny_resnet()  # everything trainable to begin with
    callback = GradualUnfreezing(every=4)
    recorder = GroupRecorder()
    fit(model, images_loader(), epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[callback, recorder.start], progress=False)
    assert recorder.trainable == [["head"]]


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_gradual_unfreezing_checks_every(every):
    with pytest.raises(ValueError, match="every must be a positive int"):
        GradualUnfreezing(every=every)


def test_gradual_unfreezing_default_every_is_one():
    assert GradualUnfreezing().every == 1


# ---------------------------------------------------------------------------------------------
# FreezeBatchNorm


def test_freeze_batchnorm_keeps_the_running_statistics_while_everything_trains():
    model = tiny_resnet()
    stats = batchnorm_statistics(model)
    before = snapshot(model)
    bn_weight = model.stage2.bn1.weight.detach().clone()
    modes = []
    record_modes = LambdaCallback(on_epoch_start=lambda s: modes.append(
        {(isinstance(m, nn.BatchNorm2d), m.training) for m in s.model.modules()}))
    fit(model, images_loader(), epochs=2, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        callbacks=[FreezeBatchNorm(), record_modes], progress=False)
    assert bn_unchanged(stats, model), "FreezeBatchNorm must keep every running mean and variance"
    assert changed_groups(before, model) == set(COURSE_GROUPS), "the parameters (head included) still train"
    assert not torch.equal(model.stage2.bn1.weight.detach(), bn_weight), "BatchNorm's weight still trains"
    assert modes == [{(True, False), (False, True)}] * 2, \
        "only the BatchNorm layers go to eval mode, in every epoch"


def test_without_freeze_batchnorm_the_statistics_move():
    model = tiny_resnet()
    stats = batchnorm_statistics(model)
    fit(model, images_loader(), epochs=1, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), progress=False)
    assert bn_changed_layers(stats, model) == set(stats), "control: training in train mode moves every BN layer"


def test_freeze_batchnorm_with_a_frozen_backbone_changes_only_the_head():
    model = tiny_resnet()
    train_last_stages(model, 0)
    stats, before = batchnorm_statistics(model), snapshot(model)
    fit(model, images_loader(), epochs=2, optimizer=torch.optim.Adam(model.head.parameters(), lr=1e-2),
        callbacks=[FreezeBatchNorm()], progress=False)
    assert bn_unchanged(stats, model)
    assert changed_groups(before, model) == {"head"}


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


# ---------------------------------------------------------------------------------------------
# fine_tune

LR, HEAD_LR = 1e-2, 3e-2


def run(strategy: str, epochs: int = 2, **kwargs):
    """fine_tune a fresh tiny model; return (model, pretrained copy, BN statistics before, history)."""
    model = tiny_resnet()
    pretrained = copy.deepcopy(model)
    stats = batchnorm_statistics(model)
    torch.manual_seed(1)
    history = fine_tune(model, images_loader(), strategy, epochs=epochs, lr=kwargs.pop("lr", LR), **kwargs)
    return model, pretrained, stats, history


def moved(model: nn.Module, pretrained: nn.Module) -> set[str]:
    return {name for name, value in weight_drift(model, pretrained).items() if value > 0}


def rates(record: dict) -> set[float]:
    return set(record["lr"])


def test_strategies_are_the_six_of_the_chapter():
    assert STRATEGIES == ("linear probe", "full", "partial", "discriminative", "gradual", "LP-FT")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_a_history_with_one_record_per_epoch(strategy):
    model, pretrained, _, history = run(strategy, epochs=2)
    assert isinstance(history, History)
    assert len(history) == 2
    assert history["epoch"] == [1, 2]
    assert all(isinstance(loss, float) for loss in history["train_loss"])
    assert "head" in moved(model, pretrained), f"{strategy} must train the head"


def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_statistics():
    model, pretrained, stats, history = run("linear probe", head_lr=HEAD_LR)
    assert moved(model, pretrained) == {"head"}
    assert bn_unchanged(stats, model), "a linear probe keeps the backbone's BatchNorm statistics"
    for record in history:
        assert HEAD_LR in rates(record) and rates(record) <= {LR, HEAD_LR}, record["lr"]


@pytest.mark.parametrize(("k", "expected"), [(1, {"stage4", "head"}), (2, {"stage3", "stage4", "head"})])
def test_partial_trains_the_head_and_the_last_k_stages(k, expected):
    model, pretrained, stats, history = run("partial", k=k)
    assert moved(model, pretrained) == expected
    assert rates(history[0]) == {LR}
    assert bn_changed_layers(stats, model), "without freeze_batchnorm the statistics update"


def test_partial_with_a_bad_k_is_a_value_error():
    with pytest.raises(ValueError, match="k must be an int"):
        run("partial", k=9)


def test_full_trains_everything_with_the_head_at_head_lr():
    model, pretrained, stats, history = run("full", head_lr=HEAD_LR)
    assert moved(model, pretrained) == set(COURSE_GROUPS)
    assert rates(history[0]) == rates(history[1]) == {LR, HEAD_LR}
    assert bn_changed_layers(stats, model) == set(stats)


def test_head_lr_defaults_to_lr():
    _, _, _, history = run("full", epochs=1)
    assert rates(history[0]) == {LR}


def test_full_starts_from_a_frozen_model_too():
    model = freeze(tiny_resnet())
    pretrained = copy.deepcopy(model)
    fine_tune(model, images_loader(), "full", epochs=1, lr=LR)
    assert moved(model, pretrained) == set(COURSE_GROUPS)


def test_freeze_batchnorm_option_keeps_statistics_in_full_fine_tuning():
    model, pretrained, stats, _ = run("full", freeze_batchnorm=True)
    assert bn_unchanged(stats, model)
    assert moved(model, pretrained) == set(COURSE_GROUPS)


def test_discriminative_records_the_layerwise_rates_and_moves_the_stem():
    model, pretrained, _, history = run("discriminative", head_lr=HEAD_LR, factor=3.0)
    expected = [g["lr"] for g in layerwise_lr_groups(tiny_resnet(), HEAD_LR, factor=3.0)]
    assert history[0]["lr"] == pytest.approx(expected)
    assert history[0]["lr"] == pytest.approx([HEAD_LR / 3**d for d in (5, 4, 3, 2, 1, 0)])
    assert moved(model, pretrained) == set(COURSE_GROUPS)


def test_discriminative_default_factor_is_2_6_below_lr_when_no_head_lr():
    _, _, _, history = run("discriminative", epochs=1)
    assert history[0]["lr"] == pytest.approx([LR / 2.6**d for d in (5, 4, 3, 2, 1, 0)])


def test_discriminative_unfreezes_a_frozen_model():
    model = freeze(tiny_resnet())
    pretrained = copy.deepcopy(model)
    history = fine_tune(model, images_loader(), "discriminative", epochs=1, lr=LR)
    assert len(history[0]["lr"]) == 6
    assert moved(model, pretrained) == set(COURSE_GROUPS)


def test_gradual_over_two_epochs_leaves_the_stem_unchanged():
    model, pretrained, _, history = run("gradual", every=1)
    assert moved(model, pretrained) == {"stage4", "head"}
    assert rates(history[0]) == {LR}


def test_gradual_with_every_two_trains_only_the_head_for_two_epochs():
    model, pretrained, _, _ = run("gradual", every=2)
    assert moved(model, pretrained) == {"head"}


def test_gradual_checks_every():
    with pytest.raises(ValueError, match="every must be a positive int"):
        run("gradual", every=0)


def test_user_callbacks_run_after_the_strategys_own():
    seen = []
    spy = LambdaCallback(on_epoch_start=lambda s: seen.append(trainable_groups(s.model)))
    run("gradual", epochs=3, every=1, callbacks=[spy])
    assert seen == [["head"], ["stage4", "head"], ["stage3", "stage4", "head"]]


def test_lp_ft_probes_then_fine_tunes_everything():
    pretrained_model = tiny_resnet()
    tracker = TrackMetric(
        lambda m: sum(v for k, v in weight_drift(m, pretrained_model).items() if k != "head"), "backbone_drift")
    head_drift, stem_mean = [], []
    log = LambdaCallback(on_epoch_end=lambda s: (head_drift.append(weight_drift(s.model, pretrained_model)["head"]),
                                                 stem_mean.append(s.model.stem[1].running_mean.clone())))
    model, pretrained, stats, history = run("LP-FT", epochs=4, head_lr=HEAD_LR, callbacks=[tracker, log])
    assert history["epoch"] == [1, 2, 3, 4], "probe epochs then fine-tune epochs, numbered on"
    probe, tune = history.records[:2], history.records[2:]
    for record in probe:
        assert HEAD_LR in rates(record) and rates(record) <= {LR, HEAD_LR}, f"the probe trains the head at head_lr: {record}"
    for record in tune:
        assert rates(record) == {LR}, f"the second stage fine-tunes everything at lr: {record}"
    drift = history["backbone_drift"]
    assert drift[:2] == [0.0, 0.0], "the probe keeps the backbone exactly as pretrained (default probe_epochs = half)"
    assert drift[2] > 0 and drift[3] > 0, "the fine-tuning stage moves the backbone"
    assert head_drift[0] > 0, "the probe trains the head"
    assert torch.equal(stem_mean[1], stats["stem.1"][0]), "the probe keeps BatchNorm statistics"
    assert not torch.equal(stem_mean[3], stats["stem.1"][0]), "full fine-tuning updates them"
    assert moved(model, pretrained) == set(COURSE_GROUPS)


@pytest.mark.parametrize(("epochs", "probe_epochs", "probed"), [(3, 1, 1), (3, None, 1), (3, 2, 2)])
def test_lp_ft_probe_epochs(epochs, probe_epochs, probed):
    pretrained_model = tiny_resnet()
    tracker = TrackMetric(lambda m: weight_drift(m, pretrained_model)["stem"], "stem_drift")
    _, _, _, history = run("LP-FT", epochs=epochs, probe_epochs=probe_epochs, callbacks=[tracker])
    assert history["epoch"] == list(range(1, epochs + 1))
    drift = history["stem_drift"]
    assert drift[:probed] == [0.0] * probed and all(d > 0 for d in drift[probed:]), drift


@pytest.mark.parametrize("strategy", ["lora", "Linear Probe", "", None])
def test_an_unknown_strategy_lists_the_valid_ones(strategy):
    with pytest.raises(ValueError, match=r"Unknown strategy.*'linear probe', 'full', 'partial', 'discriminative', "
                                         r"'gradual', 'LP-FT'"):
        fine_tune(tiny_resnet(), images_loader(), strategy, epochs=1, lr=LR)


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True, "2"])
def test_bad_epochs_is_a_value_error(epochs):
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        fine_tune(tiny_resnet(), images_loader(), "full", epochs=epochs, lr=LR)


@pytest.mark.parametrize(("epochs", "probe_epochs"), [(4, 0), (4, 4), (4, 5), (4, -1), (4, 1.5), (4, True), (1, None)])
def test_bad_probe_epochs_is_a_value_error_before_any_training(epochs, probe_epochs):
    model = tiny_resnet()
    pretrained = copy.deepcopy(model)
    with pytest.raises(ValueError, match=rf"probe_epochs must be an int from 1 to epochs - 1 = {epochs - 1}"):
        fine_tune(model, images_loader(), "LP-FT", epochs=epochs, lr=LR, probe_epochs=probe_epochs)
    assert moved(model, pretrained) == set()
    assert all(p.requires_grad for p in model.parameters()), "nothing was frozen either"


@pytest.mark.parametrize("name", ["lr", "head_lr"])
@pytest.mark.parametrize("value", [0, -1e-3, True, "1e-3"])
def test_bad_rates_are_a_value_error(name, value):
    rates_ = {"lr": LR, name: value}
    with pytest.raises(ValueError, match=rf"^{name} must be a positive number"):
        fine_tune(tiny_resnet(), images_loader(), "full", epochs=1, **rates_)


def test_fine_tune_needs_a_module():
    with pytest.raises(TypeError, match="fine_tune needs the whole model"):
        fine_tune(tiny_resnet().state_dict(), images_loader(), "full", epochs=1, lr=LR)


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
