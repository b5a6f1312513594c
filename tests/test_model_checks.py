"""Tests for course_lib.model_checks: each check passes on right input and fails with a teaching message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.model_checks import (
    check_eval_mode,
    check_frozen,
    check_learning_rates,
    check_param_groups_cover,
    check_parameter_counts,
    check_same_state,
    check_train_mode,
    snapshot_state,
)

from toy import fails_with, small_model


# --- freezing and parameter counts -------------------------------------------------------------


def test_check_frozen():
    model = small_model()
    model.requires_grad_(False)
    check_frozen(model)
    model[5].requires_grad_(True)
    check_frozen(model[0])
    check_frozen(model[5], expect_frozen=False, name="head")
    with fails_with("2 of 6 still have requires_grad=True", "5.weight, 5.bias", "backbone.requires_grad_(False)"):
        check_frozen(model)
    with fails_with("to be trainable", "4 of 6", "requires_grad_(True)"):
        check_frozen(model, expect_frozen=False, name="model")


def test_check_frozen_lists_at_most_five_names():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(4)])  # 8 parameters
    with fails_with("0.weight, 0.bias, 1.weight, 1.bias, 2.weight ... and 3 more"):
        check_frozen(model)


def test_check_frozen_rejects_wrong_arguments():
    with fails_with("nn.Module", "generator", "not model.parameters()"):
        check_frozen(small_model().parameters())
    with fails_with("no parameters"):
        check_frozen(nn.ReLU())


def test_check_parameter_counts():
    model = small_model()
    model[:2].requires_grad_(False)  # conv + BN frozen: 112 + 8 = 120; head trainable: 10
    check_parameter_counts(model, trainable=10, frozen=120)
    check_parameter_counts(model, trainable=10)
    with fails_with("expected 130 trainable parameters but found 10", "found 10 trainable and 120 frozen", "meant to train are frozen"):
        check_parameter_counts(model, trainable=130)
    with fails_with("expected 0 frozen", "found 120", "meant to train"):
        check_parameter_counts(model, frozen=0)
    model.requires_grad_(True)
    with fails_with("expected 10 trainable parameters but found 130", "meant to freeze still have requires_grad=True"):
        check_parameter_counts(model, trainable=10)
    with pytest.raises(ValueError, match="trainable=... and/or frozen=..."):
        check_parameter_counts(model)


# --- optimizers --------------------------------------------------------------------------------


def two_group_optimizer(model, backbone_lr=1e-4, head_lr=1e-2):
    return torch.optim.SGD(
        [
            {"params": model[:2].parameters(), "lr": backbone_lr, "name": "backbone"},
            {"params": model[5].parameters(), "lr": head_lr, "name": "head"},
        ],
        lr=0.1,
    )


def test_check_learning_rates_passes():
    optimizer = two_group_optimizer(small_model())
    check_learning_rates(optimizer, [1e-4, 1e-2])
    check_learning_rates(optimizer, {"head": 1e-2})
    check_learning_rates(optimizer, {0: 1e-4, "head": 1e-2})


def test_check_learning_rates_failures():
    model = small_model()
    with fails_with("param group 1: expected lr 0.01 but got 0.1", "default lr"):
        check_learning_rates(two_group_optimizer(model, head_lr=0.1), [1e-4, 1e-2])
    with fails_with("param group 0", "swap"):
        check_learning_rates(two_group_optimizer(model, 1e-2, 1e-4), [1e-4, 1e-2])
    with fails_with("expected 2 param groups but the optimizer has 1", "list of dicts"):
        check_learning_rates(torch.optim.SGD(model.parameters(), lr=1e-3), [1e-4, 1e-2])
    with fails_with("param group 'classifier'", "named backbone, head"):
        check_learning_rates(two_group_optimizer(model), {"classifier": 1e-2})


def test_check_learning_rates_mentions_a_scheduler():
    optimizer = torch.optim.SGD(small_model().parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    scheduler.step()
    with fails_with("expected lr 0.1 but got 0.05", "scheduler"):
        check_learning_rates(optimizer, [0.1])


def test_check_param_groups_cover():
    model = small_model()
    check_param_groups_cover(torch.optim.SGD(model.parameters(), lr=0.1), model)
    model[:2].requires_grad_(False)
    check_param_groups_cover(torch.optim.SGD(model[5].parameters(), lr=0.1), model)  # frozen ones may be left out
    model.requires_grad_(True)
    with fails_with("2 trainable parameters are in no param group", "0.weight", "never be updated"):
        check_param_groups_cover(torch.optim.SGD(model[1:].parameters(), lr=0.1), model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with fails_with("not in this model", "older model"):
        check_param_groups_cover(optimizer, small_model())
    optimizer.param_groups[0]["params"].append(model[5].weight)  # add_param_group would refuse this
    with fails_with("more than one param group", "5.weight"):
        check_param_groups_cover(optimizer, model)


# --- modes and state ---------------------------------------------------------------------------


def test_check_eval_and_train_mode():
    model = small_model()
    check_train_mode(model)
    model.eval()
    check_eval_mode(model)
    model.train()
    with fails_with("expected backbone in eval mode", "backbone, 0, 1", "backbone.eval()", "BatchNorm"):
        check_eval_mode(model)
    model.eval()
    model[1].train()
    with fails_with("submodules are in training mode: 1"):
        check_eval_mode(model)
    with fails_with("expected model in training mode", "model.train()"):
        check_train_mode(model)
    with fails_with("nn.Module", "NoneType", "forget to return"):
        check_eval_mode(None)


def test_snapshot_and_check_same_state():
    model = small_model()
    before = snapshot_state(model)
    assert before["0.weight"] is not model[0].weight and before["0.weight"].device.type == "cpu"
    model.eval()
    with torch.no_grad():
        model(torch.rand(4, 3, 8, 8))
    check_same_state(before, model)
    check_same_state(before, snapshot_state(model))

    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 8, 8))  # BatchNorm updates its statistics even without gradients
    with fails_with("3 entries of backbone changed", "1.running_mean", "backbone.eval()"):
        check_same_state(before, model, name="backbone")


def test_check_same_state_after_an_optimizer_step_and_key_mismatch():
    model = small_model()
    before = snapshot_state(model)
    with torch.no_grad():
        model[5].bias.add_(1.0)
    with fails_with("1 entries of model changed: 5.bias", "optimizer step"):
        check_same_state(before, model)
    with fails_with("1 new (extra)", "0 removed"):
        check_same_state(before, {**before, "extra": torch.zeros(1)})
