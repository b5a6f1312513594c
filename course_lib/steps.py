"""Training steps: what one batch contributes to training, as a function :func:`~course_lib.training.fit` calls.

``fit`` owns the loop (epochs, optimizer, progress bars, mixed precision, callbacks, history);
a *step* owns the batch. It takes the model and one batch (already moved to the model's device)
and returns a :class:`StepOutput`: the loss to minimise and the numbers to log::

    def my_step(model, batch) -> StepOutput:
        inputs, targets = batch
        logits = model(inputs)
        return StepOutput(loss=cross_entropy(logits, targets),
                          metrics={"accuracy": accuracy(logits, targets)}, size=len(targets))

    fit(model, loader, epochs=5, step=my_step)

``fit`` records each metric averaged over the epoch (weighted by ``size``) as ``train_<name>``,
and ``val_<name>`` from :func:`~course_lib.training.evaluate`. The chapters after 19.3 are each
a step of about a dozen lines: domain adaptation adds a loss on features of a second, unlabelled
loader (:class:`PairedLoader`, 19.4); multi-task learning has dict targets and several losses
(19.6); continual learning adds a penalty or a replay batch (19.7). A step that also needs to
act between batches (a schedule, a buffer) can subclass :class:`~course_lib.callbacks.Callback`
as well: ``fit`` then runs its hooks too.

:class:`ClassificationStep` is the default: a batch is ``(inputs, targets)``, the model returns
logits ``(batch, classes)``, targets are int64 class indices ``(batch,)`` or soft labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from course_lib.metrics import accuracy

__all__ = [
    "ClassificationStep", "PairedLoader", "StepOutput", "check_logits_and_targets", "check_step_output",
    "split_inputs_and_targets",
]


class StepOutput(NamedTuple):
    """What a step returns: the ``loss`` to minimise (a scalar tensor), ``metrics`` to log, and the batch ``size``."""

    loss: torch.Tensor
    metrics: dict[str, float]
    size: int


class ClassificationStep:
    """The default step: ``loss_fn(model(inputs), targets)`` (cross-entropy) and the batch's accuracy.

    Checks the batch and the logits first, so that the usual mistakes (labels as floats, a
    model without a classifier, too few outputs) give a message saying what to change rather
    than a cryptic error from inside the loss.
    """

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be a function (logits, targets) -> loss, got {loss_fn!r}.")
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        inputs, targets = split_inputs_and_targets(batch)
        logits = model(inputs)
        check_logits_and_targets(logits, targets)
        loss = self.loss_fn(logits, targets)
        return StepOutput(loss, {"accuracy": accuracy(logits, targets)}, len(targets))

    def __repr__(self) -> str:
        return f"ClassificationStep(loss_fn={self.loss_fn!r})"


class PairedLoader:
    """Batches from two loaders at once: ``(first_batch, second_batch)``, for two-loader steps (19.4).

    One epoch is one pass over ``first`` (e.g. labelled source images); ``second`` (e.g. unlabelled
    target images) is restarted whenever it runs out, so every first batch gets a partner.
    """

    def __init__(self, first: Iterable, second: Iterable):
        for name, loader in (("first", first), ("second", second)):
            # An iterator can be read only once, but the second loader is restarted whenever it runs out.
            if isinstance(loader, Iterator) or not hasattr(loader, "__iter__") or not hasattr(loader, "__len__"):
                raise TypeError(f"{name} must be a DataLoader (re-iterable, with a length), got {type(loader).__name__}.")
        if len(second) == 0:
            raise ValueError("second yields no batches: is its dataset empty?")
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        partners = itertools.chain.from_iterable(iter(self.second) for _ in itertools.count())
        return zip(self.first, partners)


def split_inputs_and_targets(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a classification batch, with a helpful error for anything else."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"a {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise TypeError(
            f"Each batch must be a pair (inputs, targets), but the loader yielded {what}. Make the "
            "dataset's __getitem__ return (input, label), e.g. with torch.utils.data.TensorDataset(x, y), "
            "or pass fit a step= that reads this kind of batch."
        )
    inputs, targets = batch
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"Batches must hold tensors, got inputs of type {type(inputs).__name__} and targets of type "
            f"{type(targets).__name__}. Convert them in the dataset (torch.as_tensor) or use a DataLoader."
        )
    return inputs, targets


def check_logits_and_targets(logits: Any, targets: torch.Tensor) -> None:
    """Catch the usual mistakes before the loss turns them into a cryptic error."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"The model must return logits shaped (batch, classes), got {got}. "
            "End the model with a linear layer over the classes (and flatten its input)."
        )
    if len(targets) != len(logits):
        raise ValueError(f"The batch has {len(targets)} targets but the model returned {len(logits)} rows of logits.")
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise TypeError(
                f"Targets are floats shaped {tuple(targets.shape)}. Class labels must be int64 class indices "
                "shaped (batch,): convert with labels.long(); float targets must be soft labels shaped like "
                f"the logits {tuple(logits.shape)}."
            )
        return
    if targets.dtype != torch.int64 or targets.ndim != 1:
        raise TypeError(
            f"Targets must be int64 class indices shaped (batch,), got {targets.dtype} shaped "
            f"{tuple(targets.shape)}. Convert with labels.long() (and labels.view(-1) for shape (batch, 1))."
        )
    low, high = targets.min().item(), targets.max().item()
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(
            f"Targets range over {low}..{high} but the model has {logits.shape[1]} outputs (classes 0.."
            f"{logits.shape[1] - 1}). Give the head as many outputs as there are classes (models.replace_head)."
        )


def check_step_output(output: Any, step: Any, training: bool) -> StepOutput:
    """The step's result as a :class:`StepOutput` of plain numbers, or an error saying what the step got wrong."""
    if not isinstance(output, tuple) or len(output) != 3:
        raise TypeError(f"The step {step!r} must return StepOutput(loss, metrics, size), got {type(output).__name__}.")
    loss, metrics, size = output
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"The step's loss must be a scalar tensor, got {got}; average it over the batch (loss.mean()).")
    if training and not loss.requires_grad:
        raise ValueError(
            "The step's loss does not depend on any trainable parameter (it has no gradient), so training "
            "would change nothing. Compute it from the model's output, outside torch.no_grad()."
        )
    if not isinstance(metrics, dict) or not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise TypeError(f"The step must return a dict of metrics and a positive int size, got {type(metrics).__name__} and {size!r}.")
    numbers = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)) or isinstance(value, bool) or name == "loss":
            raise TypeError(f"Metric {name!r} of the step must be a number (and not named 'loss'), got {value!r}.")
        numbers[name] = float(value)
    return StepOutput(loss.reshape(()), numbers, size)
