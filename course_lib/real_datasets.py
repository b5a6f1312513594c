"""Real torchvision datasets for the real world, with errors that say where the files go.

The offline world (profiles ``smoke`` and ``standard``) uses the course's own images and needs
none of this. The real and lite worlds load Fashion-MNIST, MNIST, USPS, SVHN, CIFAR-10/100 or
Omniglot through :func:`load_real_dataset`; :func:`course_lib.data.lesson_data` turns them into a lesson's target
task (19.1-19.3), and MNIST -> USPS and SVHN -> MNIST are the classic domain shifts of 19.4.

All datasets live under one data folder (``COURSE_DATA_DIR``, see
:func:`course_lib.config.default_data_dir`). USPS and SVHN keep their files in subfolders ``usps/``
and ``svhn/`` of it (torchvision would otherwise put them loose in the folder); the others use
torchvision's own subfolders. Fashion-MNIST, the lite world's target task, is read from its
original ``*-idx?-ubyte.gz`` files: in ``fashion-mnist/`` of the data folder if they are there,
else where Debian's package ``dataset-fashion-mnist`` installs them (:data:`DEBIAN_FASHION_MNIST`).

Every dataset comes back as a :class:`RealDataset`: the torchvision dataset plus a
``fingerprint`` of its files, so that :class:`course_lib.features.FeatureCache` can tell when the
files changed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from course_lib.config import allow_unverified, default_data_dir

__all__ = ["DEBIAN_FASHION_MNIST", "FASHION_MNIST_CLASSES", "REAL_DATASETS", "IdxImages", "dataset_folder",
           "files_fingerprint", "load_real_dataset", "read_idx", "RealDataset"]

REAL_DATASETS = ("fashion-mnist", "mnist", "usps", "svhn", "cifar10", "cifar100", "omniglot")
# Where `apt-get install dataset-fashion-mnist` puts the files (`dpkg -L dataset-fashion-mnist`).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")

# torchvision's class for each dataset (in torchvision.datasets).
_TORCHVISION_CLASSES = {
    "mnist": "MNIST", "usps": "USPS", "svhn": "SVHN", "cifar10": "CIFAR10", "cifar100": "CIFAR100", "omniglot": "Omniglot",
}


def dataset_folder(name: str, root: str | Path | None = None) -> Path:
    """The folder torchvision (or, for Fashion-MNIST, :class:`IdxImages`) reads ``name`` from, given the data
    folder ``root`` (default :func:`course_lib.config.default_data_dir`): MNIST's is ``root/MNIST/raw``, which
    19.7's Split MNIST reads too. Fashion-MNIST's is ``root/fashion-mnist`` if it exists, else Debian's folder."""
    root = Path(root).expanduser() if root is not None else default_data_dir()
    if name == "fashion-mnist":
        in_root = root / "fashion-mnist"
        return in_root if in_root.is_dir() or not DEBIAN_FASHION_MNIST.is_dir() else DEBIAN_FASHION_MNIST
    return {
        "mnist": root / "MNIST" / "raw",
        "usps": root / "usps",
        "svhn": root / "svhn",
        "cifar10": root / "cifar-10-batches-py",
        "cifar100": root / "cifar-100-python",
        "omniglot": root / "omniglot-py",
    }[name]


