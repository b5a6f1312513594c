"""Callbacks: small hooks into :func:`course_lib.training.fit`'s loop.

``fit`` is a plain loop; chapters add to it with callbacks instead of copying it::

    history = fit(model, train_loader, epochs=10, val_loader=val_loader,
                  callbacks=[EarlyStopping("val_loss", patience=3, restore_best=True)])

- :class:`EarlyStopping` ends training when a metric stops improving.
- :class:`LambdaCallback` runs plain functions at given epochs, e.g. to unfreeze layers (19.3).
- :class:`TrackMetric` records a number per epoch, e.g. feature drift (19.3) or the accuracy on
  an earlier task (19.7).
- Subclass :class:`Callback` for anything else; each hook receives the :class:`TrainerState`.

The :class:`~course_lib.history.History` that ``fit`` returns lives in :mod:`course_lib.history`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from course_lib.core import eval_mode
from course_lib.history import History, is_number, metric_mode

__all__ = ["Callback", "EarlyStopping", "LambdaCallback", "TrackMetric", "TrainerState"]


# ---------------------------------------------------------------------------------------------
# Callbacks: small hooks into fit's loop


@dataclasses.dataclass
class TrainerState:
    """What a callback sees: the model, optimizer, current epoch (from 1) and history so far.

    Set ``stop_training = True`` to end ``fit`` after the current epoch. During an epoch,
    ``batch`` is the index of the batch just trained and ``batch_loss`` its loss.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    device: torch.device
    epoch: int = 0
    batch: int = 0
    batch_loss: float = math.nan
    stop_training: bool = False


class Callback:
    """Base class for hooks into :func:`course_lib.training.fit`; override the methods you need.

    Order within an epoch: ``model.train()``, ``on_epoch_start`` (so a callback may put some
    layers back into eval mode, or unfreeze layers), the batches (``on_batch_end`` after each
    optimizer step), validation, the record appended to the history, ``on_epoch_end`` (which may
    add values to ``state.history.last`` or set ``state.stop_training``). ``on_fit_end`` runs once
    at the end. Callbacks run in the order they are given to ``fit``.
    """

    def on_epoch_start(self, state: TrainerState) -> None:
        """Called at the start of every epoch, after ``model.train()``."""

    def on_batch_end(self, state: TrainerState) -> None:
        """Called after every optimizer step."""

    def on_epoch_end(self, state: TrainerState) -> None:
        """Called after the epoch's record (with validation metrics) is in ``state.history``."""

    def on_fit_end(self, state: TrainerState) -> None:
        """Called once when training ends (normally or stopped early)."""


class LambdaCallback(Callback):
    """A callback made of plain functions ``fn(state)``, optionally only at some epochs.

    Chapter 19.3 unfreezes a backbone gradually this way::

        unfreeze_stage4 = LambdaCallback(on_epoch_start=lambda s: s.model.stage4.requires_grad_(True), epochs=[3])

    (the optimizer must already hold those parameters: build it over ``model.parameters()``;
    frozen parameters get no gradient, so the optimizer leaves them alone until they are unfrozen).
    """

    def __init__(
        self,
        on_epoch_start: Callable[[TrainerState], Any] | None = None,
        on_batch_end: Callable[[TrainerState], Any] | None = None,
        on_epoch_end: Callable[[TrainerState], Any] | None = None,
        epochs: Iterable[int] | None = None,
    ):
        self.functions = {"on_epoch_start": on_epoch_start, "on_batch_end": on_batch_end, "on_epoch_end": on_epoch_end}
        for name, fn in self.functions.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function taking the trainer state, got {fn!r}.")
        self.epochs = None if epochs is None else set(epochs)

    def _call(self, hook: str, state: TrainerState) -> None:
        fn = self.functions[hook]
        if fn is not None and (self.epochs is None or state.epoch in self.epochs):
            fn(state)

    def on_epoch_start(self, state: TrainerState) -> None:
        self._call("on_epoch_start", state)

    def on_batch_end(self, state: TrainerState) -> None:
        self._call("on_batch_end", state)

    def on_epoch_end(self, state: TrainerState) -> None:
        self._call("on_epoch_end", state)


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved for ``patience`` epochs.

    ``mode`` is ``"min"``/``"max"`` (default: min for losses, max otherwise); an improvement must
    beat the best so far by more than ``min_delta``. With ``restore_best=True`` the model gets the
    weights of its best epoch back when training ends.
    """

    def __init__(self, metric: str = "val_loss", patience: int = 3, mode: str | None = None,
                 min_delta: float = 0.0, restore_best: bool = False):
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int (epochs to wait), got {patience!r}.")
        self.metric, self.patience, self.min_delta = metric, patience, float(min_delta)
        self.mode = metric_mode(metric, mode)
        self.restore_best = restore_best
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_epoch_start(self, state: TrainerState) -> None:
        if state.epoch == 1:  # a new run: forget the previous one
            self.best_value, self.best_epoch, self.best_state = None, 0, None

    def on_epoch_end(self, state: TrainerState) -> None:
        value = state.history.last.get(self.metric)
        if not is_number(value):
            raise KeyError(
                f"EarlyStopping watches {self.metric!r} but this epoch recorded {value!r} for it. "
                f"Watch one of {state.history.metrics()} (val_* needs a val_loader in fit)."
            )
        if self._improved(value):
            self.best_value, self.best_epoch = value, state.epoch
            if self.restore_best:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()}
        elif state.epoch - self.best_epoch >= self.patience:
            state.stop_training = True

    def _improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def on_fit_end(self, state: TrainerState) -> None:
        if self.restore_best and self.best_state is not None:
            state.model.load_state_dict(self.best_state)


class TrackMetric(Callback):
    """Record ``fn(model)`` (a number) into the history under ``name`` after every epoch.

    Chapter 19.3 tracks feature drift and source-task accuracy during fine-tuning; 19.7 tracks
    the accuracy on earlier tasks::

        TrackMetric(lambda m: evaluate(m, old_task_loader)["accuracy"], "old_task_accuracy")

    ``fn`` runs with the model in eval mode and without gradients.
    """

    def __init__(self, fn: Callable[[nn.Module], float], name: str):
        if not callable(fn):
            raise TypeError(f"fn must be a function of the model returning a number, got {fn!r}.")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}.")
        self.fn, self.name = fn, name

    def on_epoch_end(self, state: TrainerState) -> None:
        if self.name in state.history.last:
            raise ValueError(f"TrackMetric would overwrite {self.name!r} in the history; choose another name.")
        with torch.no_grad(), eval_mode(state.model):
            value = self.fn(state.model)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"TrackMetric {self.name!r}: fn must return a number, got {type(value).__name__}.")
        state.history.last[self.name] = float(value)
