"""Continual-learning runs: every method trained task after task with ``fit``, and its accuracy matrix (19.7).

:func:`train_sequence` is one run: a fresh model, then for each task ``fit`` with the method's
step (:mod:`course_lib.continual`) on a fixed budget of batches, the step's ``end_task``, and a test
on every task, which fills row ``i`` of the accuracy matrix ``R[i, j]`` (accuracy on task ``j``
after training on task ``i``; read it with :mod:`course_lib.forgetting`). The methods:

- ``"naive"``: fine-tuning on each task in turn (the lower bound);
- ``"ewc"``, ``"lwf"``, ``"replay"``: :class:`~course_lib.continual.EWCStep`,
  :class:`~course_lib.continual.LwFStep`, :class:`~course_lib.continual.ReplayStep`;
- ``"joint"``: the upper bound; at task ``i`` it trains on all the data of tasks ``0 ... i``
  together (cumulative training), so its last row is joint training on everything, at the same
  cost per task as the others;
- ``"ncm"``: no gradient at all: ``model_factory`` returns a frozen feature extractor and a
  :class:`~course_lib.continual.NearestClassMeanHead` is updated with each task's features.

:func:`compare_methods` repeats runs over seeds; :func:`bench_split_mnist` is the usual protocol on
Split MNIST (an MLP 784-400-400, Adam at 1e-3, batches of 128, 2,000 iterations a task,
class-incremental), printed next to published figures by :func:`summary_table`::

    tasks = split_mnist()
    result = train_sequence(split_mnist_mlp, tasks, "replay", scenario="class-incremental", buffer_size=1000)
    result.accuracy_matrix, result.average_accuracy, result.backward_transfer, result.seconds
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course_lib.continual import (
    SCENARIOS, ContinualStep, EWCStep, LwFStep, NearestClassMeanHead, ReplayStep, Scenario,
)
from course_lib.continual_data import ContinualTask, TensorBatches, classes_per_task, split_mnist
from course_lib.core import eval_mode, model_device
from course_lib.forgetting import average_accuracy, backward_transfer, forgetting
from course_lib.training import evaluate, fit
from course_lib.validation import check_module, check_non_negative_int, check_positive_int, check_positive_number

__all__ = [
    "AVALANCHE_SECONDS", "BENCH_METHODS", "DEFAULTS", "METHODS", "PUBLISHED_CLASS_INCREMENTAL", "MethodSummary",
    "SequenceResult", "bench_split_mnist", "compare_methods", "make_step", "split_mnist_mlp", "summary_table",
    "task_accuracy", "train_sequence",
]

METHODS = ("naive", "ewc", "lwf", "replay", "joint", "ncm")
BENCH_METHODS = ("naive", "ewc", "lwf", "replay", "joint")
# Split MNIST, class-incremental, average accuracy after the 5 tasks: van de Ven & Tolias (2019),
# "Three scenarios for continual learning" ("naive" is their fine-tuning baseline, "joint" their offline upper bound).
PUBLISHED_CLASS_INCREMENTAL = {"naive": 0.20, "ewc": 0.20, "lwf": 0.24, "replay": 0.89, "joint": 0.98}
# The same comparison in the Avalanche library, seconds per method on a 2-core machine (about 15 min in all).
AVALANCHE_SECONDS = {"naive": 148, "ewc": 181, "lwf": 160, "replay": 263, "joint": 143}
# Method settings that work on Split MNIST with the MLP and 2,000 iterations a task. EWC's lambda is huge because
# the Fisher of a task learnt that well is tiny: after the first task its per-sample estimate sums to about 1e-9
# over all 478,000 weights (the model is sure of every training digit, so the gradients of log p(y | x) vanish);
# lambda 1e9 takes task-incremental accuracy from 95% (naive) to 99.7%. The batch-mean estimator needs ~128x more.
DEFAULTS = {"ewc_lambda": 1e9, "per_sample_fisher": True, "fisher_samples": None, "buffer_size": 1000,
            "temperature": 2.0, "lwf_alpha": 1.0}

ModelFactory = Callable[[int], nn.Module]


def split_mnist_mlp(num_outputs: int, *, inputs: int = 784, hidden: int = 400) -> nn.Sequential:
    """The usual Split MNIST model: an MLP ``inputs``-``hidden``-``hidden``-``num_outputs`` with ReLU (19.7).

    Flattens its input first, so it takes ``(N, 784)`` or ``(N, 1, 28, 28)`` images alike.
    """
    num_outputs, inputs, hidden = (check_positive_int(v, name) for v, name in
                                   ((num_outputs, "num_outputs"), (inputs, "inputs"), (hidden, "hidden")))
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_outputs))


# ---------------------------------------------------------------------------------------------
# One run


@dataclasses.dataclass
class SequenceResult:
    """One run of a method over a task sequence: the accuracy matrix ``R`` (tasks x tasks) and the time (19.7)."""

    method: str
    scenario: str
    accuracy_matrix: np.ndarray
    seconds: float
    task_names: tuple[str, ...]

    @property
    def average_accuracy(self) -> float:
        """Mean accuracy over every task after the last (:func:`~course_lib.forgetting.average_accuracy`)."""
        return average_accuracy(self.accuracy_matrix)

    @property
    def backward_transfer(self) -> float:
        """What later tasks did to earlier ones, < 0 if forgotten (:func:`~course_lib.forgetting.backward_transfer`)."""
        return backward_transfer(self.accuracy_matrix)

    @property
    def forgetting(self) -> float:
        """Average drop from each task's best accuracy (:func:`~course_lib.forgetting.forgetting`)."""
        return forgetting(self.accuracy_matrix)

    def __repr__(self) -> str:
        return (f"SequenceResult({self.method!r}, {self.scenario!r}, {len(self.task_names)} tasks: average accuracy "
                f"{self.average_accuracy:.1%}, BWT {self.backward_transfer:+.1%}, {self.seconds:.1f} s)")


