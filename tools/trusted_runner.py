"""The grader's half of a test: runs the test cells, and never any code a student wrote.

Started by ``tools/sandboxed_grading.py`` for each submission, outside the student's sandbox, next
to ``tools/grading_runner.py`` inside it. This process runs the notebook's own cells and, for each
test cell, forks a child that runs the test (visible part first, hidden part only when the grader
says so). In this process each function a solution cell defines is a :class:`StudentFunction`: a
stand-in that sends its arguments to the student's process, where the real function runs, and
returns what comes back, as plain data (``tools/plain_data.py``). So every check, and every
expected value, is computed here: nothing the student's code does to its own process (patching the
check helpers or ``torch.allclose``, input transformers, forged messages) reaches a verdict, and no
hidden test's source or expected value is ever in the student's process.

Protocol: as grading_runner.py (JSON lines on the control pipes), plus, per test cell, a pipe to
and from the student's process (length-prefixed frames: pickles to it, ``plain_data`` from it)
and a pipe for the verdicts to the grader.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys

import torch
from torch import nn

import plain_data
from grading_runner import (LineReader, describe, fork_test_child, handle_kill_requests, read_exactly as read_or_none,
                            run_cell, send, serve_kill_requests)

FRAME_LIMIT = 2**30  # bytes one reply from the student's process may have
FD_KEYS = ("to_student", "from_student", "report_fd", "go_fd")  # one test cell's pipes


class StudentProcessEnded(RuntimeError):
    """The student's process ended (crashed, was killed, ran out of memory) during a call."""


class _Channel:
    def __init__(self, to_student: int, from_student: int):
        self.to_student, self.from_student = to_student, from_student

    def call(self, request: dict, arguments: list):
        payload = _Pickler.dumps(request)
        try:
            os.write(self.to_student, struct.pack(">Q", len(payload)))
            _write_all(self.to_student, payload)
            header = _read_exactly(self.from_student, 8)
        except (BrokenPipeError, OSError, EOFError) as error:
            raise StudentProcessEnded("your code's process ended during this call (a crash, os._exit, or too much memory)") from error
        size = struct.unpack(">Q", header)[0]
        if size > FRAME_LIMIT:
            raise StudentProcessEnded(f"your function returned {size:,} bytes, more than the grader takes")
        try:
            reply = plain_data.loads(_read_exactly(self.from_student, size))
        except EOFError as error:
            raise StudentProcessEnded("your code's process ended during this call") from error
        if not isinstance(reply, dict):
            raise plain_data.NotPlainData("the sandbox sent something that is not a reply")
        if "error" in reply:
            raise StudentError(str(reply["error"])[:1500])
        plain_data.apply_argument_changes(arguments, reply.get("changes", []))
        if isinstance(reply.get("rng"), torch.Tensor):
            torch.set_rng_state(reply["rng"])
        return plain_data.from_plain(reply["result"], arguments, lambda handle, kind: StudentModule(self, handle, kind))


class StudentError(Exception):
    """Your function raised this (its type and message, as your process reported them)."""


CHANNEL: _Channel | None = None  # the student process of the test cell this child runs


class StudentFunction:
    """Stands in, in the grader, for a function the student defined: calling it calls theirs in the sandbox."""

    def __init__(self, name: str):
        self.__name__ = self.__qualname__ = name
        self.forbidden: list[list[str]] = []

    def __repr__(self) -> str:
        return f"<your function {self.__name__}>"

    def __call__(self, *args, **kwargs):
        arguments = [*args, *kwargs.values()]
        request = {"call": self.__name__, "args": list(args), "kwargs": kwargs, "rng": torch.get_rng_state(),
                   "forbidden": self.forbidden}
        return CHANNEL.call(request, arguments)

    def forbid(self, forbidden) -> None:
        """Make the library's own versions of this exercise unavailable to it (``check_uses_none_of``)."""
        for item in forbidden:
            if callable(item) and hasattr(item, "__module__") and hasattr(item, "__qualname__"):
                self.forbidden.append([item.__module__, item.__qualname__])


