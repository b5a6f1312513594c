"""Grading one submission in a sandbox, with every verdict reached by a process that runs no student code.

Used by ``tools/nbgrader_course.py grade``. For each notebook of a (normalised) submission:

1. :func:`grading_plan` sorts the cells: the notebook's own cells that use nothing a solution
   cell defines run once (``notebook``); the solution cells, and cells that use what they define,
   are the student's (``student``); each test cell (``test``) gets its visible source (as released)
   and its hidden tests (from the instructor notebook), kept apart.
2. :func:`run_submission` starts ``tools/grading_runner.py`` in the sandbox (``tools/sandbox.py``)
   and drives it: each test cell's child runs in turn; its visible tests' verdict and message
   come back; only when every visible verdict is in are hidden tests sent, one child at a time,
   and from then on only *passed* or *failed* comes back. A child that dies, runs past its time
   or is killed for memory scores that test cell 0, and only that one.
3. :func:`points` turns the verdicts into points, and ``nbgrader_course`` writes them into
   nbgrader's gradebook and builds the feedback from them (never from what the sandbox printed).

What this does not yet do (issue 11, next step): the tests themselves still run in the student's
process, so a student who patches the check helpers, or forges a report on the pipe, can still
be credited with a test cell they did not pass. See ``book/instructors.md``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import selectors
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
    """What one test cell's run may use: wall-clock and CPU seconds, address space; the sandbox's processes."""

    seconds: float = 120.0
    cpu_seconds: int = 240
    memory_bytes: int = 6 * 2**30
    max_processes: int = 256


@dataclasses.dataclass
class Verdict:
    """What happened to one test cell: ``status`` is passed, failed, hidden failed, crashed or timed out.

    ``message`` is the visible tests' failure message (it was produced before any hidden test
    existed in the sandbox) or the grader's own words; it is what the student's feedback shows.
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
            cells.append({"index": index, "role": "student", "source": cell.source})
        else:
            cells.append({"index": index, "role": "notebook", "source": cell.source})
    return {"cells": cells, "tests": tests}


@dataclasses.dataclass
class _Channel:
    verdict: Verdict
    hidden: str
    to_child: int
    from_child: int
    buffer: bytes = b""
    deadline: float | None = None
    visible_passed: bool = False
    done: bool = False


def python_paths() -> tuple[Path, ...]:
    """What the sandbox must see of this Python: the environment, the base interpreter, the course library."""
    import importlib.util

    paths = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), RUNNER.resolve()}
    spec = importlib.util.find_spec("course_lib")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("course_lib is not installed in this Python: run `make venv`.")
    paths.update(Path(p).resolve() for p in spec.submodule_search_locations)
    return tuple(sorted(paths))


def run_submission(plan: dict, *, sandboxed: bool = True, limits: Limits = Limits(),
                   environment: dict[str, str] | None = None) -> tuple[dict[str, Verdict], list[str]]:
    """Run one notebook's plan in a fresh sandbox; return ({test grade_id: Verdict}, notes for the instructor)."""
    verdicts = {test["grade_id"]: Verdict(test["grade_id"]) for test in plan["tests"]}
    notes: list[str] = []
    if not plan["tests"]:
        return verdicts, notes
    workdir = Path(tempfile.mkdtemp(prefix="course-grading-"))
    pipes, channels = [], {}
    runner_tests = []
    for test in plan["tests"]:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        pipes += [to_child_r, from_child_w]
        channels[test["grade_id"]] = _Channel(verdicts[test["grade_id"]], test["hidden"], to_child_w, from_child_r)
        runner_tests.append({"grade_id": test["grade_id"], "cell": test["cell"], "visible": test["visible"],
                             "in_fd": to_child_r, "out_fd": from_child_w})
    control_in_r, control_in_w = os.pipe()
    control_out_r, control_out_w = os.pipe()
    child_fds = pipes + [control_in_r, control_out_w]
    for fd in child_fds:
        os.set_inheritable(fd, True)
    env = {"NBGRADER_EXECUTION": "autograde", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", "COURSE_CACHE_DIR": "/tmp/course-cache",
           "MPLCONFIGDIR": "/tmp/matplotlib", "TQDM_DISABLE": "1", **(environment or {})}
    argv = [sys.executable, str(RUNNER), str(control_in_r), str(control_out_w)]
    process_limit = None
    if sandboxed:
        sandbox = Sandbox(workdir=workdir, read_only=python_paths(), environment=env)
        command = sandbox.command(argv)
        process_limit = ProcessLimit.create(limits.max_processes)
        if process_limit is None:
            notes.append("the number of processes was not bounded (no writable pids cgroup on this machine)")
        popen_env = None
    else:
        command, popen_env = argv, {**os.environ, **env, "COURSE_CACHE_DIR": str(workdir / "cache")}
    process = subprocess.Popen(command, pass_fds=child_fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=workdir, env=popen_env, start_new_session=True,
                               preexec_fn=process_limit.add_me if process_limit else None)
    for fd in child_fds:
        os.close(fd)
    try:
        _drive(process, plan, runner_tests, channels, control_in_w, control_out_r, limits, notes)
    finally:
        for fd in [control_in_w, control_out_r] + [fd for c in channels.values() for fd in (c.to_child, c.from_child)]:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        error_output = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.returncode not in (0, None) and not any(v.passed for v in verdicts.values()):
            notes.append(f"the sandbox ended with exit status {process.returncode}: {error_output[-800:]}")
        if process_limit is not None:
            process_limit.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return verdicts, notes


