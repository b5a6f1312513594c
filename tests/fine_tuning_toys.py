"""Tiny 'pretrained' models and loaders shared by the fine-tuning, freezing, forgetting and experiment tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.freezing import batchnorm_statistics
from course_lib.models import CourseResNet, layer_groups

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
