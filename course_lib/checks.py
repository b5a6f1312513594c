"""Assertions for the exercises: each failure says what was expected, what was found, and what to try.

This module checks values: tensors (shape, dtype, device, NaN), numbers, autograd, and whether an
exercise's code leans on the library's own answer. Checks on models and optimizers (frozen
parameters, train/eval mode, state snapshots, learning rates) are in :mod:`course_lib.model_checks`.
Notebook test cells call these, for example::

    check_tensor(features, shape=(64, 512), dtype=torch.float32, name="features")
    check_close(accuracy, 0.75, atol=1e-3, name="accuracy")
    check_no_grad(features)                           # 19.2: extracted without autograd?

A failed check raises :class:`AssertionError` (so autograders count it as a failed test) with a
message meant for the student, such as "expected a tensor of shape (64, 128) but got
(64, 128, 1, 1): did you forget to pool or flatten the activation?".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

__all__ = ["check_claim", "claim_verdict", "check_close", "check_no_grad", "check_range", "check_tensor", "check_uses_none_of", "fail", "listed"]

_MAX_LISTED = 5  # how many offending names a message lists before "... and N more"


def listed(names: Sequence[str]) -> str:
    """The first few names, comma-separated, then "... and N more" (for messages about many parameters)."""
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def fail(message: str, hint: str | None = None) -> NoReturn:
    """Fail an exercise check: an AssertionError saying what was wrong and, with ``hint``, what to try."""
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


def _check_values(x: torch.Tensor, name: str, finite: bool, low: float | None, high: float | None) -> None:
    """The value part of check_tensor: no NaN or infinity (if ``finite``), every element in [low, high]."""
    if finite and (x.is_floating_point() or x.is_complex()):
        bad = ~torch.isfinite(x)
        if bad.any():
            n_nan = int(torch.isnan(x).sum())
            fail(
                f"{name} contains {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values out of {x.numel()}",
                "look for a division by zero or the log of 0, or lower the learning rate if training diverged",
            )
    if (low is not None or high is not None) and x.numel() > 0:
        smallest, largest = x.min().item(), x.max().item()
        if low is not None and smallest < low:
            fail(f"expected every value of {name} to be >= {low} but the smallest is {smallest:.4g}")
        if high is not None and largest > high:
            fail(f"expected every value of {name} to be <= {high} but the largest is {largest:.4g}")


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
        fail(f"expected {name} to be a torch.Tensor but got {type(x).__name__}", fix)
    if shape is not None:
        expected = tuple(shape)
        got = tuple(x.shape)
        if not _shape_matches(expected, got):
            shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + (",)" if len(expected) == 1 else ")")
            fail(f"expected {name} to have shape {shown} but got {got}", _shape_hint(expected, got))
    if dtype is not None and x.dtype != dtype:
        fail(f"expected {name} to have dtype {dtype} but got {x.dtype}", _dtype_hint(dtype, x.dtype))
    if device is not None:
        want = torch.device(device)
        if x.device.type != want.type or (want.index is not None and x.device.index != want.index):
            fail(f"expected {name} on device {want} but it is on {x.device}", f"move it with .to({str(want)!r})")
    _check_values(x, name, finite, min, max)


def _is_close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> bool:
    """``torch.testing.assert_close``'s verdict: ``|got - want| <= atol + rtol * |want|`` everywhere (NaN never is)."""
    try:
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    except AssertionError:  # its message names no variable and gives no hint: check_close writes its own
        return False
    return True


def check_close(actual, expected, *, atol: float = 1e-4, rtol: float = 1e-4, name: str = "value", hint: str | None = None) -> None:
    """Check that ``actual`` equals ``expected`` up to ``atol + rtol * |expected|`` (numbers, arrays or tensors).

    The comparison is ``torch.testing.assert_close``'s; a failure names ``name`` and, for arrays, how
    many positions differ and the expected and actual values where they differ most.
    """
    if actual is None:
        fail(f"expected {name} to be {expected!r} but got None", hint or "did your function forget to return it?")
    try:
        got = torch.as_tensor(actual).detach().cpu().double()
    except (TypeError, ValueError, RuntimeError):
        fail(f"expected {name} to be a number or tensor but got {type(actual).__name__}", hint)
    want = torch.as_tensor(expected).detach().cpu().double()
    if got.shape != want.shape:
        fail(f"expected {name} to have shape {tuple(want.shape)} but got {tuple(got.shape)}", hint)
    if _is_close(got, want, atol, rtol):
        return
    if got.numel() == 1:
        fail(f"expected {name} to be {want.item():.6g} but got {got.item():.6g}", hint)
    differing = int((~torch.isclose(got, want, atol=atol, rtol=rtol)).sum())  # assert_close's test, per element
    difference = (got - want).abs().nan_to_num(nan=math.inf)
    worst = torch.unravel_index(difference.argmax(), difference.shape)
    where = tuple(int(i) for i in worst)
    fail(
        f"{name} differs from the expected values at {differing} of "
        f"{got.numel()} positions; the largest difference is at index {where}: expected "
        f"{want[worst].item():.6g} but got {got[worst].item():.6g}",
        hint,
    )


