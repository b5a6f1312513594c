"""Closing a domain gap: train on labelled source images so that the model works on unlabelled target ones (19.4).

- :func:`grad_reverse` (:class:`GradientReversal`), :class:`DomainClassifier`: the pieces of DANN (Ganin et al., 2016);
- :func:`coral_loss`: Deep CORAL, matching the features' covariances (Sun & Saenko, 2016);
- :func:`adabn`: AdaBN, re-estimating BatchNorm statistics on the target images (Li et al., 2016);
- steps for :func:`~course_lib.training.fit` over a :class:`~course_lib.steps.PairedLoader` of
  ``(source batch, target batch)``: :class:`SourceOnlyStep`, :class:`CoralStep`, :class:`DANNStep`,
  :class:`SelfTrainingStep`; and :func:`confident_pseudo_labels` for self-training offline.

No step reads the target labels: the target batch may hold anything in their place. DANN in a lesson::

    step = DANNStep(DomainClassifier(get_head(model).in_features), total_steps=epochs * len(paired_loader))
    fit(model, paired_loader, epochs=epochs, step=step,
        optimizer=torch.optim.Adam(dann_parameters(model, step.discriminator), lr=1e-3),  # both must learn
        val_loader=target_test_loader, val_step=ClassificationStep())  # a plain, labelled loader
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from course_lib.callbacks import Callback, TrainerState
from course_lib.core import eval_mode, model_device, to_device
from course_lib.metrics import accuracy
from course_lib.models import get_head
from course_lib.steps import StepOutput, check_logits_and_targets, split_inputs_and_targets
from course_lib.validation import check_module, check_positive_int, check_positive_number

__all__ = [
    "CoralStep", "DANNStep", "DomainClassifier", "GradientReversal", "SelfTrainingStep", "SourceOnlyStep", "adabn",
    "confident_pseudo_labels", "coral_loss", "dann_lambda", "dann_parameters", "features_and_logits", "grad_reverse",
]

_ThreeTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _number(value: Any, name: str, high: float = math.inf, what: str = "a finite number >= 0") -> float:
    """``value`` as a float if it is a finite number in [0, high], else a ValueError naming ``name``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= high or math.isinf(value):
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return float(value)


# ---------------------------------------------------------------------------------------------
# The pieces: gradient reversal, the DANN schedule, CORAL, the domain classifier


class GradientReversal(torch.autograd.Function):
    """Identity going forward; going backward, the gradient times ``-lambda_`` (Ganin et al., 2016; 19.4).

    Whatever reads the reversed features learns to *reduce* its loss, while everything before
    them learns to *increase* it: the feature extractor is pushed to fool the domain classifier.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)  # a new tensor object, so autograd records this function on it

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambda_ * grad_output, None  # lambda_ is a setting, not something to learn


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``-lambda_`` on the way back (:class:`GradientReversal`, 19.4)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"grad_reverse needs a tensor, got {type(x).__name__}.")
    return GradientReversal.apply(x, _number(lambda_, "lambda_"))


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN's reversal strength at training ``progress`` p in [0, 1]: ``2 / (1 + exp(-gamma p)) - 1`` (19.4).

    0 at the start, so the domain classifier's early, random gradients do not disturb the
    features; close to 1 from about a third of the way on (gamma = 10, Ganin et al., 2016).
    """
    progress = _number(progress, "progress", 1.0, "a number in [0, 1] (steps done / total steps)")
    return 2.0 / (1.0 + math.exp(-check_positive_number(gamma, "gamma") * progress)) - 1.0