class StudentModule(nn.Module):
    """Stands in for a module the student's function returned: calling it runs theirs in the sandbox."""

    def __init__(self, channel: _Channel, handle: int, kind: str):
        super().__init__()
        self._channel, self._handle, self.kind = channel, handle, kind

    def forward(self, *args, **kwargs):
        arguments = [*args, *kwargs.values()]
        request = {"call_handle": self._handle, "args": list(args), "kwargs": kwargs, "rng": torch.get_rng_state(),
                   "training": self.training, "grad": torch.is_grad_enabled()}
        return self._channel.call(request, arguments)

    def __repr__(self) -> str:
        return f"<your {self.kind}>"


class _Pickler(pickle.Pickler):
    """Pickles the arguments for the student's process; a stand-in for one of its modules goes as its handle."""

    def persistent_id(self, obj):
        if isinstance(obj, StudentModule):
            return ("student_module", obj._handle)
        if isinstance(obj, StudentFunction):
            return ("student_function", obj.__name__)
        return None

    @classmethod
    def dumps(cls, obj) -> bytes:
        import io
        buffer = io.BytesIO()
        cls(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return buffer.getvalue()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, size: int) -> bytes:
    data = read_or_none(fd, size)
    if data is None:
        raise EOFError
    return data


def run_test_child(test: dict, grader_cells: list[dict], namespace: dict) -> None:
    """In the forked child: the grader's cells that use the student's functions, the visible tests, the hidden ones."""
    global CHANNEL
    CHANNEL = _Channel(test["to_student"], test["from_student"])
    report, go = test["report_fd"], LineReader(test["go_fd"])
    if go.receive() is None:
        return
    for cell in grader_cells:
        run_cell(cell["source"], f"<cell {cell['index']}>", namespace)
    error = run_cell(test["visible"], f"<tests {test['grade_id']}>", namespace)
    send(report, {"event": "visible", "passed": error is None, "message": "" if error is None else describe(error),
                  "student_ended": isinstance(error, StudentProcessEnded)})
    hidden = go.receive()
    if hidden and hidden.get("hidden") and test["hidden"]:
        error = run_cell(test["hidden"], f"<hidden tests {test['grade_id']}>", namespace)
        send(report, {"event": "hidden", "passed": error is None, "student_ended": isinstance(error, StudentProcessEnded)})


def main(argv: list[str]) -> int:
    control_in, control_out = int(argv[1]), int(argv[2])
    control = LineReader(control_in)
    plan = control.receive()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    tests = {test["cell"]: test for test in plan["tests"]}
    own_fds = {test[key] for test in plan["tests"] for key in FD_KEYS}
    namespace: dict = {"__name__": "__main__"}
    for name in plan["student_names"]:
        namespace[name] = StudentFunction(name)
    grader_cells: list[dict] = []
    children = {}
    for cell in plan["cells"]:
        if cell["role"] == "notebook":
            error = run_cell(cell["source"], f"<cell {cell['index']}>", namespace)
            if error is not None:
                send(control_out, {"event": "notebook_error", "cell": cell["index"], "message": describe(error)})
            for name in plan["student_names"]:  # a notebook cell must not replace a stand-in
                if not isinstance(namespace.get(name), StudentFunction):
                    namespace[name] = StudentFunction(name)
        elif cell["role"] == "student" and not cell.get("solution"):
            grader_cells.append(cell)
        elif cell["role"] == "test":
            test = tests[cell["index"]]
            children[test["grade_id"]] = fork_test_child(
                test, FD_KEYS, own_fds | {control_in, control_out},
                lambda: run_test_child(test, list(grader_cells), namespace))
            send(control_out, {"event": "started", "grade_id": test["grade_id"]})
        if not handle_kill_requests(control, children, wait=False):
            break
    send(control_out, {"event": "all_started"})
    serve_kill_requests(control, children)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
