"""The small helpers every other module uses: model modes, devices, parameter counts, safe file writes.

This is the bottom layer of ``course_lib``: it imports nothing else from the library, so any
module may import it. Each helper is something a lesson could write in three lines, but that
is easy to get subtly wrong:

- :class:`eval_mode` puts a model in eval mode and afterwards restores *each layer's* mode;
- :func:`model_device` says where a model lives (and refuses a silent move);
- :func:`to_device` moves a batch (tensors in tuples, lists and dicts) to a device;
- :func:`count_parameters` counts trainable and frozen parameters;
- :func:`atomic_write` writes a file so that a crash never leaves half of it behind;
- :func:`file_sha256` is a file's checksum, read in chunks (weights are checked before loading).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["atomic_write", "count_parameters", "eval_mode", "file_sha256", "model_device", "to_device"]


class eval_mode:
    """Context manager: ``with eval_mode(model):`` runs in eval mode, then restores each layer's mode.

    ``model.train(previous)`` would not do: it would also switch layers that were deliberately
    left in eval mode (e.g. frozen BatchNorm layers during fine-tuning) back to train mode.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc_info) -> None:
        for module, was_training in self.modes:
            module.training = was_training


def model_device(model: nn.Module, requested: str | torch.device | None = None) -> torch.device:
    """The device ``model`` is on (its first parameter's); a ``requested`` device must match it.

    Asking for another device than the model's is an error rather than a silent move, because
    moving the model would leave its optimizer's parameters behind.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    tensors = list(model.parameters()) or list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    if requested is not None and not _same_device(torch.device(requested), device):
        raise ValueError(
            f"The model is on {device} but device={str(requested)!r} was requested. Move the model "
            f"first with model.to({str(requested)!r}), or pass device=None to use the model's device."
        )
    return device


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" without an index means the current GPU.
    def index(device: torch.device) -> int:
        if device.index is not None:
            return device.index
        return torch.cuda.current_device() if device.type == "cuda" else 0

    return a.type == b.type and index(a) == index(b)


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """``batch`` with every tensor in it moved to ``device``; tuples, lists and dicts are rebuilt around them.

    Works for any batch a loader yields: ``(images, labels)``, ``(images, {"class": ..., "box": ...})``
    (19.6), a pair of batches from two loaders (19.4). Anything that is not a tensor is left as it
    is. ``channels_last`` stores 4-D image tensors in the memory layout fast convolutions on
    CUDA prefer.
    """
    if isinstance(batch, torch.Tensor):
        # Overlaps the copy with compute when the loader pins memory.
        moved = batch.to(device, non_blocking=device.type == "cuda")
        if channels_last and moved.ndim == 4:
            moved = moved.contiguous(memory_format=torch.channels_last)
        return moved
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device, channels_last) for item in batch)
    return batch


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, frozen)`` numbers of parameters, e.g. to check what fine-tuning will change (19.2, 19.3)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Write ``path`` all at once: ``with atomic_write(path) as temporary: save(..., temporary)``.

    The body writes to a temporary file in the same folder; when it finishes, the file is renamed
    to ``path`` in one step, so readers see the old file or the whole new one, never half of it
    (a crash, Ctrl-C, or a second process writing the same cache). On an error the temporary file
    is removed and ``path`` is left as it was. Used by checkpoints, the feature cache and the world.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (used to check shipped and cached weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
