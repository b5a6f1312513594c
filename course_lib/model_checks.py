"""Assertions on models and optimizers for the exercises, with messages in the style of :mod:`course_lib.checks`.

Notebook test cells call these, for example::

    check_frozen(model.backbone)                      # 19.2: is the backbone frozen?
    check_eval_mode(model.backbone)                   # 19.2: BatchNorm statistics left alone?
    check_learning_rates(optimizer, [1e-4, 1e-2])     # 19.3: discriminative learning rates

A failed check raises :class:`AssertionError` naming what was expected, what was found, and what to try.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from course_lib.checks import fail, listed
from course_lib.core import count_parameters

__all__ = [
    "check_eval_mode", "check_frozen", "check_learning_rates", "check_param_groups_cover", "check_parameter_counts",
    "check_same_state", "check_train_mode", "record_training_steps", "recorded_training_steps", "snapshot_state",
]


def _as_module(model, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        fail(f"expected {what} to be a torch.nn.Module but got {type(model).__name__}",
              "pass the module itself (not model.parameters())" if model is not None else "did your function forget to return it?")
    return model


def check_frozen(model_or_module: nn.Module, *, expect_frozen: bool = True, name: str = "backbone") -> None:
    """Check that every parameter is frozen (``requires_grad=False``), or every one trainable if ``expect_frozen=False``.

    19.2 freezes the backbone for feature extraction; 19.3 unfreezes stages for fine-tuning.
    """
    module = _as_module(model_or_module, name)
    parameters = list(module.named_parameters())
    if not parameters:
        fail(f"{name} has no parameters", "did you pass the right module?")
    wrong = [n for n, p in parameters if p.requires_grad == expect_frozen]
    if not wrong:
        return
    if expect_frozen:
        fail(
            f"expected every parameter of {name} to be frozen, but {len(wrong)} of {len(parameters)} still "
            f"have requires_grad=True ({listed(wrong)})",
            f"call {name}.requires_grad_(False)",
        )
    fail(
        f"expected every parameter of {name} to be trainable, but {len(wrong)} of {len(parameters)} have "
        f"requires_grad=False ({listed(wrong)})",
        f"call {name}.requires_grad_(True) on the part you want to fine-tune",
    )


def check_parameter_counts(model: nn.Module, *, trainable: int | None = None, frozen: int | None = None) -> None:
    """Check how many parameter *elements* are trainable and how many frozen (e.g. only the head trains)."""
    if trainable is None and frozen is None:
        raise ValueError("check_parameter_counts needs trainable=... and/or frozen=... to compare against.")
    module = _as_module(model, "model")
    n_trainable, n_frozen = count_parameters(module)
    found = f"(found {n_trainable:,} trainable and {n_frozen:,} frozen)"
    if trainable is not None and n_trainable != trainable:
        hint = (
            "some parameters you meant to freeze still have requires_grad=True"
            if n_trainable > trainable
            else "some parameters you meant to train are frozen, or a new layer has the wrong size"
        )
        fail(f"expected {trainable:,} trainable parameters but found {n_trainable:,} {found}", hint)
    if frozen is not None and n_frozen != frozen:
        hint = (
            "some parameters you meant to train have requires_grad=False"
            if n_frozen > frozen
            else "some parameters you meant to freeze still have requires_grad=True"
        )
        fail(f"expected {frozen:,} frozen parameters but found {n_frozen:,} {found}", hint)


def _as_optimizer(optimizer) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        fail(f"expected a torch.optim.Optimizer but got {type(optimizer).__name__}")
    return optimizer


def _wanted_rates(groups: list[dict], expected: Sequence[float] | Mapping) -> dict[int, float]:
    """``{group index: expected lr}`` from a list (one rate per group) or a dict keyed by index or group name."""
    if not isinstance(expected, Mapping):
        if len(expected) != len(groups):
            fail(
                f"expected {len(expected)} param groups but the optimizer has {len(groups)} (learning rates {[g['lr'] for g in groups]})",
                "pass a list of dicts to the optimizer, one per group: [{'params': ..., 'lr': ...}, ...]",
            )
        return dict(enumerate(expected))
    wanted = {}
    names = {g.get("name"): i for i, g in enumerate(groups) if g.get("name") is not None}
    for key, lr in expected.items():
        if isinstance(key, int) and 0 <= key < len(groups):
            wanted[key] = lr
        elif key in names:
            wanted[names[key]] = lr
        else:
            fail(
                f"expected a param group {key!r} but the optimizer has {len(groups)} groups"
                f"{' named ' + ', '.join(map(str, names)) if names else ' without names'}",
                "give each group a 'name' key, e.g. {'params': ..., 'lr': ..., 'name': 'head'}",
            )
    return wanted


def check_learning_rates(optimizer: torch.optim.Optimizer, expected: Sequence[float] | Mapping, *, rtol: float = 1e-6) -> None:
    """Check the learning rate of each parameter group (19.3 discriminative learning rates).

    ``expected`` is a list with one rate per group, or a dict from group index (int) or group
    ``"name"`` (the optional key of a param-group dict) to its rate.
    """
    groups = _as_optimizer(optimizer).param_groups
    got_rates = [g["lr"] for g in groups]
    wanted = _wanted_rates(groups, expected)
    for index, lr in wanted.items():
        if not math.isclose(groups[index]["lr"], lr, rel_tol=rtol, abs_tol=0.0):
            if sorted(got_rates) == sorted(wanted.values()) and len(wanted) == len(groups):
                hint = "the rates are right but in the wrong groups: did you swap the backbone and head groups?"
            elif "initial_lr" in groups[index] and math.isclose(groups[index]["initial_lr"], lr, rel_tol=rtol):
                hint = "the group started with that rate but a scheduler changed it: check before scheduler.step()"
            else:
                hint = "set 'lr' in that group's dict (a group without 'lr' uses the optimizer's default lr=...)"
            fail(f"param group {index}: expected lr {lr:g} but got {groups[index]['lr']:g} (all groups: {got_rates})", hint)


def check_param_groups_cover(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Check that every trainable parameter of ``model`` is in exactly one param group of ``optimizer``."""
    groups = _as_optimizer(optimizer).param_groups
    module = _as_module(model, "model")
    times_seen: dict[int, int] = {}
    for group in groups:
        for p in group["params"]:
            times_seen[id(p)] = times_seen.get(id(p), 0) + 1
    named = dict(module.named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and id(p) not in times_seen]
    repeated = [n for n, p in named.items() if times_seen.get(id(p), 0) > 1]
    foreign = len(set(times_seen) - {id(p) for p in named.values()})
    if foreign:  # checked first: it usually explains the missing parameters too
        fail(
            f"the optimizer holds {foreign} parameters that are not in this model "
            f"(and {len(missing)} trainable parameters of the model are in no param group)",
            "did you build the optimizer from an older model object? Create the optimizer after the final model",
        )
    if missing:
        fail(
            f"{len(missing)} trainable parameters are in no param group and will never be updated ({listed(missing)})",
            "add them to one of the groups (or freeze them with requires_grad_(False) if that is intended)",
        )
    if repeated:
        fail(f"{len(repeated)} parameters are in more than one param group ({listed(repeated)})", "put each parameter in exactly one group")


