"""Tests for course_lib.core: eval_mode, model_device, to_device, count_parameters, atomic_write."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.core import atomic_write, count_parameters, eval_mode, model_device, to_device

from toy import small_cnn


def test_eval_mode_restores_each_layers_own_mode():
    model = small_cnn()
    model.train()
    model[1].eval()  # a BatchNorm layer deliberately kept in eval mode (19.3)
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and not model[1].training, "model.train(True) would have switched the BatchNorm back"


def test_eval_mode_restores_modes_even_after_an_error():
    model = small_cnn()
    model.train()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training
            raise RuntimeError("boom")
    assert all(module.training for module in model.modules())


def test_model_device_and_a_mismatched_request():
    assert model_device(small_cnn()) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters at all
    with pytest.raises(ValueError, match=r"model.to\('meta'\)"):
        model_device(small_cnn(), "meta")
    with pytest.raises(TypeError, match="nn.Module"):
        model_device("resnet")


def test_to_device_moves_tensors_inside_tuples_lists_and_dicts():
    batch = (torch.zeros(2, 3, 4, 4), {"class": torch.tensor([0, 1]), "box": torch.zeros(2, 4), "name": "a"}, [torch.ones(1)])
    moved = to_device(batch, torch.device("meta"))
    assert isinstance(moved, tuple) and isinstance(moved[1], dict) and isinstance(moved[2], list)
    assert moved[0].device.type == "meta" and moved[1]["class"].device.type == "meta" and moved[2][0].device.type == "meta"
    assert moved[1]["name"] == "a", "what is not a tensor is left as it is"
    images = to_device(torch.zeros(2, 3, 4, 4), torch.device("cpu"), channels_last=True)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert to_device(torch.zeros(2, 4), torch.device("cpu"), channels_last=True).is_contiguous(), "only 4-D images change layout"


def test_count_parameters_splits_trainable_and_frozen():
    model = small_cnn()
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == (total, 0)
    model[5].requires_grad_(False)
    assert count_parameters(model) == (total - 15, 15)
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters("resnet")


def test_atomic_write_replaces_the_file_only_when_the_body_finishes(tmp_path):
    path = tmp_path / "sub" / "weights.pt"
    with atomic_write(path) as temporary:
        assert temporary.parent == path.parent and temporary != path
        temporary.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as temporary:
            temporary.write_text("half")
            raise KeyboardInterrupt  # an interrupted save
    assert path.read_text() == "first", "an interrupted write must leave the old file"
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.pt"], "no temporary file is left behind"
