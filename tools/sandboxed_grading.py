"""Grading one submission: the student's code in a sandbox, every verdict reached in the grader.

Used by ``tools/nbgrader_course.py grade``. For each notebook of a (normalised) submission:

1. :func:`grading_plan` sorts the cells: the notebook's own cells that use nothing a solution
   cell defines (``notebook``); the solution cells, and cells that use what they define
   (``student``); each test cell (``test``), with its visible source (as released) and its hidden
   tests (from the instructor notebook), kept apart.
2. :func:`run_submission` starts two processes. In the sandbox (``tools/sandbox.py``),
   ``tools/grading_runner.py`` runs the notebook and the student's cells, and then only calls the
   student's functions when asked. Outside it, ``tools/trusted_runner.py`` runs the same notebook
   cells and the test cells, in which each of the student's functions is a stand-in that sends its
   arguments into the sandbox and gets back plain data (``tools/plain_data.py``). Every check runs
   in the grader, and no test's source, and no expected value, ever enters the student's process.
   The visible tests of every test cell run first; their messages (the only text feedback shows)
   are all in before any hidden input is sent into the sandbox, and hidden tests return only
   *passed* or *failed*.
3. :func:`grade_notebook` runs again the tests that another exercise's code stopped, without that
   code, so that a crash, endless loop or runaway allocation costs only its own exercise; and
   ``nbgrader_course`` writes the verdicts into nbgrader's gradebook and builds the feedback from
   them (never from what the student's code printed).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sandbox import ProcessLimit, Sandbox

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "grading_runner.py"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one test cell's run may use: wall-clock and CPU seconds, address space; the sandbox's processes.

    ``seconds`` runs from the moment both processes have reached the test cell: the student's cells
    and the tests count, the notebook's own cells before the test do not. Those are the
    instructor's code, and get ``notebook_seconds`` to reach each test cell, so that a busy
    machine (a class graded two at a time on two cores) cannot turn a slow cell into a student's zero.
    """

    seconds: float = 120.0
    notebook_seconds: float = 900.0
    cpu_seconds: int = 240
    memory_bytes: int = 6 * 2**30
    max_processes: int = 256


@dataclasses.dataclass
class Verdict:
    """What happened to one test cell: ``status`` is passed, failed, hidden failed, crashed or timed out.

    ``message`` is the visible tests' failure message (produced before any hidden input entered the
    sandbox) or the grader's own words; it is what the student's feedback shows.
    """

    grade_id: str
    status: str = "not run"
    message: str = ""
    last_cell: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def split_hidden_tests(source: str) -> tuple[str, str]:
    """``(visible, hidden)`` parts of an instructor test cell.

    When the hidden tests are one region at the end of the cell (the course's convention), the
    hidden part is that region's code, run after the visible part in the same namespace;
    otherwise it is the whole cell without its markers, run again from the top.
    """
    lines = source.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == HIDDEN_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == HIDDEN_END]
    if not begins:
        return source, ""
    visible, inside = [], False
    for line in lines:
        if line.strip() == HIDDEN_BEGIN:
            inside = True
        elif line.strip() == HIDDEN_END:
            inside = False
        elif not inside:
            visible.append(line)
    at_end = len(begins) == len(ends) == 1 and all(not line.strip() for line in lines[ends[0] + 1:])
    if at_end:
        return "".join(visible), "".join(lines[begins[0] + 1:ends[0]])
    return "".join(visible), "".join(line for line in lines if line.strip() not in (HIDDEN_BEGIN, HIDDEN_END))


