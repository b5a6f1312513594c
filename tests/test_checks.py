"""Tests for course_lib.checks: each check passes on right input and fails with a teaching message."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.checks import (
    check_close,
    check_eval_mode,
    check_frozen,
    check_learning_rates,
    check_no_grad,
    check_param_groups_cover,
    check_parameter_counts,
    check_range,
    check_same_state,
    check_tensor,
    check_train_mode,
    check_uses_none_of,
    snapshot_state,
)


def small_model() -> nn.Sequential:
    """conv (3*4*3*3 + 4 = 112 params) -> BN (8) -> pool -> linear head (4*2 + 2 = 10)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


@contextlib.contextmanager
def fails_with(*fragments: str):
    """Like pytest.raises(AssertionError), and the message must also contain every fragment."""
    with pytest.raises(AssertionError) as info:
        yield info
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in message {str(info.value)!r}"


# --- check_tensor ------------------------------------------------------------------------------


def test_check_tensor_passes_on_right_input():
    x = torch.rand(64, 128)
    check_tensor(x, shape=(64, 128), dtype=torch.float32, device="cpu", min=0, max=1)
    check_tensor(x, shape=(None, 128))
    check_tensor(torch.zeros(0, 3), shape=(None, 3), min=1)  # empty: no values to bound


@pytest.mark.parametrize(
    "got, expected, fragments",
    [
        ((64, 128, 1, 1), (64, 128), ["(64, 128)", "(64, 128, 1, 1)", "pool or flatten"]),
        ((64, 128, 7, 7), (None, 128), ["(*, 128)", "pool or flatten"]),
        ((1, 3, 32, 32), (3, 32, 32), ["squeeze(0)"]),
        ((3, 32, 32), (1, 3, 32, 32), ["unsqueeze(0)"]),
        ((8, 32, 32, 3), (8, 3, 32, 32), ["permute"]),
        ((64, 2, 64), (64, 128), ["reshape"]),
        ((64, 10), (64, 128), ["dimension 1 should be 128 but is 10"]),
        ((5,), (None, 2, 2), ["expected 3 dimensions but got 1"]),
    ],
)
def test_check_tensor_shape_messages_explain_the_likely_mistake(got, expected, fragments):
    with fails_with("features", *fragments):
        check_tensor(torch.zeros(got), shape=expected, name="features")


def test_check_tensor_rejects_non_tensors():
    with fails_with("torch.Tensor", "ndarray", "torch.as_tensor"):
        check_tensor(np.zeros((2, 2)))
    with fails_with("NoneType", "forget to return"):
        check_tensor(None)


@pytest.mark.parametrize(
    "x, dtype, hint",
    [
        (torch.zeros(2, dtype=torch.uint8), torch.float32, "x.float() / 255"),
        (torch.zeros(2), torch.long, ".long()"),
        (torch.zeros(2, dtype=torch.float64), torch.float32, "x.to(torch.float32)"),
    ],
)
def test_check_tensor_dtype_messages(x, dtype, hint):
    with fails_with(f"expected labels to have dtype {dtype} but got {x.dtype}", hint):
        check_tensor(x, dtype=dtype, name="labels")


def test_check_tensor_device_mismatch():
    with fails_with("device cuda", "on cpu", ".to('cuda')"):
        check_tensor(torch.zeros(2), device="cuda")


def test_check_tensor_finite_and_bounds():
    with fails_with("loss contains 1 NaN and 1 infinite", "learning rate"):
        check_tensor(torch.tensor([1.0, float("nan"), float("inf")]), name="loss")
    check_tensor(torch.tensor([float("nan")]), finite=False)
    with fails_with(">= 0", "-0.5"):
        check_tensor(torch.tensor([-0.5, 0.5]), min=0)
    with fails_with("<= 1", "255"):
        check_tensor(torch.tensor([0.0, 255.0]), max=1)


# --- check_close / check_range -----------------------------------------------------------------


