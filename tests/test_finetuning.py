"""Tests for course_lib.finetuning: layer groups, discriminative rates, (gradual) unfreezing, BatchNorm, drift, fine_tune."""

from __future__ import annotations

import copy


import pytest
import torch
import torchvision
from torch import nn

from course_lib.callbacks import Callback, LambdaCallback, TrackMetric
from course_lib.finetuning import (
    STRATEGIES, GradualUnfreezing, fine_tune, layerwise_lr_groups, train_last_stages, trainable_groups_at,
)
from course_lib.forgetting import weight_drift
from course_lib.freezing import batchnorm_statistics, freeze
from course_lib.history import History
from course_lib.model_checks import check_param_groups_cover
from course_lib.models import layer_groups, remove_head
from course_lib.steps import StepOutput
from course_lib.training import fit

from fine_tuning_toys import COURSE_GROUPS, bn_changed_layers, bn_unchanged, changed_groups, group_params, ids, images_loader, one_thread, snapshot, tiny_resnet, trainable_groups  # noqa: F401 (one_thread is an autouse fixture)


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
    # A frozen stage is frozen for real: its BatchNorm statistics stay; the trained stages' update.
    changed = bn_changed_layers(stats, model)
    assert changed and all(name.split(".")[0] in expected for name in changed), changed


def test_partial_with_update_all_lets_frozen_stages_statistics_move_too():
    model, pretrained, stats, _ = run("partial", k=1, batchnorm="update all")
    assert moved(model, pretrained) == {"stage4", "head"}
    assert {name.split(".")[0] for name in bn_changed_layers(stats, model)} >= {"stem", "stage1", "stage4"}


def test_gradual_keeps_the_statistics_of_groups_still_frozen():
    model, pretrained, stats, _ = run("gradual", epochs=2, every=1)
    # After 2 epochs only stage4 and the head have trained: every other stage's statistics are as pretrained.
    assert {name.split(".")[0] for name in bn_changed_layers(stats, model)} == {"stage4"}


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


def test_a_custom_step_computes_the_loss_in_every_strategy():
    # 19.7's anchored fine-tuning: the step's loss is what is minimised, its metrics are logged.
    seen = []

    def step(model: nn.Module, batch) -> StepOutput:
        images, labels = batch
        seen.append(len(labels))
        loss = nn.functional.cross_entropy(model(images), labels)
        return StepOutput(loss, {"doubled": 2 * loss.item()}, len(labels))

    for strategy in ("full", "LP-FT"):
        seen.clear()
        _, _, _, history = run(strategy, epochs=2, step=step)
        assert seen and all(n > 0 for n in seen)
        assert all(record["train_doubled"] == pytest.approx(2 * record["train_loss"]) for record in history)


def test_a_step_that_only_pulls_back_keeps_the_weights():
    # A loss of zero gradient everywhere (the model's output times zero): nothing moves.
    def still(model: nn.Module, batch) -> StepOutput:
        images, labels = batch
        return StepOutput(model(images).sum() * 0.0, {}, len(labels))

    model, pretrained, _, _ = run("full", epochs=1, step=still, batchnorm="keep all")
    assert moved(model, pretrained) == set()


def test_keep_all_keeps_statistics_in_full_fine_tuning():
    model, pretrained, stats, _ = run("full", batchnorm="keep all")
    assert bn_unchanged(stats, model)
    assert moved(model, pretrained) == set(COURSE_GROUPS)


def test_linear_probe_with_update_all_changes_only_statistics_and_head():
    model, pretrained, stats, _ = run("linear probe", batchnorm="update all")
    assert moved(model, pretrained) == {"head"}
    assert bn_changed_layers(stats, model) == set(stats)


@pytest.mark.parametrize(("kind", "optimizer_class"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_choice(kind, optimizer_class):
    seen = []

    class Spy(Callback):
        def on_epoch_start(self, state):
            seen.append(type(state.optimizer))

    run("full", epochs=1, optimizer=kind, callbacks=[Spy()])
    assert seen == [optimizer_class]


def test_one_cycle_schedule_warms_up_then_anneals_every_group():
    model, _, _, history = run("full", epochs=3, head_lr=HEAD_LR, schedule="one-cycle")
    first, last = history[0]["lr"], history[-1]["lr"]
    assert first == pytest.approx([LR / 25, HEAD_LR / 25]), "OneCycleLR starts every group at its rate / 25"
    assert all(a < b for a, b in zip(history[1]["lr"], [LR, HEAD_LR])) or history[1]["lr"] != first
    assert last[1] / last[0] == pytest.approx(HEAD_LR / LR), "the groups keep their ratio along the schedule"


def test_one_cycle_needs_two_steps_and_works_with_two():
    with pytest.raises(ValueError, match="at least 2 training steps"):
        fine_tune(tiny_resnet(), images_loader(n=4), "full", epochs=1, lr=LR, schedule="one-cycle")
    fine_tune(tiny_resnet(), images_loader(n=16), "full", epochs=1, lr=LR, schedule="one-cycle")


@pytest.mark.parametrize(("option", "value"), [("batchnorm", "frozen"), ("optimizer", "adam"), ("schedule", "cosine")])
def test_unknown_choices_are_value_errors_that_list_the_choices(option, value):
    with pytest.raises(ValueError, match=f"Unknown {option} {value!r}: choose one of"):
        run("full", **{option: value})


def test_probe_head_is_a_converged_probe_that_reads_raw_features():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from course_lib.finetuning import probe_head

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn(60, 5, generator=generator) * 4 + 10 + labels[:, None] * torch.tensor([3.0, 0, 0, 0, 0])
    threads = torch.get_num_threads()
    head = probe_head(features, labels, 3, C=0.5)
    assert torch.get_num_threads() == threads, "probe_head restores the number of threads"
    scaler = StandardScaler().fit(features.double().numpy())
    reference = LogisticRegression(C=0.5, max_iter=2000).fit(scaler.transform(features.double().numpy()), labels.numpy())
    expected = reference.decision_function(scaler.transform(features.double().numpy()))
    assert isinstance(head, nn.Linear) and head.weight.shape == (3, 5)
    assert torch.allclose(head(features).double(), torch.as_tensor(expected), atol=1e-3), "standardisation folded in"
    with pytest.raises(ValueError, match="every one of the 4 classes"):
        probe_head(features, labels, 4)
    with pytest.raises(ValueError, match="2-D tensor"):
        probe_head(features[:, :, None], labels, 3)


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


def test_pretraining_rate_matches_the_course_recipe_and_explains_unknown_backbones():
    from course_lib import pretrain
    from course_lib.finetuning import pretraining_rate

    assert pretraining_rate("course-resnet")[0] == pretrain.DEFAULTS["lr"]
    assert pretraining_rate("resnet18")[0] == 0.1
    with pytest.raises(ValueError, match="No pretraining rate is recorded for 'vit'"):
        pretraining_rate("vit")
