"""One budget for every way of closing a domain gap: each method a step on the same ``fit`` (19.4).

19.4 compares methods that see different data: source-only training and the unsupervised methods
(:mod:`course_lib.adaptation`) see labelled source images and unlabelled target images; the
oracle and the few-shot runs see labelled target images. For the comparison to be about the
methods, every run here has the same recipe:

- a copy of the source model, its own head kept (the classes do not change, only their looks);
- ``steps`` batches, drawn with replacement, so that 24 labelled images and 2,400 cost the same;
- the source model's own optimizer and schedule (:func:`~course_lib.finetuning.pretraining_optimizer`:
  SGD with Nesterov momentum, weight decay, one cycle), so that every run ends annealed.

::

    adapted = adapt_copy(source_model, "CORAL", studio_train, night_unlabelled,
                         steps=150, batch_size=32, lr=0.01, seed=0)
    domain_accuracy(adapted, night_test)
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from course_lib.adaptation import CoralStep, DANNStep, DomainClassifier, SelfTrainingStep, SourceOnlyStep
from course_lib.finetuning import pretraining_optimizer
from course_lib.models import get_head
from course_lib.steps import ClassificationStep, PairedLoader
from course_lib.training import evaluate, fit
from course_lib.core import model_device
from course_lib.validation import check_module, check_non_negative_int, check_positive_int, check_positive_number

__all__ = ["UNSUPERVISED_METHODS", "adapt_copy", "domain_accuracy", "fine_tune_on_target", "gap_closed",
           "random_batches"]

# The unsupervised methods adapt_copy runs: each sees labelled source and unlabelled target batches.
UNSUPERVISED_METHODS = ("source-only", "CORAL", "DANN", "self-training")
WEIGHT_DECAY = 5e-4  # the source model's own (course_lib.pretrain)


def random_batches(dataset: Dataset | Iterable, *, steps: int, batch_size: int, seed: int) -> DataLoader:
    """A loader of exactly ``steps`` batches of ``batch_size`` examples of ``dataset``, drawn with replacement (19.4).

    A fixed number of batches makes a run's cost independent of the dataset's size; drawing with
    replacement lets 24 images fill 150 batches. ``seed`` fixes the draw: every pass over the
    loader yields the same batches, so one loader gives every method the same data.
    """
    steps, batch_size = check_positive_int(steps, "steps"), check_positive_int(batch_size, "batch_size")
    seed = check_non_negative_int(seed, "seed")
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(f"random_batches needs a dataset (indexable, with a length), got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is nothing to draw batches from.")
    # Drawn once, here: a RandomSampler would draw anew (from its advancing generator) on every pass.
    indices = torch.randint(len(dataset), (steps * batch_size,), generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices.tolist())


def _train(model: nn.Module, loader: Iterable, step, *, lr: float, extra: nn.Module | None = None) -> nn.Module:
    """One annealed run of ``len(loader)`` steps over the model's parameters (and ``extra``'s, e.g. a discriminator)."""
    if len(loader) < 2:
        raise ValueError(f"steps must be at least 2 (the one-cycle schedule warms up, then anneals), got {len(loader)}.")
    trained = nn.ModuleList([model] if extra is None else [model, extra])
    optimizer, scheduler = pretraining_optimizer(trained, lr=lr, weight_decay=WEIGHT_DECAY, total_steps=len(loader))
    # Channels-last: the course's ResNet trains about 20% faster on a 2-core CPU too. The model
    # is always a copy, so the caller's source model keeps its own layout.
    fit(model, loader, epochs=1, step=step, optimizer=optimizer, scheduler=scheduler, progress=False,
        channels_last=True)
    return model.eval()


def _method_step(method: str, model: nn.Module, steps: int, device: torch.device):
    """The step for ``method`` and the module whose parameters train alongside the model (DANN's discriminator)."""
    if method == "source-only":
        return SourceOnlyStep(), None
    if method == "CORAL":
        return CoralStep(weight=1.0), None
    if method == "DANN":
        discriminator = DomainClassifier(_feature_dim(model)).to(device)
        return DANNStep(discriminator, total_steps=steps), discriminator
    return SelfTrainingStep(threshold=0.9), None


def _feature_dim(model: nn.Module) -> int:
    """The width of the features the head reads (``.head``, ``.fc``, ``.classifier``, or a Sequential's last layer)."""
    try:
        return get_head(model).in_features
    except TypeError:
        if isinstance(model, nn.Sequential) and len(model) and isinstance(model[-1], nn.Linear):
            return model[-1].in_features  # what features_and_logits reads too
        raise TypeError(f"DANN needs the model's linear classifier to size its discriminator, but the "
                        f"{type(model).__name__} has none: give it a .head, .fc or .classifier nn.Linear, or make "
                        "it an nn.Sequential ending in nn.Linear.") from None


def adapt_copy(
    model: nn.Module,
    method: str,
    source: Dataset,
    target: Dataset,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    source_batches: Iterable | None = None,
) -> nn.Module:
    """A copy of ``model`` trained for ``steps`` batches with one of :data:`UNSUPERVISED_METHODS` (19.4).

    Every step pairs ``batch_size`` labelled ``source`` images with ``batch_size`` ``target``
    images, whose labels are never read. ``"source-only"`` is the control: the same batches,
    the target ones ignored, so that what the others gain is what the target images gave them.
    ``source_batches`` replaces the source loader (e.g. augmented batches of the same images);
    it must yield ``steps`` batches. ``model`` itself is not changed; the copy is in eval mode.
    """
    check_module(model, "adapt_copy", what="the source model (a torch.nn.Module with its head)")
    if method not in UNSUPERVISED_METHODS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(map(repr, UNSUPERVISED_METHODS))}.")
    check_positive_number(lr, "lr")
    steps, seed = check_positive_int(steps, "steps"), check_non_negative_int(seed, "seed")
    if source_batches is None:
        source_batches = random_batches(source, steps=steps, batch_size=batch_size, seed=seed)
    elif (isinstance(source_batches, Iterator) or not hasattr(source_batches, "__len__")
          or not hasattr(source_batches, "__iter__")):  # an iterator could be read only once
        raise TypeError(f"source_batches must be re-iterable with a length (a DataLoader, AugmentedBatches), got "
                        f"{type(source_batches).__name__}: build it from random_batches(..., steps=steps).")
    elif len(source_batches) != steps:
        raise ValueError(f"source_batches yields {len(source_batches)} batches but steps={steps}: build it with "
                         "random_batches(..., steps=steps) so that every method trains for the same budget.")
    # The target draw gets its own seed, so that it does not mirror the source draw's indices.
    target_batches = random_batches(target, steps=steps, batch_size=batch_size, seed=seed + 10_000)
    torch.manual_seed(seed)  # DANN's discriminator starts the same for every domain
    adapted = copy.deepcopy(model)
    step, extra = _method_step(method, adapted, steps, model_device(adapted))
    return _train(adapted, PairedLoader(source_batches, target_batches), step, lr=lr, extra=extra)


