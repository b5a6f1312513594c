"""Fine-tuning: letting pretrained weights move, how far, which ones and when (19.3).

Every strategy of chapter 19.3 is the same training loop (:func:`course_lib.training.fit`) with a
different answer to three questions:

- **which parameters train**: the head only (linear probe), the last ``k`` stages
  (:func:`train_last_stages`), everything, or more and more of them over time
  (:class:`GradualUnfreezing`);
- **how fast each one moves**: one learning rate, or a rate that shrinks by a factor per layer
  group from the head down (:func:`layerwise_lr_groups`, ULMFiT's discriminative rates);
- **what BatchNorm does**: keep the pretrained statistics (:class:`FreezeBatchNorm`) or update them.

:func:`layer_groups` splits any supported backbone into groups from input to output, and
:func:`weight_drift` measures how far each group has moved from its pretrained weights.
:func:`fine_tune` runs a strategy by name, so that a comparison runs every one the same way.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from course_lib.callbacks import Callback, History, TrainerState
from course_lib.freezing import freeze, unfreeze
from course_lib.models import get_head, remove_head, replace_head, stage_names
from course_lib.training import evaluate, fit, model_device

__all__ = [
    "STRATEGIES", "FreezeBatchNorm", "GradualUnfreezing", "fine_tune", "layer_groups", "layerwise_lr_groups",
    "compare_with_rule", "fine_tune_copy", "old_task_accuracy", "rule_of_thumb", "train_last_stages", "trainable_groups_at", "weight_drift",
]

# The strategies :func:`fine_tune` knows, in the order chapter 19.3 introduces them.
STRATEGIES = ("linear probe", "full", "partial", "discriminative", "gradual", "LP-FT")


def _check_model(model: object, function: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{function} needs the whole model (a torch.nn.Module), got {type(model).__name__}.")
    return model


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """The model's parameters in groups from input to output: ``[("stem", [...]), (stage, [...]), ..., ("head", [...])]``.

    The stages are those of :func:`course_lib.models.stage_names`; the head is the final linear
    classifier; ``"stem"`` holds every other parameter (the layers before the first stage).
    For the course model: stem, stage1 ... stage4, head (6 groups); for a torchvision ResNet-18:
    stem (conv1, bn1), layer1 ... layer4, head (6 groups). Every parameter is in exactly one group.
    """
    model = _check_model(model, "layer_groups")
    stages = [name for name in stage_names(model) if name != "stem"]
    head = get_head(model)
    grouped = {name: list(model.get_submodule(name).parameters()) for name in stages}
    grouped["head"] = list(head.parameters())
    taken = {id(p) for params in grouped.values() for p in params}
    stem = [p for p in model.parameters() if id(p) not in taken]
    return [("stem", stem), *[(name, grouped[name]) for name in stages], ("head", grouped["head"])]


def layerwise_lr_groups(model: nn.Module, head_lr: float, factor: float = 2.6) -> list[dict]:
    """Optimizer parameter groups whose learning rate shrinks by ``factor`` per group from the head down.

    The head trains at ``head_lr``, the last stage at ``head_lr / factor``, the one before at
    ``head_lr / factor**2``, and so on to the stem (ULMFiT's *discriminative fine-tuning*; 2.6 is
    Howard and Ruder's factor). Frozen parameters are left out, and so are groups with none
    trainable. Each group is a dict with ``"params"``, ``"lr"`` and ``"name"``, ready for
    ``torch.optim.AdamW(groups)``. Chapter 19.3's first exercise asks you to write this.
    """
    if not isinstance(head_lr, (int, float)) or isinstance(head_lr, bool) or not head_lr > 0:
        raise ValueError(f"head_lr must be a positive number, got {head_lr!r}.")
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
    model (changed in place). BatchNorm statistics are a separate choice: see :class:`FreezeBatchNorm`.
    """
    groups = layer_groups(_check_model(model, "train_last_stages"))
    if not _is_int(k) or not 0 <= k <= len(groups) - 1:
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
    if not _is_int(epoch) or epoch < 1:
        raise ValueError(f"epoch must be an int counted from 1, got {epoch!r}.")
    if not _is_int(every) or every < 1:
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


class FreezeBatchNorm(Callback):
    """Keep every BatchNorm layer in eval mode during training, so its running statistics stay as pretrained.

    ``fit`` calls ``model.train()`` at the start of every epoch; this callback then puts the
    BatchNorm layers back into eval mode. Their weight and bias still train if unfrozen; only the
    normalisation statistics are kept. Chapter 19.2 shows why a frozen backbone needs this; 19.3
    asks whether a fine-tuned one does.
    """

    def on_epoch_start(self, state: TrainerState) -> None:
        for module in state.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def weight_drift(model: nn.Module, pretrained: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, float]:
    """How far each layer group has moved from the pretrained weights: ``||w - w0|| / ||w0||`` per group.

    ``pretrained`` is the model before fine-tuning, or a *copy* of its state
    (``copy.deepcopy(model.state_dict())``: a plain ``state_dict()`` shares memory with the model
    and moves with it). The head is left out when its shape differs (a new head has no pretrained
    weights to drift from). 0 means untouched; 0.1 means the group moved by a tenth of its size.
    """
    model = _check_model(model, "weight_drift")
    reference = pretrained.state_dict() if isinstance(pretrained, nn.Module) else pretrained
    if not isinstance(reference, Mapping):
        raise TypeError(f"pretrained must be a model or its state_dict(), got {type(pretrained).__name__}.")
    names = {id(p): name for name, p in model.named_parameters()}
    drift = {}
    for group, params in layer_groups(model):
        pairs = [(names[id(p)], p, reference.get(names[id(p)])) for p in params]
        missing = [name for name, _, w0 in pairs if w0 is None]
        mismatched = [name for name, p, w0 in pairs if w0 is not None and w0.shape != p.shape]
        if group == "head" and (missing or mismatched):
            continue  # a replaced head: nothing to compare with
        if missing or mismatched:
            raise ValueError(
                f"The pretrained weights do not match the model's {group!r} "
                f"({'missing ' + repr(missing[0]) if missing else 'a different shape for ' + repr(mismatched[0])}): "
                "pass the state of the same architecture before fine-tuning."
            )
        moved = sum(float((p.detach().cpu() - w0.cpu()).pow(2).sum()) for _, p, w0 in pairs)
        size = sum(float(w0.cpu().pow(2).sum()) for _, _, w0 in pairs)
        drift[group] = (moved / size) ** 0.5 if size > 0 else 0.0
    return drift


def old_task_accuracy(model: nn.Module, old_head: nn.Linear, loader: Iterable) -> float:
    """Accuracy on the source task of ``model``'s backbone *as it is now*, with the source model's head put back.

    Fine-tuning replaced the head, so the source task can only be scored by giving the moved
    backbone its old head again. Tracked during fine-tuning (19.3) with
    ``TrackMetric(lambda m: old_task_accuracy(m, source_head, source_loader), "source_accuracy")``;
    the fall of this number is the catastrophic forgetting of chapter 19.7.
    """
    if not isinstance(old_head, nn.Linear):
        raise TypeError(f"old_head must be the source model's nn.Linear head (get_head(source_model)), got {type(old_head).__name__}.")
    body = remove_head(copy.deepcopy(_check_model(model, "old_task_accuracy")))
    feature_dim = get_head(model).in_features
    if old_head.in_features != feature_dim:
        raise ValueError(f"old_head takes {old_head.in_features} features but the backbone gives {feature_dim}: "
                         "pass the head of the same architecture's source model.")
    return evaluate(nn.Sequential(body, copy.deepcopy(old_head).to(model_device(model))), loader)["accuracy"]


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
    (:class:`FreezeBatchNorm`). Returns the :class:`~course_lib.callbacks.History`; for LP-FT
    both stages are in one history, epochs numbered on from the probe's.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}: choose one of {', '.join(map(repr, STRATEGIES))}.")
    if not _is_int(epochs) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
    for name, value in (("lr", lr), ("head_lr", head_lr)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    _check_model(model, "fine_tune")
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
    if not _is_int(probe_epochs) or not 1 <= probe_epochs < epochs:
        raise ValueError(f"probe_epochs must be an int from 1 to epochs - 1 = {epochs - 1}, got {probe_epochs!r}.")
    optimizer = _optimizer(model, lr, head_lr)
    train_last_stages(model, 0)
    history = train(probe_epochs, optimizer, more=[FreezeBatchNorm()])
    for record in train(epochs - probe_epochs, _optimizer(unfreeze(model), lr, lr)):
        history.append({**record, "epoch": record["epoch"] + probe_epochs})
    return history


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
    **fine_tune_kwargs,
) -> tuple[nn.Module, History]:
    """Fine-tune a fresh copy of ``pretrained`` (new head for ``num_classes``) on ``train_set[indices]``; return it and its history.

    Every call trains on the same budget, whatever the number of images: ``epochs`` epochs of
    ``batches_per_epoch`` batches drawn at random, with replacement, from the chosen images, so
    that a comparison of strategies or data sizes is not a comparison of training lengths (19.3).
    ``pretrained`` is not changed; ``fine_tune_kwargs`` go to :func:`fine_tune` (``strategy``,
    ``lr``, ``head_lr``, ...). ``seed`` fixes the new head and the order of the batches.
    """
    _check_model(pretrained, "fine_tune_copy")
    if not _is_int(batches_per_epoch) or batches_per_epoch < 1 or not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batches_per_epoch and batch_size must be positive ints, got {batches_per_epoch!r} and {batch_size!r}.")
    indices = torch.as_tensor(indices).tolist()
    if len(indices) == 0:
        raise ValueError("indices is empty: pass the training examples to fine-tune on (e.g. from sample_per_class).")
    torch.manual_seed(seed)
    model = replace_head(copy.deepcopy(pretrained), num_classes)
    images = Subset(train_set, indices)
    sampler = RandomSampler(images, replacement=True, num_samples=batches_per_epoch * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    history = fine_tune(model, DataLoader(images, batch_size=batch_size, sampler=sampler), epochs=epochs, **fine_tune_kwargs)
    return model, history


def rule_of_thumb(total_images: int) -> str:
    """The size rule chapter 19.3 tests, as a strategy name: fewer than 500 labelled images, a linear
    probe; 500 to 5,000, partial fine-tuning; more, full fine-tuning (at a lower learning rate)."""
    if not _is_int(total_images) or total_images < 1:
        raise ValueError(f"total_images must be a positive int, got {total_images!r}.")
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

