"""Assertions for the exercises: each failure says what was expected, what was found, and what to try.

Notebook test cells call these, for example::

    check_tensor(features, shape=(64, 512), dtype=torch.float32, name="features")
    check_frozen(model.backbone)                      # 19.2: is the backbone frozen?
    check_learning_rates(optimizer, [1e-4, 1e-2])     # 19.3: discriminative learning rates

A failed check raises :class:`AssertionError` (so autograders count it as a failed test) with a
message meant for the student, such as "expected a tensor of shape (64, 128) but got
(64, 128, 1, 1): did you forget to pool or flatten the activation?".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import torch
from torch import nn

_MAX_LISTED = 5  # how many offending names a message lists before "... and N more"


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _fail(message: str, hint: str | None = None) -> NoReturn:
    raise AssertionError(message + (f": {hint}" if hint else "."))


def _shape_matches(expected: tuple, got: tuple) -> bool:
    return len(expected) == len(got) and all(e is None or e == g for e, g in zip(expected, got))


def _shape_hint(expected: tuple, got: tuple) -> str:
    """Guess the usual mistake behind a wrong shape (``expected`` may hold None wildcards)."""
    if len(got) > len(expected) and _shape_matches(expected, got[: len(expected)]):
        return "did you forget to pool or flatten the activation (e.g. torch.flatten(x, 1))?"
    if len(got) == len(expected) + 1 and got[0] == 1:
        return "there is an extra leading dimension of size 1: index it away (x[0]) or use x.squeeze(0)"
    if len(got) + 1 == len(expected) and _shape_matches(expected[1:], got):
        return "the batch dimension is missing: add it with x.unsqueeze(0)"
    if None not in expected:
        if len(got) == len(expected) and sorted(got) == sorted(expected):
            return "the dimensions are in the wrong order: use x.permute(...) (images are (N, C, H, W) in PyTorch)"
        if math.prod(got) == math.prod(expected):
            return "the number of elements is right but not the layout: use x.reshape(...) or x.flatten(...)"
    differing = [i for i, (e, g) in enumerate(zip(expected, got)) if e is not None and e != g]
    if len(got) == len(expected) and differing:
        i = differing[0]
        return f"dimension {i} should be {expected[i]} but is {got[i]}"
    return f"expected {len(expected)} dimensions but got {len(got)}"


def _dtype_hint(expected: torch.dtype, got: torch.dtype) -> str:
    if expected.is_floating_point and got == torch.uint8:
        return "convert images with x.float() / 255"
    if expected == torch.long:
        return "class labels must be torch.long for the loss functions: use .long()"
    return f"convert with x.to({expected})"


def check_tensor(
    x,
    *,
    shape: Sequence[int | None] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    name: str = "tensor",
    finite: bool = True,
    min: float | None = None,
    max: float | None = None,
) -> None:
    """Check that ``x`` is a tensor with the given shape (``None`` = any size), dtype, device and values.

    ``finite`` (default True) also requires that a floating tensor holds no NaN or infinity;
    ``min``/``max`` bound every element.
    """
    if not isinstance(x, torch.Tensor):
        fix = "did your function forget to return it?" if x is None else "convert it with torch.as_tensor(...)"
        _fail(f"expected {name} to be a torch.Tensor but got {type(x).__name__}", fix)
    if shape is not None:
        expected = tuple(shape)
        got = tuple(x.shape)
        if not _shape_matches(expected, got):
            shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + (",)" if len(expected) == 1 else ")")
            _fail(f"expected {name} to have shape {shown} but got {got}", _shape_hint(expected, got))
    if dtype is not None and x.dtype != dtype:
        _fail(f"expected {name} to have dtype {dtype} but got {x.dtype}", _dtype_hint(dtype, x.dtype))
    if device is not None:
        want = torch.device(device)
        if x.device.type != want.type or (want.index is not None and x.device.index != want.index):
            _fail(f"expected {name} on device {want} but it is on {x.device}", f"move it with .to({str(want)!r})")
    if finite and (x.is_floating_point() or x.is_complex()):
        bad = ~torch.isfinite(x)
        if bad.any():
            n_nan = int(torch.isnan(x).sum())
            _fail(
                f"{name} contains {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values out of {x.numel()}",
                "look for a division by zero or the log of 0, or lower the learning rate if training diverged",
            )
    if (min is not None or max is not None) and x.numel() > 0:
        smallest, largest = x.min().item(), x.max().item()
        if min is not None and smallest < min:
            _fail(f"expected every value of {name} to be >= {min} but the smallest is {smallest:.4g}")
        if max is not None and largest > max:
            _fail(f"expected every value of {name} to be <= {max} but the largest is {largest:.4g}")


def check_close(actual, expected, *, atol: float = 1e-4, rtol: float = 1e-4, name: str = "value", hint: str | None = None) -> None:
    """Check that ``actual`` equals ``expected`` up to ``atol + rtol * |expected|`` (numbers, arrays or tensors)."""
    if actual is None:
        _fail(f"expected {name} to be {expected!r} but got None", hint or "did your function forget to return it?")
    try:
        got = torch.as_tensor(actual).detach().cpu().double()
    except (TypeError, ValueError, RuntimeError):
        _fail(f"expected {name} to be a number or tensor but got {type(actual).__name__}", hint)
    want = torch.as_tensor(expected).detach().cpu().double()
    if got.shape != want.shape:
        _fail(f"expected {name} to have shape {tuple(want.shape)} but got {tuple(got.shape)}", hint)
    if torch.allclose(got, want, atol=atol, rtol=rtol):
        return
    if got.numel() == 1:
        _fail(f"expected {name} to be {want.item():.6g} but got {got.item():.6g}", hint)
    difference = (got - want).abs().nan_to_num(nan=math.inf)
    worst = torch.unravel_index(difference.argmax(), difference.shape)
    where = tuple(int(i) for i in worst)
    _fail(
        f"{name} differs from the expected values at {int((difference > atol + rtol * want.abs()).sum())} of "
        f"{got.numel()} positions; the largest difference is at index {where}: expected "
        f"{want[worst].item():.6g} but got {got[worst].item():.6g}",
        hint,
    )


def check_range(value, low: float, high: float, *, name: str = "value", hint: str | None = None) -> None:
    """Check that a number (or one-element tensor) lies in ``[low, high]``, e.g. an accuracy in [0.8, 1]."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            _fail(f"expected {name} to be a single number but got a tensor of shape {tuple(value.shape)}", hint or "reduce it, e.g. with .mean()")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(f"expected {name} to be a number but got {type(value).__name__}", hint)
    if not low <= value <= high:  # also fails for NaN
        _fail(f"expected {name} between {low} and {high} but got {value:.4g}", hint)


