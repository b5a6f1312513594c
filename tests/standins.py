"""Tiny stand-ins for the real world's files, in the exact on-disk layouts torchvision reads.

The development and CI machines have no internet, so the tests of the real world
(tests/test_real_profile.py, test_real_datasets.py, test_pretrained_weights.py) build small
files of their own: a CIFAR-10 in its pickled batches, an SVHN in its MATLAB files, a randomly
initialised ResNet-18 checkpoint under torch's hub cache, and links to the genuine MNIST/USPS copy
in ../shared/data where it exists. Their contents are random: they exercise the loading code,
not what a model learns. Their checksums cannot match torchvision's, so loading them needs
``COURSE_UNVERIFIED_FILES=1``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("COURSE_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _images(labels: np.ndarray, seed: int) -> np.ndarray:
    """(N, 32, 32, 3) uint8 noise whose mean colour depends on the class, so classes differ a little."""
    rng = np.random.default_rng(seed)
    tint = rng.integers(40, 216, size=(10, 1, 1, 3))
    noise = rng.normal(0, 40, size=(len(labels), 32, 32, 3))
    return np.clip(tint[labels] + noise, 0, 255).astype(np.uint8)


def _balanced_labels(per_class: int, seed: int) -> np.ndarray:
    """``per_class`` labels of each of 10 classes, shuffled (as in the real files)."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), per_class))


def write_cifar10(root: Path, train_per_class: int = 10, test_per_class: int = 10, seed: int = 0) -> Path:
    """A small CIFAR-10 in ``root/cifar-10-batches-py``: five training batches, a test batch, batches.meta."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = _balanced_labels(train_per_class, seed)
    batches = {f"data_batch_{i + 1}": part for i, part in enumerate(np.array_split(train_labels, 5))}
    batches["test_batch"] = _balanced_labels(test_per_class, seed + 1)
    for offset, (filename, labels) in enumerate(batches.items()):
        # torchvision reads "data" as (N, 3072) uint8, channels first, and "labels" as a list of ints.
        data = _images(labels, seed + 10 + offset).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        with open(folder / filename, "wb") as file:
            pickle.dump({"batch_label": filename, "labels": labels.tolist(), "data": data}, file, protocol=2)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": len(batches["data_batch_1"])}, file, protocol=2)
    return folder


def write_svhn(root: Path, train_per_class: int = 10, test_per_class: int = 10, seed: int = 0) -> Path:
    """A small SVHN in ``root/svhn``: train_32x32.mat and test_32x32.mat (MATLAB files, as published)."""
    from scipy.io import savemat

    folder = Path(root) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    for filename, per_class, split_seed in (("train_32x32.mat", train_per_class, seed), ("test_32x32.mat", test_per_class, seed + 1)):
        labels = _balanced_labels(per_class, split_seed)
        # SVHN stores images as (32, 32, 3, N) and the digit 0 as label 10.
        images = _images(labels, split_seed + 20).transpose(1, 2, 3, 0)
        savemat(folder / filename, {"X": images, "y": np.where(labels == 0, 10, labels).reshape(-1, 1).astype(np.uint8)})
    return folder


def write_resnet18_checkpoint(torch_home: Path, seed: int = 12345) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised ResNet-18 state_dict saved where torch's hub cache keeps torchvision's file.

    Returns ``(path, state_dict)``; the file name is torchvision's own (``resnet18-<hash>.pth``).
    The default seed is not one a notebook uses for its random baselines (19.1 draws seeds 0, 1,
    ...), so that the "pretrained" stand-in differs from every random initialisation.
    """
    import torchvision

    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    path = Path(torch_home) / "hub" / "checkpoints" / os.path.basename(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return path, state


def link_shared_mnist_usps(root: Path) -> bool:
    """Link the genuine MNIST and USPS files of ../shared/data into ``root``; False when they are absent."""
    sources = [SHARED_DATA / "MNIST" / "raw", SHARED_DATA / "usps"]
    if not all(source.is_dir() for source in sources):
        return False
    for source, target in zip(sources, [Path(root) / "MNIST" / "raw", Path(root) / "usps"]):
        target.mkdir(parents=True, exist_ok=True)
        for file in source.iterdir():
            (target / file.name).symlink_to(file)
    return True
