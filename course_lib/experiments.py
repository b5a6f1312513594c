"""Experiments over data sizes and seeds: data-efficiency curves and the from-scratch baseline (19.2, 19.3).

A transfer-learning claim such as "frozen features beat training from scratch when labels are
scarce" is a claim about a *curve*: accuracy against the number of labelled examples per class,
with a spread over random draws of those examples. :func:`data_efficiency_curve` runs any set of
methods over the same draws; :func:`scratch_accuracy` is the baseline every transfer method must
beat: the same architecture trained on the target data alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from course_lib.data import sample_per_class
from course_lib.training import evaluate, fit

# sample_per_class lives in course_lib.data; it is imported here because the curve draws with it.
__all__ = ["data_efficiency_curve", "sample_per_class", "scratch_accuracy", "scratch_epochs"]


def _is_int(value: object) -> bool:
    """True for Python and numpy integers, False for bools (True is an int to Python, not a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def data_efficiency_curve(
    methods: Mapping[str, Callable[[torch.Tensor, int], float]],
    labels: torch.Tensor,
    shots: Sequence[int],
    seeds: int = 3,
    *,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Test accuracy of every method for every number of labelled examples per class and seed (19.2, 19.3).

    ``methods`` maps a name to a function ``method(train_indices, seed) -> accuracy`` that trains
    on the training examples at ``train_indices`` (indices into the training set whose class
    labels are ``labels``) and returns its test accuracy. For each ``n`` in ``shots`` and each
    seed, one draw of ``n`` examples per class (:func:`sample_per_class`) is shared by all methods.

    Returns ``{name: array shaped (len(shots), seeds)}``; plot it with
    :func:`course_lib.plots.plot_curves` (pass the transpose: one row per seed).
    """
    if not methods:
        raise ValueError("methods is empty: pass {'name': function(train_indices, seed) -> accuracy, ...}.")
    if not _is_int(seeds) or seeds < 1:
        raise ValueError(f"seeds must be a positive int (how many random draws per size), got {seeds!r}.")
    shots = list(shots)
    if not shots or any(not _is_int(n) or n < 1 for n in shots):
        raise ValueError(f"shots must be positive ints (labelled examples per class), got {shots!r}.")
    shots, seeds = [int(n) for n in shots], int(seeds)  # numpy integers (np.arange) become plain ints
    # Fail now, not after the smaller sizes have run for minutes, if a class is too small for the largest size.
    sample_per_class(labels, max(shots))
    results = {name: np.zeros((len(shots), seeds)) for name in methods}
    with tqdm(total=len(shots) * seeds * len(methods), desc="data-efficiency runs", disable=not progress) as runs:
        for row, n in enumerate(shots):
            for seed in range(seeds):
                indices = sample_per_class(labels, n, seed=seed)
                for name, method in methods.items():
                    runs.set_postfix(method=name, per_class=n, seed=seed)
                    # A copy each, so that a method that shuffles or edits its indices cannot change the next one's.
                    results[name][row, seed] = float(method(indices.clone(), seed))
                    runs.update()
    return results


def scratch_epochs(num_images: int, images_seen: int = 3000, min_epochs: int = 8, max_epochs: int = 80) -> int:
    """Epochs for a from-scratch run on ``num_images`` images: about ``images_seen`` images in all,
    but never fewer than ``min_epochs`` nor more than ``max_epochs`` passes over the data (19.2).

    Tiny training sets get many passes (they are cheap), large ones at least a few.
    """
    if not _is_int(num_images) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}.")
    return min(max_epochs, max(min_epochs, math.ceil(images_seen / num_images)))


def scratch_accuracy(
    make_model: Callable[[], nn.Module],
    train_data: Dataset,
    test_data: Dataset,
    *,
    epochs: int | None = None,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> float:
    """Test accuracy of a randomly initialised model trained on ``train_data`` only: the baseline (19.2, 19.3).

    ``make_model()`` must return a *new* untrained model with the target's number of outputs; it
    is called after seeding torch with ``seed``, so the initialisation is reproducible. Training
    uses :func:`course_lib.training.fit` with Adam (``lr``) for ``epochs`` epochs (default
    :func:`scratch_epochs`), on shuffled batches of ``batch_size``.
    """
    if isinstance(make_model, nn.Module):
        # A model is callable too, so without this check the mistake would surface as a confusing forward() error.
        raise TypeError(
            f"make_model must be a function that builds a new model, got a {type(make_model).__name__} "
            "(a model). Wrap the construction in a function, e.g. lambda: replace_head(load_backbone("
            "'course-resnet', pretrained=False), num_classes)."
        )
    if len(train_data) == 0:
        raise ValueError("train_data is empty: pass the labelled training examples, e.g. Subset(train_data, indices).")
    torch.manual_seed(seed)
    model = make_model()
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"make_model() must return a torch.nn.Module, got {type(model).__name__}. "
            "Return the new model from the function (a lambda returns its expression; a def needs `return model`)."
        )
    if device is not None:
        model.to(device)
    epochs = scratch_epochs(len(train_data)) if epochs is None else epochs
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_data, batch_size=min(batch_size, len(train_data)), shuffle=True, generator=generator)
    # channels_last makes this small convolutional network train ~1.4x faster on the CPU as well.
    fit(model, train_loader, epochs=epochs, lr=lr, progress=False, channels_last=True)
    return evaluate(model, DataLoader(test_data, batch_size=256))["accuracy"]