def _send(fd: int, message: dict) -> bool:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
        return True
    except (BrokenPipeError, OSError):
        return False


def _drive(process, plan, runner_tests, channels, control_in, control_out, limits: Limits, notes: list[str]) -> None:
    """The grader's side of the protocol (see grading_runner.py): plan, visible phase, hidden phase."""
    _send(control_in, {"cells": plan["cells"], "tests": runner_tests, "limits": {
        "memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds}})
    order = [test["grade_id"] for test in plan["tests"]]
    started: set[str] = set()
    selector = selectors.DefaultSelector()
    selector.register(control_out, selectors.EVENT_READ, "control")
    for grade_id, channel in channels.items():
        selector.register(channel.from_child, selectors.EVENT_READ, grade_id)
    control_buffer, zygote_done = b"", False
    stopped_cells: dict[int, str] = {}  # a cell that stopped one test's process stops the later ones too
    phase, current = "visible", None

    def next_in_turn():
        pending = [g for g in order if not channels[g].done and (phase == "hidden" or g in started)]
        return pending[0] if pending else None

    def finish(grade_id: str, status: str, message: str = "") -> None:
        channel = channels[grade_id]
        channel.done, channel.verdict.status = True, status
        if message:
            channel.verdict.message = message
        if status in ("crashed", "timed out"):
            _send(control_in, {"kill": grade_id})
            if channel.verdict.last_cell is not None:
                stopped_cells.setdefault(channel.verdict.last_cell, status)

    while True:
        if current is None:
            if phase == "visible" and zygote_done and all(channels[g].done for g in order if g in started):
                for g in order:  # never started: the notebook's own code ended the sandbox first
                    if g not in started:
                        finish(g, "crashed", "the notebook stopped before these tests could run")
                phase = "hidden"
                for channel in channels.values():
                    channel.done = not channel.visible_passed
            current = next_in_turn()
            if current is not None:
                channel = channels[current]
                if phase == "visible":
                    channel.deadline = time.monotonic() + limits.seconds
                    if not _send(channel.to_child, {"go": True}):
                        finish(current, "crashed", "the test's process ended before it could start")
                        current = None
                        continue
                elif not channel.hidden:
                    _send(channel.to_child, {"source": ""})
                    finish(current, "passed")
                    current = None
                    continue
                else:
                    channel.deadline = time.monotonic() + limits.seconds
                    if not _send(channel.to_child, {"source": channel.hidden}):
                        finish(current, "crashed", "the test's process ended before the hidden tests")
                        current = None
                        continue
            elif phase == "hidden":
                return
        timeout = None if current is None else max(0.0, channels[current].deadline - time.monotonic())
        events = selector.select(timeout=timeout if timeout is not None else 1.0)
        if current is not None and not events and time.monotonic() >= channels[current].deadline:
            finish(current, "timed out", f"stopped after {limits.seconds:.0f} s")
            current = None
            continue
        for key, _ in events:
            if key.data == "control":
                chunk = os.read(control_out, 65536)
                if not chunk:
                    selector.unregister(control_out)
                    zygote_done = True
                    continue
                control_buffer += chunk
                *lines, control_buffer = control_buffer.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    if event["event"] == "started":
                        started.add(event["grade_id"])
                    elif event["event"] == "all_started":
                        zygote_done = True
                    elif event["event"] == "notebook_error":
                        notes.append(f"the notebook's own cell {event['cell']} failed: {event['message']}")
                continue
            grade_id, channel = key.data, channels[key.data]
            chunk = os.read(channel.from_child, 65536)
            if not chunk:
                selector.unregister(channel.from_child)
                if not channel.done:
                    where = channel.verdict.last_cell
                    finish(grade_id, "crashed", "the process running these tests ended without a result"
                           + (f" (it was running cell {where})" if where is not None else ""))
                    if current == grade_id:
                        current = None
                continue
            channel.buffer += chunk
            if len(channel.buffer) > 1_000_000:  # a flood on the pipe: nothing more is read from it
                finish(grade_id, "crashed", "the tests' process wrote too much to the grader")
                selector.unregister(channel.from_child)
                current = None if current == grade_id else current
                continue
            *lines, channel.buffer = channel.buffer.split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict) or channel.done:
                    continue
                if event.get("event") == "cell" and isinstance(event.get("cell"), int):
                    channel.verdict.last_cell = event["cell"]
                    if event["cell"] in stopped_cells and current == grade_id:
                        finish(grade_id, stopped_cells[event["cell"]],
                               f"cell {event['cell']} stopped an earlier test's process; not waited for again")
                        current = None
                elif event.get("event") == "visible" and phase == "visible" and current == grade_id:
                    if event.get("passed") is True:
                        channel.visible_passed, channel.done = True, True
                    else:
                        finish(grade_id, "failed", str(event.get("message", ""))[:2000])
                        _send(channel.to_child, {"source": ""})
                    current = None
                elif event.get("event") == "hidden" and phase == "hidden" and current == grade_id:
                    finish(grade_id, "passed" if event.get("passed") is True else "hidden failed")
                    current = None



def grade_notebook(plan: dict, *, sandboxed: bool = True, limits: Limits = Limits(),
                   environment: dict[str, str] | None = None, retries: int = 3) -> tuple[dict[str, Verdict], list[str]]:
    """Run :func:`run_submission`, then rerun the test cells that a *different* exercise's code stopped.

    Each test cell's process runs all of the student's cells before it, so a solution cell that
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
