"""Fine-tuning: letting pretrained weights move, how far, which ones and when (19.3).

Every strategy of chapter 19.3 is the same training loop (:func:`course_lib.training.fit`) with a
different answer to three questions:

- **which parameters train**: the head only (linear probe), the last ``k`` stages
  (:func:`train_last_stages`), everything, or more and more of them over time
  (:class:`GradualUnfreezing`);
- **how fast each one moves**: one learning rate, or a rate that shrinks by a factor per layer
  group from the head down (:func:`layerwise_lr_groups`, ULMFiT's discriminative rates);
- **what BatchNorm does**: keep the pretrained statistics of the frozen layers, of all layers,
  or of none (:class:`course_lib.freezing.FreezeBatchNorm`).

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
from course_lib.training import Step, fit
from course_lib.validation import check_module, check_positive_int, check_positive_number, is_int

__all__ = ["BATCHNORM", "OPTIMIZERS", "PRETRAINING_RATES", "SCHEDULES", "STRATEGIES", "GradualUnfreezing", "fine_tune", "layerwise_lr_groups",
           "pretraining_optimizer", "pretraining_rate", "probe_head", "train_last_stages", "trainable_groups_at"]

# The strategies :func:`fine_tune` knows, in the order chapter 19.3 introduces them.
STRATEGIES = ("linear probe", "full", "partial", "discriminative", "gradual", "LP-FT")
# What fine_tune does with BatchNorm's running statistics, its optimizers and its learning-rate schedules.
BATCHNORM = ("keep frozen", "keep all", "update all")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = (None, "one-cycle")
_WHOLE_MODEL = "the whole model (a torch.nn.Module)"


# The peak learning rate each backbone was pretrained with, and where that recipe is written
# down. "One tenth of the original training rate" is a tenth of these. The ResNets were trained
# by SGD with momentum 0.9, as the course fine-tunes and trains from scratch. EfficientNet was
# trained by RMSProp, whose rate means something else to SGD: measured in the lite world, SGD at
# its 0.256 trains EfficientNet-Lite0 from scratch worse than at the course's 0.05, so the course
# uses 0.05 as its SGD rate and names the published recipe beside it.
PRETRAINING_RATES: dict[str, tuple[float, str]] = {
    "course-resnet": (0.05, "course_lib.pretrain: SGD with momentum 0.9, batches of 128, one-cycle schedule peaking at 0.05"),
    **{name: (0.1, "torchvision's ImageNet recipe: SGD with momentum 0.9, batches of 256, 0.1 divided by 10 every 30 epochs")
       for name in ("resnet18", "resnet34", "resnet50")},
    "efficientnet-lite0": (0.05, "the course's SGD recipe (course_lib.pretrain: one-cycle, peak 0.05); EfficientNet's own "
                                 "ImageNet recipe (Tan & Le, 2019, section 5.2) is RMSProp with decay 0.9 and momentum "
                                 "0.9 at 0.256, decayed by 0.97 every 2.4 epochs, a rate that does not carry over to SGD"),
}


def pretraining_rate(backbone: str) -> tuple[float, str]:
    """``(peak learning rate, recipe)`` that ``backbone`` (a :func:`~course_lib.models.load_backbone`
    name) was pretrained with (19.3 sets its fine-tuning rates relative to it)."""
    if backbone not in PRETRAINING_RATES:
        raise ValueError(f"No pretraining rate is recorded for {backbone!r} (known: {', '.join(PRETRAINING_RATES)}); "
                         "look up the rate its weights were trained with and add it to PRETRAINING_RATES.")
    return PRETRAINING_RATES[backbone]


def pretraining_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.OneCycleLR]:
    """The optimizer and schedule the source model was trained with (course_lib.pretrain; 19.2's from-scratch baseline).

    SGD with Nesterov momentum and ``weight_decay`` on every parameter; a one-cycle schedule
    over ``total_steps`` batches that warms up to ``lr`` for the first quarter, then anneals to
    almost zero (moving the momentum between 0.95 and 0.85 the other way), so that even a short run
    ends converged to its budget. Step the scheduler after every batch (:func:`course_lib.training.fit`
    does).
    """
    if total_steps < 2:
        raise ValueError(f"The one-cycle schedule needs at least 2 training steps (a warm-up and a decay), got "
                         f"{total_steps}: train for more epochs or on smaller batches.")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    # At least one whole warm-up step, which only very short runs (under 6 steps) need.
    warm_up = max(0.25, 1.5 / total_steps)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=warm_up)
    return optimizer, scheduler


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


def _optimizer(model: nn.Module, kind: str, lr: float, head_lr: float, factor: float | None = None,
               momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with momentum (the source model's own optimizer) or AdamW, over every parameter: the head
    at ``head_lr``; the backbone at ``lr``, or at rates falling by ``factor`` per group below the
    head. Frozen parameters get no gradient, so the optimizer leaves them alone until they are
    unfrozen (which gradual unfreezing relies on). No weight decay: the rates alone are compared."""
    if factor is not None:
        groups = layerwise_lr_groups(model, head_lr, factor)
    else:
        head = set(map(id, get_head(model).parameters()))
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in head], "lr": lr, "name": "backbone"},
            {"params": list(get_head(model).parameters()), "lr": head_lr, "name": "head"},
        ]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=head_lr, momentum=momentum, weight_decay=0.0)
    return torch.optim.AdamW(groups, weight_decay=0.0)


