"""The student's half of grading (tools/grading_runner.py): the parts that run without a sandbox."""

from __future__ import annotations

import os
import signal
import sys
import time
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


def test_the_line_reader_keeps_what_it_read_past_a_line():
    # Two kill requests sent while the runner was busy arrive in one read.
    read_end, write_end = os.pipe()
    reader = grading_runner.LineReader(read_end)
    assert not reader.ready()
    os.write(write_end, b'{"kill": "a"}\n{"kill": "b"}\n{"ki')
    assert reader.ready()
    assert reader.receive() == {"kill": "a"}
    assert reader.ready()  # the second line is already in the buffer
    assert reader.receive() == {"kill": "b"}
    os.write(write_end, b'll": "c"}\n')
    assert reader.receive() == {"kill": "c"}
    os.close(write_end)
    assert reader.ready() and reader.receive() is None
    os.close(read_end)


def test_kill_requests_are_handled_without_waiting_between_cells():
    read_end, write_end = os.pipe()
    reader = grading_runner.LineReader(read_end)
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    children = {"ex1_tests": child, "ex2_tests": 2**22 + 1}
    assert grading_runner.handle_kill_requests(reader, children, wait=False)  # nothing sent: returns at once
    os.write(write_end, b'{"kill": "ex1_tests"}\n{"kill": "not_a_test"}\n')
    assert grading_runner.handle_kill_requests(reader, children, wait=False)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    os.close(write_end)
    assert not grading_runner.handle_kill_requests(reader, children, wait=False)  # the grader closed the pipe
    os.close(read_end)
