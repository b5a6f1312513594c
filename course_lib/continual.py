"""Continual learning: training on task after task without forgetting the earlier ones (19.7).

Every method here is a step for :func:`~course_lib.training.fit` (:mod:`course_lib.steps`), trained
one task at a time; between tasks, ``step.end_task(model, inputs, labels)`` lets it keep what it
needs of the task just learned (:func:`course_lib.continual_runs.train_sequence` calls it):

- :class:`ContinualStep`: naive fine-tuning, plain cross-entropy on the current task (the baseline);
- :class:`EWCStep`: elastic weight consolidation (Kirkpatrick et al., 2017): a quadratic
  :func:`ewc_penalty` keeps each weight near its value after earlier tasks, weighted by the
  diagonal :func:`empirical_fisher` (how much the task's log-likelihood depends on it);
- :class:`LwFStep`: learning without forgetting (Li & Hoiem, 2017): :func:`lwf_loss` distils the
  model from before the task into the current one, on the current task's inputs;
- :class:`ReplayStep`: experience replay, every batch mixed with examples drawn from a
  :class:`ReservoirBuffer`, a uniform sample of everything seen so far (Vitter's algorithm R);
- :class:`NearestClassMeanHead`: transfer learning's answer: features from a frozen backbone and
  one running mean per class, updated task by task; old means never change, so nothing is forgotten.

The **scenario** (:class:`Scenario`; van de Ven, Tuytelaars & Tolias, 2022) says what the model
is asked, and so which logits a loss reads: task-incremental (the task id is given: each task has
its own ``k`` outputs, its "head"), domain-incremental (one shared head of ``k`` outputs, no task id)
or class-incremental (one head over every class so far, no task id). Labels are global class ids,
task ``t`` holding classes ``t*k ... t*k+k-1`` (:mod:`course_lib.continual_data`)::

    step = EWCStep(Scenario("class-incremental", classes_per_task=2), lambda_=1e4)
    for task in tasks:
        fit(model, TensorBatches(task.train_inputs, task.train_labels, batch_size=128, num_batches=2000),
            epochs=1, step=step)
        step.end_task(model, task.train_inputs, task.train_labels)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from course_lib.core import eval_mode, model_device
from course_lib.metrics import accuracy
from course_lib.steps import StepOutput, check_logits_and_targets, split_inputs_and_targets
from course_lib.validation import (
    check_feature_matrix, check_module, check_non_negative_int, check_positive_int, check_positive_number,
)

__all__ = [
    "SCENARIOS", "ContinualStep", "EWCStep", "LwFStep", "NearestClassMeanHead", "ReplayStep", "ReservoirBuffer",
    "Scenario", "empirical_fisher", "ewc_penalty", "lwf_loss",
]

SCENARIOS = ("task-incremental", "domain-incremental", "class-incremental")
Tensors = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# The three scenarios


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What a continual learner is asked after each task, with ``classes_per_task`` = k classes a task (19.7).

    - ``"task-incremental"``: "which of task t's classes?", t given. The model has ``k`` outputs per
      task (``k * tasks`` in all); a sample of task ``t = label // k`` is scored on its task's ``k``
      logits only (a multi-headed model, as masked logits), its target ``label % k``.
    - ``"domain-incremental"``: "which of the k?", no task id: one shared head of ``k`` outputs,
      target ``label % k`` (Split MNIST: odd or even digit? The world: which shape, whatever the domain).
    - ``"class-incremental"``: "which class of all seen?", no task id: ``k * tasks`` outputs, the
      global label as target. The hardest: earlier classes compete with the newest ones.
    """

    name: str
    classes_per_task: int

    def __post_init__(self):
        if self.name not in SCENARIOS:
            raise ValueError(f"Unknown scenario {self.name!r}: use one of {', '.join(map(repr, SCENARIOS))}.")
        check_positive_int(self.classes_per_task, "classes_per_task", "Split MNIST has 2 classes per task.")

    def num_outputs(self, num_tasks: int) -> int:
        """How many outputs the model needs for ``num_tasks`` tasks: ``k`` (domain-incremental) or ``k * num_tasks``."""
        check_positive_int(num_tasks, "num_tasks")
        return self.classes_per_task if self.name == "domain-incremental" else self.classes_per_task * num_tasks

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The class index each label asks for: the global label (class-incremental) or ``label % k``."""
        return labels if self.name == "class-incremental" else labels % self.classes_per_task

    def outputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, targets)`` as the scenario scores them: a loss or an accuracy reads these."""
        if isinstance(logits, torch.Tensor) and logits.ndim == 2 and not labels.is_floating_point():
            self._check_outputs(logits.shape[1], labels)  # first: its message names the scenario's head
        check_logits_and_targets(logits, self.targets(labels))
        return self._select(logits, labels)

    def _check_outputs(self, num_outputs: int, labels: torch.Tensor) -> None:
        k = self.classes_per_task
        if self.name == "domain-incremental" and num_outputs != k:
            raise ValueError(f"Domain-incremental learning has one shared head of {k} outputs, but the model has "
                             f"{num_outputs}: build it with scenario.num_outputs(num_tasks) = {k} outputs.")
        if len(labels) and int(labels.min()) < 0:
            raise ValueError(f"Labels must be class ids 0, 1, 2, ..., got {int(labels.min())}.")
        if self.name != "domain-incremental" and len(labels) and int(labels.max()) >= num_outputs:
            raise ValueError(f"Label {int(labels.max())} needs at least {int(labels.max()) + 1} outputs, but the model "
                             f"has {num_outputs}: build it with scenario.num_outputs(num_tasks) outputs.")

    def _select(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`outputs` without the checks (they read values, which ``vmap`` cannot)."""
        if self.name == "task-incremental":  # each sample's own task's k logits: the head its task id picks
            k = self.classes_per_task
            columns = (labels // k * k)[:, None] + torch.arange(k, device=labels.device)
            logits = logits.gather(1, columns)
        return logits, self.targets(labels)

    def previous_outputs(self, logits: torch.Tensor, tasks_done: int) -> torch.Tensor:
        """The logits of the ``tasks_done`` earlier tasks, each a distribution over its last dimension (for LwF).

        Class-incremental: the earlier classes' logits ``(B, tasks_done * k)``, one softmax over them;
        task-incremental: one head per earlier task, ``(B, tasks_done, k)``; domain-incremental: the
        shared head ``(B, k)``.
        """
        check_positive_int(tasks_done, "tasks_done")
        if self.name == "domain-incremental":
            return logits
        seen = logits[:, : tasks_done * self.classes_per_task]
        return seen.unflatten(1, (tasks_done, self.classes_per_task)) if self.name == "task-incremental" else seen


def _scenario(scenario: Any) -> Scenario:
    if not isinstance(scenario, Scenario):
        raise TypeError(f"scenario must be a Scenario, e.g. Scenario('class-incremental', classes_per_task=2), "
                        f"got {type(scenario).__name__}.")
    return scenario


# ---------------------------------------------------------------------------------------------
# EWC: the penalty and the empirical Fisher


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def ewc_penalty(model: nn.Module, anchor_params: Mapping[str, torch.Tensor],
                fisher: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """EWC's penalty ``sum_i F_i (theta_i - theta*_i)^2`` over the parameters named in ``fisher`` (19.7).

    ``anchor_params`` are the weights after the earlier task (theta*), ``fisher`` the diagonal
    Fisher information there (:func:`empirical_fisher`), both keyed like ``model.named_parameters()``.
    Zero at the anchor, quadratic around it; differentiable in the model's parameters.
    Kirkpatrick et al. (2017) add ``lambda / 2`` times it to the new task's loss (:class:`EWCStep`).
    """
    params = dict(check_module(model, "ewc_penalty").named_parameters())
    total = torch.zeros((), device=model_device(model))
    for name, weight in fisher.items():
        if name not in params or name not in anchor_params:
            raise KeyError(f"ewc_penalty: {name!r} is in the Fisher but not in the model's parameters or the anchor: "
                           "compute both from this model (empirical_fisher(model, ...), a copy of its parameters).")
        p, anchor = params[name], anchor_params[name]
        if not p.shape == anchor.shape == weight.shape:
            raise ValueError(f"ewc_penalty: {name!r} is {tuple(p.shape)} in the model, {tuple(anchor.shape)} in the "
                             f"anchor and {tuple(weight.shape)} in the Fisher; they must come from the same model.")
        total = total + (weight * (p - anchor).pow(2)).sum()
    return total


def _batches(data: Any, batch_size: int) -> Iterable:
    """``data`` as batches: a pair of tensors ``(inputs, labels)`` is cut into slices, a loader is used as it is."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
        if len(inputs) != len(labels):
            raise ValueError(f"inputs has {len(inputs)} rows but labels has {len(labels)}; they must match one to one.")
        return [(inputs[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size)]
    if not hasattr(data, "__iter__"):
        raise TypeError(f"data must be a pair of tensors (inputs, labels) or a loader of such batches, "
                        f"got {type(data).__name__}.")
    return data


def _log_likelihood(logits: torch.Tensor, labels: torch.Tensor, scenario: Scenario | None) -> torch.Tensor:
    """``sum_n log p(y_n | x_n)`` of the *labelled* classes, the logits read as ``scenario`` reads them (unchecked)."""
    if scenario is not None:
        logits, labels = scenario._select(logits, labels)
    return -F.cross_entropy(logits.float(), labels, reduction="sum")


def _check_batch(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, scenario: Scenario | None) -> None:
    """The usual mistakes (float labels, too few outputs), caught before vmap turns them into cryptic errors."""
    logits = model(inputs[:1])
    check_logits_and_targets(logits, labels[:1] if scenario is None else scenario.targets(labels[:1]))
    if scenario is not None:
        scenario._check_outputs(logits.shape[1], labels)
    elif int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
        raise ValueError(f"Labels run over {int(labels.min())}..{int(labels.max())} but the model has "
                         f"{logits.shape[1]} outputs: pass the scenario the labels are read in (scenario=...).")


def empirical_fisher(model: nn.Module, data: Any, per_sample: bool = True, *, scenario: Scenario | None = None,
                     batch_size: int = 128, max_samples: int | None = None) -> Tensors:
    """The diagonal empirical Fisher of ``model`` on ``data``: ``{parameter name: tensor}`` for EWC (19.7).

    ``per_sample=True`` (EWC's estimator): the mean over examples of the squared gradient of
    ``log p(y_n | x_n)``, the log-probability of the example's *labelled* class (hence "empirical";
    the true Fisher would sample y from the model). Per-example gradients come from
    ``torch.func`` (``vmap`` of ``grad``), ``batch_size`` at a time; when every trainable
    parameter belongs to an ``nn.Linear`` (an MLP, or a linear head on a frozen backbone), from
    one backward pass instead, since a linear layer's per-example squared gradients sum to one
    matrix product (:func:`_linear_squared_gradients`): the same numbers, tens of times faster.

    ``per_sample=False``: the mean over batches of the squared gradient of the batch's *mean*
    log-likelihood, what some libraries compute. After a task has converged the per-example
    gradients nearly cancel in their mean, so this is about ``batch_size`` times smaller (128 times
    for Split MNIST's batches of 128): the same ``lambda`` then means a much weaker penalty, and a
    ``lambda`` tuned for one estimator is wrong for the other.

    ``data`` is ``(inputs, labels)`` tensors or a loader of such batches (labels as ``scenario``
    reads them; None: the logits and labels as they are); ``max_samples`` stops after that many
    examples. Runs in eval mode (no dropout, stored BatchNorm statistics); the model is unchanged.
    """
    check_module(model, "empirical_fisher")
    batch_size = check_positive_int(batch_size, "batch_size")
    limit = None if max_samples is None else check_positive_int(max_samples, "max_samples")
    if scenario is not None:
        _scenario(scenario)
    params = _trainable(model)
    if not params:
        raise ValueError("The model has no trainable parameters (requires_grad=True): there is nothing to consolidate.")
    device = model_device(model)
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    seen = batches = 0
    with eval_mode(model):
        for batch in _batches(data, batch_size):
            inputs, labels = (t.to(device) for t in split_inputs_and_targets(batch))
            if limit is not None:
                inputs, labels = inputs[: limit - seen], labels[: limit - seen]
            if len(labels) == 0:
                continue
            _check_batch(model, inputs, labels, scenario)
            if per_sample:
                squares = _per_sample_squared_gradients(model, params, scenario, inputs, labels)
            else:
                mean_log_likelihood = _log_likelihood(model(inputs), labels, scenario) / len(labels)
                gradients = torch.autograd.grad(mean_log_likelihood, list(params.values()))
                squares = {name: g.pow(2) for name, g in zip(params, gradients)}
            for name, square in squares.items():
                sums[name] += square
            seen, batches = seen + len(labels), batches + 1
            if limit is not None and seen >= limit:
                break
    if seen == 0:
        raise ValueError("The data yielded no examples: the Fisher needs the task's training examples.")
    return {name: total / (seen if per_sample else batches) for name, total in sums.items()}


def _per_sample_squared_gradients(model: nn.Module, params: dict[str, nn.Parameter], scenario: Scenario | None,
                                  inputs: torch.Tensor, labels: torch.Tensor) -> Tensors:
    """``sum_n (d log p(y_n | x_n) / d theta)^2`` over a batch, each example's gradient on its own."""
    squares = _linear_squared_gradients(model, params, scenario, inputs, labels)
    return squares if squares is not None else _vmap_squared_gradients(model, params, scenario, inputs, labels)


def _linear_squared_gradients(model: nn.Module, params: dict[str, nn.Parameter], scenario: Scenario | None,
                              inputs: torch.Tensor, labels: torch.Tensor) -> Tensors | None:
    """The squared per-example gradients of a model whose trainable parameters are all ``nn.Linear``'s, summed.

    For ``z_n = W a_n + b``, example n's gradient is ``dW_n = delta_n a_n^T``, with ``delta_n`` = d log p(y_n | x_n)
    / d z_n, so ``sum_n dW_n^2 = (delta^2)^T (a^2)`` and ``sum_n db_n^2 = sum_n delta_n^2``: one backward pass for every
    ``delta_n`` (examples do not mix in eval mode), then one matrix product per layer. None when the identity
    does not apply (another kind of trainable parameter, a layer run twice or on more than 2-D inputs).
    """
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    # Each trainable parameter must belong to exactly one module, an nn.Linear (a shared weight sums two products).
    if any(len(owners[id(p)]) != 1 or not isinstance(owners[id(p)][0], nn.Linear) for p in params.values()):
        return None
    layers = list(dict.fromkeys(owners[id(p)][0] for p in params.values()))
    seen: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in layers}

    def keep(layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        seen[layer].append((args[0].detach(), output))
        return output.clone()  # later in-place layers (ReLU(inplace=True)) change the copy, not the kept output

    hooks = [layer.register_forward_hook(keep) for layer in layers]
    try:
        logits = model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if any(len(calls) != 1 or calls[0][0].ndim != 2 for calls in seen.values()):
        return None
    deltas = torch.autograd.grad(_log_likelihood(logits, labels, scenario), [seen[layer][0][1] for layer in layers])
    squares_of = {}
    for layer, delta in zip(layers, deltas):
        a, delta2 = seen[layer][0][0].float(), delta.float().pow(2)
        squares_of[id(layer.weight)] = delta2.T @ a.pow(2)
        if layer.bias is not None:
            squares_of[id(layer.bias)] = delta2.sum(dim=0)
    return {name: squares_of[id(p)] for name, p in params.items()}


def _vmap_squared_gradients(model: nn.Module, params: dict[str, nn.Parameter], scenario: Scenario | None,
                            inputs: torch.Tensor, labels: torch.Tensor) -> Tensors:
    """The squared per-example gradients of any model, summed: ``torch.func.vmap`` of ``grad`` over the batch."""
    detached = {name: p.detach() for name, p in params.items()}
    name_of = {id(p): name for name, p in params.items()}
    # Each module once, each of its tensors once: a layer used twice (one module, two names) is swapped once, and
    # one Parameter held by two modules is swapped in both. (functional_call's own tying leaves a layer used twice
    # holding the swapped-in tensor afterwards, in PyTorch 2.13.)
    everything = [(f"{prefix}.{name}" if prefix else name, tensor) for prefix, module in model.named_modules()
                  for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]]

    def one_example(weights: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tensors = {name: weights[name_of[id(t)]] if id(t) in name_of else t for name, t in everything}
        logits = functional_call(model, tensors, (x.unsqueeze(0),), tie_weights=False)
        return _log_likelihood(logits, y.unsqueeze(0), scenario)

    gradients = vmap(grad(one_example), in_dims=(None, 0, 0))(detached, inputs, labels)
    return {name: g.float().pow(2).sum(dim=0) for name, g in gradients.items()}


# ---------------------------------------------------------------------------------------------
# LwF: distillation from the model before the task


def lwf_loss(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Distillation of LwF (Li & Hoiem, 2017): ``T^2 KL(softmax(old / T) || softmax(new / T))`` (19.7).

    The softmax runs over the last dimension (a ``(B, heads, k)`` input is one distribution per
    head); the KL is summed over it and averaged over everything else. Zero when the logits agree
    (up to a constant per row). The ``T^2`` keeps the gradient's size independent of ``T``: the
    softened probabilities' gradients shrink as ``1 / T^2`` (Hinton et al., 2015). ``old_logits`` is the
    teacher and gets no gradient. Computed in float32, so it is safe under mixed precision.
    """
    for value, name in ((new_logits, "new_logits"), (old_logits, "old_logits")):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim < 2:
            raise TypeError(f"{name} must be float logits shaped (batch, classes), got "
                            f"{getattr(value, 'dtype', type(value).__name__)} {tuple(getattr(value, 'shape', ()))}.")
    if new_logits.shape != old_logits.shape:
        raise ValueError(f"new_logits {tuple(new_logits.shape)} and old_logits {tuple(old_logits.shape)} must have "
                         "the same shape: distil the same outputs (scenario.previous_outputs) of both models.")
    t = check_positive_number(temperature, "temperature", "Li & Hoiem use T = 2.")
    log_new = F.log_softmax(new_logits.float() / t, dim=-1)
    log_old = F.log_softmax(old_logits.detach().float() / t, dim=-1)
    return (log_old.exp() * (log_old - log_new)).sum(dim=-1).mean() * t * t


# ---------------------------------------------------------------------------------------------
# The reservoir buffer of experience replay


class ReservoirBuffer:
    """At most ``capacity`` examples, always a uniform random sample of every example ever added (19.7).

    Vitter's algorithm R (1985): the first ``capacity`` examples fill the buffer; the ``i``-th
    (counting from 0) then replaces a random slot with probability ``capacity / (i + 1)``, so every
    example seen so far is in the buffer with the same probability, whatever the order and the
    length of the stream. ``add`` takes a whole batch at once (vectorised, with exactly the result of
    adding its examples one by one). ``seed`` fixes the replacement draws. The stored tensors sit
    on one ``device`` (default: that of the first batch added); later batches are moved there.
    """

    def __init__(self, capacity: int, *, seed: int = 0, device: str | torch.device | None = None):
        self.capacity = check_positive_int(capacity, "capacity")
        self.generator = torch.Generator().manual_seed(check_non_negative_int(seed, "seed"))
        self.device = None if device is None else torch.device(device)
        self.seen = 0  # examples offered so far
        self._inputs: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    @property
    def inputs(self) -> torch.Tensor:
        """The stored inputs, ``(len(buffer), ...)``."""
        return self._stored()[0]

    @property
    def labels(self) -> torch.Tensor:
        """The stored labels, ``(len(buffer),)`` int64."""
        return self._stored()[1]

    def _stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._inputs is None:
            raise ValueError("The buffer is empty: add(inputs, labels) first.")
        return self._inputs[: len(self)], self._labels[: len(self)]

    def add(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer every example of a batch (``inputs`` ``(n, ...)``, int64 ``labels`` ``(n,)``) to the buffer."""
        inputs, labels = self._checked(inputs, labels)
        n = len(labels)
        positions = self.seen + torch.arange(n, dtype=torch.float64)  # each example's place in the stream
        # Algorithm R: example i draws a slot uniformly from 0..i and is kept if the slot exists (< capacity);
        # while the buffer is filling (i < capacity) it simply takes slot i.
        draws = (torch.rand(n, generator=self.generator, dtype=torch.float64) * (positions + 1)).floor().long()
        slots = torch.where(positions < self.capacity, positions.long(), draws)
        kept = (slots < self.capacity).nonzero().flatten()
        # Two examples of one batch may draw the same slot: the later one must win, as it would one by one.
        winner = torch.full((self.capacity,), -1, dtype=torch.long).scatter_reduce(0, slots[kept], kept, "amax")
        filled = (winner >= 0).nonzero().flatten()
        self._inputs[filled.to(self.device)] = inputs[winner[filled].to(self.device)]
        self._labels[filled.to(self.device)] = labels[winner[filled].to(self.device)]
        self.seen += n

    def _checked(self, inputs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1:
            raise TypeError(f"inputs must be a tensor of examples shaped (n, ...), got {type(inputs).__name__}.")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            got = (f"{labels.dtype} tensor shaped {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                   else type(labels).__name__)
            raise TypeError(f"labels must be int64 class ids shaped (n,), got a {got}; convert with .long().")
        if len(labels) != len(inputs):
            raise ValueError(f"inputs has {len(inputs)} examples but labels has {len(labels)}; they must match.")
        if self._inputs is None:
            self.device = self.device or inputs.device
            self._inputs = torch.empty((self.capacity, *inputs.shape[1:]), dtype=inputs.dtype, device=self.device)
            self._labels = torch.empty(self.capacity, dtype=torch.int64, device=self.device)
        if inputs.shape[1:] != self._inputs.shape[1:] or inputs.dtype != self._inputs.dtype:
            raise ValueError(f"The buffer holds {self._inputs.dtype} examples shaped {tuple(self._inputs.shape[1:])}, "
                             f"but these are {inputs.dtype} shaped {tuple(inputs.shape[1:])}: add examples of one kind "
                             "(same preprocessing) to a buffer.")
        return inputs.to(self.device), labels.to(self.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``min(n, len(buffer))`` stored examples drawn without replacement, on the buffer's device.

        ``generator`` (a CPU ``torch.Generator``) fixes the draw; None uses the buffer's own.
        """
        n = check_positive_int(n, "n")
        inputs, labels = self._stored()
        rows = torch.randperm(len(labels), generator=generator or self.generator)[:n].to(self.device)
        return inputs[rows], labels[rows]

    def __repr__(self) -> str:
        return f"ReservoirBuffer({len(self)}/{self.capacity} examples of {self.seen} seen)"


# ---------------------------------------------------------------------------------------------
# Steps for fit, one task at a time


class ContinualStep:
    """Naive fine-tuning: cross-entropy on the current task's batch, read as the ``scenario`` says (19.7).

    The base of the other steps, and the step that evaluates every method (it only reads the
    batch). ``end_task(model, inputs, labels)`` is called after each task; here it keeps nothing.
    Logs ``accuracy`` on the current task's examples.
    """

    def __init__(self, scenario: Scenario):
        self.scenario = _scenario(scenario)

    def classification(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The scenario's cross-entropy and accuracy of ``logits`` for global ``labels``."""
        logits, targets = self.scenario.outputs(logits, labels)
        return F.cross_entropy(logits, targets), accuracy(logits, targets)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        inputs, labels = split_inputs_and_targets(batch)
        loss, task_accuracy = self.classification(model(inputs), labels)
        return StepOutput(loss, {"accuracy": task_accuracy}, len(labels))

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Called after training on a task, with its training examples; naive fine-tuning keeps nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scenario.name!r})"


class EWCStep(ContinualStep):
    """Cross-entropy + ``lambda_ / 2 * sum_tasks ewc_penalty``: EWC (Kirkpatrick et al., 2017; 19.7).

    ``end_task`` stores the weights and their :func:`empirical_fisher` on (the first
    ``fisher_samples`` of) the task's examples in ``anchors``; each earlier task keeps its own
    penalty. Their sum is computed as one quadratic, ``sum_t F_t (theta - theta_t)^2 = F (theta -
    theta_bar)^2 + c`` with ``F = sum_t F_t`` and ``theta_bar = sum_t F_t theta_t / F``: the same value
    and gradient, at the cost of a single penalty per batch however many tasks came before.
    ``lambda_`` depends on the estimator: the batch-mean Fisher (``per_sample=False``) is about
    ``fisher_batch_size`` times smaller, so it needs about that many times the ``lambda_``.
    """

    def __init__(self, scenario: Scenario, lambda_: float, *, per_sample: bool = True,
                 fisher_samples: int | None = None, fisher_batch_size: int = 128):
        super().__init__(scenario)
        self.lambda_ = check_positive_number(lambda_, "lambda_")
        self.per_sample = bool(per_sample)
        self.fisher_samples = None if fisher_samples is None else check_positive_int(fisher_samples, "fisher_samples")
        self.fisher_batch_size = check_positive_int(fisher_batch_size, "fisher_batch_size")
        self.anchors: list[tuple[Tensors, Tensors]] = []  # (weights, Fisher) after each earlier task
        self._merged: tuple[Tensors, Tensors, float] | None = None  # (theta_bar, F, c): the anchors' sum as one

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        fisher = empirical_fisher(model, (inputs, labels), self.per_sample, scenario=self.scenario,
                                  batch_size=self.fisher_batch_size, max_samples=self.fisher_samples)
        weights = {name: p.detach().clone() for name, p in _trainable(model).items()}
        self.anchors.append((weights, fisher))
        self._merged = _merged_penalty(self.anchors)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        inputs, labels = split_inputs_and_targets(batch)
        loss, task_accuracy = self.classification(model(inputs), labels)
        penalty = loss.new_zeros(())
        if self._merged is not None:
            centre, fisher, constant = self._merged
            penalty = ewc_penalty(model, centre, fisher) + constant
        metrics = {"accuracy": task_accuracy, "ewc_penalty": penalty.item()}
        return StepOutput(loss + self.lambda_ / 2 * penalty, metrics, len(labels))


def _merged_penalty(anchors: list[tuple[Tensors, Tensors]]) -> tuple[Tensors, Tensors, float]:
    """``(theta_bar, F, c)`` with ``sum_t F_t (theta - theta_t)^2 = F (theta - theta_bar)^2 + c`` for every theta."""
    if len(anchors) == 1:
        return anchors[0][0], anchors[0][1], 0.0
    centre, total, constant = {}, {}, 0.0
    for name in anchors[0][1]:
        fishers = torch.stack([fisher[name] for _, fisher in anchors]).double()
        weights = torch.stack([anchor[name] for anchor, _ in anchors]).double()
        total[name] = fishers.sum(dim=0)
        # Where no task cares about a weight (F = 0) its centre does not matter: keep the latest.
        bar = torch.where(total[name] > 0, (fishers * weights).sum(dim=0) / total[name], weights[-1])
        constant += float((fishers * weights.pow(2)).sum() - (total[name] * bar.pow(2)).sum())
        centre[name] = bar.to(anchors[-1][0][name].dtype)
        total[name] = total[name].to(anchors[-1][1][name].dtype)
    return centre, total, constant


class LwFStep(ContinualStep):
    """Cross-entropy + ``alpha *`` :func:`lwf_loss` to the model as it was before the task: LwF (19.7).

    ``end_task`` keeps a frozen copy of the model. On each batch of the new task, the earlier
    tasks' outputs (:meth:`Scenario.previous_outputs`) of the current model are distilled toward
    the copy's, at ``temperature``: no old data is needed, only the new task's inputs.
    """

    def __init__(self, scenario: Scenario, *, temperature: float = 2.0, alpha: float = 1.0):
        super().__init__(scenario)
        self.temperature = check_positive_number(temperature, "temperature")
        self.alpha = check_positive_number(alpha, "alpha")
        self.old_model: nn.Module | None = None
        self.tasks_done = 0

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.old_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.tasks_done += 1

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        inputs, labels = split_inputs_and_targets(batch)
        logits = model(inputs)
        loss, task_accuracy = self.classification(logits, labels)
        distillation = torch.zeros((), device=logits.device)
        if self.old_model is not None:
            with torch.no_grad():
                old_logits = self.old_model(inputs)
            previous = self.scenario.previous_outputs
            distillation = lwf_loss(previous(logits, self.tasks_done), previous(old_logits, self.tasks_done),
                                    self.temperature)
        metrics = {"accuracy": task_accuracy, "distillation": distillation.item()}
        return StepOutput(loss + self.alpha * distillation, metrics, len(labels))


class ReplayStep(ContinualStep):
    """Experience replay: each batch of the current task plus ``replay_batch_size`` examples from a buffer (19.7).

    ``end_task`` adds the task's examples to a :class:`ReservoirBuffer` of ``capacity``, so the
    buffer stays a uniform sample of all earlier tasks. One cross-entropy runs over the mixed
    batch (default: as many replayed as current examples, so old and new weigh the same);
    ``accuracy`` is logged on the current examples. Without gradients (``evaluate``, fit's
    validation) nothing is replayed.
    """

    def __init__(self, scenario: Scenario, capacity: int, *, replay_batch_size: int | None = None, seed: int = 0):
        super().__init__(scenario)
        self.buffer = ReservoirBuffer(capacity, seed=seed)
        self.replay_batch_size = (None if replay_batch_size is None
                                  else check_positive_int(replay_batch_size, "replay_batch_size"))
        self.generator = torch.Generator().manual_seed(seed + 1)  # the draws from the buffer, apart from its own

    def end_task(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.buffer.add(inputs, labels)

    def __call__(self, model: nn.Module, batch: Any) -> StepOutput:
        inputs, labels = split_inputs_and_targets(batch)
        n = len(labels)
        if len(self.buffer) and torch.is_grad_enabled():  # training; fit's validation (evaluate) scores the batch alone
            old_inputs, old_labels = self.buffer.sample(self.replay_batch_size or n, self.generator)
            inputs = torch.cat([inputs, old_inputs.to(inputs.device)])
            labels = torch.cat([labels, old_labels.to(labels.device)])
        logits = model(inputs)
        loss, _ = self.classification(logits, labels)
        current = self.scenario.outputs(logits[:n], labels[:n])
        return StepOutput(loss, {"accuracy": accuracy(*current)}, n)


# ---------------------------------------------------------------------------------------------
# Transfer learning's answer: class means of frozen features


class NearestClassMeanHead(nn.Module):
    """A classifier of frozen features by their nearest class mean, updated from a stream (19.7).

    ``update(features, labels)`` adds a batch to running per-class sums and counts, so a class's
    mean is exact after any number of batches and tasks, and learning new classes never moves the
    old means: on a frozen backbone, nothing is forgotten. ``forward(features)`` returns logits
    ``2 mu_c . x - ||mu_c||^2`` = ``||x||^2 - ||x - mu_c||^2``: the nearest mean has the largest logit,
    and the softmax equals that of the negative squared distances (the ``||x||^2`` is the same in
    every column). So NCM *is* a linear head, ``W = 2 mu``, ``b = -||mu||^2``. Classes with no
    example yet get ``-inf``. Put it on a backbone: ``nn.Sequential(FrozenBackbone(model), head)``.
    """

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.feature_dim = check_positive_int(feature_dim, "feature_dim")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        # float64 sums: a mean over tens of thousands of float32 features keeps its precision.
        self.register_buffer("sums", torch.zeros(num_classes, feature_dim, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of ``(N, feature_dim)`` features with their int64 class ``labels`` to the class means."""
        features = check_feature_matrix(features, "features")
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"The head takes {self.feature_dim} features but got {features.shape[1]}: build it with "
                             "the backbone's feature width.")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (len(features),):
            raise TypeError(f"labels must be int64 class ids, one per row of features ({len(features)}).")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be class ids in 0..{self.num_classes - 1}, got {int(labels.min())}.."
                             f"{int(labels.max())}: build the head with num_classes covering every task's classes.")
        labels = labels.to(self.sums.device)
        self.sums.index_add_(0, labels, features.to(self.sums))
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    @property
    def means(self) -> torch.Tensor:
        """The class means ``(num_classes, feature_dim)`` float32; NaN rows for classes with no example yet."""
        return (self.sums / self.counts[:, None]).float()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[1] != self.feature_dim:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"The head takes features shaped (N, {self.feature_dim}), got {got}: pool and flatten "
                             "the backbone's output (FrozenBackbone does).")
        if not bool((self.counts > 0).any()):
            raise RuntimeError("The NearestClassMeanHead has seen no example yet: call update(features, labels) first.")
        seen = self.counts > 0
        means = self.means.nan_to_num(0.0)  # unseen classes: masked below
        logits = 2 * features.float() @ means.T - means.pow(2).sum(dim=1)
        return logits.masked_fill(~seen, float("-inf"))
