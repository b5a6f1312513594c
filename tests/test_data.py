"""Tests for course_lib.data: ImageNet preprocessing, labels, balanced subsets, lesson target tasks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from standins import SHARED_DATA, write_cifar10, write_svhn
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from course_lib import config
from course_lib.config import CourseConfig
from course_lib.data import (
    FAR_DOMAIN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    dataset_targets,
    imagenet_transform,
    lesson_data,
    near_and_far_targets,
    sample_per_class,
    subset_per_class,
)
from course_lib.feature_cache import FeatureCache, data_fingerprint
from course_lib.real_datasets import RealDataset, load_real_dataset
from course_lib.world import TARGET_CLASSES, WORLD_MEAN, WORLD_STD


class LabelledItems(Dataset):
    """A dataset with no label attribute: labels can only be read item by item."""

    def __init__(self, labels):
        self._labels = labels

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, index):
        return torch.zeros(1), self._labels[index]


# --- imagenet_transform ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("train", [False, True])
def test_imagenet_transform_gives_normalised_3_channel_tensors(mode, train):
    image = Image.new(mode, (40, 30), color=128 if mode == "L" else (128,) * len(mode))
    out = imagenet_transform(32, train=train)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-2, rtol=0)


def test_imagenet_transform_default_size_is_224():
    assert imagenet_transform()(Image.new("L", (28, 28))).shape == (3, 224, 224)


@pytest.mark.parametrize("bad_size", [0, 4, 22.5, "224", True])
def test_imagenet_transform_rejects_bad_sizes(bad_size):
    with pytest.raises(ValueError, match="image_size"):
        imagenet_transform(bad_size)


def test_imagenet_transform_rejects_tensors_with_a_hint():
    with pytest.raises(TypeError, match="before ToTensor"):
        imagenet_transform(32)(torch.zeros(1, 28, 28))


# --- dataset_targets ---------------------------------------------------------------------------


def test_dataset_targets_reads_attributes_without_loading_items():
    class WithTargets(LabelledItems):
        targets = [2, 0, 1]

        def __getitem__(self, index):
            raise AssertionError("dataset_targets must not load items when `targets` exists")

    class WithLabels(WithTargets):  # SVHN keeps its labels in `labels`
        targets = None
        labels = [[3], [4]]

    class OmniglotLike(WithTargets):
        targets = None
        _flat_character_images = [("a.png", 5), ("b.png", 7)]

    assert dataset_targets(WithTargets([])).tolist() == [2, 0, 1]
    assert dataset_targets(WithLabels([])).tolist() == [3, 4]
    assert dataset_targets(OmniglotLike([])).tolist() == [5, 7]
    assert dataset_targets(WithTargets([])).dtype == torch.long


def test_dataset_targets_follows_subset_concat_and_tensor_datasets():
    base = TensorDataset(torch.zeros(5, 2), torch.tensor([0, 1, 2, 3, 4]))
    assert dataset_targets(Subset(Subset(base, [4, 3, 2]), [0, 2])).tolist() == [4, 2]
    assert dataset_targets(ConcatDataset([base, Subset(base, [1])])).tolist() == [0, 1, 2, 3, 4, 1]


def test_dataset_targets_falls_back_to_reading_items():
    assert dataset_targets(LabelledItems([1, 1, 0])).tolist() == [1, 1, 0]


def test_dataset_targets_rejects_items_without_labels():
    class ImagesOnly(LabelledItems):
        def __getitem__(self, index):
            return torch.zeros(1)

    with pytest.raises(TypeError, match=r"\(image, label\)"):
        dataset_targets(ImagesOnly([0, 1]))


def test_dataset_targets_follows_a_real_dataset_to_its_torchvision_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    write_svhn(tmp_path, train_per_class=2, test_per_class=3)
    svhn = load_real_dataset("svhn", root=tmp_path, train=False)
    assert isinstance(svhn, RealDataset)
    # SVHN keeps its labels in `labels`, with the digit 0 stored as 10 in the file.
    assert torch.equal(dataset_targets(svhn), torch.as_tensor(svhn.dataset.labels).long())
    assert sorted(dataset_targets(svhn).tolist()) == sorted(list(range(10)) * 3)


def test_dataset_targets_of_real_mnist(shared_data):
    targets = dataset_targets(load_real_dataset("mnist", root=shared_data, train=False))
    assert targets.shape == (10_000,) and set(targets.tolist()) == set(range(10))


# --- subset_per_class --------------------------------------------------------------------------


def test_subset_per_class_is_balanced_and_reproducible():
    labels = torch.arange(10).repeat_interleave(torch.arange(3, 13))  # class c has c + 3 examples
    dataset = TensorDataset(torch.zeros(len(labels), 1), labels)
    subset = subset_per_class(dataset, 3, seed=1)
    picked = dataset_targets(subset)
    assert torch.bincount(picked).tolist() == [3] * 10
    assert subset.indices == subset_per_class(dataset, 3, seed=1).indices
    assert subset.indices != subset_per_class(dataset, 3, seed=2).indices
    assert len(set(subset.indices)) == 30


def test_subset_per_class_names_classes_that_are_too_small():
    dataset = TensorDataset(torch.zeros(7, 1), torch.tensor([0, 0, 0, 0, 1, 1, 2]))
    with pytest.raises(ValueError) as info:
        subset_per_class(dataset, 3)
    message = str(info.value)
    assert "class 1 has 2" in message and "class 2 has 1" in message and "n_per_class <= 1" in message


@pytest.mark.parametrize("bad_n", [0, -1, 2.0, True])
def test_subset_per_class_rejects_bad_counts(bad_n):
    with pytest.raises(ValueError, match="n_per_class"):
        subset_per_class(TensorDataset(torch.zeros(4, 1), torch.tensor([0, 0, 1, 1])), bad_n)


def test_subset_per_class_of_real_usps(shared_data):
    usps = load_real_dataset("usps", root=shared_data, train=False)
    subset = subset_per_class(usps, 5, seed=0)
    assert len(subset) == 50
    assert torch.bincount(torch.tensor([usps[i][1] for i in subset.indices])).tolist() == [5] * 10


# --- sample_per_class --------------------------------------------------------------------------

# 3 classes with 10, 7 and 5 examples, interleaved as in a real dataset.
LABELS = torch.tensor([0, 1, 2] * 5 + [0, 1] * 2 + [0] * 3)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_sample_per_class_draws_n_distinct_examples_of_every_class_sorted(n):
    indices = sample_per_class(LABELS, n, seed=0)
    assert indices.dtype == torch.int64 and len(indices) == 3 * n
    assert torch.equal(indices, indices.sort().values) and len(indices.unique()) == len(indices)
    assert torch.bincount(LABELS[indices], minlength=3).tolist() == [n, n, n]


def test_sample_per_class_is_deterministic_per_seed_and_varies_with_it():
    labels = torch.arange(300) % 3
    draws = [sample_per_class(labels, 5, seed=seed) for seed in range(4)]
    assert torch.equal(draws[0], sample_per_class(labels, 5, seed=0))
    assert len({tuple(draw.tolist()) for draw in draws}) == 4
    # Not just the first examples of each class.
    assert not torch.equal(draws[0], torch.cat([torch.nonzero(labels == c).flatten()[:5] for c in range(3)]).sort().values)


def test_sample_per_class_takes_every_example_when_n_is_the_class_size():
    assert torch.equal(sample_per_class(torch.tensor([1, 0, 0, 1]), 2, seed=3), torch.arange(4))


def test_sample_per_class_accepts_numpy_ints():
    assert torch.equal(sample_per_class(LABELS, np.int64(2), seed=1), sample_per_class(LABELS, 2, seed=1))


def test_a_class_with_too_few_examples_is_named():
    with pytest.raises(ValueError, match=r"Cannot draw 6 examples per class: class 2 has 5\. Use n_per_class <= 5"):
        sample_per_class(LABELS, 6)


@pytest.mark.parametrize(
    "labels, n, error, message",
    [
        (LABELS.float(), 2, TypeError, r"1-D int64.*\.long\(\)"),
        (LABELS.view(2, -1), 2, TypeError, "1-D int64"),
        (LABELS.tolist(), 2, TypeError, "1-D int64"),
        (LABELS, 0, ValueError, "positive int, got 0"),
        (LABELS, 2.0, ValueError, "positive int, got 2.0"),
        (LABELS, True, ValueError, "positive int, got True"),
        (torch.zeros(0, dtype=torch.long), 1, ValueError, "labels is empty"),
    ],
)
def test_sample_per_class_bad_inputs(labels, n, error, message):
    with pytest.raises(error, match=message):
        sample_per_class(labels, n)

# --- lesson_data -------------------------------------------------------------------------------


def _config(world: str, **changes) -> CourseConfig:
    """A small CourseConfig of ``world`` at smoke size without calling setup() (which seeds and sets thread counts)."""
    settings = dict(
        profile="test", profile_reason="test", world=world, size="smoke", device=torch.device("cpu"), seed=0,
        data_dir=SHARED_DATA, cache_dir=Path("unused"),
        dataset={"offline": "shapeworld", "lite": "fashion-mnist"}.get(world, "mnist"),
        backbone={"offline": "course-resnet", "lite": "efficientnet-lite0"}.get(world, "resnet18"),
        scratch_backbone="resnet18" if world == "real" else "course-resnet",
        **config.size_settings(world, "smoke"),
    )
    settings.update(image_size=32, train_per_class=3, test_per_class=2)
    return CourseConfig(**{**settings, **changes})


def test_lesson_data_offline_is_the_target_classes_with_disjoint_seeds():
    task = lesson_data(_config("offline"))
    assert task.class_names == list(TARGET_CLASSES) and task.num_classes == 10
    assert (len(task.train), len(task.test)) == (30, 20)
    assert (task.mean, task.std) == (tuple(WORLD_MEAN), tuple(WORLD_STD))
    image, label = task.train[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    # Seed 0 for training and seed 1 for testing: no test image is a training image.
    train_images = torch.stack([task.train[i][0] for i in range(len(task.train))])
    test_images = torch.stack([task.test[i][0] for i in range(len(task.test))])
    assert torch.cdist(test_images.flatten(1), train_images.flatten(1)).min() > 0
    assert "target shapes" in task.description and "studio" in task.description


def test_lesson_data_domain_changes_the_images():
    studio = lesson_data(_config("offline"), domain="studio").train[0][0]
    night = lesson_data(_config("offline"), domain="night")
    assert "night" in night.description and not torch.allclose(studio, night.train[0][0])


def test_lesson_data_other_statistics_renormalise_the_same_pixels():
    right = lesson_data(_config("offline"))
    wrong = lesson_data(_config("offline"), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert (wrong.mean, wrong.std) == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    right_image, wrong_image = right.train[0][0], wrong.train[0][0]
    # Undo each normalisation: both must give back the same pixels in [0, 1].
    as_pixels = lambda image, mean, std: image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    assert torch.allclose(as_pixels(right_image, right.mean, right.std), as_pixels(wrong_image, wrong.mean, wrong.std), atol=1e-5)
    assert not torch.allclose(right_image, wrong_image)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mean=(0.5, 0.5, 0.5)), "both mean and std"),
        (dict(std=(0.5, 0.5, 0.5)), "both mean and std"),
        (dict(mean=(0.5, 0.5), std=(0.5, 0.5, 0.5)), "mean must be three numbers"),
        (dict(mean=(0.5, 0.5, 0.5), std=("a", 0.5, 0.5)), "std must be three numbers"),
        (dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.0, 0.5)), "std must be positive"),
    ],
)
def test_lesson_data_rejects_bad_statistics(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lesson_data(_config("offline"), **kwargs)


def test_lesson_data_real_world_uses_balanced_subsets_of_the_dataset(shared_data):
    task = lesson_data(_config("real", data_dir=shared_data))
    assert (len(task.train), len(task.test)) == (30, 20)
    assert task.num_classes == 10 and task.class_names[0].startswith("0")
    image, _ = task.train[0]
    assert image.shape == (3, 32, 32)  # MNIST's grey digits become 3-channel images for ImageNet backbones
    assert torch.bincount(dataset_targets(task.train), minlength=10).tolist() == [3] * 10
    assert (task.mean, task.std) == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))


def test_lesson_data_real_world_without_files_says_where_they_go(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        lesson_data(_config("real", data_dir=tmp_path))


def test_near_and_far_targets_offline_share_classes_but_not_the_look():
    pair = near_and_far_targets(_config("offline"))
    assert list(pair) == ["near", "far"]
    near, far = pair["near"], pair["far"]
    assert near.class_names == far.class_names == list(TARGET_CLASSES)
    assert "studio" in near.description and FAR_DOMAIN in far.description
    assert (len(far.train), len(far.test)) == (len(near.train), len(near.test)) == (30, 20)
    assert near.train[0][1] == far.train[0][1] and not torch.allclose(near.train[0][0], far.train[0][0])


def test_near_and_far_targets_real_world_asks_for_the_far_dataset(tmp_path, shared_data):
    # MNIST (the near target here) is in the shared folder, SVHN is not: the error names SVHN's place.
    cfg = _config("real", data_dir=shared_data)
    with pytest.raises(FileNotFoundError, match="svhn"):
        near_and_far_targets(cfg)


@pytest.fixture
def stand_in_folder(tmp_path, monkeypatch) -> Path:
    """A data folder with stand-in CIFAR-10 and SVHN files (loading them needs COURSE_UNVERIFIED_FILES=1)."""
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    write_cifar10(tmp_path, train_per_class=4, test_per_class=3)
    write_svhn(tmp_path, train_per_class=4, test_per_class=3)
    return tmp_path


def test_lesson_data_real_world_can_be_cached_and_knows_its_source(stand_in_folder):
    cfg = _config("real", dataset="cifar10", data_dir=stand_in_folder, image_size=24)
    task = lesson_data(cfg)
    assert task.class_names[:3] == ["airplane", "automobile", "bird"]
    assert task.description == f"cifar10 from {stand_in_folder / 'cifar-10-batches-py'}"
    assert task.train[0][0].shape == (3, 24, 24)  # cfg.image_size, whatever the files' resolution
    # The feature cache accepts the class-balanced subsets, and their keys tell apart everything
    # the features depend on: the split, the draw, and the normalisation.
    keys = {data_fingerprint(part) for part in (task.train, task.test)}
    other_statistics = lesson_data(cfg, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    keys |= {data_fingerprint(part) for part in (other_statistics.train, other_statistics.test)}
    assert len(keys) == 4
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 2))
    assert FeatureCache(stand_in_folder / "features").key(model, None, task.train, "avg")


def test_near_and_far_targets_real_world_are_cifar10_and_svhn(stand_in_folder):
    pair = near_and_far_targets(_config("real", dataset="cifar10", data_dir=stand_in_folder))
    near, far = pair["near"], pair["far"]
    assert near.description.startswith("cifar10") and far.description.startswith("svhn")
    assert far.class_names == [str(digit) for digit in range(10)]  # SVHN has no class names: its digits
    assert (len(near.train), len(near.test)) == (len(far.train), len(far.test)) == (30, 20)


def test_lesson_data_follows_the_world_not_the_profile_name(stand_in_folder):
    # A config named like an offline preset but in the real world reads real data, and vice versa.
    real = lesson_data(_config("real", profile="smoke", dataset="cifar10", data_dir=stand_in_folder))
    assert real.description.startswith("cifar10")
    offline = lesson_data(dataclasses.replace(_config("offline"), profile="real"))
    assert offline.class_names == list(TARGET_CLASSES)


@pytest.fixture
def lite_folder(tmp_path, shared_data, monkeypatch) -> Path:
    """A data folder with the real MNIST (linked from the shared folder) and a small stand-in Fashion-MNIST."""
    import gzip

    from course_lib import real_datasets

    monkeypatch.setattr(real_datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    (tmp_path / "MNIST").symlink_to(shared_data / "MNIST")
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"images-idx3": rng.integers(0, 256, size=(40, 28, 28)), "labels-idx1": np.arange(40) % 10}
    for split in ("train", "t10k"):
        for kind, array in arrays.items():
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
            with gzip.open(folder / f"{split}-{kind}-ubyte.gz", "wb") as file:
                file.write(header + array.astype(np.uint8).tobytes())
    return tmp_path


def test_the_lite_world_is_fashion_mnist_near_and_mnist_far_for_efficientnet(lite_folder):
    from course_lib.pretrained_weights import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD

    pair = near_and_far_targets(_config("lite", data_dir=lite_folder, image_size=40))
    near, far = pair["near"], pair["far"]
    assert near.description == f"fashion-mnist from {lite_folder / 'fashion-mnist'}"  # where the files were read
    assert far.description == f"mnist from {lite_folder / 'MNIST' / 'raw'}"
    assert near.class_names[0] == "T-shirt/top" and far.class_names[0].startswith("0")
    for task in (near, far):
        assert (task.mean, task.std) == (EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)
        image, _ = task.train[0]
        assert image.shape == (3, 40, 40)
        assert torch.bincount(dataset_targets(task.train), minlength=10).tolist() == [3] * 10
    # The whole 28-px image is upsampled, edges included (no centre crop): a bright border pixel stays.
    raw = near.train.dataset.dataset.images[near.train.indices[0]]
    pixels = torch.as_tensor(raw, dtype=torch.float32) / 255
    upsampled = near.train[0][0][0] * EFFICIENTNET_LITE0_STD[0] + EFFICIENTNET_LITE0_MEAN[0]
    assert abs(float(upsampled[0, 0]) - float(pixels[0, 0])) < 0.15