def _one_cycle(optimizer: torch.optim.Optimizer, epochs: int, train_loader: Iterable) -> torch.optim.lr_scheduler.OneCycleLR:
    """The source model's schedule: each group warms up to its rate over the first quarter of the
    steps, then follows a cosine down to almost zero, so a run ends converged to its budget."""
    if not hasattr(train_loader, "__len__"):
        raise TypeError("schedule='one-cycle' needs a train_loader with a length (a DataLoader), to know the number of steps.")
    steps = epochs * len(train_loader)
    if steps < 2:
        raise ValueError(f"schedule='one-cycle' needs at least 2 training steps (a warm-up and a decay), got {steps}: "
                         "train for more batches or epochs, or pass schedule=None for constant rates.")
    # A quarter of the steps to warm up, as in pretraining, but at least one whole step.
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=steps, pct_start=max(0.25, 1.5 / steps))


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
    batchnorm: str = "keep frozen",
    optimizer: str = "sgd",
    momentum: float = 0.9,
    schedule: str | None = None,
    step: Step | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
) -> History:
    """Train ``model`` (pretrained, with a new head) on the target task with one of :data:`STRATEGIES`.

    The new head learns at ``head_lr`` (default ``lr``), the pretrained layers at ``lr``, through
    :func:`course_lib.training.fit`, with ``optimizer`` ``"sgd"`` (with ``momentum``, as the
    course's source model was trained) or ``"adamw"``. What each strategy trains:

    - ``"linear probe"``: the head only; the backbone frozen;
    - ``"full"``: everything (compare the pretraining rate with one ten times lower);
    - ``"partial"``: the head and the last ``k`` stages (:func:`train_last_stages`);
    - ``"discriminative"``: everything, the rates falling by ``factor`` per group below the head's
      ``head_lr`` (:func:`layerwise_lr_groups`; ``lr`` is not used);
    - ``"gradual"``: one more group every ``every`` epochs, from the top (:class:`GradualUnfreezing`);
    - ``"LP-FT"``: ``probe_epochs`` (default half of ``epochs``) of linear probe at ``head_lr``,
      then the rest as full fine-tuning of everything at ``lr``, from the probed head (Kumar et al., 2022).

    ``batchnorm`` says what happens to BatchNorm's running statistics (:data:`BATCHNORM`):
    ``"keep frozen"`` (default) keeps those of frozen layers, so that a frozen stage is frozen for
    real while training stages adapt theirs; ``"keep all"`` keeps every layer's as pretrained;
    ``"update all"`` lets every layer's follow the target data, frozen or not (measured in 19.3,
    because on a different-looking target that alone changes the accuracy).
    ``schedule="one-cycle"`` warms every rate up and anneals it to zero over the run
    (:class:`torch.optim.lr_scheduler.OneCycleLR`, the source model's schedule); None keeps the
    rates constant. ``step`` is what a batch computes (:mod:`course_lib.steps`; default the
    cross-entropy): 19.7 passes one that adds a pull toward the pretrained model (an EWC or LwF
    anchor). Returns the :class:`~course_lib.history.History`; for LP-FT both stages are in one
    history, epochs numbered on from the probe's.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}: choose one of {', '.join(map(repr, STRATEGIES))}.")
    check_positive_int(epochs, "epochs")
    for name, value in (("lr", lr), ("head_lr", head_lr)):
        if value is not None:
            check_positive_number(value, name)
    for name, value, choices in (("batchnorm", batchnorm, BATCHNORM), ("optimizer", optimizer, OPTIMIZERS),
                                 ("schedule", schedule, SCHEDULES)):
        if value not in choices:
            raise ValueError(f"Unknown {name} {value!r}: choose one of {', '.join(map(repr, choices))}.")
    check_module(model, "fine_tune", what=_WHOLE_MODEL)
    head_lr = lr if head_lr is None else head_lr
    statistics = {"keep frozen": [FreezeBatchNorm(frozen_only=True)], "keep all": [FreezeBatchNorm()],
                  "update all": []}[batchnorm]

    def make_optimizer(lr: float, head_lr: float, factor: float | None = None) -> torch.optim.Optimizer:
        return _optimizer(model, optimizer, lr, head_lr, factor, momentum)

    def train(epochs: int, optimizer: torch.optim.Optimizer, more: Sequence[Callback] = ()) -> History:
        scheduler = _one_cycle(optimizer, epochs, train_loader) if schedule == "one-cycle" else None
        # `more` first: gradual unfreezing decides what is frozen before BatchNorm is told to keep it.
        return fit(model, train_loader, epochs=epochs, optimizer=optimizer, scheduler=scheduler, step=step,
                   callbacks=[*more, *statistics, *callbacks], progress=progress)

    if strategy == "linear probe":
        optimizer_ = make_optimizer(lr, head_lr)
        train_last_stages(model, 0)
        return train(epochs, optimizer_)
    if strategy == "partial":
        optimizer_ = make_optimizer(lr, head_lr)
        train_last_stages(model, k)
        return train(epochs, optimizer_)
    if strategy == "full":
        unfreeze(model)
        return train(epochs, make_optimizer(lr, head_lr))
    if strategy == "discriminative":
        unfreeze(model)
        return train(epochs, make_optimizer(lr, head_lr, factor))
    if strategy == "gradual":
        # The optimizer holds every parameter; the callback decides each epoch which ones train.
        unfreeze(model)
        return train(epochs, make_optimizer(lr, head_lr), more=[GradualUnfreezing(every)])
    # LP-FT: a good head first, so that fine-tuning starts from a low loss and disturbs the features less.
    probe_epochs = max(1, epochs // 2) if probe_epochs is None else probe_epochs
    if not is_int(probe_epochs) or not 1 <= probe_epochs < epochs:
        raise ValueError(f"probe_epochs must be an int from 1 to epochs - 1 = {epochs - 1}, got {probe_epochs!r}.")
    optimizer_ = make_optimizer(lr, head_lr)
    train_last_stages(model, 0)
    history = train(probe_epochs, optimizer_)
    unfreeze(model)
    for record in train(epochs - probe_epochs, make_optimizer(lr, lr)):
        history.append({**record, "epoch": record["epoch"] + probe_epochs})
    return history


def probe_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, C: float = 1.0,
               max_iter: int = 500) -> nn.Linear:
    """A linear head fitted to convergence on frozen features: a converged linear probe as a layer (19.3).

    L2-penalised multinomial logistic regression on features standardised with their own mean
    and spread, the objective of scikit-learn's ``LogisticRegression(C=C)``: the summed
    cross-entropy times ``C`` plus half the squared norm of the weights. The penalty makes the
    problem strictly convex, so it has one minimiser, which full-batch L-BFGS finds (in float64,
    to a gradient below 1e-7). The standardisation is then folded into the layer
    (``W' = W / s``, ``b' = b - W' m``), so that the returned ``nn.Linear`` reads the raw features
    that the backbone feeds its head. It is LP-FT's first stage done properly (Kumar et al. fit
    the probe to convergence) and the linear-probe baseline of 19.3's grid.

    The fit runs on one CPU thread (torch's thread count is restored afterwards): its many tiny
    matrix products are fastest that way, and its result does not change with the thread count.
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError(f"features must be a 2-D tensor (examples, dimensions), got "
                         f"{getattr(features, 'shape', type(features).__name__)}: pool and flatten them first.")
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(features),):
        raise ValueError(f"labels must be a 1-D tensor with one class index per feature row ({len(features)}), "
                         f"got {getattr(labels, 'shape', type(labels).__name__)}.")
    check_positive_number(C, "C")
    present = sorted(torch.unique(labels).tolist())
    if present != list(range(num_classes)):
        raise ValueError(f"every one of the {num_classes} classes needs training examples, got classes {present}: "
                         "draw them with course_lib.data.sample_per_class.")
    features, labels = features.detach().double().cpu(), labels.detach().long().cpu()
    mean, scale = features.mean(0), features.std(0, correction=0).clamp_min(1e-8)
    standardised = (features - mean) / scale
    weight = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        # scikit-learn's objective divided by C * n: the mean cross-entropy plus |W|^2 / (2 C n).
        loss = nn.functional.cross_entropy(standardised @ weight.T + bias, labels)
        loss = loss + (weight**2).sum() / (2 * C * len(labels))
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny matrix products: one thread is fastest, by far
    try:
        optimizer.step(objective)
    finally:
        torch.set_num_threads(threads)
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        folded = weight / scale
        head.weight.copy_(folded.float())
        head.bias.copy_((bias - folded @ mean).float())
    return head
