"""The program that runs a submission's code inside the grading sandbox (started by sandboxed_grading.py).

It never decides a grade: it runs cells and reports, over pipes, what happened. The grader, a
process that runs no student code, turns the reports into points.

One runner process (the *zygote*) runs the notebook's own cells, the ones that use no name a
solution cell defines (imports, data, the model): they run once per submission. When it reaches
a test cell it forks a child for that test cell. The child runs the student's cells so far (and
the cells that use them), with memory and CPU time bounded, then the test cell as the student
sees it (the visible tests) and reports *passed* or the failure message; then it waits. Only
after every child has reported does the grader send each child its hidden tests, one at a time;
from then on a child reports one word, *passed* or *failed*. So no hidden line or input exists
in the sandbox while anything that can reach a student's feedback is produced, and a crash,
endless loop or runaway allocation costs only the exercise it happens in.

Protocol: JSON lines. The zygote reads the plan from the control pipe (fd ``argv[1]``) and
writes events to ``argv[2]``; each test cell has its own pair of pipes (fds in the plan).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import traceback

MESSAGE_LIMIT = 1500  # characters of a failure message that reach the grader


def send(fd: int, message: dict) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def receive(fd: int) -> dict | None:
    """One JSON line from ``fd``, or None at end of file."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


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


def run_test_child(test: dict, student_cells: list[dict], namespace: dict, limits: dict) -> None:
    """In the forked child: the student's cells, the visible tests, then (if sent) the hidden tests."""
    to_grader, from_grader = test["out_fd"], test["in_fd"]
    if receive(from_grader) is None:  # the grader says when to start, so that children take turns
        return
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"]))
    for cell in student_cells:
        send(to_grader, {"event": "cell", "cell": cell["index"]})
        run_cell(cell["source"], f"<cell {cell['index']}>", namespace)  # errors show in the tests
    send(to_grader, {"event": "cell", "cell": test["cell"]})
    error = run_cell(test["visible"], f"<tests {test['grade_id']}>", namespace)
    if error is None:
        send(to_grader, {"event": "visible", "passed": True})
    else:
        send(to_grader, {"event": "visible", "passed": False, "message": describe(error)})
    hidden = receive(from_grader)
    if hidden and hidden.get("source"):
        error = run_cell(hidden["source"], f"<hidden tests {test['grade_id']}>", namespace)
        send(to_grader, {"event": "hidden", "passed": error is None})


def main(argv: list[str]) -> int:
    control_in, control_out = int(argv[1]), int(argv[2])
    plan = receive(control_in)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # what cells print goes nowhere: feedback is built from the reports only
    os.dup2(devnull, 2)
    tests = {test["cell"]: test for test in plan["tests"]}
    own_fds = {fd for test in plan["tests"] for fd in (test["in_fd"], test["out_fd"])}
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
            pid = os.fork()
            if pid == 0:
                try:
                    for fd in own_fds - {test["in_fd"], test["out_fd"]} | {control_in, control_out}:
                        try:
                            os.close(fd)
                        except OSError:  # an earlier test's pipe, already closed here
                            pass
                    run_test_child(test, list(student_cells), namespace, plan["limits"])
                finally:
                    os._exit(0)
            children[test["grade_id"]] = pid
            os.close(test["in_fd"])
            os.close(test["out_fd"])
            send(control_out, {"event": "started", "grade_id": test["grade_id"]})
    send(control_out, {"event": "all_started"})
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel from now on
    while (request := receive(control_in)) is not None:
        if "kill" in request and request["kill"] in children:
            try:
                os.kill(children[request["kill"]], signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in children.values():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