def make_step(method: str, scenario: Scenario, *, ewc_lambda: float = DEFAULTS["ewc_lambda"],
              per_sample_fisher: bool = DEFAULTS["per_sample_fisher"],
              fisher_samples: int | None = DEFAULTS["fisher_samples"],
              buffer_size: int = DEFAULTS["buffer_size"], temperature: float = DEFAULTS["temperature"],
              lwf_alpha: float = DEFAULTS["lwf_alpha"], seed: int = 0) -> ContinualStep:
    """The step that trains ``method`` (one of :data:`METHODS` but ``"ncm"``) in ``scenario`` (19.7).

    ``"naive"`` and ``"joint"`` train with the plain :class:`~course_lib.continual.ContinualStep`
    (joint differs in its data). ``ewc_lambda``: EWC's strength, for the estimator chosen by
    ``per_sample_fisher`` (the batch-mean one needs about a batch size's times more), computed on
    ``fisher_samples`` examples of each task; ``buffer_size``: replay's memory, in examples;
    ``temperature`` and ``lwf_alpha``: LwF's distillation.
    """
    if method in ("naive", "joint"):
        return ContinualStep(scenario)
    if method == "ewc":
        return EWCStep(scenario, ewc_lambda, per_sample=per_sample_fisher, fisher_samples=fisher_samples)
    if method == "lwf":
        return LwFStep(scenario, temperature=temperature, alpha=lwf_alpha)
    if method == "replay":
        return ReplayStep(scenario, buffer_size, seed=seed)
    raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(map(repr, METHODS[:-1]))} "
                     "(\"ncm\" trains no step: train_sequence(..., 'ncm') runs it).")


