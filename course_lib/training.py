"""Training and evaluation: the ``fit`` / ``evaluate`` pair that every chapter uses.

A typical lesson cell::

    history = fit(model, train_loader, epochs=cfg.epochs, val_loader=test_loader)
    plot_history(history)                       # course_lib.plots
    evaluate(model, test_loader)                # {"loss": ..., "accuracy": ...}

``fit`` is a plain loop (train one epoch, evaluate, record) with small hooks, *callbacks*, for the
things chapters add to it: stopping early, unfreezing layers at given epochs (19.3), tracking how
far features drift or how well an old task is remembered while training (19.3, 19.7). The
callbacks and the :class:`History` that ``fit`` returns live in :mod:`course_lib.callbacks`;
:func:`checkpoint_or_train` (train once, load on later runs) in :mod:`course_lib.checkpoints`.
Both are importable from here too.

Everything here is for classification: a batch is ``(inputs, targets)``, the model returns logits
shaped ``(batch, classes)`` and targets are int64 class indices ``(batch,)`` (or soft labels shaped
like the logits). Inputs may be images ``(N, 3, H, W)`` or precomputed features ``(N, D)``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

# Re-exported so that `from course_lib.training import fit, History, EarlyStopping` keeps working.
from course_lib.callbacks import Callback, EarlyStopping, History, LambdaCallback, TrackMetric, TrainerState
from course_lib.checkpoints import checkpoint_or_train

__all__ = [
    "Callback", "EarlyStopping", "History", "LambdaCallback", "TrackMetric", "TrainerState",
    "checkpoint_or_train", "count_parameters", "eval_mode", "evaluate", "fit", "model_device", "predict",
]

# Schedulers defined in optimizer steps (not epochs) are stepped after every batch.
_PER_BATCH_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)


# ---------------------------------------------------------------------------------------------
# fit


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    val_loader: Iterable | None = None,
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
    - ``loss_fn``: default cross-entropy. ``val_loader``: evaluated after every epoch.
    - ``device``: default the model's device; batches are moved there.
    - ``scheduler``: OneCycleLR and CyclicLR are stepped after every batch, ReduceLROnPlateau
      after every epoch with the validation loss (the training loss without ``val_loader``),
      every other scheduler after every epoch.
    - ``callbacks``: :class:`Callback` objects (see :mod:`course_lib.callbacks`), run in order.
    - ``mixed_precision`` and ``channels_last``: None means on when training on CUDA (bf16 where
      the GPU supports it, else fp16 with gradient scaling); both are off on the CPU.
    """
    _check_fit_arguments(epochs, lr, callbacks)
    device = model_device(model, device)
    if optimizer is None:
        _check_not_all_frozen(model)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    precision = _Precision.choose(mixed_precision, device)
    # channels_last speeds up convolutions on CUDA tensor cores; on the CPU it rarely helps.
    channels_last = device.type == "cuda" if channels_last is None else bool(channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batch_scheduler = scheduler if isinstance(scheduler, _PER_BATCH_SCHEDULERS) else None
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
        record |= _train_one_epoch(state, train_loader, loss_fn, precision, batch_scheduler, channels_last, callbacks, progress)
        if val_loader is not None:
            record |= {f"val_{name}": value for name, value in evaluate(model, val_loader, device, loss_fn).items()}
        _step_epoch_scheduler(scheduler, record)
        record["seconds"] = round(time.perf_counter() - started, 3)
        state.history.append(record)
        _run_callbacks(callbacks, "on_epoch_end", state)
        epoch_bar.set_postfix(_postfix(state.history.last))
        if state.stop_training:
            break
    _run_callbacks(callbacks, "on_fit_end", state)
    return state.history


def _train_one_epoch(state: TrainerState, loader: Iterable, loss_fn: Callable, precision: _Precision, batch_scheduler: Any,
                     channels_last: bool, callbacks: Sequence[Callback], progress: bool) -> dict[str, float]:
    """One pass over ``loader`` with an optimizer step per batch; returns train loss and accuracy."""
    model, optimizer = state.model, state.optimizer
    tally = _Tally()
    batches = tqdm(loader, desc=f"epoch {state.epoch}", leave=False, disable=not progress)
    for index, batch in enumerate(batches):
        state.batch = index
        with precision.autocast():
            logits, targets = _forward(model, batch, state.device, channels_last)
            loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        if batch_scheduler is not None:
            batch_scheduler.step()
        state.batch_loss = tally.add(loss, logits, targets)
        _run_callbacks(callbacks, "on_batch_end", state)
    if tally.count == 0:
        raise ValueError("train_loader yielded no batches: is the dataset empty, or drop_last=True with too few samples?")
    return {"train_loss": tally.loss, "train_accuracy": tally.accuracy}


# ---------------------------------------------------------------------------------------------
# evaluate and predict


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``loader``: ``{"loss": ..., "accuracy": ...}``.

    Runs in eval mode without gradients and puts every layer back into the mode it was in.
    ``loss_fn`` (default cross-entropy) must average over the batch, as PyTorch's losses do.
    """
    device = model_device(model, device)
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    tally = _Tally()
    with eval_mode(model):
        for batch in loader:
            logits, targets = _forward(model, batch, device)
            tally.add(loss_fn(logits, targets), logits, targets)
    if tally.count == 0:
        raise ValueError("The loader yielded no batches: is the dataset empty?")
    return {"loss": tally.loss, "accuracy": tally.accuracy}


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` for every sample of ``loader``, concatenated on the CPU.

    ``logits.argmax(1)`` gives the predicted classes (e.g. for a confusion matrix). Eval mode,
    no gradients; every layer's mode is restored afterwards.
    """
    device = model_device(model, device)
    all_logits, all_targets = [], []
    with eval_mode(model):
        for batch in loader:
            logits, targets = _forward(model, batch, device)
            all_logits.append(logits.float().cpu())
            all_targets.append(targets.cpu())
    if not all_logits:
        raise ValueError("The loader yielded no batches: is the dataset empty?")
    return torch.cat(all_logits), torch.cat(all_targets)


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


# ---------------------------------------------------------------------------------------------
# Devices and parameter counts


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


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, frozen)`` numbers of parameters, e.g. to check what fine-tuning will change (19.2, 19.3)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" without an index means the current GPU.
    index = lambda d: d.index if d.index is not None else (torch.cuda.current_device() if d.type == "cuda" else 0)
    return a.type == b.type and index(a) == index(b)


