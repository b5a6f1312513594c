"""What comes back from a student's sandboxed call (tools/plain_data.py): a module's state, applied to the grader's copy."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import plain_data  # noqa: E402  (tools/ is not a package)


def _round_trip(sandbox_copy: nn.Module, grader_copy: nn.Module) -> None:
    changes = plain_data.argument_changes([sandbox_copy], plain_data.snapshot_arguments([sandbox_copy]))
    plain_data.apply_argument_changes([grader_copy], plain_data.loads(plain_data.dumps(changes)))


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def test_statistics_modes_and_momentum_of_batchnorm_come_back():
    sandbox_copy = _net().eval()
    grader_copy = copy.deepcopy(sandbox_copy)
    sandbox_copy[1].train()
    sandbox_copy[1].momentum = 1.0
    with torch.no_grad():
        sandbox_copy(torch.randn(8, 3, 6, 6))
    _round_trip(sandbox_copy, grader_copy)
    assert grader_copy[1].momentum == 1.0 and grader_copy[1].training and not grader_copy.training
    assert torch.equal(grader_copy[1].running_mean, sandbox_copy[1].running_mean)
    assert torch.equal(grader_copy[1].running_var, sandbox_copy[1].running_var)


def test_a_momentum_of_none_comes_back():
    sandbox_copy, grader_copy = _net(), _net()
    sandbox_copy[1].momentum = None  # a cumulative moving average
    _round_trip(sandbox_copy, grader_copy)
    assert grader_copy[1].momentum is None


def test_a_momentum_that_is_not_a_number_is_refused():
    sandbox_copy, grader_copy = _net(), _net()
    state = plain_data.module_state(sandbox_copy)
    state["momentum"] = [["1", "fast"]]
    with pytest.raises(plain_data.NotPlainData, match="momentum"):
        plain_data.apply_module_state(grader_copy, state)
