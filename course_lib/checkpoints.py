"""Checkpoint-or-train: train a model once, then load its weights on every later run.

A lesson cell that trains for minutes wraps the training in a function::

    checkpoint_or_train(cfg.cache_dir / "finetuned.pt", model,
                        lambda: fit(model, train_loader, epochs=cfg.epochs))

The first run trains and saves; re-running the notebook loads the saved weights instead of
re-training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib.core import atomic_write

__all__ = ["checkpoint_or_train"]


def checkpoint_or_train(path: str | Path, model: nn.Module, train_fn: Callable[[], Any], *, retrain: bool = False) -> nn.Module:
    """Load ``model``'s weights from ``path`` if it exists; otherwise train and save them there.

    ``train_fn()`` must train ``model`` in place (its return value is ignored). Files ending in
    ``.safetensors`` use safetensors, any other name a ``torch.save``d state_dict (loaded with
    ``weights_only=True``). Saving is atomic, so an interrupted run leaves no half-written file.
    A checkpoint that cannot be loaded into ``model`` is an error (never a silent re-train):
    delete the file or pass ``retrain=True``.
    """
    path = Path(path)
    if not callable(train_fn):
        raise TypeError(f"train_fn must be a function with no arguments that trains the model, got {train_fn!r}.")
    if path.exists() and not retrain:
        _load_checkpoint(path, model)
        print(f"Loaded trained weights from {path} (pass retrain=True to train again).")
        return model
    train_fn()
    _save_checkpoint(path, model)
    print(f"Saved trained weights to {path}.")
    return model


def _load_checkpoint(path: Path, model: nn.Module) -> None:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"expected a state_dict, found a {type(state).__name__}")
        model.load_state_dict(state)
    except Exception as error:
        raise RuntimeError(
            f"Could not load the checkpoint {path} into this {type(model).__name__}: {error}\n"
            f"It is corrupted or was saved from a different model. Delete the file or pass retrain=True."
        ) from error


def _save_checkpoint(path: Path, model: nn.Module) -> None:
    # Tied (shared) tensors are stored once per name; clone so that safetensors accepts them.
    state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    with atomic_write(path) as temporary:  # an interrupted save never leaves half a checkpoint
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(temporary))
        else:
            torch.save(state, temporary)
