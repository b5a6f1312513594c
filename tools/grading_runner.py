"""The student's half of grading, run inside the sandbox (started by sandboxed_grading.py).

It never sees a test and never decides a grade. One process (the *zygote*) runs the notebook's
own cells, the ones that use no name a solution cell defines (imports, data, the model), once per
submission. At each test cell it forks a child that runs the student's cells so far (and the
cells that use them), with memory and CPU time bounded, and then serves calls: the grader's test
code (``tools/trusted_runner.py``) sends a function name and arguments, the child calls the
student's function and sends back the result, what the call did to its arguments and the random
generator's state, as plain data (``tools/plain_data.py``). A crash, endless loop or runaway
allocation in one child costs only the test cell it serves.

Protocol: JSON lines on the control pipes (fds ``argv[1]``, ``argv[2]``) and on each child's
progress pipe; length-prefixed frames on each child's call pipes.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import pickle
import resource
import select
import signal
import struct
import sys
import traceback

MESSAGE_LIMIT = 1500  # characters of a failure message that reach the grader


def send(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


class LineReader:
    """JSON lines from one pipe, one at a time.

    One read may bring several lines (two kill requests sent while this process was busy) or part
    of one (a large plan), so what is read past the end of a line waits in a buffer for the next call.
    """

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def receive(self) -> dict | None:
        """The next line, waiting for it; None at end of file."""
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def ready(self) -> bool:
        """Whether :meth:`receive` has something to return (or end of file) without waiting for the sender."""
        return b"\n" in self.buffer or bool(select.select([self.fd], [], [], 0)[0])


def run_cell(source: str, label: str, namespace: dict) -> BaseException | None:
    """Run one cell's code in ``namespace``; return what it raised (SystemExit included), or None."""
    try:
        exec(compile(source, label, "exec"), namespace)  # noqa: S102 (running cells is the point)
    except BaseException as error:  # a student's sys.exit() or KeyboardInterrupt fails the cell, no more
        return error
    return None


def describe(error: BaseException) -> str:
    """``Type: message``, bounded; a message that cannot be turned into text says so."""
    try:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    except BaseException:  # a hostile __str__
        text = f"{type(error).__name__}: (a message that could not be shown)"
    return text[:MESSAGE_LIMIT]


def _unavailable(*args, **kwargs):
    raise RuntimeError("this library function is not available to this exercise: write the code yourself")


def _make_unavailable(function) -> None:
    """Make ``function``, under every name bound to it, raise instead of running.

    Its code is swapped for ``_unavailable``'s. A decorated function (``@torch.no_grad()``) is a
    wrapper whose code reads free variables, so the swap happens on the function it wraps, and
    a code object only fits a function with the same free variables: when the wrapped function
    has some (a closure), the stand-in is compiled as a closure over the same names.
    """
    function = inspect.unwrap(function)
    if not hasattr(function, "__code__"):
        return
    names = function.__code__.co_freevars
    stand_in = _unavailable
    if names:
        source = ("def outer():\n" + "".join(f"    {name} = None\n" for name in names)
                  + "    def stand_in(*args, **kwargs):\n"
                  + f"        {', '.join(names)}\n"
                  + "        raise RuntimeError('this library function is not available to this exercise: "
                  "write the code yourself')\n"
                  + "    return stand_in\n")
        scope: dict = {}
        exec(source, scope)
        stand_in = scope["outer"]()
    if stand_in.__code__.co_freevars == names:
        function.__code__ = stand_in.__code__
    else:
        raise RuntimeError(f"cannot make {function.__qualname__} unavailable (free variables {names})")


class _Unpickler(pickle.Unpickler):
    """Reads the grader's arguments; a stand-in for one of the student's modules or functions becomes the real one."""

    def __init__(self, data: bytes, handles: list, namespace: dict):
        super().__init__(io.BytesIO(data))
        self.handles, self.namespace = handles, namespace

    def persistent_load(self, pid):
        kind, key = pid
        return self.handles[key] if kind == "student_module" else self.namespace[key]