def defined_names(source: str) -> set[str]:
    """Top-level names a cell defines (functions, classes, assignments, imports)."""
    names: set[str] = set()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return names
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def uses_any(source: str, names: set[str]) -> bool:
    """Whether a cell reads any of ``names`` (or cannot be parsed, and so must be treated as if it did)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return True
    return any(isinstance(node, ast.Name) and node.id in names for node in ast.walk(tree))


def grading_plan(released, source, submitted) -> dict:
    """The runner's plan for one notebook: every code cell's role and source, the test cells' parts.

    ``released`` and ``source`` are the release and instructor notebooks, ``submitted`` the
    normalised submission (the release with the student's solution cells). Cells after the last
    test cell are left out: nothing graded depends on them.
    """
    solution_names = set().union(*(defined_names(cell.source) for cell in released.cells
                                    if _nbgrader(cell).get("solution") and cell.cell_type == "code"))
    instructor_tests = {_nbgrader(cell)["grade_id"]: cell.source for cell in source.cells
                        if _nbgrader(cell).get("grade") and cell.cell_type == "code"}
    cells, tests = [], []
    last_test = max((i for i, cell in enumerate(submitted.cells) if _nbgrader(cell).get("grade")
                     and cell.cell_type == "code"), default=-1)
    for index, cell in enumerate(submitted.cells[:last_test + 1]):
        if cell.cell_type != "code":
            continue
        meta = _nbgrader(cell)
        if meta.get("grade"):
            grade_id = meta["grade_id"]
            visible, hidden = split_hidden_tests(instructor_tests.get(grade_id, cell.source))
            cells.append({"index": index, "role": "test"})
            tests.append({"grade_id": grade_id, "cell": index, "visible": visible, "hidden": hidden,
                          "points": float(meta.get("points", 0))})
        elif meta.get("solution") or uses_any(cell.source, solution_names):
            cells.append({"index": index, "role": "student", "source": cell.source,
                          "solution": bool(meta.get("solution"))})
        else:
            cells.append({"index": index, "role": "notebook", "source": cell.source})
    return {"cells": cells, "tests": tests, "student_names": sorted(solution_names)}


def python_paths() -> tuple[Path, ...]:
    """What the sandbox must see of this Python: the environment, the base interpreter, the course library."""
    import importlib.util

    paths = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), RUNNER.resolve(),
             (HERE / "plain_data.py").resolve()}
    spec = importlib.util.find_spec("course_lib")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("course_lib is not installed in this Python: run `make venv`.")
    paths.update(Path(p).resolve() for p in spec.submodule_search_locations)
    return tuple(sorted(paths))


def _send(fd: int, message: dict) -> bool:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
        return True
    except (BrokenPipeError, OSError):
        return False


def grade_notebook(plan: dict, *, sandboxed: bool = True, limits: Limits = Limits(),
                   environment: dict[str, str] | None = None, retries: int = 3) -> tuple[dict[str, Verdict], list[str]]:
    """Run :func:`run_submission`, then rerun the test cells that a *different* exercise's code stopped.

    Each test cell's student process runs all of the student's cells before it, so a solution cell that
    ends its process (``os._exit`` at the top level, an endless loop) would also stop every later
    exercise. Those tests are run again without the cells that stopped them (which then score as
    their own tests say), so one exercise's crash costs only that exercise.
    """
    verdicts, notes = run_submission(plan, sandboxed=sandboxed, limits=limits, environment=environment)
    skipped: set[int] = set()
    for _ in range(retries):
        tests = {test["grade_id"]: test for test in plan["tests"]}
        starts = _exercise_starts(plan)
        stopped_by_other = {grade_id: verdict.last_cell for grade_id, verdict in verdicts.items()
                            if verdict.status in ("crashed", "timed out") and verdict.last_cell is not None
                            and verdict.last_cell < starts[grade_id] and verdict.last_cell not in skipped}
        if not stopped_by_other:
            break
        skipped |= set(stopped_by_other.values())
        rerun = {**plan, "cells": [cell for cell in plan["cells"] if cell["index"] not in skipped
                                   and (cell["role"] != "test" or cell["index"] in {tests[g]["cell"] for g in stopped_by_other})],
                 "tests": [tests[grade_id] for grade_id in stopped_by_other]}
        again, more_notes = run_submission(rerun, sandboxed=sandboxed, limits=limits, environment=environment)
        verdicts.update(again)
        notes += more_notes
        notes.append(f"cells {sorted(skipped)} stopped the tests after them; those tests were run again without them")
    return verdicts, notes


def _exercise_starts(plan: dict) -> dict[str, int]:
    """For each test cell, the index of the first cell of its exercise (the cell after the previous test)."""
    starts, previous = {}, -1
    for test in plan["tests"]:
        starts[test["grade_id"]] = previous + 1
        previous = test["cell"]
    return starts


def verdict_output(verdict: Verdict, points: float) -> dict:
    """The output a test cell shows in the autograded notebook and the feedback: the grader's verdict only."""
    if verdict.passed:
        return {"output_type": "stream", "name": "stdout",
                "text": f"Passed: the visible and the hidden tests ({points:g} of {points:g} points).\n"}
    if verdict.status == "failed":
        text = f"The visible tests failed: {verdict.message}"
    elif verdict.status == "hidden failed":
        text = ("Your answer passes the visible tests but not the hidden ones, which try more cases. "
                "Reread the task and try your function on inputs of your own (other sizes, shapes and values).")
    else:
        text = f"These tests could not finish ({verdict.status}): {verdict.message}"
    return {"output_type": "error", "ename": "TestsFailed", "evalue": text, "traceback": [f"TestsFailed: {text}"]}


TRUSTED_RUNNER = HERE / "trusted_runner.py"


class _Lines:
    """JSON lines read from one pipe, bounded (a flood ends the pipe)."""

    def __init__(self, fd: int, limit: int = 1_000_000):
        self.fd, self.buffer, self.closed, self.limit = fd, b"", False, limit

    def read(self) -> list[dict]:
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.closed = True
            return []
        self.buffer += chunk
        if len(self.buffer) > self.limit:
            self.closed, self.buffer = True, b""
            return []
        *lines, self.buffer = self.buffer.split(b"\n")
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def run_submission(plan: dict, *, sandboxed: bool = True, limits: Limits = Limits(),
                           environment: dict[str, str] | None = None) -> tuple[dict[str, Verdict], list[str]]:
    """Grade one notebook's plan: the student's code in a fresh sandbox, the tests in the grader.

    Returns ({test grade_id: Verdict}, notes for the instructor). The student's process (in the
    sandbox, ``tools/grading_runner.py``) only defines the student's functions and runs them when
    the grader's test code (``tools/trusted_runner.py``, outside the sandbox) calls them; it never
    sees a test, and what it sends back is plain data (``tools/plain_data.py``).
    """
    verdicts = {test["grade_id"]: Verdict(test["grade_id"]) for test in plan["tests"]}
    notes: list[str] = []
    if not plan["tests"]:
        return verdicts, notes
    workdir = Path(tempfile.mkdtemp(prefix="course-grading-"))
    student_fds, grader_fds, ends = [], [], {}
    student_tests, grader_tests = [], []
    for test in plan["tests"]:
        request_r, request_w = os.pipe()   # grader -> student: calls
        reply_r, reply_w = os.pipe()       # student -> grader: results
        progress_r, progress_w = os.pipe()  # student -> this process: which cell it runs
        report_r, report_w = os.pipe()     # grader's test -> this process: verdicts
        go_r, go_w = os.pipe()             # this process -> grader's test: start, hidden tests
        student_fds += [request_r, reply_w, progress_w]
        grader_fds += [request_w, reply_r, report_w, go_r]
        student_tests.append({"grade_id": test["grade_id"], "cell": test["cell"], "out_fd": progress_w,
                              "rpc_in": request_r, "rpc_out": reply_w})
        grader_tests.append({"grade_id": test["grade_id"], "cell": test["cell"], "visible": test["visible"],
                             "hidden": test["hidden"], "to_student": request_w, "from_student": reply_r,
                             "report_fd": report_w, "go_fd": go_r})
        ends[test["grade_id"]] = {"progress": _Lines(progress_r), "report": _Lines(report_r), "go": go_w}
    env = {"NBGRADER_EXECUTION": "autograde", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", "COURSE_CACHE_DIR": "/tmp/course-cache",
           "MPLCONFIGDIR": "/tmp/matplotlib", "TQDM_DISABLE": "1", **(environment or {})}
    processes, controls, process_limit = {}, {}, None
    for side in ("student", "grader"):
        control_in_r, control_in_w = os.pipe()
        control_out_r, control_out_w = os.pipe()
        fds = (student_fds if side == "student" else grader_fds) + [control_in_r, control_out_w]
        for fd in fds:
            os.set_inheritable(fd, True)
        runner = RUNNER if side == "student" else TRUSTED_RUNNER
        argv = [sys.executable, str(runner), str(control_in_r), str(control_out_w)]
        popen_env = {**os.environ, **env, "COURSE_CACHE_DIR": str(workdir / f"cache-{side}"),
                     "MPLCONFIGDIR": str(workdir / "matplotlib")}
        preexec = None
        if side == "student" and sandboxed:
            argv = Sandbox(workdir=workdir, read_only=python_paths(), environment=env).command(argv)
            process_limit = ProcessLimit.create(limits.max_processes)
            if process_limit is None:
                notes.append("the number of processes was not bounded (no writable pids cgroup on this machine)")
            preexec, popen_env = (process_limit.add_me if process_limit else None), None
        cwd = workdir if side == "student" else tempfile.mkdtemp(prefix="course-grader-", dir=workdir.parent)
        processes[side] = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, cwd=cwd, env=popen_env, start_new_session=True,
                                           preexec_fn=preexec)
        for fd in fds:
            os.close(fd)
        controls[side] = (control_in_w, _Lines(control_out_r))
    student_plan = {"mode": "serve", "cells": plan["cells"], "tests": student_tests,
                    "limits": {"memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds}}
    grader_plan = {"cells": [{**cell, "source": cell.get("source", "")} for cell in plan["cells"]],
                   "tests": grader_tests, "student_names": plan["student_names"]}
    try:
        _send(controls["student"][0], student_plan)
        _send(controls["grader"][0], grader_plan)
        _drive(plan, verdicts, ends, controls, limits, notes)
    finally:
        for side, (control_in, lines) in controls.items():
            for fd in (control_in, lines.fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for end in ends.values():
            for fd in (end["progress"].fd, end["report"].fd, end["go"]):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for side, process in processes.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
            if side == "grader" and process.returncode not in (0, None):
                notes.append(f"the grader's test process ended with exit status {process.returncode}: {errors[-800:]}")
        if process_limit is not None:
            process_limit.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return verdicts, notes


def _drive(plan, verdicts, ends, controls, limits: Limits, notes: list[str]) -> None:
    """One test cell at a time: start the grader's test, wait for its verdict or the deadline."""
    started = {"student": set(), "grader": set()}
    finished = {"student": False, "grader": False}
    stopped_cells: dict[int, str] = {}

    def read_control(side: str) -> None:
        lines = controls[side][1]
        for event in lines.read():
            if event.get("event") == "started":
                started[side].add(event["grade_id"])
            elif event.get("event") == "all_started":
                finished[side] = True
            elif event.get("event") == "notebook_error" and side == "grader":
                notes.append(f"the notebook's own cell {event['cell']} failed: {event.get('message', '')}")
        if lines.closed:
            finished[side] = True

    def kill(grade_id: str) -> None:
        for side in ("student", "grader"):
            _send(controls[side][0], {"kill": grade_id})

    def wait_for(grade_id: str, phase: str) -> dict | None:
        """The grader's report for ``phase`` of this test, or None after a time-out (the verdict says which)."""
        end, verdict = ends[grade_id], verdicts[grade_id]
        deadline = time.monotonic() + limits.seconds
        while True:
            watched = [controls[s][1] for s in controls if not controls[s][1].closed]
            watched += [r for r in (end["progress"], end["report"]) if not r.closed]
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                verdict.status, verdict.message = "timed out", f"stopped after {limits.seconds:.0f} s"
                return None
            ready, _, _ = select.select([r.fd for r in watched], [], [], timeout)
            for reader in watched:
                if reader.fd not in ready:
                    continue
                if reader is end["progress"]:
                    for event in reader.read():
                        if event.get("event") == "cell" and isinstance(event.get("cell"), int):
                            verdict.last_cell = event["cell"]
                            if event["cell"] in stopped_cells:
                                verdict.status = stopped_cells[event["cell"]]
                                verdict.message = f"cell {event['cell']} stopped an earlier test; not waited for again"
                                return None
                elif reader is end["report"]:
                    for event in reader.read():
                        if event.get("event") == phase:
                            return event
                    if reader.closed:
                        verdict.status, verdict.message = "crashed", "the grader's test process ended without a verdict"
                        return None
                else:
                    read_control("student" if reader is controls["student"][1] else "grader")

    order = [test["grade_id"] for test in plan["tests"]]
    tests = {test["grade_id"]: test for test in plan["tests"]}
    visible_passed = set()
    def wait_until_started(grade_id: str) -> str | None:
        """Wait for both processes to reach this test cell; None, or why they did not."""
        deadline = time.monotonic() + limits.notebook_seconds
        while True:
            waiting = [side for side in controls if grade_id not in started[side] and not finished[side]]
            timeout = deadline - time.monotonic()
            if not waiting or timeout <= 0:
                break
            ready, _, _ = select.select([controls[side][1].fd for side in waiting], [], [], timeout)
            for side in waiting:
                if controls[side][1].fd in ready:
                    read_control(side)
        if grade_id not in started["grader"] or grade_id not in started["student"]:
            if any(grade_id not in started[side] and not finished[side] for side in controls):
                return (f"the notebook's own cells took more than {limits.notebook_seconds:.0f} s "
                        "to reach these tests")
            return "the notebook stopped before these tests could run"
        return None

    for grade_id in order:
        verdict = verdicts[grade_id]
        why = wait_until_started(grade_id)
        if why is not None:
            verdict.status, verdict.message = "crashed", why
            continue
        _send(ends[grade_id]["go"], {"go": True})
        report = wait_for(grade_id, "visible")
        if report is None:
            kill(grade_id)
            if verdict.last_cell is not None:
                stopped_cells.setdefault(verdict.last_cell, verdict.status)
            continue
        if report.get("student_ended"):
            verdict.status, verdict.message = "crashed", "your code's process ended during the tests"
            kill(grade_id)
            if verdict.last_cell is not None:
                stopped_cells.setdefault(verdict.last_cell, "crashed")
        elif report.get("passed"):
            visible_passed.add(grade_id)
        else:
            verdict.status, verdict.message = "failed", str(report.get("message", ""))[:2000]
    for grade_id in order:
        verdict = verdicts[grade_id]
        if grade_id not in visible_passed:
            _send(ends[grade_id]["go"], {"hidden": False})
            continue
        if not tests[grade_id]["hidden"]:
            verdict.status = "passed"
            _send(ends[grade_id]["go"], {"hidden": False})
            continue
        _send(ends[grade_id]["go"], {"hidden": True})
        report = wait_for(grade_id, "hidden")
        if report is None:
            kill(grade_id)
        elif report.get("student_ended"):
            verdict.status, verdict.message = "crashed", "your code's process ended during the hidden tests"
        else:
            verdict.status = "passed" if report.get("passed") else "hidden failed"