def _check_mode(module, training: bool, name: str) -> None:
    module = _as_module(module, name)
    wrong = [n or name for n, m in module.named_modules() if m.training != training]
    if not wrong:
        return
    if training:
        fail(f"expected {name} in training mode but these submodules are in eval mode: {listed(wrong)}", f"call {name}.train()")
    fail(
        f"expected {name} in eval mode but these submodules are in training mode: {listed(wrong)}",
        f"call {name}.eval() after model.train() (which switches every submodule back to training); "
        "in training mode BatchNorm updates its running statistics and Dropout drops activations",
    )


def check_eval_mode(module: nn.Module, *, name: str = "backbone") -> None:
    """Check that ``module`` and all its submodules are in eval mode (frozen BatchNorm, no Dropout; 19.2)."""
    _check_mode(module, False, name)


def check_train_mode(module: nn.Module, *, name: str = "model") -> None:
    """Check that ``module`` and all its submodules are in training mode."""
    _check_mode(module, True, name)


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model.state_dict()`` (parameters and buffers) to compare with later in :func:`check_same_state`."""
    module = _as_module(model, "model")
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


def check_same_state(before: Mapping | nn.Module, after: Mapping | nn.Module, *, name: str = "model") -> None:
    """Check that no parameter or buffer changed, e.g. that BatchNorm statistics survived feature extraction.

    ``before`` comes from :func:`snapshot_state`; ``after`` may be another snapshot or the module itself.
    """
    before = snapshot_state(before) if isinstance(before, nn.Module) else before
    after = snapshot_state(after) if isinstance(after, nn.Module) else after
    if set(before) != set(after):
        extra, gone = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        fail(
            f"{name}'s entries changed: {len(extra)} new ({listed(extra)}) and {len(gone)} removed ({listed(gone)})",
            "compare snapshots of the same model (take the first with snapshot_state)",
        )
    changed = [key for key in before if not torch.equal(before[key].cpu(), after[key].cpu())]
    if changed:
        hint = "look for an optimizer step or an in-place operation on these tensors"
        if any("running_" in key or "num_batches_tracked" in key for key in changed):
            hint = (
                "BatchNorm updates its running statistics whenever it runs in training mode, even under "
                f"torch.no_grad(): call {name}.eval() first"
            )
        fail(f"{len(changed)} entries of {name} changed: {listed(changed)}", hint)


# What record_training_steps keeps per forward pass in training mode (one row of its buffer).
_STEP_FIELDS = ("trainable", "backbone_sum", "backbone_square_sum", "batchnorm_training", "head_id")
_CAPACITY = 4096


def record_training_steps(model: nn.Module, head_name: str = "head") -> nn.Module:
    """Make ``model`` note, at every forward pass in training mode with gradients on, what a test needs to
    see of training that happened inside someone else's function; returns ``model``.

    Each note holds the number of trainable parameter elements, two fingerprints of every weight
    and buffer outside the head (BatchNorm statistics included), how many BatchNorm layers were in
    training mode, and the identity of the head's weight (a new head has a new one). The notes are
    a buffer of the model, so they travel with its ``state_dict``, and a test can read them with
    :func:`recorded_training_steps` even when the training ran in another process (19.3's LP-FT
    hidden test, under the course's sandboxed grader).
    """
    model = _as_module(model, "model")
    model.register_buffer("training_steps", torch.zeros(_CAPACITY, len(_STEP_FIELDS), dtype=torch.float64))
    model.register_buffer("training_step_count", torch.zeros((), dtype=torch.long))
    model.training_steps_head = head_name
    model.register_forward_pre_hook(_note_training_step)
    return model


def _note_training_step(model: nn.Module, inputs) -> None:
    if not model.training or not torch.is_grad_enabled():
        return
    count = int(model.training_step_count)
    if count >= _CAPACITY:
        return
    head = model.training_steps_head
    with torch.no_grad():
        backbone = [value.double() for key, value in model.state_dict().items()
                    if not key.startswith((f"{head}.", "training_step"))]
        row = torch.tensor([
            sum(p.numel() for p in model.parameters() if p.requires_grad),
            float(sum(value.sum() for value in backbone)),
            float(sum((value * value).sum() for value in backbone)),
            sum(m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)),
            float(id(model.get_submodule(head).weight)),
        ], dtype=torch.float64)
        model.training_steps[count] = row
        model.training_step_count += 1


def recorded_training_steps(model: nn.Module) -> list[dict]:
    """The notes :func:`record_training_steps` made, one dict per training forward pass, oldest first."""
    if not hasattr(model, "training_steps"):
        raise ValueError("this model records no training steps: call record_training_steps(model) before training it.")
    count = int(model.training_step_count)
    return [dict(zip(_STEP_FIELDS, row.tolist())) for row in model.training_steps[:count]]