def check_range(value, low: float, high: float, *, name: str = "value", hint: str | None = None) -> None:
    """Check that a number (or one-element tensor) lies in ``[low, high]``, e.g. an accuracy in [0.8, 1]."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            fail(f"expected {name} to be a single number but got a tensor of shape {tuple(value.shape)}", hint or "reduce it, e.g. with .mean()")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"expected {name} to be a number but got {type(value).__name__}", hint)
    if not low <= value <= high:  # also fails for NaN
        fail(f"expected {name} between {low} and {high} but got {value:.4g}", hint)


def check_no_grad(tensor, *, name: str = "features") -> None:
    """Check that ``tensor`` was computed without autograd (feature extraction under ``torch.no_grad()``; 19.2)."""
    if not isinstance(tensor, torch.Tensor):
        fail(f"expected {name} to be a torch.Tensor but got {type(tensor).__name__}")
    if tensor.requires_grad or tensor.grad_fn is not None:
        graph = f" (grad_fn={type(tensor.grad_fn).__name__})" if tensor.grad_fn is not None else ""
        fail(
            f"{name} was computed with gradient tracking{graph}, which keeps the whole graph in memory",
            "run the forward pass under torch.no_grad() (or torch.inference_mode()), or call .detach()",
        )


def check_uses_none_of(function: Callable, forbidden: Sequence[object], *, hint: str) -> None:
    """Fail if ``function`` refers to any of the ``forbidden`` objects: the library's own versions of
    what an exercise asks the student to write (19.1's CKA, 19.3's learning-rate groups).

    Looks at every name the function's code uses, and that of functions defined inside it: a name
    that is bound to a forbidden object in the function's globals (a module counts, so
    ``lib.fn(...)`` is caught through ``lib``), or that is a forbidden function's own name. Under
    the course's grader ``function`` is a stand-in with a ``forbid`` method, which is called instead.
    """
    if callable(getattr(function, "forbid", None)) and not hasattr(function, "__code__"):
        # A stand-in for a function that runs in another process (the course's grader runs the
        # student's code in a sandbox): there the forbidden functions are made to fail when called.
        function.forbid(forbidden)
        return
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
        fail(f"{function.__name__} uses {listed(used)} from course_lib instead of doing the work itself", hint)


def check_claim(holds: bool, claim: str, *, checked: bool, measured: str = "") -> bool:
    """Assert a sentence the chapter's text states about this run's results; return whether it held.

    The book's prose interprets measured numbers ("pretrained beats random at every stage"); a
    notebook backs each such sentence with one call, so a run where it stops being true fails
    loudly instead of teaching something false. ``checked`` says whether this run is big enough
    for the claim to be meaningful, and about the data the text describes (``cfg.claims_checked``:
    the course's world at every size but ``smoke``, whose tiny runs only show that the code
    works); an unchecked claim that does not hold is reported, not raised, so that a run on real
    data lists where it agrees with the text. ``measured`` names the numbers behind the verdict.
    """
    if not isinstance(claim, str) or not claim:
        raise TypeError("claim must be the sentence the text states, as a non-empty string.")
    holds = bool(holds)
    detail = f" (measured: {measured})" if measured else ""
    if holds:
        print(f"claim holds: {claim}{detail}")
    elif checked:
        fail(f"The chapter's text says \"{claim}\", but this run measured otherwise{detail}",
             "the text and this run disagree; if the library or the sizes changed, re-derive the text from the numbers")
    else:
        print(f"claim not checked in this run, and it does not hold here: {claim}{detail}")
    return holds


def claim_verdict(holds: bool) -> str:
    """``"holds"`` or ``"does not hold"``: :func:`check_claim`'s result as words for the book.

    A chapter page glues it next to the sentence it judges, so its section on real data can say
    where the real-data run agrees with the text (an unchecked claim may fail there).
    """
    return "holds" if holds else "does not hold"
