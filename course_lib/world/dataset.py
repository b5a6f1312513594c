"""``ShapeWorld``: the course's offline image dataset, with an on-disk cache and normalisation.

    train = ShapeWorld("source", domain="studio", n_per_class=100, seed=0)
    test = ShapeWorld("source", domain="studio", n_per_class=50, seed=1)   # never shares an image
    shifted = ShapeWorld("source", domain="night", n_per_class=50, seed=1)  # same shapes, at night

Image ``i`` has class ``classes[i % len(classes)]``, so every class gets ``n_per_class`` images and
a smaller dataset is exactly the start of a larger one. Generated arrays are cached as one
``.npz`` file per :attr:`ShapeWorld.fingerprint` under ``default_cache_dir() / "world"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from course_lib.config import default_cache_dir
from course_lib.core import atomic_write
from course_lib.world.domains import Domain, get_domain
from course_lib.world.render import ATTRIBUTE_NAMES, GENERATOR_VERSION, render_batch
from course_lib.world.shapes import shape_class
from course_lib.world.splits import SPLITS

# Per-channel mean and standard deviation of ShapeWorld("source", "studio", n_per_class=500,
# seed=0) pixels in [0, 1], computed once as `x = world.images.float() / 255; x.mean((0, 2, 3)), x.std((0, 2, 3))`
# and written here so that every chapter normalises the same way (tests recompute them).
WORLD_MEAN = (0.8223, 0.8205, 0.8202)
WORLD_STD = (0.2017, 0.2035, 0.2048)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256
_CHUNK = 256  # images rendered per NumPy batch: big enough to vectorise, small enough for the cache
_PROGRESS_FROM = 5000


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Standardise float images in [0, 1], shape ``(3, H, W)`` or ``(N, 3, H, W)``, with WORLD_MEAN/STD."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(
            f"normalize expects a float tensor in [0, 1], got {getattr(images, 'dtype', type(images).__name__)}; "
            "convert uint8 images with images.float() / 255 first."
        )
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"normalize expects shape (3, H, W) or (N, 3, H, W), got {tuple(images.shape)}.")
    mean = torch.tensor(WORLD_MEAN, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.tensor(WORLD_STD, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - mean) / std


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}.")
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {limit}, got {value}.")
    return int(value)


class ShapeWorld(Dataset):
    """Images of the procedural shape world with labels, attributes, boxes and masks.

    ``split`` is a name in ``SPLITS`` ("source", "target", "all_named", ...); ``classes`` overrides
    it with explicit class names (named shapes or novel "glyph-NNNNNN" names). ``domain`` is a
    name in ``DOMAINS`` or a :class:`Domain`. ``dataset[i]`` returns ``(image, label)``: the image
    as float32 ``(3, H, W)`` in [0, 1] passed through ``transform``; without a transform it is
    standardised with :func:`normalize`. A ``transform`` you pass *replaces* that default, so end
    it with ``normalize`` if you want both (e.g. ``Compose([augment, normalize])``).

    ``cache_dir=None`` caches under ``default_cache_dir() / "world"``; ``cache_dir=False`` disables
    the cache.
    """

    def __init__(
        self,
        split: str = "source",
        domain: str | Domain = "studio",
        n_per_class: int = 100,
        seed: int = 0,
        image_size: int = 64,
        classes: Sequence[str] | None = None,
        transform: Callable | None = None,
        cache_dir: Path | str | None | bool = None,
        progress: bool = True,
    ):
        if classes is None:
            if split not in SPLITS:
                raise ValueError(f"Unknown split {split!r}. Use one of {', '.join(SPLITS)}, or pass classes=[...].")
            classes = SPLITS[split]
        else:
            if isinstance(classes, str) or not isinstance(classes, Sequence):
                raise TypeError(f"classes must be a list of class names, got {classes!r}; e.g. classes=['circle', 'star5'].")
            split = "custom"
        if len(classes) < 1 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be a non-empty list without repeats, got {list(classes)!r}.")
        for name in classes:
            shape_class(name)  # raises a helpful error for unknown names
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable (or None for normalize), got {type(transform).__name__}.")
        self.split = split
        self.class_names = tuple(classes)
        self.domain = get_domain(domain)
        self.domain_name = self.domain.name
        self.n_per_class = _check_int("n_per_class", n_per_class, 1)
        self.seed = _check_int("seed", seed, 0)
        self.image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        self.transform = transform
        self.attribute_names = ATTRIBUTE_NAMES
        self.fingerprint = self._fingerprint()

        arrays = self._load_or_generate(cache_dir, progress)
        self.images = torch.from_numpy(arrays["images"])
        self.labels = torch.from_numpy(arrays["labels"])
        self.attributes = torch.from_numpy(arrays["attributes"])
        self.boxes = torch.from_numpy(arrays["boxes"])
        self.masks = torch.from_numpy(arrays["masks"])

    @property
    def num_classes(self) -> int:
        """How many classes the dataset has (the size of a classifier head for it)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return self.n_per_class * len(self.class_names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a ShapeWorld of {len(self)} images.")
        image = self.images[index].float() / 255
        image = normalize(image) if self.transform is None else self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return (f"ShapeWorld(split={self.split!r}, domain={self.domain_name!r}, {len(self.class_names)} classes x "
                f"{self.n_per_class}, seed={self.seed}, {self.image_size}px, fingerprint={self.fingerprint!r})")

    def _fingerprint(self) -> str:
        content = {
            "generator_version": GENERATOR_VERSION,
            "classes": self.class_names,
            "domain": dataclasses.asdict(self.domain),
            "n_per_class": self.n_per_class,
            "seed": self.seed,
            "image_size": self.image_size,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def generate(self, progress: bool = False) -> dict[str, np.ndarray]:
        """Render every image and annotation (no cache involved); returns NumPy arrays."""
        n, size = len(self), self.image_size
        arrays = {
            "images": np.empty((n, 3, size, size), np.uint8),
            "labels": np.arange(n, dtype=np.int64) % len(self.class_names),
            "attributes": np.empty((n, len(ATTRIBUTE_NAMES)), np.float32),
            "boxes": np.empty((n, 4), np.float32),
            "masks": np.empty((n, size, size), bool),
        }
        starts = range(0, n, _CHUNK)
        if progress and n > _PROGRESS_FROM:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"generating {n} {self.domain_name} images", unit="batch")
        for start in starts:
            rows = slice(start, min(start + _CHUNK, n))
            batch = render_batch(self.class_names, arrays["labels"][rows], np.arange(n)[rows], self.seed, self.domain, size)
            for key in ("images", "attributes", "boxes", "masks"):
                arrays[key][rows] = getattr(batch, key)
        return arrays

    # -- cache ------------------------------------------------------------------------------------

    def cache_path(self, cache_dir: Path | str | None = None) -> Path:
        """Where this dataset's cache file lives (whether or not it exists yet)."""
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "world"
        return folder / f"shapeworld-{self.split}-{self.domain_name}-{self.fingerprint}.npz"

    def _load_or_generate(self, cache_dir: Path | str | None | bool, progress: bool) -> dict[str, np.ndarray]:
        if cache_dir is False:
            return self.generate(progress)
        if cache_dir is True or not (cache_dir is None or isinstance(cache_dir, (str, os.PathLike))):
            raise TypeError(f"cache_dir must be a folder path, None (the default folder) or False (no cache), got {cache_dir!r}.")
        path = self.cache_path(cache_dir)
        if path.exists():
            try:
                return self._read_cache(path)
            except Exception as error:  # any damage at all: say so, then rebuild the file
                warnings.warn(f"The world cache file {path} is corrupted ({error}); it is being regenerated.", stacklevel=3)
        arrays = self.generate(progress)
        _write_cache(path, arrays, self.fingerprint)
        return arrays

    def _read_cache(self, path: Path) -> dict[str, np.ndarray]:
        n, size = len(self), self.image_size
        expected = {
            "images": ((n, 3, size, size), np.uint8), "labels": ((n,), np.int64),
            "attributes": ((n, len(ATTRIBUTE_NAMES)), np.float32), "boxes": ((n, 4), np.float32),
            "masks": ((n, size, size), bool),
        }
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["fingerprint"]) != self.fingerprint:
                raise ValueError("it belongs to a different dataset")
            arrays = {key: stored[key] for key in ("images", "labels", "attributes", "boxes")}
            arrays["masks"] = np.unpackbits(stored["packed_masks"], axis=-1, count=size).astype(bool)
            checksum = int(stored["checksum"])
        for key, (shape, dtype) in expected.items():
            if arrays[key].shape != shape or arrays[key].dtype != dtype:
                raise ValueError(f"{key} has {arrays[key].dtype} {arrays[key].shape}, expected {np.dtype(dtype)} {shape}")
        if _checksum(arrays) != checksum:
            raise ValueError("its checksum does not match its content")
        return arrays


def _checksum(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for key in ("images", "labels", "attributes", "boxes", "masks"):
        crc = zlib.crc32(np.ascontiguousarray(arrays[key]).data, crc)  # crc32 is cheap on hundreds of MB
    return crc


def _write_cache(path: Path, arrays: dict[str, np.ndarray], fingerprint: str) -> None:
    """Write atomically: a temporary file in the same folder, renamed when complete, so a crash or
    a second process never leaves a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {key: arrays[key] for key in ("images", "labels", "attributes", "boxes")}
    content["packed_masks"] = np.packbits(arrays["masks"], axis=-1)  # 8x smaller than bools
    content.update(checksum=np.array(_checksum(arrays), np.int64), fingerprint=np.array(fingerprint))
    with atomic_write(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, **content)
