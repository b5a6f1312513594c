"""Tests for course_lib.checks: each check passes on right input and fails with a teaching message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.checks import check_close, check_no_grad, check_range, check_tensor, check_uses_none_of

from toy import fails_with, small_model


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


def test_check_close_tolerances_are_atol_plus_rtol_times_expected():
    check_close(110.0, 100.0, atol=0.0, rtol=0.1)
    check_close(100.0, 110.0, atol=0.0, rtol=0.095)  # 10 <= 0.095 * 110: relative to the expected value
    with fails_with("expected value to be 100 but got 111"):
        check_close(111.0, 100.0, atol=0.0, rtol=0.1)
    check_close(0.003, 0.0, atol=0.005, rtol=0.0)
    with fails_with("1 of 2 positions", "index (1,)"):
        check_close([1.0, float("nan")], [1.0, float("nan")])  # NaN is never close, not even to NaN


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


# --- check_no_grad -----------------------------------------------------------------------------


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


def test_claim_verdict_says_whether_the_claim_held():
    from course_lib.checks import check_claim, claim_verdict

    assert claim_verdict(check_claim(True, "A beats B", checked=True)) == "holds"
    assert claim_verdict(check_claim(False, "A beats B", checked=False)) == "does not hold"


def test_check_claim_passes_reports_and_fails(capsys):
    from course_lib.checks import check_claim

    assert check_claim(True, "A beats B", checked=True, measured="A 0.9, B 0.5") is True
    assert "claim holds: A beats B (measured: A 0.9, B 0.5)" in capsys.readouterr().out
    assert check_claim(False, "A beats B", checked=False) is False
    assert "not checked" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="says \"A beats B\".*A 0.4"):
        check_claim(False, "A beats B", checked=True, measured="A 0.4")
    with pytest.raises(TypeError, match="claim"):
        check_claim(True, "", checked=True)


def test_claims_are_checked_in_the_courses_world_at_every_size_but_smoke():
    import course_lib

    assert not course_lib.setup(profile="smoke").claims_checked
    assert course_lib.setup(profile="standard").claims_checked
    assert course_lib.setup(profile="standard", size="full").claims_checked
    assert not course_lib.setup(profile="lite").claims_checked  # real data: reported, not asserted
    assert not course_lib.setup(profile="real").claims_checked