def _check_features(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 2:
        got = f"{x.dtype} tensor shaped {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be float features shaped (examples, features), got a {got}; "
                         "use the pooled features of features_and_logits(model, inputs).")
    return x


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ``||C_S - C_T||_F^2 / (4 d^2)``, C the (n - 1)-normalised covariance of each batch's features (19.4).

    ``source`` is ``(n_s, d)``, ``target`` ``(n_t, d)``, with at least 2 rows each. Differentiable;
    computed in at least float32, so that it is safe under mixed precision.
    """
    for x, name in ((source, "source"), (target, "target")):
        if len(_check_features(x, name)) < 2:
            raise ValueError(f"{name} has {len(x)} row(s); a covariance needs at least 2 examples (a bigger batch).")
    if source.shape[1] != target.shape[1] or source.device != target.device:
        raise ValueError(f"source {tuple(source.shape)} on {source.device} and target {tuple(target.shape)} on "
                         f"{target.device} must have the same width and device: take both from the same layer.")
    dtype = torch.promote_types(source.dtype, torch.float32)

    def covariance(x: torch.Tensor) -> torch.Tensor:
        centred = x.to(dtype) - x.to(dtype).mean(dim=0)
        return centred.T @ centred / (len(x) - 1)

    d = source.shape[1]
    return (covariance(source) - covariance(target)).pow(2).sum() / (4 * d * d)


class DomainClassifier(nn.Module):
    """Features in, one logit out (> 0: "target"), read through :func:`grad_reverse`: DANN's discriminator (19.4).

    ``feature_dim`` is the width of the features the head reads (``get_head(model).in_features``).
    ``forward(features, lambda_)`` returns logits shaped ``(examples,)``.
    """

    def __init__(self, feature_dim: int, hidden: int = 256):
        super().__init__()
        self.feature_dim = check_positive_int(feature_dim, "feature_dim", "Use get_head(model).in_features.")
        self.layers = nn.Sequential(nn.Linear(feature_dim, check_positive_int(hidden, "hidden")), nn.ReLU(),
                                    nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
        if _check_features(features, "features").shape[1] != self.feature_dim:
            raise ValueError(f"The DomainClassifier takes {self.feature_dim} features but got {features.shape[1]}: "
                             "build it with DomainClassifier(get_head(model).in_features).")
        return self.layers(grad_reverse(features, lambda_)).squeeze(1)


def dann_parameters(model: nn.Module, discriminator: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of the model *and* the discriminator: what DANN's optimizer must hold (19.4).

    ``fit``'s default optimizer holds the model's only, so :class:`DANNStep` needs
    ``fit(..., optimizer=torch.optim.Adam(dann_parameters(model, discriminator), lr=1e-3))``.
    """
    modules = [check_module(model, "dann_parameters"), check_module(discriminator, "dann_parameters")]
    return [p for module in modules for p in module.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------
# One forward pass, two outputs


def features_and_logits(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, logits)`` of one forward pass: the pooled features the head reads, and its output (19.4).

    Works for every model :func:`~course_lib.models.load_backbone` returns (the head is ``.head``,
    ``.fc`` or ``.classifier``) and for an ``nn.Sequential`` ending in ``nn.Linear``. A hook on
    the head catches its input, so the body runs once and gradients flow through both outputs.
    """
    check_module(model, "features_and_logits")
    try:
        head = get_head(model)
    except TypeError:
        if not (isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)):
            raise TypeError(
                f"features_and_logits found no linear classifier on a {type(model).__name__}: give it a .head, .fc "
                "or .classifier nn.Linear, or make it an nn.Sequential ending in nn.Linear (not a model after "
                "remove_head)."
            ) from None
        head = model[-1]
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        logits = model(inputs)
    finally:
        hook.remove()  # a forgotten hook would keep collecting in every later forward pass
    if len(seen) != 1 or seen[0].ndim != 2:
        raise RuntimeError(f"The head of the {type(model).__name__} ran {len(seen)} times, or not on (batch, features) "
                           "inputs, in one forward pass; features_and_logits needs it to run once on pooled features.")
    return seen[0], logits


# ---------------------------------------------------------------------------------------------
# Steps for fit over a PairedLoader((source inputs, labels), (target inputs, anything))


def _source_and_target(batch: Any) -> _ThreeTensors:
    """Source inputs and labels and target inputs of a paired batch; the target labels are dropped unread."""
    pair = isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], (tuple, list))
    target = batch[1] if pair else None
    target = target[0] if isinstance(target, (tuple, list)) and target else target
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            "An adaptation step reads batches ((source inputs, labels), (target inputs, anything)) but got "
            f"a {type(batch).__name__} of other things. Train on PairedLoader(source_loader, target_loader); to "
            "validate on a plain loader, pass fit val_step=ClassificationStep()."
        )
    source_inputs, source_labels = split_inputs_and_targets(batch[0])
    return source_inputs, source_labels, target


def _both_domains(model: nn.Module, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits of source and target in one pass, so that BatchNorm sees both domains at once."""
    if source.shape[1:] != target.shape[1:]:
        raise ValueError(f"Source inputs {tuple(source.shape[1:])} and target inputs {tuple(target.shape[1:])} differ "
                         "in shape: give both loaders the same transform (image size).")
    return features_and_logits(model, torch.cat([source, target]))


def _source_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    check_logits_and_targets(logits, labels)
    return F.cross_entropy(logits, labels), accuracy(logits, labels)


class SourceOnlyStep:
    """The baseline: cross-entropy on the labelled source batch; the target batch is ignored (19.4).

    It reads the same paired batches as the adaptation steps, so every method sees the same
    source batches in the same order and the comparison is fair.
    """

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        inputs, labels, _ = _source_and_target(batch)
        loss, source_accuracy = _source_loss(model(inputs), labels)
        return StepOutput(loss, {"accuracy": source_accuracy}, len(labels))


class CoralStep:
    """Source cross-entropy + ``weight`` x :func:`coral_loss` of source and (unlabelled) target features (19.4)."""

    def __init__(self, weight: float = 1.0):
        self.weight = _number(weight, "weight")

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        source, labels, target = _source_and_target(batch)
        features, logits = _both_domains(model, source, target)
        loss, source_accuracy = _source_loss(logits[: len(source)], labels)
        coral = coral_loss(features[: len(source)], features[len(source):])
        return StepOutput(loss + self.weight * coral, {"accuracy": source_accuracy, "coral": coral.item()}, len(labels))


class DANNStep(Callback):
    """Source cross-entropy + ``weight`` x the domain classifier's loss, through gradient reversal (DANN, 19.4).

    The ``discriminator`` (a :class:`DomainClassifier`) learns to tell source (0) from unlabelled
    target (1) features, while the reversed gradient teaches the model features it cannot tell
    apart. Its parameters must be in fit's optimizer: pass ``optimizer=torch.optim.Adam(
    dann_parameters(model, discriminator))`` (fit stops at its first epoch otherwise). The
    reversal strength follows :func:`dann_lambda` over ``total_steps`` (epochs x batches per
    epoch); it advances once per training batch (gradients on) and not during validation
    (``evaluate`` runs without gradients), and restarts with each new ``fit``.
    """

    def __init__(self, discriminator: DomainClassifier, total_steps: int, gamma: float = 10.0, weight: float = 1.0):
        if not isinstance(discriminator, DomainClassifier):
            got = type(discriminator).__name__
            raise TypeError(f"discriminator must be a DomainClassifier(feature_dim), got a {got}.")
        self.discriminator, self.total_steps = discriminator, check_positive_int(total_steps, "total_steps")
        self.gamma, self.weight = check_positive_number(gamma, "gamma"), _number(weight, "weight")
        self.steps_done = 0

    @property
    def lambda_(self) -> float:
        """The current reversal strength."""
        return dann_lambda(min(self.steps_done / self.total_steps, 1.0), self.gamma)

    def on_epoch_start(self, state: TrainerState) -> None:
        if state.epoch == 1:
            self.steps_done = 0  # a new run: the schedule starts again
        held = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
        if any(p.requires_grad and id(p) not in held for p in self.discriminator.parameters()):
            raise ValueError("The optimizer does not hold the discriminator's parameters, so it would never learn. "
                             "Pass fit optimizer=torch.optim.Adam(dann_parameters(model, discriminator), lr=...).")
        if model_device(self.discriminator) != state.device:
            raise ValueError(f"The discriminator is on {model_device(self.discriminator)} but the model on "
                             f"{state.device}: call discriminator.to(device) before building the optimizer.")

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        source, labels, target = _source_and_target(batch)
        features, logits = _both_domains(model, source, target)
        loss, source_accuracy = _source_loss(logits[: len(source)], labels)
        lambda_ = self.lambda_
        domain_logits = self.discriminator(features, lambda_)
        domains = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(domain_logits.device)
        domain_loss = F.binary_cross_entropy_with_logits(domain_logits.float(), domains)
        if torch.is_grad_enabled():  # training; fit's validation (evaluate) runs under torch.no_grad()
            self.steps_done += 1
        domain_accuracy = ((domain_logits > 0) == domains.bool()).float().mean()
        metrics = {"accuracy": source_accuracy, "domain_accuracy": domain_accuracy, "lambda": lambda_}
        return StepOutput(loss + self.weight * domain_loss, metrics, len(labels))


def _confident(logits: torch.Tensor, threshold: float) -> _ThreeTensors:
    """Which rows the model is sure of (top probability >= threshold), their predicted class and that probability."""
    confidences, labels = logits.detach().float().softmax(dim=1).max(dim=1)
    return confidences >= threshold, labels, confidences


class SelfTrainingStep:
    """Source cross-entropy + ``weight`` x cross-entropy on the target examples the model is sure of (19.4).

    A target example counts when its top predicted probability is at least ``threshold``; its
    pseudo-label is that predicted class, taken from the same forward pass but detached, so that
    no gradient flows into the choice of labels. Logs the fraction of target examples used.
    """

    def __init__(self, threshold: float = 0.9, weight: float = 1.0):
        self.threshold = _number(threshold, "threshold", 1.0, "a probability in [0, 1] (e.g. 0.9)")
        self.weight = _number(weight, "weight")

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        source, labels, target = _source_and_target(batch)
        _, logits = _both_domains(model, source, target)
        loss, source_accuracy = _source_loss(logits[: len(source)], labels)
        target_logits = logits[len(source):]
        used, pseudo_labels, _ = _confident(target_logits, self.threshold)
        if used.any():  # the cross-entropy of no examples would be NaN
            loss = loss + self.weight * F.cross_entropy(target_logits[used], pseudo_labels[used])
        return StepOutput(loss, {"accuracy": source_accuracy, "pseudo_fraction": used.float().mean()}, len(labels))


@torch.no_grad()
def confident_pseudo_labels(model: nn.Module, loader: Iterable, threshold: float = 0.9) -> _ThreeTensors:
    """``(indices, labels, confidences)`` of the ``loader``'s examples the model predicts with probability >= threshold.

    Offline self-training (19.4): label the target set once with the source model, then train on
    ``Subset(target_dataset, indices)`` with those labels. Indices count examples in the order the
    loader yields them, so it must not shuffle. Runs in eval mode and restores every layer's mode.
    """
    threshold = _number(threshold, "threshold", 1.0, "a probability in [0, 1] (e.g. 0.9)")
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler):
        raise ValueError("The loader shuffles, so the indices would not match the dataset: use shuffle=False.")
    device, found, seen = model_device(check_module(model, "confident_pseudo_labels")), [], 0
    with eval_mode(model):
        for batch in loader:
            used, labels, confidences = _confident(model(to_device(_inputs_of(batch), device)), threshold)
            found.append((torch.nonzero(used).flatten().cpu() + seen, labels[used].cpu(), confidences[used].cpu()))
            seen += len(used)
    if not found:
        raise ValueError("The loader yielded no batches: is the dataset empty?")
    return tuple(torch.cat(parts) for parts in zip(*found))


