"""Tests for course_lib.checkpoints: checkpoint_or_train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.checkpoints import checkpoint_or_train

from toy import loaders, quiet_fit, small_cnn


# ---------------------------------------------------------------------------------------------
# checkpoint_or_train


@pytest.mark.parametrize("filename", ["model.pt", "model.safetensors"])
def test_checkpoint_or_train_trains_once_then_loads(tmp_path, filename):
    path = tmp_path / "sub" / filename
    train, _ = loaders(32)
    calls = []

    def train_fn(model):
        calls.append(1)
        quiet_fit(model, train, epochs=1, lr=0.05)

    first = small_cnn(seed=0)
    checkpoint_or_train(path, first, lambda: train_fn(first))
    assert calls == [1] and path.exists()
    assert [p.name for p in path.parent.iterdir()] == [filename]  # no temporary files left behind

    second = small_cnn(seed=1)
    returned = checkpoint_or_train(path, second, lambda: train_fn(second))
    assert returned is second and calls == [1]
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name

    checkpoint_or_train(path, second, lambda: train_fn(second), retrain=True)
    assert calls == [1, 1]


@pytest.mark.parametrize("filename", ["model.pt", "model.safetensors"])
def test_a_corrupted_checkpoint_is_an_error_not_a_silent_retrain(tmp_path, filename):
    path = tmp_path / filename
    path.write_bytes(b"not a checkpoint at all")
    calls = []
    with pytest.raises(RuntimeError, match=f"{filename}.*(\n.*)*retrain=True") as info:
        checkpoint_or_train(path, small_cnn(), lambda: calls.append(1))
    assert "Delete the file" in str(info.value)
    assert calls == []


def test_a_checkpoint_of_another_model_is_an_error(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint_or_train(path, nn.Linear(4, 2), lambda: None)
    with pytest.raises(RuntimeError, match="different model"):
        checkpoint_or_train(path, small_cnn(), lambda: None)
