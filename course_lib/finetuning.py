"""Fine-tuning: letting pretrained weights move, how far, which ones and when (19.3).

Every strategy of chapter 19.3 is the same training loop (:func:`course_lib.training.fit`) with a
different answer to three questions:

- **which parameters train**: the head only (linear probe), the last ``k`` stages
  (:func:`train_last_stages`), everything, or more and more of them over time
  (:class:`GradualUnfreezing`);
- **how fast each one moves**: one learning rate, or a rate that shrinks by a factor per layer
  group from the head down (:func:`layerwise_lr_groups`, ULMFiT's discriminative rates);
- **what BatchNorm does**: keep the pretrained statistics
  (:class:`course_lib.freezing.FreezeBatchNorm`) or update them.

Groups come from :func:`course_lib.models.layer_groups`; how far each moved is
:func:`course_lib.forgetting.weight_drift`. :func:`fine_tune` runs a strategy by name, so that a
comparison runs every one the same way; the comparison itself (the same budget for every run,
the size rule) is in :mod:`course_lib.experiments`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from course_lib.callbacks import Callback, TrainerState
from course_lib.freezing import FreezeBatchNorm, freeze, unfreeze
from course_lib.history import History
from course_lib.models import get_head, layer_groups
from course_lib.training import fit
from course_lib.validation import check_module, check_positive_int, check_positive_number, is_int

__all__ = ["STRATEGIES", "GradualUnfreezing", "fine_tune", "layerwise_lr_groups", "train_last_stages", "trainable_groups_at"]

# The strategies :func:`fine_tune` knows, in the order chapter 19.3 introduces them.
STRATEGIES = ("linear probe", "full", "partial", "discriminative", "gradual", "LP-FT")
_WHOLE_MODEL = "the whole model (a torch.nn.Module)"


def layerwise_lr_groups(model: nn.Module, head_lr: float, factor: float = 2.6) -> list[dict]:
    """Optimizer parameter groups whose learning rate shrinks by ``factor`` per group from the head down.

    The head trains at ``head_lr``, the last stage at ``head_lr / factor``, the one before at
    ``head_lr / factor**2``, and so on to the stem (ULMFiT's *discriminative fine-tuning*; 2.6 is
    Howard and Ruder's factor). Frozen parameters are left out, and so are groups with none
    trainable. Each group is a dict with ``"params"``, ``"lr"`` and ``"name"``, ready for
    ``torch.optim.AdamW(groups)``. Chapter 19.3's first exercise asks you to write this.
    """
    check_positive_number(head_lr, "head_lr")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 1:
        raise ValueError(f"factor must be a number >= 1 (1 gives every group the same rate), got {factor!r}.")
    groups = layer_groups(model)
    param_groups = []
    for depth_from_top, (name, params) in enumerate(reversed(groups)):
        trainable = [p for p in params if p.requires_grad]
        if trainable:
            param_groups.append({"params": trainable, "lr": head_lr / factor**depth_from_top, "name": name})
    if not param_groups:
        raise ValueError("Every parameter is frozen, so there is nothing to optimise: unfreeze some first.")
    return param_groups[::-1]


def train_last_stages(model: nn.Module, k: int) -> nn.Module:
    """Partial fine-tuning: freeze the model, then unfreeze its head and its last ``k`` layer groups.

    ``k=0`` is a linear probe; ``k=len(layer_groups(model)) - 1`` trains everything. Returns the
    model (changed in place). BatchNorm statistics are a separate choice: see :class:`~course_lib.freezing.FreezeBatchNorm`.
    """
    groups = layer_groups(check_module(model, "train_last_stages", what=_WHOLE_MODEL))
    if not is_int(k) or not 0 <= k <= len(groups) - 1:
        raise ValueError(f"k must be an int from 0 (head only) to {len(groups) - 1} (every group), got {k!r}.")
    freeze(model)
    for _, params in groups[len(groups) - 1 - k:]:
        for p in params:
            p.requires_grad_(True)
    return model


def trainable_groups_at(epoch: int, group_names: Sequence[str], every: int) -> list[str]:
    """Gradual unfreezing: the groups that train in ``epoch`` (counted from 1).

    The last group (the head) trains from epoch 1; every ``every`` epochs one more group, from the
    top down, joins it, until all train: with ``every=2`` and groups ``[stem, s1, s2, head]``,
    epochs 1-2 train ``[head]``, epochs 3-4 ``[s2, head]``, 5-6 ``[s1, s2, head]``, then all.
    Returned in the order of ``group_names``. Chapter 19.3's second exercise asks you to write this.
    """
    if not is_int(epoch) or epoch < 1:
        raise ValueError(f"epoch must be an int counted from 1, got {epoch!r}.")
    if not is_int(every) or every < 1:
        raise ValueError(f"every must be a positive int (epochs between two unfreezings), got {every!r}.")
    if isinstance(group_names, str) or len(group_names) == 0:
        raise ValueError(f"group_names must be a non-empty list of names, got {group_names!r}.")
    count = min(len(group_names), 1 + (epoch - 1) // every)
    return list(group_names[len(group_names) - count:])


class GradualUnfreezing(Callback):
    """Unfreeze the model's layer groups from the top down, one every ``every`` epochs (ULMFiT).

    At the start of every epoch, exactly the groups of :func:`trainable_groups_at` are trainable.
    Build the optimizer over *all* parameters beforehand: frozen ones get no gradient, so the
    optimizer leaves them alone until they are unfrozen.
    """

    def __init__(self, every: int = 1):
        trainable_groups_at(1, ["head"], every)  # checks ``every``
        self.every = every

    def on_epoch_start(self, state: TrainerState) -> None:
        groups = layer_groups(state.model)
        trainable = set(trainable_groups_at(state.epoch, [name for name, _ in groups], self.every))
        for name, params in groups:
            for p in params:
                p.requires_grad_(name in trainable)


def _optimizer(model: nn.Module, lr: float, head_lr: float, factor: float | None = None) -> torch.optim.Optimizer:
    """AdamW over every parameter: the head at ``head_lr``; the backbone at ``lr``, or at rates
    falling by ``factor`` per group below the head. Frozen parameters get no gradient, so AdamW
    leaves them alone until they are unfrozen (which gradual unfreezing relies on)."""
    if factor is not None:
        return torch.optim.AdamW(layerwise_lr_groups(model, head_lr, factor), weight_decay=0.0)
    head = set(map(id, get_head(model).parameters()))
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in head], "lr": lr, "name": "backbone"},
        {"params": list(get_head(model).parameters()), "lr": head_lr, "name": "head"},
    ]
    return torch.optim.AdamW(groups, weight_decay=0.0)


def fine_tune(
    model: nn.Module,
    train_loader: Iterable,
    strategy: str,
    *,
    epochs: int,
    lr: float,
    head_lr: float | None = None,
    k: int = 1,
    factor: float = 2.6,
    every: int = 1,
    probe_epochs: int | None = None,
    freeze_batchnorm: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
) -> History:
    """Train ``model`` (pretrained, with a new head) on the target task with one of :data:`STRATEGIES`.

    The new head learns at ``head_lr`` (default ``lr``), the pretrained layers at ``lr``, with
    AdamW, through :func:`course_lib.training.fit`. What each strategy trains:

    - ``"linear probe"``: the head only; the backbone frozen, its BatchNorm statistics kept;
    - ``"full"``: everything (compare a high ``lr`` with a 10x lower one);
    - ``"partial"``: the head and the last ``k`` stages (:func:`train_last_stages`);
    - ``"discriminative"``: everything, the rates falling by ``factor`` per group below the head's
      ``head_lr`` (:func:`layerwise_lr_groups`; ``lr`` is not used);
    - ``"gradual"``: one more group every ``every`` epochs, from the top (:class:`GradualUnfreezing`);
    - ``"LP-FT"``: ``probe_epochs`` (default half of ``epochs``) of linear probe at ``head_lr``,
      then the rest as full fine-tuning of everything at ``lr``, from the probed head (Kumar et al., 2022).

    ``freeze_batchnorm=True`` keeps every BatchNorm layer's statistics as pretrained
    (:class:`~course_lib.freezing.FreezeBatchNorm`). Returns the :class:`~course_lib.history.History`; for LP-FT
    both stages are in one history, epochs numbered on from the probe's.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}: choose one of {', '.join(map(repr, STRATEGIES))}.")
    check_positive_int(epochs, "epochs")
    for name, value in (("lr", lr), ("head_lr", head_lr)):
        if value is not None:
            check_positive_number(value, name)
    check_module(model, "fine_tune", what=_WHOLE_MODEL)
    head_lr = lr if head_lr is None else head_lr
    keep_statistics = [FreezeBatchNorm()] if freeze_batchnorm else []

    def train(epochs: int, optimizer: torch.optim.Optimizer, more: Sequence[Callback] = ()) -> History:
        return fit(model, train_loader, epochs=epochs, optimizer=optimizer,
                   callbacks=[*more, *keep_statistics, *callbacks], progress=progress)

    if strategy == "linear probe":
        optimizer = _optimizer(model, lr, head_lr)
        train_last_stages(model, 0)
        return train(epochs, optimizer, more=[FreezeBatchNorm()])
    if strategy == "partial":
        optimizer = _optimizer(model, lr, head_lr)
        train_last_stages(model, k)
        return train(epochs, optimizer)
    if strategy == "full":
        return train(epochs, _optimizer(unfreeze(model), lr, head_lr))
    if strategy == "discriminative":
        return train(epochs, _optimizer(unfreeze(model), lr, head_lr, factor))
    if strategy == "gradual":
        # The optimizer holds every parameter; the callback decides each epoch which ones train.
        return train(epochs, _optimizer(unfreeze(model), lr, head_lr), more=[GradualUnfreezing(every)])
    # LP-FT: a good head first, so that fine-tuning starts from a low loss and disturbs the features less.
    probe_epochs = max(1, epochs // 2) if probe_epochs is None else probe_epochs
    if not is_int(probe_epochs) or not 1 <= probe_epochs < epochs:
        raise ValueError(f"probe_epochs must be an int from 1 to epochs - 1 = {epochs - 1}, got {probe_epochs!r}.")
    optimizer = _optimizer(model, lr, head_lr)
    train_last_stages(model, 0)
    history = train(probe_epochs, optimizer, more=[FreezeBatchNorm()])
    for record in train(epochs - probe_epochs, _optimizer(unfreeze(model), lr, lr)):
        history.append({**record, "epoch": record["epoch"] + probe_epochs})
    return history