# ---------------------------------------------------------------------------------------------
# One batch: moving it, running the model, checking what came out


def _forward(model: nn.Module, batch: Any, device: torch.device, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` of one batch, with inputs, targets and logits checked."""
    inputs, targets = _to_device(batch, device, channels_last)
    logits = model(inputs)
    _check_logits_and_targets(logits, targets)
    return logits, targets


def _to_device(batch: Any, device: torch.device, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a batch into ``(inputs, targets)`` on ``device``, checking that it is one."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"a {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise TypeError(
            f"Each batch must be a pair (inputs, targets), but the loader yielded {what}. Make the "
            "dataset's __getitem__ return (input, label), e.g. with torch.utils.data.TensorDataset(x, y)."
        )
    inputs, targets = batch
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"Batches must hold tensors, got inputs of type {type(inputs).__name__} and targets of type "
            f"{type(targets).__name__}. Convert them in the dataset (torch.as_tensor) or use a DataLoader."
        )
    non_blocking = device.type == "cuda"  # overlaps the copy with compute when memory is pinned
    inputs = inputs.to(device, non_blocking=non_blocking)
    targets = targets.to(device, non_blocking=non_blocking)
    if channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets


def _check_logits_and_targets(logits: Any, targets: torch.Tensor) -> None:
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


class _Tally:
    """Running (sample-weighted) loss and accuracy over batches."""

    def __init__(self):
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> float:
        n = len(targets)
        batch_loss = loss.item()
        self.loss_sum += batch_loss * n
        predicted = logits.argmax(dim=1)
        labels = targets if targets.ndim == 1 else targets.argmax(dim=1)  # soft labels: their top class
        self.correct += (predicted == labels).sum().item()
        self.count += n
        return batch_loss

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count

    @property
    def accuracy(self) -> float:
        return self.correct / self.count


# ---------------------------------------------------------------------------------------------
# fit's settings: precision, arguments, optimizer, schedulers, callbacks, progress bar


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
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}.")
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
    names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return {name.replace("accuracy", "acc"): f"{record[name]:.3f}" for name in names if name in record}