def _as_module(model, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        _fail(f"expected {what} to be a torch.nn.Module but got {type(model).__name__}",
              "pass the module itself (not model.parameters())" if model is not None else "did your function forget to return it?")
    return model


def check_frozen(model_or_module: nn.Module, *, expect_frozen: bool = True, name: str = "backbone") -> None:
    """Check that every parameter is frozen (``requires_grad=False``), or every one trainable if ``expect_frozen=False``.

    19.2 freezes the backbone for feature extraction; 19.3 unfreezes stages for fine-tuning.
    """
    module = _as_module(model_or_module, name)
    parameters = list(module.named_parameters())
    if not parameters:
        _fail(f"{name} has no parameters", "did you pass the right module?")
    wrong = [n for n, p in parameters if p.requires_grad == expect_frozen]
    if not wrong:
        return
    if expect_frozen:
        _fail(
            f"expected every parameter of {name} to be frozen, but {len(wrong)} of {len(parameters)} still "
            f"have requires_grad=True ({_listed(wrong)})",
            f"call {name}.requires_grad_(False)",
        )
    _fail(
        f"expected every parameter of {name} to be trainable, but {len(wrong)} of {len(parameters)} have "
        f"requires_grad=False ({_listed(wrong)})",
        f"call {name}.requires_grad_(True) on the part you want to fine-tune",
    )


def check_parameter_counts(model: nn.Module, *, trainable: int | None = None, frozen: int | None = None) -> None:
    """Check how many parameter *elements* are trainable and how many frozen (e.g. only the head trains)."""
    if trainable is None and frozen is None:
        raise ValueError("check_parameter_counts needs trainable=... and/or frozen=... to compare against.")
    module = _as_module(model, "model")
    n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    found = f"(found {n_trainable:,} trainable and {n_frozen:,} frozen)"
    if trainable is not None and n_trainable != trainable:
        hint = (
            "some parameters you meant to freeze still have requires_grad=True"
            if n_trainable > trainable
            else "some parameters you meant to train are frozen, or a new layer has the wrong size"
        )
        _fail(f"expected {trainable:,} trainable parameters but found {n_trainable:,} {found}", hint)
    if frozen is not None and n_frozen != frozen:
        hint = (
            "some parameters you meant to train have requires_grad=False"
            if n_frozen > frozen
            else "some parameters you meant to freeze still have requires_grad=True"
        )
        _fail(f"expected {frozen:,} frozen parameters but found {n_frozen:,} {found}", hint)


def check_learning_rates(optimizer: torch.optim.Optimizer, expected: Sequence[float] | Mapping, *, rtol: float = 1e-6) -> None:
    """Check the learning rate of each parameter group (19.3 discriminative learning rates).

    ``expected`` is a list with one rate per group, or a dict from group index (int) or group
    ``"name"`` (the optional key of a param-group dict) to its rate.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        _fail(f"expected a torch.optim.Optimizer but got {type(optimizer).__name__}")
    groups = optimizer.param_groups
    got_rates = [g["lr"] for g in groups]
    if isinstance(expected, Mapping):
        wanted = {}
        names = {g.get("name"): i for i, g in enumerate(groups) if g.get("name") is not None}
        for key, lr in expected.items():
            if isinstance(key, int) and 0 <= key < len(groups):
                wanted[key] = lr
            elif key in names:
                wanted[names[key]] = lr
            else:
                _fail(
                    f"expected a param group {key!r} but the optimizer has {len(groups)} groups"
                    f"{' named ' + ', '.join(map(str, names)) if names else ' without names'}",
                    "give each group a 'name' key, e.g. {'params': ..., 'lr': ..., 'name': 'head'}",
                )
    else:
        if len(expected) != len(groups):
            _fail(
                f"expected {len(expected)} param groups but the optimizer has {len(groups)} (learning rates {got_rates})",
                "pass a list of dicts to the optimizer, one per group: [{'params': ..., 'lr': ...}, ...]",
            )
        wanted = dict(enumerate(expected))
    for index, lr in wanted.items():
        if not math.isclose(groups[index]["lr"], lr, rel_tol=rtol, abs_tol=0.0):
            if sorted(got_rates) == sorted(wanted.values()) and len(wanted) == len(groups):
                hint = "the rates are right but in the wrong groups: did you swap the backbone and head groups?"
            elif "initial_lr" in groups[index] and math.isclose(groups[index]["initial_lr"], lr, rel_tol=rtol):
                hint = "the group started with that rate but a scheduler changed it: check before scheduler.step()"
            else:
                hint = "set 'lr' in that group's dict (a group without 'lr' uses the optimizer's default lr=...)"
            _fail(f"param group {index}: expected lr {lr:g} but got {groups[index]['lr']:g} (all groups: {got_rates})", hint)


def check_param_groups_cover(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Check that every trainable parameter of ``model`` is in exactly one param group of ``optimizer``."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        _fail(f"expected a torch.optim.Optimizer but got {type(optimizer).__name__}")
    module = _as_module(model, "model")
    times_seen: dict[int, int] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            times_seen[id(p)] = times_seen.get(id(p), 0) + 1
    named = dict(module.named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and id(p) not in times_seen]
    repeated = [n for n, p in named.items() if times_seen.get(id(p), 0) > 1]
    foreign = len(set(times_seen) - {id(p) for p in named.values()})
    if foreign:  # checked first: it usually explains the missing parameters too
        _fail(
            f"the optimizer holds {foreign} parameters that are not in this model "
            f"(and {len(missing)} trainable parameters of the model are in no param group)",
            "did you build the optimizer from an older model object? Create the optimizer after the final model",
        )
    if missing:
        _fail(
            f"{len(missing)} trainable parameters are in no param group and will never be updated ({_listed(missing)})",
            "add them to one of the groups (or freeze them with requires_grad_(False) if that is intended)",
        )
    if repeated:
        _fail(f"{len(repeated)} parameters are in more than one param group ({_listed(repeated)})", "put each parameter in exactly one group")


def _check_mode(module, training: bool, name: str) -> None:
    module = _as_module(module, name)
    wrong = [n or name for n, m in module.named_modules() if m.training != training]
    if not wrong:
        return
    if training:
        _fail(f"expected {name} in training mode but these submodules are in eval mode: {_listed(wrong)}", f"call {name}.train()")
    _fail(
        f"expected {name} in eval mode but these submodules are in training mode: {_listed(wrong)}",
        f"call {name}.eval() after model.train() (which switches every submodule back to training); "
        "in training mode BatchNorm updates its running statistics and Dropout drops activations",
    )


def check_eval_mode(module: nn.Module, *, name: str = "backbone") -> None:
    """Check that ``module`` and all its submodules are in eval mode (frozen BatchNorm, no Dropout; 19.2)."""
    _check_mode(module, False, name)


def check_train_mode(module: nn.Module, *, name: str = "model") -> None:
    """Check that ``module`` and all its submodules are in training mode."""
    _check_mode(module, True, name)


def check_no_grad(tensor, *, name: str = "features") -> None:
    """Check that ``tensor`` was computed without autograd (feature extraction under ``torch.no_grad()``; 19.2)."""
    if not isinstance(tensor, torch.Tensor):
        _fail(f"expected {name} to be a torch.Tensor but got {type(tensor).__name__}")
    if tensor.requires_grad or tensor.grad_fn is not None:
        graph = f" (grad_fn={type(tensor.grad_fn).__name__})" if tensor.grad_fn is not None else ""
        _fail(
            f"{name} was computed with gradient tracking{graph}, which keeps the whole graph in memory",
            "run the forward pass under torch.no_grad() (or torch.inference_mode()), or call .detach()",
        )


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
        _fail(
            f"{name}'s entries changed: {len(extra)} new ({_listed(extra)}) and {len(gone)} removed ({_listed(gone)})",
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
        _fail(f"{len(changed)} entries of {name} changed: {_listed(changed)}", hint)


def check_uses_none_of(function: Callable, forbidden: Sequence[object], *, hint: str) -> None:
    """Fail if ``function`` refers to any of the ``forbidden`` objects: the library's own versions of
    what an exercise asks the student to write (19.1's CKA, 19.3's learning-rate groups).

    Looks at every name the function's code uses, and that of functions defined inside it: a name
    that is bound to a forbidden object in the function's globals (a module counts, so
    ``lib.fn(...)`` is caught through ``lib``), or that is a forbidden function's own name.
    """
    if not callable(function) or not hasattr(function, "__code__"):
        raise TypeError(f"function must be a Python function, got {type(function).__name__}.")
    forbidden_ids = {id(obj) for obj in forbidden}
    forbidden_names = {getattr(obj, "__name__", "").rsplit(".", 1)[-1] for obj in forbidden} - {""}
    codes, names = [function.__code__], set()
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(const for const in code.co_consts if hasattr(const, "co_names"))
    used = sorted(name for name in names if id(function.__globals__.get(name)) in forbidden_ids or name in forbidden_names)
    if used:
        _fail(f"{function.__name__} uses {_listed(used)} from course_lib instead of doing the work itself", hint)