def _inputs_of(batch: Any) -> torch.Tensor:
    """The inputs of a batch that is ``inputs`` or ``(inputs, labels or anything)``."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"Batches must be input tensors or (inputs, labels), got {type(inputs).__name__}.")
    return inputs


# ---------------------------------------------------------------------------------------------
# AdaBN


@torch.no_grad()
def adabn(model: nn.Module, loader: Iterable) -> nn.Module:
    """AdaBN (Li et al., 2016): every BatchNorm layer's running mean and variance re-estimated on ``loader`` (19.4).

    The statistics become the exact mean and (unbiased) variance per channel of what each layer
    receives over the whole loader (labels ignored), with each batch normalised by its own
    statistics on the way, as in training. No weight or bias changes; every layer keeps its mode
    and momentum. Returns the same model, changed in place (``copy.deepcopy`` it to keep the original).
    """
    layers = [m for m in check_module(model, "adabn").modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    if not layers:
        raise ValueError(f"The {type(model).__name__} has no BatchNorm layers with running statistics, so AdaBN has "
                         "nothing to adapt. Pass the whole backbone (not its head), or try another method.")
    # Sums in float64 over every example: PyTorch's momentum=None would average per-batch variances,
    # missing the spread between batch means and weighting a short last batch like a full one.
    sums = {layer: (0, 0.0, 0.0) for layer in layers}  # values per channel, their sum, the sum of their squares

    def add_moments(layer: nn.Module, args: tuple) -> None:
        x = args[0].detach().double().transpose(0, 1).reshape(layer.num_features, -1)  # (channels, values)
        count, total, squares = sums[layer]
        sums[layer] = (count + x.shape[1], total + x.sum(dim=1), squares + x.pow(2).sum(dim=1))

    device, batches, momenta = model_device(model), 0, [layer.momentum for layer in layers]
    hooks = [layer.register_forward_pre_hook(add_moments) for layer in layers]
    try:
        with eval_mode(model):  # dropout off; restores every layer's mode afterwards
            for layer in layers:
                layer.train()  # normalise with the batch's statistics, and keep the stored ones (momentum 0)
                layer.momentum = 0.0
            for batch in loader:
                model(to_device(_inputs_of(batch), device))
                batches += 1
    finally:
        for hook, layer, momentum in zip(hooks, layers, momenta):
            hook.remove()
            layer.momentum = momentum
    if batches == 0:
        raise ValueError("The loader yielded no batches: is the target dataset empty?")
    for layer, (count, total, squares) in sums.items():
        if count == 0:
            continue  # a layer the forward pass never reached keeps its statistics
        if count < 2:
            raise ValueError("AdaBN needs at least 2 values per channel for a variance: pass more target images.")
        mean = total / count
        layer.running_mean.copy_(mean)
        layer.running_var.copy_((squares - count * mean.pow(2)) / (count - 1))
        layer.num_batches_tracked.fill_(batches)
    return model
