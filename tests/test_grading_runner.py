"""The student's half of grading (tools/grading_runner.py): the parts that run without a sandbox."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import grading_runner  # noqa: E402  (tools/ is not a package)


def _plain(x):
    return x + 1


@torch.no_grad()
def _decorated(x):
    return x + 1


def _closure():
    step = 1

    def add(x):
        return x + step

    return add


@pytest.mark.parametrize("kind", ["plain", "decorated (@torch.no_grad())", "closure"])
def test_a_forbidden_library_function_raises_under_every_name(kind):
    # check_uses_none_of forbids the library's version of an exercise; 19.4's reference.adabn is
    # decorated, and swapping a wrapper's code crashed the student's process.
    function = {"plain": _plain, "decorated (@torch.no_grad())": _decorated, "closure": _closure()}[kind]
    alias = function
    assert function(1) == 2
    grading_runner._make_unavailable(function)
    for name in (function, alias):
        with pytest.raises(RuntimeError, match="not available to this exercise"):
            name(1)


def test_a_class_is_left_alone():
    class Layer:
        pass

    grading_runner._make_unavailable(Layer)
    assert isinstance(Layer(), Layer)