def read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve_calls(test: dict, namespace: dict) -> None:
    """Trusted grading: call the student's functions for the grader, and send back plain data only."""
    import torch

    import plain_data

    handles: list = []
    requests, replies = test["rpc_in"], test["rpc_out"]
    while (header := read_exactly(requests, 8)) is not None:
        request = _Unpickler(read_exactly(requests, struct.unpack(">Q", header)[0]), handles, namespace).load()
        for module_name, qualname in request.get("forbidden", []):
            target = sys.modules.get(module_name)
            for part in qualname.split("."):
                target = getattr(target, part, None)
            if callable(target):
                _make_unavailable(target)
        torch.set_rng_state(request["rng"])
        args, kwargs = request["args"], request["kwargs"]
        arguments = [*args, *kwargs.values()]
        before = plain_data.snapshot_arguments(arguments)
        try:
            if "call" in request:
                function = namespace[request["call"]]
                with torch.enable_grad():
                    result = function(*args, **kwargs)
            else:
                function = handles[request["call_handle"]]
                if function.training != request["training"]:
                    function.train(request["training"])
                with torch.set_grad_enabled(request["grad"]):
                    result = function(*args, **kwargs)
            reply = {"result": plain_data.to_plain(result, arguments, handles),
                     "changes": plain_data.argument_changes(arguments, before), "rng": torch.get_rng_state()}
        except BaseException as error:  # what the student's code raised goes back as a message
            reply = {"error": describe(error)}
        payload = plain_data.dumps(reply)
        os.write(replies, struct.pack(">Q", len(payload)))
        view = memoryview(payload)
        while view:
            view = view[os.write(replies, view):]


def run_serving_child(test: dict, student_cells: list[dict], namespace: dict, limits: dict) -> None:
    """Trusted grading, in the forked child: the student's cells, then their functions served to the grader."""
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"]))
    for cell in student_cells:
        send(test["out_fd"], {"event": "cell", "cell": cell["index"]})
        run_cell(cell["source"], f"<cell {cell['index']}>", namespace)
    send(test["out_fd"], {"event": "cell", "cell": test["cell"]})
    serve_calls(test, namespace)


def fork_test_child(test: dict, fd_keys: tuple[str, ...], all_fds: set[int], run) -> int:
    """Fork a child that keeps only ``test``'s pipes (``fd_keys``) of ``all_fds`` and calls ``run()``; return its pid.

    The parent closes its copies of the child's pipes, so that a child that dies is seen as the
    end of its pipes, and later children never hold them.
    """
    mine = {test[key] for key in fd_keys if key in test}
    pid = os.fork()
    if pid == 0:
        try:
            for fd in all_fds - mine:
                try:
                    os.close(fd)
                except OSError:  # an earlier test's pipe, already closed here
                    pass
            run()
        finally:
            os._exit(0)
    for fd in mine:
        os.close(fd)
    return pid


def handle_kill_requests(control: LineReader, children: dict[str, int], *, wait: bool) -> bool:
    """Kill the test children the grader names: all it sends until it closes the pipe (``wait``),
    or only the requests already here. Returns False once the grader has closed the pipe."""
    while wait or control.ready():
        request = control.receive()
        if request is None:
            return False
        if "kill" in request and request["kill"] in children:
            _kill(children[request["kill"]])
    return True


def serve_kill_requests(control: LineReader, children: dict[str, int]) -> None:
    """Until the grader closes the control pipe, kill the test children it names; then kill them all."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel from now on
    handle_kill_requests(control, children, wait=True)
    for pid in children.values():
        _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    control_in, control_out = int(argv[1]), int(argv[2])
    control = LineReader(control_in)
    plan = control.receive()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # what cells print goes nowhere: feedback is built from the grader's verdicts
    os.dup2(devnull, 2)
    tests = {test["cell"]: test for test in plan["tests"]}
    fd_keys = ("out_fd", "rpc_in", "rpc_out")
    own_fds = {test[key] for test in plan["tests"] for key in fd_keys if key in test}
    namespace: dict = {"__name__": "__main__"}
    student_cells: list[dict] = []
    children = {}
    for cell in plan["cells"]:
        if cell["role"] == "notebook":
            error = run_cell(cell["source"], f"<cell {cell['index']}>", namespace)
            if error is not None:
                send(control_out, {"event": "notebook_error", "cell": cell["index"], "message": describe(error),
                                   "traceback": "".join(traceback.format_exception(error))[-3000:]})
        elif cell["role"] == "student":
            student_cells.append(cell)
        elif cell["role"] == "test":
            test = tests[cell["index"]]
            sys.stdout.flush()
            children[test["grade_id"]] = fork_test_child(
                test, fd_keys, own_fds | {control_in, control_out},
                lambda: run_serving_child(test, list(student_cells), namespace, plan["limits"]))
            send(control_out, {"event": "started", "grade_id": test["grade_id"]})
        # A child that ran out of time is killed now, not after the last cell: a looping child
        # would take a core from the notebook's cells that later tests wait for.
        if not handle_kill_requests(control, children, wait=False):
            break
    send(control_out, {"event": "all_started"})
    serve_kill_requests(control, children)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
