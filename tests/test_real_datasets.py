"""Tests for course_lib.real_datasets: torchvision datasets from the data folder, fingerprints, checksums."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from standins import write_cifar10, write_svhn
from torch.utils.data import Subset

from course_lib import real_datasets
from course_lib.data import dataset_targets, imagenet_transform, subset_per_class
from course_lib.feature_cache import FeatureCache, data_fingerprint
from course_lib.features import extract_features
from course_lib.real_datasets import REAL_DATASETS, RealDataset, files_fingerprint, load_real_dataset


@pytest.fixture
def unverified(monkeypatch):
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")


# --- the genuine MNIST and USPS files ------------------------------------------------------------


def test_real_mnist_test_split_loads_from_shared_copy(shared_data):
    mnist = load_real_dataset("mnist", root=shared_data, train=False)
    assert isinstance(mnist, RealDataset) and len(mnist) == 10_000
    image, label = mnist[0]
    assert isinstance(image, Image.Image) and image.size == (28, 28)
    assert 0 <= label <= 9
    assert mnist.classes[0].startswith("0")


def test_real_usps_test_split_loads_from_usps_subfolder(shared_data):
    usps = load_real_dataset("USPS", root=shared_data, train=False, transform=imagenet_transform(32))
    assert len(usps) == 2007
    image, label = usps[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= label <= 9


def test_root_defaults_to_course_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(shared_data))
    assert len(load_real_dataset("mnist", train=False)) == 10_000


def test_feature_cache_accepts_a_balanced_subset_of_real_mnist(shared_data, tmp_path):
    mnist = load_real_dataset("mnist", root=shared_data, train=False, transform=imagenet_transform(16))
    subset = subset_per_class(mnist, 2, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    cache = FeatureCache(tmp_path)
    features, labels = extract_features(model, subset, cache=cache, progress=False)
    assert features.shape == (20, 4) and torch.equal(labels, dataset_targets(subset))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    again = extract_features(model, subset, cache=cache, progress=False)
    assert torch.equal(again[0], features)
    assert len(list(tmp_path.glob("*.pt"))) == 1  # the second call was a cache hit


# --- missing, corrupted and unverified files -------------------------------------------------------


@pytest.mark.parametrize("name", REAL_DATASETS)
@pytest.mark.parametrize("train", [True, False])
def test_missing_files_raise_file_not_found_with_instructions(name, train, tmp_path, monkeypatch):
    monkeypatch.setattr(real_datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    with pytest.raises(FileNotFoundError) as info:
        load_real_dataset(name, root=tmp_path, train=train, download=False)
    message = str(info.value)
    folder = real_datasets.dataset_folder(name, tmp_path)
    assert str(folder) in message
    for filename in real_datasets._expected_files(name, train):
        assert filename in message
    if name == "fashion-mnist":  # Debian packages it; the course never downloads it
        assert "apt-get install dataset-fashion-mnist" in message and "download=True" not in message
    else:
        assert "download=True" in message
    assert "COURSE_DATA_DIR" in message
    assert "COURSE_PROFILE=standard" in message
    assert list(tmp_path.iterdir()) == []  # nothing was created or downloaded


def test_missing_data_uses_course_data_dir_in_message(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        load_real_dataset("cifar10")


def test_corrupted_files_are_reported_as_corrupted(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for filename in real_datasets._expected_files("cifar10", train=False):
        (folder / filename).write_bytes(b"not a cifar batch")
    with pytest.raises(FileNotFoundError, match="corrupted") as info:
        load_real_dataset("cifar10", root=tmp_path, train=False)
    assert isinstance(info.value.__cause__, RuntimeError)  # torchvision's own error stays attached


def test_corrupted_usps_archive_is_reported(tmp_path):
    (tmp_path / "usps").mkdir()
    (tmp_path / "usps" / "usps.t.bz2").write_bytes(b"not bz2 data")
    with pytest.raises(FileNotFoundError, match="corrupted"):
        load_real_dataset("usps", root=tmp_path, train=False)


def test_failed_download_is_wrapped(tmp_path, monkeypatch):
    import torchvision.datasets as tv

    def no_network(self):
        raise URLError("no network in this test")

    monkeypatch.setattr(tv.MNIST, "download", no_network)
    with pytest.raises(FileNotFoundError, match="Downloading mnist failed") as info:
        load_real_dataset("mnist", root=tmp_path, download=True)
    assert "internet" in str(info.value)


@pytest.mark.parametrize("name, write", [("cifar10", write_cifar10), ("svhn", write_svhn)])
def test_stand_in_files_fail_the_checksums_unless_allowed_loudly(name, write, tmp_path, monkeypatch, capsys):
    write(tmp_path, train_per_class=3, test_per_class=2)
    monkeypatch.delenv("COURSE_UNVERIFIED_FILES", raising=False)
    with pytest.raises(FileNotFoundError, match="corrupted"):
        load_real_dataset(name, root=tmp_path, train=False)
    assert capsys.readouterr().err == ""

    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    for _ in range(2):  # the warning names the folder every time, not just the first
        test = load_real_dataset(name, root=tmp_path, train=False)
        err = capsys.readouterr().err
        assert "WARNING: COURSE_UNVERIFIED_FILES=1" in err and str(real_datasets.dataset_folder(name, tmp_path)) in err
    assert len(test) == 20 and torch.bincount(dataset_targets(test)).tolist() == [2] * 10
    assert type(test.dataset).__name__.startswith("Unverified")  # the repr says so too
    assert len(load_real_dataset(name, root=tmp_path, train=True)) == 30


def test_unverified_setting_must_be_1(tmp_path, monkeypatch):
    write_svhn(tmp_path, train_per_class=1, test_per_class=1)
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "yes")
    with pytest.raises(ValueError, match="COURSE_UNVERIFIED_FILES must be 1"):
        load_real_dataset("svhn", root=tmp_path, train=False)


def test_stand_in_cifar10_reads_images_and_class_names(tmp_path, unverified):
    write_cifar10(tmp_path, train_per_class=5, test_per_class=2)
    train = load_real_dataset("cifar10", root=tmp_path, train=True, transform=imagenet_transform(32))
    assert len(train) == 50 and train.classes[:2] == ["airplane", "automobile"]
    image, label = train[0]
    assert image.shape == (3, 32, 32) and 0 <= label <= 9
    assert torch.bincount(dataset_targets(train)).tolist() == [5] * 10


@pytest.mark.parametrize("bad_name", ["imagenet", "mnist10", ""])
def test_unknown_name_lists_valid_ones(bad_name):
    with pytest.raises(ValueError) as info:
        load_real_dataset(bad_name)
    for name in REAL_DATASETS:
        assert name in str(info.value)


def test_non_string_name_is_a_type_error():
    with pytest.raises(TypeError, match="string"):
        load_real_dataset(3)


# --- fingerprints ----------------------------------------------------------------------------------


def test_fingerprint_names_the_split_and_changes_with_files_and_transform(tmp_path, unverified):
    write_svhn(tmp_path, train_per_class=2, test_per_class=2)
    test = load_real_dataset("svhn", root=tmp_path, train=False, transform=imagenet_transform(32))
    train = load_real_dataset("svhn", root=tmp_path, train=True, transform=imagenet_transform(32))
    assert test.fingerprint.startswith("svhn/test/") and train.fingerprint.startswith("svhn/train/")
    same = load_real_dataset("svhn", root=tmp_path, train=False, transform=imagenet_transform(32))
    assert data_fingerprint(same) == data_fingerprint(test)
    # Another transform: same files, different features.
    assert data_fingerprint(load_real_dataset("svhn", root=tmp_path, train=False, transform=imagenet_transform(48))) \
        != data_fingerprint(test)
    # Rewritten files (other images): a new fingerprint, so stale features are never returned.
    write_svhn(tmp_path, train_per_class=2, test_per_class=3, seed=5)
    rewritten = load_real_dataset("svhn", root=tmp_path, train=False, transform=imagenet_transform(32))
    assert rewritten.fingerprint != test.fingerprint
    # A balanced subset adds its indices.
    assert data_fingerprint(Subset(test, [0, 1])) != data_fingerprint(Subset(test, [0, 2]))


def test_files_fingerprint_follows_sizes_times_and_folders(tmp_path):
    file, folder = tmp_path / "a.bin", tmp_path / "images"
    file.write_bytes(b"1234")
    folder.mkdir()
    (folder / "x.png").write_bytes(b"x")
    first = files_fingerprint([file, folder])
    assert files_fingerprint([file, folder]) == first
    (folder / "y.png").write_bytes(b"y")
    second = files_fingerprint([file, folder])
    assert second != first
    os.utime(file, ns=(1, 1))
    assert files_fingerprint([file, folder]) != second


def test_datasets_without_a_fingerprint_are_still_refused_by_the_cache(tmp_path, unverified):
    write_svhn(tmp_path, train_per_class=1, test_per_class=1)
    bare = load_real_dataset("svhn", root=tmp_path, train=False).dataset  # the torchvision object itself
    with pytest.raises(ValueError, match="no `fingerprint`"):
        data_fingerprint(Subset(bare, [0]))


# --- Fashion-MNIST from its original IDX files (Debian's package) ----------------------------------


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist(folder, n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, size=(n, 28, 28)), np.arange(n) % 10
    folder.mkdir(parents=True)
    for split in ("train", "t10k"):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_fashion_mnist_is_read_from_the_data_folder_before_debians(tmp_path, monkeypatch):
    monkeypatch.setattr(real_datasets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    _write_fashion_mnist(tmp_path / "debian", n=30, seed=1)
    images, labels = _write_fashion_mnist(tmp_path / "data" / "fashion-mnist", n=20)
    dataset = load_real_dataset("fashion-mnist", root=tmp_path / "data", train=False)
    assert len(dataset) == 20 and dataset.classes == list(real_datasets.FASHION_MNIST_CLASSES)
    image, label = dataset[3]
    assert image.size == (28, 28) and image.mode == "L" and label == 3
    assert np.array_equal(np.asarray(image), images[3])
    assert torch.equal(dataset_targets(dataset), torch.as_tensor(labels))
    assert len(load_real_dataset("fashion-mnist", root=tmp_path / "elsewhere")) == 30  # Debian's folder


def test_a_truncated_idx_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(real_datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    folder = tmp_path / "fashion-mnist"
    _write_fashion_mnist(folder)
    data = gzip.open(folder / "train-images-idx3-ubyte.gz").read()
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as file:
        file.write(data[:-100])
    with pytest.raises(FileNotFoundError, match="truncated") as info:
        load_real_dataset("fashion-mnist", root=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    with pytest.raises(ValueError, match="not an IDX file"):
        real_datasets.read_idx(Path(__file__))


@pytest.mark.skipif(not real_datasets.DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian's dataset-fashion-mnist package is not installed (make test installs it in CI)")
def test_the_real_fashion_mnist_from_debian(tmp_path):
    train = load_real_dataset("fashion-mnist", root=tmp_path)
    test = load_real_dataset("fashion-mnist", root=tmp_path, train=False)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert dataset_targets(test).bincount().tolist() == [1000] * 10
    assert train[0][1] == 9  # the first training image is an ankle boot
