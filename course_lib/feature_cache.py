"""The feature cache: extracted features on disk, keyed by everything they depend on (19.1, 19.2).

:func:`course_lib.features.extract_features` stores each result in a file named after a hash of
the model's weights (:func:`weights_fingerprint`), the layer, the pooling, the data
(:func:`data_fingerprint`) and its transform. Change any of them and the key changes, so a stale
result is never returned; data that cannot be fingerprinted reliably is refused, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset, TensorDataset

from course_lib.config import default_cache_dir
from course_lib.core import atomic_write

__all__ = ["FeatureCache", "data_fingerprint", "weights_fingerprint"]


# ---------------------------------------------------------------------------------------------
# Fingerprints: what the cached features depend on


def weights_fingerprint(model: nn.Module) -> str:
    """A short hex SHA-256 of the model's state_dict: every tensor's name, dtype, shape and bytes.

    Any change of a weight or a buffer (e.g. BatchNorm statistics) changes the fingerprint.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    hasher = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        _hash_tensor(hasher, tensor, label=name)
    return hasher.hexdigest()[:16]


def _hash_tensor(hasher: Any, tensor: torch.Tensor, label: str = "") -> None:
    tensor = tensor.detach().cpu().contiguous()
    hasher.update(f"{label}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    # Viewing as bytes works for every dtype, bfloat16 included (which NumPy does not know).
    hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())


def data_fingerprint(data: Dataset | DataLoader, transform_desc: str | None = None) -> str:
    """A string that changes whenever the samples that ``data`` yields (or their order) change.

    - A dataset with a ``fingerprint`` string attribute (the course's ShapeWorld has one): that
      string plus a description of its ``transform``.
    - A ``TensorDataset``: a hash of its tensors. A ``Subset``: its dataset's fingerprint plus the indices.
    - A DataLoader: its dataset's fingerprint; it must read the data in order (no shuffling).

    Anything else cannot be fingerprinted reliably, so this raises an error instead of guessing:
    give the dataset a ``fingerprint`` attribute, or extract without a cache. ``transform_desc``
    replaces the description of the transform (for transforms whose repr is not stable).
    """
    if isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler):
            raise ValueError(
                "Cannot cache features of a DataLoader that shuffles or samples: the cached order would not "
                "match. Use shuffle=False, pass the dataset itself, or pass cache=None."
            )
        return f"loader(drop_last={data.drop_last})/" + data_fingerprint(data.dataset, transform_desc)
    if isinstance(data, TensorDataset):
        hasher = hashlib.sha256()
        for tensor in data.tensors:
            _hash_tensor(hasher, tensor)
        return "tensors:" + hasher.hexdigest()[:16]
    if isinstance(data, Subset):
        indices = hashlib.sha256(json.dumps([int(i) for i in data.indices]).encode()).hexdigest()[:16]
        return f"subset:{indices}/" + data_fingerprint(data.dataset, transform_desc)
    fingerprint = getattr(data, "fingerprint", None)
    if isinstance(fingerprint, str) and fingerprint:
        return f"{fingerprint}/transform={transform_desc or _describe_transform(data)}"
    raise ValueError(
        f"Cannot cache features of a {type(data).__name__}: it has no `fingerprint` to tell its contents apart. "
        "Give it a `fingerprint` string attribute that changes whenever its data changes, wrap tensors in a "
        "TensorDataset, or pass cache=None."
    )


def _describe_transform(dataset: Dataset) -> str:
    parts = [repr(getattr(dataset, name, None)) for name in ("transform", "target_transform")]
    description = "; ".join(parts)
    if " at 0x" in description:
        # A lambda or plain object prints its memory address, which differs every session.
        raise ValueError(
            f"Cannot cache features: the dataset's transform has no stable description ({description}). "
            "Use torchvision transforms (whose repr lists their settings), give your transform a __repr__, "
            "or pass cache=None."
        )
    return description


# ---------------------------------------------------------------------------------------------
# The on-disk cache


class FeatureCache:
    """Extracted features on disk, one file per key, in ``folder``.

    Default folder: ``course_lib.config.default_cache_dir() / "features"`` (``COURSE_CACHE_DIR``).
    Files are written atomically (a temporary file, then a rename) and read with
    ``torch.load(weights_only=True)``; a corrupted file gives a warning and is recomputed.
    """

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir() / "features"

    def key(self, model: nn.Module, layer: str | None, data: Dataset | DataLoader, pool: str,
            transform_desc: str | None = None) -> str:
        """A hash of everything the features depend on: model weights, layer, pooling, data.

        ``transform_desc`` replaces the description of the data's transform (its repr) when that
        repr is not stable across sessions (a lambda); see :func:`data_fingerprint`.
        """
        parts = {
            "model": type(model).__qualname__,
            "weights": weights_fingerprint(model),
            "layer": layer,
            "pool": pool,
            "data": data_fingerprint(data, transform_desc),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        """The file that holds (or will hold) the features of ``key``."""
        return self.folder / f"{key}.pt"

    def load(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(features, labels)`` stored under ``key``; None if there are none (or the file is corrupted)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return _check_stored(stored, key)
        except Exception as error:
            warnings.warn(
                f"The feature cache file {path} is corrupted or unreadable ({error}); "
                "recomputing the features and overwriting it.",
                stacklevel=2,
            )
            return None

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor) -> Path:
        """Store ``(features, labels)`` under ``key`` atomically; returns the file."""
        _check_stored({"key": key, "features": features, "labels": labels}, key)  # float32 (N, ...), int64 (N,)
        path = self.path(key)
        with atomic_write(path) as temporary:  # readers see the old file or the complete new one
            torch.save({"key": key, "features": features.contiguous(), "labels": labels.contiguous()}, temporary)
        return path

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.folder)!r})"


def _check_stored(stored: Any, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(stored, dict) or stored.get("key") != key:
        raise ValueError("not a feature file written for this key")
    features, labels = stored.get("features"), stored.get("labels")
    if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("features or labels missing")
    if features.dtype != torch.float32 or labels.dtype != torch.int64 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError("features or labels have the wrong dtype or shape")
    return features, labels
