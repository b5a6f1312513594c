"""Small datasets and models shared by the feature-extraction and feature-cache tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from course_lib.features import extract_features


class FingerprintedImages(Dataset):
    """A stand-in for the course's ShapeWorld: tensors, a `fingerprint` string and a `transform`."""

    def __init__(self, n: int = 20, seed: int = 0, transform=None):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 16, 16, generator=generator)
        self.labels = torch.arange(n) % 3
        self.fingerprint = f"toy-images-n{n}-seed{seed}"
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])


class Scale:
    """A transform with a stable repr, as torchvision's transforms have."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, image):
        return image * self.factor

    def __repr__(self) -> str:
        return f"Scale({self.factor})"


class CountingCNN(nn.Module):
    """A tiny CNN with BatchNorm and an in-place ReLU that counts its forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)
        self.forward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        return self.head(self.pool(self.body(x)))


def extract(model, data, layer=None, **kwargs):
    """extract_features in batches of 8, without a progress bar."""
    return extract_features(model, data, layer, batch_size=8, progress=False, **kwargs)