def task_accuracy(model: nn.Module, task: ContinualTask, scenario: Scenario, *, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``task``'s test set, scored as ``scenario`` scores it (19.7)."""
    device = model_device(check_module(model, "task_accuracy"))
    inputs, labels = task.test_inputs.to(device), task.test_labels.to(device)
    batches = TensorBatches(inputs, labels, batch_size=batch_size, shuffle=False)
    return evaluate(model, batches, step=ContinualStep(scenario))["accuracy"]


def _optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam over the trainable parameters, fused where PyTorch has a fused kernel: for the Split MNIST MLP
    on a CPU the optimizer step is then about 0.5 ms instead of 2 ms, a fifth of a training iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


@torch.no_grad()
def _features(backbone: nn.Module, inputs: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The backbone's features of every input, ``(N, D)``, in eval mode and without gradients."""
    with eval_mode(backbone):
        return torch.cat([backbone(inputs[i:i + batch_size]).flatten(1) for i in range(0, len(inputs), batch_size)])


def _check_run_arguments(model_factory: ModelFactory, tasks: Sequence[ContinualTask], scenario: str,
                         iterations: int, batch_size: int, lr: float, seed: int) -> Scenario:
    if not callable(model_factory) or isinstance(model_factory, nn.Module):  # a model is callable, but not a factory
        raise TypeError(f"model_factory must be a function num_outputs -> a fresh model (e.g. split_mnist_mlp), got "
                        f"a {type(model_factory).__name__}: every run starts from a new model.")
    if scenario not in SCENARIOS:
        raise ValueError(f"Unknown scenario {scenario!r}: use one of {', '.join(map(repr, SCENARIOS))}.")
    check_positive_int(iterations, "iterations")
    check_positive_int(batch_size, "batch_size")
    check_positive_number(lr, "lr")
    check_non_negative_int(seed, "seed")
    return Scenario(scenario, classes_per_task(list(tasks)))


def train_sequence(
    model_factory: ModelFactory,
    tasks: Sequence[ContinualTask],
    method: str | ContinualStep = "naive",
    *,
    scenario: str = "class-incremental",
    iterations: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    **method_options,
) -> SequenceResult:
    """Train a fresh ``model_factory(num_outputs)`` on ``tasks`` in turn; return the accuracy matrix and time (19.7).

    Per task: ``fit`` for one epoch of ``iterations`` shuffled batches of ``batch_size`` (a new Adam
    at ``lr`` per task), then ``step.end_task`` with the task's training examples, then the
    accuracy on every task's test set in ``scenario`` (``R[i, j]``, also for tasks not yet trained).
    ``method`` is a name in :data:`METHODS` (options such as ``ewc_lambda`` or ``buffer_size`` go
    to :func:`make_step`) or a ready step, e.g. ``EWCStep(Scenario(...), lambda_=...)``. ``"ncm"``:
    ``model_factory`` returns a frozen feature extractor (e.g. ``lambda n: FrozenBackbone(model)``).
    ``seed`` fixes the model's initialisation, the batches and the replay draws. ``device``: where
    to train (default CPU). ``seconds`` is the wall time of the whole run, tests included.
    """
    scenario_ = _check_run_arguments(model_factory, tasks, scenario, iterations, batch_size, lr, seed)
    name = method if isinstance(method, str) else type(method).__name__
    if isinstance(method, ContinualStep):
        if method.scenario != scenario_:
            raise ValueError(f"The step is for {method.scenario}, but the run is {scenario_}: build the step with the "
                             "run's scenario.")
        step = method
    elif name != "ncm":
        step = make_step(name, scenario_, seed=seed, **method_options)
    elif method_options:
        raise TypeError(f"'ncm' takes no method options, got {sorted(method_options)}.")
    device = torch.device(device) if device is not None else torch.device("cpu")
    started = time.perf_counter()
    torch.manual_seed(seed)  # every method of a seed starts from the same weights
    model = model_factory(scenario_.num_outputs(len(tasks)))
    check_module(model, "train_sequence", "model_factory must return a torch.nn.Module.")
    model = model.to(device)
    if name == "ncm":  # the backbone never changes, so each image's features are computed once
        model, tasks = _ncm_on_features(model, tasks, scenario_, device)
    R = np.full((len(tasks), len(tasks)), np.nan)
    for i, task in enumerate(tasks):
        if name == "ncm":
            _update_ncm(model, task, scenario_, device)
        else:
            inputs, labels = _training_data(tasks, i, cumulative=name == "joint")
            batches = TensorBatches(inputs.to(device), labels.to(device), batch_size=batch_size,
                                    num_batches=iterations, seed=1000 * seed + i)
            fit(model, batches, epochs=1, step=step, optimizer=_optimizer(model, lr, device), progress=False)
            step.end_task(model, task.train_inputs.to(device), task.train_labels.to(device))
        R[i] = [task_accuracy(model, other, scenario_) for other in tasks]
    seconds = time.perf_counter() - started
    return SequenceResult(name, scenario, R, seconds, tuple(task.name for task in tasks))


def _training_data(tasks: Sequence[ContinualTask], i: int, cumulative: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Task ``i``'s training examples, or (cumulative, for joint training) those of tasks ``0 ... i`` together."""
    chosen = tasks[: i + 1] if cumulative else [tasks[i]]
    return torch.cat([t.train_inputs for t in chosen]), torch.cat([t.train_labels for t in chosen])


def _ncm_on_features(backbone: nn.Module, tasks: Sequence[ContinualTask], scenario: Scenario,
                     device: torch.device) -> tuple[NearestClassMeanHead, list[ContinualTask]]:
    """An empty nearest-class-mean head, and the tasks with the frozen backbone's features as their inputs."""
    backbone.requires_grad_(False)
    featured = [dataclasses.replace(task, train_inputs=_features(backbone, task.train_inputs.to(device)),
                                    test_inputs=_features(backbone, task.test_inputs.to(device))) for task in tasks]
    head = NearestClassMeanHead(featured[0].train_inputs.shape[1], scenario.num_outputs(len(tasks))).to(device)
    return head, featured


def _update_ncm(head: NearestClassMeanHead, task: ContinualTask, scenario: Scenario, device: torch.device) -> None:
    """Add a task's training features to the class means (domain-incremental: one mean per within-task class)."""
    labels = task.train_labels.to(device)
    head.update(task.train_inputs, scenario.targets(labels) if scenario.name == "domain-incremental" else labels)


# ---------------------------------------------------------------------------------------------
# Several methods, several seeds


@dataclasses.dataclass
class MethodSummary:
    """A method's runs over seeds: average accuracy per seed, its mean and spread, and the seconds per run (19.7)."""

    method: str
    results: list[SequenceResult]

    @property
    def accuracies(self) -> list[float]:
        """Average accuracy after the last task, one per seed."""
        return [result.average_accuracy for result in self.results]

    @property
    def mean(self) -> float:
        """Mean of the average accuracies over seeds."""
        return float(np.mean(self.accuracies))

    @property
    def spread(self) -> float:
        """Sample standard deviation of the average accuracies over seeds (0 for a single seed)."""
        return float(np.std(self.accuracies, ddof=1)) if len(self.results) > 1 else 0.0

    @property
    def backward_transfer(self) -> float:
        """Mean backward transfer over seeds (negative: forgetting)."""
        return float(np.mean([result.backward_transfer for result in self.results]))

    @property
    def seconds(self) -> float:
        """Mean wall time of one run."""
        return float(np.mean([result.seconds for result in self.results]))

    def __repr__(self) -> str:
        return (f"MethodSummary({self.method!r}: {self.mean:.1%} ± {self.spread:.1%} over {len(self.results)} seeds, "
                f"{self.seconds:.1f} s a run)")


def compare_methods(model_factory: ModelFactory, tasks: Sequence[ContinualTask], methods: Sequence[str] = BENCH_METHODS,
                    *, seeds: Sequence[int] = (0, 1, 2), **run_options) -> dict[str, MethodSummary]:
    """:func:`train_sequence` for every method and seed: ``{method: MethodSummary}`` (19.7).

    ``run_options`` (``scenario``, ``iterations``, ``ewc_lambda``, ``buffer_size``, ...) are the same
    for every run, so every method gets the same budget; each seed starts every method from the
    same weights.
    """
    if isinstance(methods, str) or not methods:
        raise TypeError(f"methods must be a list of method names such as {list(BENCH_METHODS)}, got {methods!r}.")
    if isinstance(seeds, int) or not seeds:
        raise TypeError(f"seeds must be a non-empty list of seeds, e.g. (0, 1, 2), got {seeds!r}.")
    return {method: MethodSummary(method, [train_sequence(model_factory, tasks, method, seed=seed, **run_options)
                                           for seed in seeds]) for method in methods}


def bench_split_mnist(seeds: Sequence[int] = (0,), *, root: str | Path | None = None, iterations: int = 2000,
                      methods: Sequence[str] = BENCH_METHODS, **run_options) -> dict[str, MethodSummary]:
    """The usual Split MNIST comparison, class-incremental: ``{method: MethodSummary}`` (19.7).

    The protocol of van de Ven & Tolias (2019) and of Avalanche's examples: the 5 tasks of
    :func:`~course_lib.continual_data.split_mnist` (all their examples, from ``root``), the MLP
    784-400-400-10 of :func:`split_mnist_mlp`, Adam at 1e-3, batches of 128, ``iterations`` per
    task, method settings from :data:`DEFAULTS` unless given in ``run_options``. Compare with
    :data:`PUBLISHED_CLASS_INCREMENTAL` and :data:`AVALANCHE_SECONDS` (:func:`summary_table`).
    """
    tasks = split_mnist(root)
    options = {"scenario": "class-incremental", "batch_size": 128, "lr": 1e-3} | run_options
    return compare_methods(split_mnist_mlp, tasks, methods, seeds=seeds, iterations=iterations, **options)


def summary_table(summaries: dict[str, MethodSummary], published: dict[str, float] | None = None,
                  reference_seconds: dict[str, float] | None = None) -> str:
    """A plain-text table of :func:`compare_methods`'s result, with published accuracies and times beside it (19.7)."""
    published, reference_seconds = published or {}, reference_seconds or {}
    lines = [f"{'method':<8} {'accuracy':>17} {'BWT':>7} {'published':>9} {'seconds':>8} {'reference s':>11}"]
    for method, summary in summaries.items():
        paper = f"{published[method]:.0%}" if method in published else "-"
        reference = f"{reference_seconds[method]:.0f}" if method in reference_seconds else "-"
        lines.append(f"{method:<8} {summary.mean:>8.1%} ± {summary.spread:>5.1%} {summary.backward_transfer:>+7.1%} "
                     f"{paper:>9} {summary.seconds:>8.1f} {reference:>11}")
    return "\n".join(lines)