def test_check_close_passes_on_close_values():
    check_close(0.50001, 0.5)
    check_close(torch.tensor([1.0, 2.0]), np.array([1.0, 2.00001]))
    check_close([[1, 2]], torch.tensor([[1.0, 2.0]]))


def test_check_close_reports_scalars_with_the_hint():
    with fails_with("expected accuracy to be 0.75 but got 0.7", "divide by the number of examples"):
        check_close(0.7, 0.75, name="accuracy", hint="divide by the number of examples")


def test_check_close_reports_where_arrays_differ():
    got = torch.zeros(3, 4)
    got[1, 2] = 5.0
    with fails_with("1 of 12 positions", "index (1, 2)", "expected 0 but got 5"):
        check_close(got, torch.zeros(3, 4), name="logits")


def test_check_close_shape_none_and_nan():
    with fails_with("shape (3,)", "(2,)"):
        check_close([1.0, 2.0], [1.0, 2.0, 3.0])
    with fails_with("got None", "forget to return"):
        check_close(None, 1.0)
    with fails_with("got nan"):
        check_close(float("nan"), 1.0)
    with fails_with("number or tensor", "str"):
        check_close("0.5", 0.5)


def test_check_range():
    check_range(0.9, 0.8, 1.0)
    check_range(torch.tensor(0.85), 0.8, 1.0)
    with fails_with("expected accuracy between 0.8 and 1.0 but got 0.42", "train longer"):
        check_range(0.42, 0.8, 1.0, name="accuracy", hint="train longer")
    with fails_with("single number", ".mean()"):
        check_range(torch.tensor([0.9, 0.8]), 0, 1)
    with fails_with("a number", "str"):
        check_range("0.9", 0, 1)
    with fails_with("got nan"):
        check_range(float("nan"), 0, 1)


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


# --- modes, autograd, state --------------------------------------------------------------------


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


def test_check_no_grad():
    model = small_model()
    with torch.no_grad():
        features = model(torch.rand(2, 3, 8, 8))
    check_no_grad(features)
    check_no_grad(model(torch.rand(2, 3, 8, 8)).detach())
    with fails_with("features was computed with gradient tracking", "grad_fn=", "torch.no_grad()"):
        check_no_grad(model(torch.rand(2, 3, 8, 8)))
    with fails_with("gradient tracking", ".detach()"):
        check_no_grad(nn.Parameter(torch.zeros(2)), name="weights")
    with fails_with("torch.Tensor", "list"):
        check_no_grad([1, 2])


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


# --- check_uses_none_of -------------------------------------------------------------------------

import course_lib.finetuning as library_module  # noqa: E402  (a stand-in "library" for these tests)


def _own_version(model):
    groups = []
    for name, params in library_module.layer_groups(model):  # a helper that is allowed
        groups.append(name)
    return groups


def _delegates_through_the_module(model, lr):
    return library_module.layerwise_lr_groups(model, lr)


def _delegates_in_an_inner_function(model, lr):
    def inner():
        return layerwise_lr_groups(model, lr)  # noqa: F821  (bound below, at call time)
    return inner()


layerwise_lr_groups = library_module.layerwise_lr_groups


def test_check_uses_none_of_passes_own_work_and_catches_delegation():
    forbidden = [library_module.layerwise_lr_groups]
    check_uses_none_of(_own_version, forbidden, hint="write it yourself")
    with pytest.raises(AssertionError, match=r"_delegates_in_an_inner_function uses layerwise_lr_groups .*: write it yourself"):
        check_uses_none_of(_delegates_in_an_inner_function, forbidden, hint="write it yourself")
    # Through the module: caught by the attribute's name, and by the module when it is forbidden too.
    with pytest.raises(AssertionError, match="layerwise_lr_groups"):
        check_uses_none_of(_delegates_through_the_module, forbidden, hint="h")
    with pytest.raises(AssertionError, match="library_module"):
        check_uses_none_of(_own_version, [library_module], hint="h")
    with pytest.raises(TypeError, match="Python function"):
        check_uses_none_of(len, forbidden, hint="h")