def fine_tune_on_target(
    model: nn.Module,
    target: Dataset,
    indices: Sequence[int] | torch.Tensor | None = None,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> nn.Module:
    """A copy of ``model`` fine-tuned on labelled target images (``target[indices]``, default all) (19.4).

    The oracle of 19.4 (every labelled target image) and its few-shot runs (1, 5 or 20 per class)
    with the same recipe as :func:`adapt_copy`. ``model`` itself is not changed.
    """
    check_module(model, "fine_tune_on_target", what="the model to start from (a torch.nn.Module with its head)")
    check_positive_number(lr, "lr")
    if indices is not None:
        target = Subset(target, _checked_indices(indices, len(target)))
    batches = random_batches(target, steps=steps, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)
    return _train(copy.deepcopy(model), batches, ClassificationStep(), lr=lr)


def _checked_indices(indices: Sequence[int] | torch.Tensor, size: int) -> list[int]:
    """``indices`` as a list of ints in ``[0, size)``, or a ValueError saying what is wrong with them."""
    tensor = torch.as_tensor(indices)
    if tensor.numel() == 0:
        raise ValueError("indices is empty: pass the labelled target examples (e.g. from sample_per_class).")
    if tensor.ndim != 1 or tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"indices must be a 1-D sequence of integer positions in the target dataset, got a "
                         f"{tensor.dtype} tensor shaped {tuple(tensor.shape)}; for a boolean mask pass "
                         "mask.nonzero().flatten().")
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0 or high >= size:
        raise ValueError(f"indices range over {low}..{high} but the target dataset has {size} examples (0..{size - 1}).")
    return tensor.tolist()


def domain_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Accuracy of ``model`` (in eval mode: stored BatchNorm statistics) on a labelled ``dataset`` (19.4)."""
    check_module(model, "domain_accuracy")
    return evaluate(model, DataLoader(dataset, batch_size=batch_size), step=ClassificationStep())["accuracy"]


def gap_closed(accuracy: float, source_only: float, oracle: float) -> float:
    """The fraction of the source-only -> oracle gap that ``accuracy`` closes: 0 = no better, 1 = the oracle (19.4).

    Negative when a method does worse than no adaptation. Undefined (a ValueError) when the
    oracle is not better than source-only: then there is no gap to close.
    """
    values = {"accuracy": accuracy, "source_only": source_only, "oracle": oracle}
    for name, value in values.items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be an accuracy in [0, 1], got {value!r}.")
    if oracle <= source_only:
        raise ValueError(f"The oracle ({oracle:.1%}) is not better than source-only ({source_only:.1%}): there is no "
                         "gap to close. Check that the oracle trained on labelled target images.")
    return (accuracy - source_only) / (oracle - source_only)