def _expected_files(name: str, train: bool) -> list[str]:
    """The files torchvision checks for in :func:`dataset_folder` (names as torchvision spells them)."""
    if name == "fashion-mnist":
        split = "train" if train else "t10k"
        return [f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz"]
    if name == "mnist":  # torchvision checks all four files whichever split is asked for
        return ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if name == "usps":
        return ["usps.bz2" if train else "usps.t.bz2"]
    if name == "svhn":
        return ["train_32x32.mat" if train else "test_32x32.mat"]
    if name == "cifar10":  # torchvision checks the five training batches and the test batch for either split
        return [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    if name == "cifar100":
        return ["train", "test", "meta"]
    # Omniglot checks the zip's checksum and then reads the unpacked folder next to it.
    split = "images_background" if train else "images_evaluation"
    return [f"{split}.zip", split]


def _missing_data_message(name: str, root: Path, train: bool, problem: str) -> str:
    folder = dataset_folder(name, root)
    files = ", ".join(_expected_files(name, train))
    split = "train" if train else "test"
    if name == "fashion-mnist":  # no download: Debian packages it
        get_it = ("install Debian's package with `sudo apt-get install dataset-fashion-mnist` (it puts the files "
                  f"in {DEBIAN_FASHION_MNIST})")
    else:
        get_it = f"call load_real_dataset({name!r}, download=True) on a machine with internet access"
    return (
        f"{problem}\n"
        f"The {name} {split} split is read from the folder {folder} and needs: {files}.\n"
        "To fix this, either\n"
        f"  - {get_it}, or\n"
        f"  - copy the files into {folder}, or\n"
        "  - set the COURSE_DATA_DIR environment variable (or pass root=...) to the folder that already holds them.\n"
        "The offline profiles (COURSE_PROFILE=standard or smoke) use the course's own image world and need no data."
    )


def _without_checksums(cls: type) -> type:
    """A subclass of torchvision dataset class ``cls`` whose expected md5 sums are all None.

    torchvision then only checks that the files exist (its ``check_integrity(path, md5=None)``);
    everything else, reading the files included, is torchvision's own code. Only for stand-in
    files (see :func:`course_lib.config.allow_unverified`).
    """
    changes = {}
    for attribute in ("train_list", "test_list"):  # CIFAR: [file name, md5] pairs
        if hasattr(cls, attribute):
            changes[attribute] = [[filename, None] for filename, _ in getattr(cls, attribute)]
    if isinstance(getattr(cls, "meta", None), dict):  # CIFAR's batches.meta
        changes["meta"] = {**cls.meta, "md5": None}
    if isinstance(getattr(cls, "split_list", None), dict):  # SVHN, USPS: split -> [url, file name, md5]
        changes["split_list"] = {split: [url, filename, None] for split, (url, filename, _) in cls.split_list.items()}
    if isinstance(getattr(cls, "zips_md5", None), dict):  # Omniglot
        changes["zips_md5"] = dict.fromkeys(cls.zips_md5)
    return type(f"Unverified{cls.__name__}", (cls,), changes)


def _build_torchvision_dataset(name: str, root: Path, train: bool, transform: Callable | None, download: bool,
                               verified: bool = True) -> Dataset:
    import torchvision.datasets as tv  # imported here: torchvision is slow to import and only this needs it

    cls = getattr(tv, _TORCHVISION_CLASSES[name])
    if not verified:
        cls = _without_checksums(cls)
    split = "train" if train else "test"
    if name == "usps":
        return cls(root / "usps", train=train, transform=transform, download=download)
    if name == "svhn":
        return cls(root / "svhn", split=split, transform=transform, download=download)
    if name == "omniglot":
        return cls(root, background=train, transform=transform, download=download)
    return cls(root, train=train, transform=transform, download=download)


def files_fingerprint(paths: list[Path]) -> str:
    """A short hash of the names, sizes and modification times of ``paths`` (folders: every file in them).

    Changes when a file is replaced, rewritten or copied anew; reading the files' contents would
    take seconds for the larger datasets, and a changed file changes its size or time. The
    fingerprint of every :class:`RealDataset`, so of the feature cache's keys in 19.1 and 19.2.
    """
    entries = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            status = file.stat()
            entries.append([str(file), status.st_size, status.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def read_idx(path: Path) -> np.ndarray:
    """The array in an IDX file (MNIST's and Fashion-MNIST's format), gzipped or not.

    The header is two zero bytes, a type code (8: unsigned bytes), the number of dimensions, and
    each dimension as a big-endian 32-bit integer; the values follow, row by row.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 8:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes; it is probably damaged: get it again.")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {values.size} values but its header says {shape}: it is truncated; get it again.")
    return values.reshape(shape).copy()  # frombuffer's view is read-only; torch wants to own writable data


class IdxImages(Dataset):
    """Grayscale images and labels from a pair of IDX files, with items as torchvision's MNIST gives them.

    ``dataset[i]`` is ``(transform(PIL image), label)``; ``targets`` holds every label and
    ``classes`` the class names. Fashion-MNIST is read this way, straight from the gzipped
    originals that Debian installs (torchvision's own class wants them unpacked).
    """

    def __init__(self, images_file: Path, labels_file: Path, classes: Sequence[str], transform: Callable | None = None):
        self.images = read_idx(images_file)
        self.targets = torch.from_numpy(read_idx(labels_file).astype(np.int64))
        if self.images.ndim != 3 or len(self.images) != len(self.targets):
            raise ValueError(f"{images_file} and {labels_file} do not match: {self.images.shape} images, "
                             f"{len(self.targets)} labels.")
        self.classes, self.transform = list(classes), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        return f"IdxImages({len(self)} images of {self.images.shape[1]}x{self.images.shape[2]} px, {len(self.classes)} classes)"

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index], mode="L")
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class RealDataset(Dataset):
    """A torchvision dataset read from the data folder, with a ``fingerprint`` for the feature cache.

    Items (``(image, label)``), length, ``classes`` and ``transform`` are those of the torchvision
    dataset, kept in ``.dataset``. ``fingerprint`` names the dataset and split and hashes its files
    (:func:`files_fingerprint`); :func:`course_lib.features.data_fingerprint` adds the transform.
    ``folder`` is where the files were read from (for Fashion-MNIST, the data folder or Debian's).
    Made by :func:`load_real_dataset`.
    """

    def __init__(self, name: str, train: bool, dataset: Dataset, files: list[Path]):
        self.name, self.train, self.dataset = name, train, dataset
        self.folder = files[0].parent
        self.fingerprint = f"{name}/{'train' if train else 'test'}/{type(dataset).__name__}/files={files_fingerprint(files)}"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    @property
    def transform(self) -> Callable | None:
        """The torchvision dataset's image transform."""
        return self.dataset.transform

    @property
    def target_transform(self) -> Callable | None:
        """The torchvision dataset's label transform."""
        return self.dataset.target_transform

    @property
    def classes(self) -> list[str]:
        """Class names, where torchvision knows them (SVHN and Omniglot have none: an empty list)."""
        return list(getattr(self.dataset, "classes", None) or [])

    def __repr__(self) -> str:
        return f"RealDataset({self.name!r}, fingerprint={self.fingerprint!r})\n{self.dataset!r}"


def load_real_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    train: bool = True,
    transform: Callable | None = None,
    download: bool = False,
) -> RealDataset:
    """Load one of :data:`REAL_DATASETS` with torchvision (the real world of every chapter).

    ``root`` defaults to :func:`course_lib.config.default_data_dir`. ``train`` picks the training
    or test split (for Omniglot: the "background" or "evaluation" alphabets, as used in 19.5).
    Missing or corrupted files raise :class:`FileNotFoundError` saying which files go where; with
    ``download=True`` torchvision fetches them first (this needs internet access). Files that fail
    torchvision's checksums are refused, unless ``COURSE_UNVERIFIED_FILES=1`` (tests only).
    Fashion-MNIST is never downloaded: its error names the Debian package that installs it.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string such as 'mnist', got {type(name).__name__}.")
    key = name.lower()
    if key not in REAL_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}: use one of {', '.join(REAL_DATASETS)}.")
    root = Path(root).expanduser() if root is not None else default_data_dir()
    folder = dataset_folder(key, root)

    missing = [f for f in _expected_files(key, train) if not (folder / f).exists()]
    if missing and (not download or key == "fashion-mnist"):  # the course downloads no Fashion-MNIST: Debian has it
        problem = f"The {key} dataset was not found: missing {', '.join(missing)} in {folder}."
        raise FileNotFoundError(_missing_data_message(key, root, train, problem))
    if key == "fashion-mnist":
        images, labels = (folder / f for f in _expected_files(key, train))
        try:
            dataset = IdxImages(images, labels, FASHION_MNIST_CLASSES, transform)
        except (ValueError, OSError, EOFError) as error:
            problem = f"The fashion-mnist files in {folder} could not be read ({type(error).__name__}: {error})."
            raise FileNotFoundError(_missing_data_message(key, root, train, problem)) from error
        return RealDataset(key, train, dataset, [images, labels])
    try:
        try:
            dataset = _build_torchvision_dataset(key, root, train, transform, download)
        except RuntimeError as error:  # torchvision's "Dataset not found or corrupted": a checksum failed
            if download or not allow_unverified(folder, f"its files fail torchvision's checksums ({error})"):
                raise
            dataset = _build_torchvision_dataset(key, root, train, transform, download, verified=False)
    except (RuntimeError, OSError, EOFError) as error:
        # torchvision reports missing or corrupted files as RuntimeError("Dataset not found ..."),
        # a failed download as URLError/RuntimeError, and USPS a broken archive as OSError/EOFError.
        if download:
            problem = f"Downloading {key} failed ({type(error).__name__}: {error}); is there internet access?"
        else:
            problem = (
                f"The {key} files in {folder} are there but could not be read ({type(error).__name__}: {error}); "
                "they are probably incomplete or corrupted: delete them and get them again."
            )
        raise FileNotFoundError(_missing_data_message(key, root, train, problem)) from error
    return RealDataset(key, train, dataset, [folder / f for f in _expected_files(key, train)])
