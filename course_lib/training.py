"""Training and evaluation: the ``fit`` / ``evaluate`` pair that every chapter uses.

A typical lesson cell::

    history = fit(model, train_loader, epochs=cfg.epochs, val_loader=test_loader)
    plot_history(history)                       # course_lib.plots
    evaluate(model, test_loader)                # {"loss": ..., "accuracy": ...}

``fit`` is a plain loop (train one epoch, evaluate, record) with two ways to extend it:

- a **step** (:mod:`course_lib.steps`) says what one batch computes: the loss and the metrics to
  log. The default, :class:`~course_lib.steps.ClassificationStep`, is cross-entropy on
  ``(inputs, targets)`` batches; domain adaptation, multi-task and continual learning pass their own.
- **callbacks** (:mod:`course_lib.callbacks`) act between epochs and batches: stopping early,
  unfreezing layers (19.3), tracking drift or an old task's accuracy (19.3, 19.7).

``fit`` returns a :class:`~course_lib.history.History`. Train-once-then-load is
:func:`course_lib.checkpoints.checkpoint_or_train`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from course_lib.callbacks import Callback, TrainerState
from course_lib.core import eval_mode, model_device, to_device
from course_lib.history import History
from course_lib.steps import ClassificationStep, check_step_output, split_inputs_and_targets
from course_lib.validation import check_positive_int, check_positive_number

__all__ = ["evaluate", "fit", "predict"]

Step = Callable[[nn.Module, Any], Any]

# Schedulers defined in optimizer steps (not epochs) are stepped after every batch.
_PER_BATCH_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    step: Step | None = None,
    val_loader: Iterable | None = None,
    val_step: Step | None = None,
    device: str | torch.device | None = None,
    scheduler: Any = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    mixed_precision: bool | None = None,
    channels_last: bool | None = None,
) -> History:
    """Train ``model`` on ``train_loader`` for ``epochs`` epochs; return the :class:`History`.

    - ``optimizer``: default ``Adam(lr)`` over the parameters with ``requires_grad=True``. Pass
      your own for parameter groups with different learning rates (19.3); each group's lr is
      recorded under ``"lr"``.
    - ``step``: what a batch computes (:mod:`course_lib.steps`); default a
      :class:`~course_lib.steps.ClassificationStep` with ``loss_fn`` (default cross-entropy).
      A step that is also a :class:`Callback` has its hooks run first.
    - ``val_loader``: evaluated after every epoch with ``val_step`` (default: ``step``).
    - ``device``: default the model's device; batches are moved there.
    - ``scheduler``: OneCycleLR and CyclicLR are stepped after every batch, ReduceLROnPlateau
      after every epoch with the validation loss (the training loss without ``val_loader``),
      every other scheduler after every epoch.
    - ``callbacks``: :class:`Callback` objects (see :mod:`course_lib.callbacks`), run in order.
    - ``mixed_precision`` and ``channels_last``: None means on when training on CUDA (bf16 where
      the GPU supports it, else fp16 with gradient scaling); both are off on the CPU.
    """
    _check_fit_arguments(epochs, lr, callbacks)
    step = _choose_step(step, loss_fn)
    callbacks = [step, *callbacks] if isinstance(step, Callback) else list(callbacks)
    device = model_device(model, device)
    if optimizer is None:
        _check_not_all_frozen(model)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    precision = _Precision.choose(mixed_precision, device)
    # channels_last speeds up convolutions on CUDA tensor cores; on a CPU it depends on the model
    # (19.4's runs of the course's ResNet: about 20% faster), so there it is the caller's choice.
    channels_last = device.type == "cuda" if channels_last is None else bool(channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loop = _Loop(step, precision, scheduler, channels_last, callbacks, progress)
    state = TrainerState(model=model, optimizer=optimizer, history=History(), device=device)

    epoch_bar = tqdm(range(1, epochs + 1), desc="epochs", disable=not progress)
    for epoch in epoch_bar:
        started = time.perf_counter()
        state.epoch = epoch
        model.train()
        _run_callbacks(callbacks, "on_epoch_start", state)
        # Checked every epoch because callbacks may have frozen or unfrozen layers.
        _check_optimizer_holds_trainable(model, optimizer)
        record = {"epoch": epoch, "lr": [group["lr"] for group in optimizer.param_groups]}
        record |= {f"train_{name}": value for name, value in loop.train_one_epoch(state, train_loader).items()}
        if val_loader is not None:
            scores = evaluate(model, val_loader, device, step=val_step or step)
            record |= {f"val_{name}": value for name, value in scores.items()}
        _step_epoch_scheduler(scheduler, record)
        record["seconds"] = round(time.perf_counter() - started, 3)
        state.history.append(record)
        _run_callbacks(callbacks, "on_epoch_end", state)
        epoch_bar.set_postfix(_postfix(state.history.last))
        if state.stop_training:
            break
    _run_callbacks(callbacks, "on_fit_end", state)
    return state.history


@dataclasses.dataclass
class _Loop:
    """One epoch of fit: for each batch, the step's loss, a backward pass and an optimizer step."""

    step: Step
    precision: _Precision
    scheduler: Any
    channels_last: bool
    callbacks: Sequence[Callback]
    progress: bool

    def train_one_epoch(self, state: TrainerState, loader: Iterable) -> dict[str, float]:
        optimizer, tally = state.optimizer, _Tally()
        per_batch_scheduler = isinstance(self.scheduler, _PER_BATCH_SCHEDULERS)
        for index, batch in enumerate(tqdm(loader, desc=f"epoch {state.epoch}", leave=False, disable=not self.progress)):
            state.batch = index
            batch = to_device(batch, state.device, self.channels_last)
            with self.precision.autocast():
                output = check_step_output(self.step(state.model, batch), self.step, training=True)
            optimizer.zero_grad(set_to_none=True)
            self.precision.scaler.scale(output.loss).backward()
            self.precision.scaler.step(optimizer)
            self.precision.scaler.update()
            if per_batch_scheduler:
                self.scheduler.step()
            state.batch_loss = tally.add(output)
            _run_callbacks(self.callbacks, "on_batch_end", state)
        if tally.count == 0:
            raise ValueError("train_loader yielded no batches: is the dataset empty, or drop_last=True with too few samples?")
        return tally.means()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    step: Step | None = None,
) -> dict[str, float]:
    """Mean loss and metrics of ``model`` over ``loader``: ``{"loss": ..., "accuracy": ...}`` by default.

    ``step`` (default a :class:`~course_lib.steps.ClassificationStep` with ``loss_fn``) says what
    a batch computes; the result has ``"loss"`` and each metric the step logs, averaged over the
    examples. Runs in eval mode without gradients and puts every layer back into the mode it was in.
    """
    device = model_device(model, device)
    step = _choose_step(step, loss_fn)
    tally = _Tally()
    with eval_mode(model):
        for batch in loader:
            tally.add(check_step_output(step(model, to_device(batch, device)), step, training=False))
    if tally.count == 0:
        raise ValueError("The loader yielded no batches: is the dataset empty?")
    return tally.means()


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` for every sample of a classification ``loader``, concatenated on the CPU.

    ``logits.argmax(1)`` gives the predicted classes (e.g. for a confusion matrix). Eval mode,
    no gradients; every layer's mode is restored afterwards.
    """
    device = model_device(model, device)
    all_logits, all_targets = [], []
    with eval_mode(model):
        for batch in loader:
            inputs, targets = split_inputs_and_targets(to_device(batch, device))
            all_logits.append(model(inputs).float().cpu())
            all_targets.append(targets.cpu())
    if not all_logits:
        raise ValueError("The loader yielded no batches: is the dataset empty?")
    return torch.cat(all_logits), torch.cat(all_targets)


# ---------------------------------------------------------------------------------------------
# fit's settings: the step, precision, arguments, optimizer, schedulers, callbacks, progress bar


def _choose_step(step: Step | None, loss_fn: Callable | None) -> Step:
    if step is None:
        return ClassificationStep(loss_fn)
    if loss_fn is not None:
        raise ValueError("Pass either step= or loss_fn=, not both: a custom step computes its own loss.")
    if not callable(step):
        raise TypeError(f"step must be a function (model, batch) -> StepOutput, got {step!r}.")
    return step


class _Tally:
    """Running example-weighted means of the loss and of every metric over batches."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, output) -> float:
        batch_loss = output.loss.item()
        for name, value in {"loss": batch_loss, **output.metrics}.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * output.size
        self.count += output.size
        return batch_loss

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}


@dataclasses.dataclass
class _Precision:
    """Mixed precision: autocast to ``dtype`` (None: full precision), with a loss ``scaler`` for fp16."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    @classmethod
    def choose(cls, mixed_precision: bool | None, device: torch.device) -> _Precision:
        if mixed_precision is None:
            mixed_precision = device.type == "cuda"
        if mixed_precision and device.type != "cuda":
            raise ValueError(
                f"mixed_precision=True needs a CUDA device, but training runs on {device}. "
                "Pass mixed_precision=None (automatic) or False."
            )
        dtype = None
        if mixed_precision:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # fp16 gradients underflow to zero unless the loss is scaled up; bf16 has float32's range and
        # needs no scaling. A disabled scaler passes the loss and the optimizer step through unchanged.
        return cls(device.type, dtype, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


def _check_fit_arguments(epochs: int, lr: float, callbacks: Sequence[Callback]) -> None:
    check_positive_int(epochs, "epochs")
    check_positive_number(lr, "lr")
    if isinstance(callbacks, Callback):
        raise TypeError("callbacks must be a list of callbacks: write callbacks=[my_callback].")
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(
                f"{callback!r} is not a Callback. Subclass course_lib.callbacks.Callback, or wrap a "
                "function with LambdaCallback(on_epoch_end=fn)."
            )


def _check_not_all_frozen(model: nn.Module) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "All parameters of the model are frozen (requires_grad=False), so training would change nothing. "
            "Unfreeze some, e.g. model.head.requires_grad_(True)."
        )


def _check_optimizer_holds_trainable(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Unfrozen parameters the optimizer does not hold would silently never change."""
    _check_not_all_frozen(model)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in in_optimizer]
    if missing:
        raise ValueError(
            f"{len(missing)} trainable parameters are not in the optimizer (e.g. {missing[:3]}), so they would "
            "never be updated. Build the optimizer over model.parameters() (frozen ones get no gradient "
            "and are skipped), or add them with optimizer.add_param_group({'params': [...]})."
        )


def _step_epoch_scheduler(scheduler: Any, record: dict) -> None:
    if scheduler is None or isinstance(scheduler, _PER_BATCH_SCHEDULERS):
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(record.get("val_loss", record["train_loss"]))
    else:
        scheduler.step()


def _run_callbacks(callbacks: Sequence[Callback], hook: str, state: TrainerState) -> None:
    for callback in callbacks:
        getattr(callback, hook)(state)


def _postfix(record: dict) -> dict[str, str]:
    shown = [name for name in record if name.startswith(("train_", "val_"))][:4]
    return {name.replace("accuracy", "acc"): f"{record[name]:.3f}" for name in shown}
