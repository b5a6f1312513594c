"""Experiments over data sizes and seeds: data-efficiency curves and the from-scratch baseline (19.2, 19.3).

A transfer-learning claim such as "frozen features beat training from scratch when labels are
scarce" is a claim about a *curve*: accuracy against the number of labelled examples per class,
with a spread over random draws of those examples. :func:`data_efficiency_curve` runs any set of
methods over the same draws; :func:`scratch_accuracy` is the baseline every transfer method must
beat: the same architecture trained on the target data alone, and :func:`scratch_curve` its
budget sweep (test accuracy after every epoch), to show that it has converged or plateaued. For chapter 19.3,
:func:`fine_tune_copy` gives every fine-tuning run the same budget, and :func:`compare_with_rule`
checks a rule of thumb (:func:`rule_of_thumb`) against the strategies measured.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from tqdm.auto import tqdm

from course_lib.data import sample_per_class
from course_lib.finetuning import fine_tune, pretraining_optimizer
from course_lib.history import History
from course_lib.models import get_head, replace_head
from course_lib.training import evaluate, fit
from course_lib.validation import check_module, check_positive_int, is_int

__all__ = ["SCRATCH_RECIPES", "compare_with_rule", "data_efficiency_curve", "fine_tune_copy", "rule_of_thumb", "scratch_accuracy",
           "scratch_curve", "scratch_epochs"]


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
    if not is_int(seeds) or seeds < 1:
        raise ValueError(f"seeds must be a positive int (how many random draws per size), got {seeds!r}.")
    shots = list(shots)
    if not shots or any(not is_int(n) or n < 1 for n in shots):
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
    check_positive_int(num_images, "num_images")
    return min(max_epochs, max(min_epochs, math.ceil(images_seen / num_images)))


# The recipes a from-scratch baseline can be trained with, and their default peak learning rates.
SCRATCH_RECIPES: dict[str, float] = {"adam": 3e-3, "pretraining": 0.05}


def _train_from_scratch(
    make_model: Callable[[], nn.Module], train_data: Dataset, *, epochs: int | None, recipe: str, lr: float | None,
    batch_size: int, seed: int, device: str | torch.device | None, val_loader: DataLoader | None = None,
) -> tuple[nn.Module, History]:
    """Seed, build, and train a new model on ``train_data`` alone: what both scratch functions share."""
    if isinstance(make_model, nn.Module):
        # A model is callable too, so without this check the mistake would surface as a confusing forward() error.
        raise TypeError(
            f"make_model must be a function that builds a new model, got a {type(make_model).__name__} "
            "(a model). Wrap the construction in a function, e.g. lambda: replace_head(load_backbone("
            "'course-resnet', pretrained=False), num_classes)."
        )
    if recipe not in SCRATCH_RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}: choose one of {', '.join(map(repr, SCRATCH_RECIPES))}.")
    if len(train_data) == 0:
        raise ValueError("train_data is empty: pass the labelled training examples, e.g. Subset(train_data, indices).")
    epochs = scratch_epochs(len(train_data)) if epochs is None else epochs
    check_positive_int(epochs, "epochs")
    torch.manual_seed(seed)
    model = make_model()
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"make_model() must return a torch.nn.Module, got {type(model).__name__}. "
            "Return the new model from the function (a lambda returns its expression; a def needs `return model`)."
        )
    if device is not None:
        model.to(device)
    lr = SCRATCH_RECIPES[recipe] if lr is None else lr
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_data, batch_size=min(batch_size, len(train_data)), shuffle=True, generator=generator)
    optimizer = scheduler = None
    if recipe == "pretraining":
        optimizer, scheduler = pretraining_optimizer(model, lr=lr, weight_decay=5e-4,
                                                     total_steps=epochs * len(train_loader))
    # channels_last makes this small convolutional network train ~1.4x faster on the CPU as well.
    history = fit(model, train_loader, epochs=epochs, lr=lr, optimizer=optimizer, scheduler=scheduler,
                  progress=False, channels_last=True, val_loader=val_loader)
    return model, history


def scratch_accuracy(
    make_model: Callable[[], nn.Module],
    train_data: Dataset,
    test_data: Dataset,
    *,
    epochs: int | None = None,
    recipe: str = "adam",
    lr: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> float:
    """Test accuracy of a randomly initialised model trained on ``train_data`` only: the baseline (19.2, 19.3).

    ``make_model()`` must return a *new* untrained model with the target's number of outputs; it
    is called after seeding torch with ``seed``, so the initialisation is reproducible. Training
    uses :func:`course_lib.training.fit` for ``epochs`` epochs (default :func:`scratch_epochs`) on
    shuffled batches of ``batch_size``, with one of two recipes:

    - ``"adam"``: Adam at a constant ``lr`` (default 3e-3);
    - ``"pretraining"``: the recipe the source model was trained with
      (:func:`course_lib.finetuning.pretraining_optimizer`: SGD with momentum, weight decay 5e-4,
      a one-cycle schedule peaking at ``lr``, default 0.05), which ends every run converged to
      its budget. Chapter 19.2's baseline uses it.
    """
    model, _ = _train_from_scratch(make_model, train_data, epochs=epochs, recipe=recipe, lr=lr,
                                   batch_size=batch_size, seed=seed, device=device)
    return evaluate(model, DataLoader(test_data, batch_size=256))["accuracy"]


def scratch_curve(
    make_model: Callable[[], nn.Module],
    train_data: Dataset,
    test_data: Dataset,
    *,
    epochs: int,
    recipe: str = "adam",
    lr: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> list[float]:
    """Test accuracy after each of ``epochs`` epochs of one from-scratch run: its learning curve (19.2).

    The same run as :func:`scratch_accuracy` with ``epochs`` (same seed, data order, recipe), so
    the last entry is what that returns. With ``recipe="adam"`` (a constant rate) entry ``e - 1``
    is also what ``scratch_accuracy(..., epochs=e)`` returns, so one run is a whole budget sweep.
    With ``"pretraining"`` it is not: the one-cycle schedule depends on the budget, and a budget
    sweep needs one run per budget. The test set only reports; nothing is selected on it.
    """
    check_positive_int(epochs, "epochs")
    _, history = _train_from_scratch(make_model, train_data, epochs=epochs, recipe=recipe, lr=lr,
                                     batch_size=batch_size, seed=seed, device=device,
                                     val_loader=DataLoader(test_data, batch_size=256))
    return [float(value) for value in history["val_accuracy"]]


# ---------------------------------------------------------------------------------------------
# Fine-tuning strategies on one budget, and the size rule (19.3)


def fine_tune_copy(
    pretrained: nn.Module,
    train_set: Dataset,
    indices: Sequence[int] | torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    epochs: int,
    batches_per_epoch: int,
    batch_size: int = 32,
    head: nn.Module | None = None,
    **fine_tune_kwargs,
) -> tuple[nn.Module, History]:
    """Fine-tune a fresh copy of ``pretrained`` (new head for ``num_classes``) on ``train_set[indices]``; return it and its history.

    Every call trains on the same budget, whatever the number of images: ``epochs`` epochs of
    ``batches_per_epoch`` batches drawn at random, with replacement, from the chosen images, so
    that a comparison of strategies or data sizes is not a comparison of training lengths (19.3).
    ``pretrained`` is not changed; ``fine_tune_kwargs`` go to :func:`fine_tune` (``strategy``,
    ``lr``, ``head_lr``, ...). ``seed`` fixes the new head and the order of the batches. ``head``,
    if given, is copied in as the starting head instead of a random one (LP-FT starts from a
    converged probe: :func:`course_lib.finetuning.probe_head`).
    """
    check_module(pretrained, "fine_tune_copy", what="the whole model (a torch.nn.Module)")
    if not is_int(batches_per_epoch) or batches_per_epoch < 1 or not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batches_per_epoch and batch_size must be positive ints, got {batches_per_epoch!r} and {batch_size!r}.")
    indices = torch.as_tensor(indices).tolist()
    if len(indices) == 0:
        raise ValueError("indices is empty: pass the training examples to fine-tune on (e.g. from sample_per_class).")
    torch.manual_seed(seed)
    model = replace_head(copy.deepcopy(pretrained), num_classes)
    if head is not None:
        check_module(head, "fine_tune_copy", what="the starting head (a torch.nn.Module)")
        new_head = get_head(model)
        shapes = lambda layer: {key: tuple(value.shape) for key, value in layer.state_dict().items()}  # noqa: E731
        if not isinstance(head, type(new_head)) or shapes(head) != shapes(new_head):
            raise ValueError(f"head must be a layer like the model's own head ({new_head}), got {head}.")
        new_head.load_state_dict(head.state_dict())
    images = Subset(train_set, indices)
    sampler = RandomSampler(images, replacement=True, num_samples=batches_per_epoch * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    history = fine_tune(model, DataLoader(images, batch_size=batch_size, sampler=sampler), epochs=epochs, **fine_tune_kwargs)
    return model, history


def rule_of_thumb(total_images: int) -> str:
    """The size rule chapter 19.3 tests, as a strategy name: fewer than 500 labelled images, a linear
    probe; 500 to 5,000, partial fine-tuning; more, full fine-tuning (at a lower learning rate)."""
    check_positive_int(total_images, "total_images")
    if total_images < 500:
        return "linear probe"
    return "partial" if total_images <= 5000 else "full"


def compare_with_rule(
    accuracy: Mapping[str, np.ndarray],
    sizes: Sequence[int],
    num_classes: int,
    rule_picks: Mapping[str, str],
    tolerance: float = 0.02,
) -> list[dict]:
    """For each data size, the strategy :func:`rule_of_thumb` recommends against the best one measured (19.3).

    ``accuracy`` maps a strategy's name to an array ``(len(sizes), seeds)`` of test accuracies
    (as :func:`course_lib.experiments.data_efficiency_curve` returns); ``sizes`` are images per
    class; ``rule_picks`` maps the rule's answers ("linear probe", "partial", "full") to names in
    ``accuracy``. Returns one dict per size: ``images``, ``pick``, ``pick_accuracy``, ``best``,
    ``best_accuracy``, ``gap`` (best minus pick, in accuracy) and ``held`` (gap <= ``tolerance``),
    comparing means over seeds.
    """
    picks = [rule_picks.get(rule_of_thumb(n * num_classes)) for n in sizes]
    missing = sorted({str(pick) for pick in picks if pick not in accuracy})
    if missing:
        raise KeyError(f"rule_picks gives {missing}, which are not in accuracy's strategies {sorted(accuracy)}: "
                       "map each of the rule's answers ('linear probe', 'partial', 'full') to one of them.")
    rows = []
    for row, (n, pick) in enumerate(zip(sizes, picks)):
        means = {name: float(np.mean(values[row])) for name, values in accuracy.items()}
        best = max(means, key=means.get)
        gap = means[best] - means[pick]
        rows.append({"images": n * num_classes, "pick": pick, "pick_accuracy": means[pick], "best": best,
                     "best_accuracy": means[best], "gap": gap, "held": gap <= tolerance})
    return rows
