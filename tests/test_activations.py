"""Tests for course_lib.activations: capturing what layers compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.activations import capture_activations
from course_lib.models import load_backbone, stage_names


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class TwoStages(nn.Module):
    """A toy CNN with BatchNorm and an in-place ReLU right after the layer named `conv`."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.norm(self.relu(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


class SharedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(3, 3)

    def forward(self, x):
        return self.block(self.block(x))


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = nn.LSTM(3, 3, batch_first=True)

    def forward(self, x):
        return self.pair(x)[0]


def hook_count(model: nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())





# ---------------------------------------------------------------------------------------------
# capture_activations


def test_capture_gives_each_stage_of_the_course_model_with_its_shape():
    torch.manual_seed(0)
    model = load_backbone("course-resnet", pretrained=False)
    images = randn(6, 3, 64, 64)
    acts = capture_activations(model, images, stage_names(model))
    assert list(acts) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    shapes = {name: tuple(a.shape) for name, a in acts.items()}
    assert shapes == {"stem": (6, 16, 32, 32), "stage1": (6, 16, 32, 32), "stage2": (6, 32, 16, 16),
                      "stage3": (6, 64, 8, 8), "stage4": (6, 128, 4, 4)}
    assert all(a.dtype == torch.float32 and not a.requires_grad for a in acts.values())
    with torch.no_grad():
        torch.testing.assert_close(acts["stage4"].mean(dim=(2, 3)), model.forward_features(images))


def test_capture_copies_before_an_in_place_relu_and_leaves_modes_and_statistics_alone():
    torch.manual_seed(0)
    model = TwoStages().train()
    model.head.eval()  # a layer deliberately left in eval mode must stay there afterwards
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = randn(4, 3, 8, 8)
    acts = capture_activations(model, images, ["conv", "norm"])
    with torch.no_grad():
        expected_conv = model.conv(images)
    torch.testing.assert_close(acts["conv"], expected_conv)  # negative values survive the in-place ReLU
    assert (acts["conv"] < 0).any()
    assert model.training and model.norm.training and not model.head.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=f"{key} changed")  # eval mode: no running-stat update
    assert hook_count(model) == 0


def test_hooks_are_removed_and_modes_restored_even_when_the_forward_pass_fails():
    model = load_backbone("course-resnet", pretrained=False).train()
    with pytest.raises(ValueError, match="RGB"):
        capture_activations(model, randn(2, 1, 64, 64), ["stage1"])
    assert hook_count(model) == 0
    assert model.training and model.stage1.training


def test_unknown_layer_lists_the_valid_names_and_suggests_one():
    model = load_backbone("course-resnet", pretrained=False)
    with pytest.raises(ValueError, match=r"no layer 'stage5'.*Did you mean.*'stage4'.*Valid names"):
        capture_activations(model, randn(2, 3, 64, 64), ["stage1", "stage5"])
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "images, layers, error, message",
    [
        ("not a tensor", ["conv"], TypeError, "tensor batch"),
        (torch.zeros(3), ["conv"], ValueError, "unsqueeze"),
        (torch.zeros(2, 3, 8, 8), "conv", TypeError, "list of layer names"),
        (torch.zeros(2, 3, 8, 8), [], ValueError, "empty"),
        (torch.zeros(2, 3, 8, 8), ["conv", "conv"], ValueError, "repeated"),
    ],
)
def test_capture_explains_bad_input(images, layers, error, message):
    with pytest.raises(error, match=message):
        capture_activations(TwoStages(), images, layers)


def test_capture_refuses_layers_without_a_single_tensor_output():
    with pytest.raises(RuntimeError, match="ran 2 times"):
        capture_activations(SharedTwice(), randn(2, 3), ["block"])
    lstm_model = ReturnsTuple()
    with pytest.raises(TypeError, match="not a tensor"):
        capture_activations(lstm_model, randn(2, 5, 3), ["pair"])
    assert hook_count(lstm_model) == 0
    with pytest.raises(TypeError, match="nn.Module"):
        capture_activations(lambda x: x, randn(2, 3), ["block"])
