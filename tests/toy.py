"""Small learnable toy data and models, and an assertion helper, shared by the tests."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.training import fit

NUM_CLASSES = 3


def colour_images(n: int, seed: int) -> TensorDataset:
    """Learnable toy images: class k is noise plus a bright channel k."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = torch.rand(n, 3, 16, 16, generator=generator) * 0.5
    images[torch.arange(n), labels] += 0.5
    return TensorDataset(images, labels)


def small_cnn(seed: int = 0) -> nn.Sequential:
    """A four-channel CNN with BatchNorm, enough to learn colour_images."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, NUM_CLASSES),
    )


def loaders(n_train: int = 96, n_val: int = 48) -> tuple[DataLoader, DataLoader]:
    """A shuffled training loader and an ordered validation loader of colour_images."""
    train = DataLoader(colour_images(n_train, seed=0), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(colour_images(n_val, seed=1), batch_size=32)
    return train, val


def quiet_fit(model, train_loader, **kwargs):
    """fit without a progress bar."""
    return fit(model, train_loader, progress=False, **kwargs)


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
