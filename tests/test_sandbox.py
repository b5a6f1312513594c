"""The grading sandbox on its own (tools/sandbox.py): what a process inside it can see and do.

Each test runs a few lines of Python in the sandbox, as a submission's code would run, and checks
the outcome from outside. The attacks through the whole grader are tests/test_attacks.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sandbox  # noqa: E402  (tools/ is not a package)
import sandboxed_grading  # noqa: E402

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="needs bubblewrap (`apt-get install bubblewrap`; .ci/run installs it)")


def run_inside(tmp_path: Path, code: str, limit=None) -> subprocess.CompletedProcess:
    box = sandbox.Sandbox(workdir=tmp_path, read_only=sandboxed_grading.python_paths())
    preexec = limit.add_me if limit else None
    return subprocess.run(box.command([sys.executable, "-c", code]), capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec)


@needs_bwrap
def test_the_repository_and_course_folders_are_not_there(tmp_path):
    secret = tmp_path / "course" / "gradebook.db"
    secret.parent.mkdir()
    secret.write_text("grades")
    work = tmp_path / "work"
    work.mkdir()
    result = run_inside(work, "import os, sys\n"
                        f"print(os.path.exists({str(secret)!r}), os.path.exists({str(ROOT / 'solutions')!r}),"
                        f" os.path.exists({str(ROOT / 'course_lib' / 'checks.py')!r}))")
    assert result.stdout.split() == ["False", "False", "True"], result.stderr


@needs_bwrap
def test_only_the_working_copy_is_writable(tmp_path):
    code = (f"import os\nopen('mine.txt', 'w').write('ok')\n"
            f"try:\n    open({str(ROOT / 'course_lib' / 'planted.py')!r}, 'w')\nexcept OSError as e:\n    print(e.errno)\n")
    result = run_inside(tmp_path, code)
    assert (tmp_path / "mine.txt").read_text() == "ok"
    assert result.stdout.strip() == "30", result.stderr  # EROFS: read-only file system
    assert not (ROOT / "course_lib" / "planted.py").exists()


@needs_bwrap
def test_there_is_no_network(tmp_path):
    code = ("import socket\ns = socket.socket()\ntry:\n    s.connect(('1.1.1.1', 443))\n    print('connected')\n"
            "except OSError as e:\n    print('refused', e.errno)\n")
    result = run_inside(tmp_path, code)
    assert result.stdout.startswith("refused"), result.stdout + result.stderr


@needs_bwrap
def test_the_number_of_processes_is_bounded(tmp_path):
    limit = sandbox.ProcessLimit.create(20)
    if limit is None:
        pytest.skip("no writable pids cgroup on this machine (the grader says so when it grades)")
    try:
        code = ("import os, time\nn = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n"
                "            time.sleep(3)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n")
        result = run_inside(tmp_path, code, limit)
        assert 5 <= int(result.stdout.strip()) < 20, result.stderr  # it could fork, but not 200 times
    finally:
        limit.close()


def test_a_missing_bwrap_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap.*--no-sandbox"):
        sandbox.bwrap_executable()


def test_hidden_tests_are_split_from_the_visible_ones():
    source = "a = 1\nassert a\n### BEGIN HIDDEN TESTS\nassert a == 1\n### END HIDDEN TESTS\n"
    assert sandboxed_grading.split_hidden_tests(source) == ("a = 1\nassert a\n", "assert a == 1\n")
    middle = "x = 1\n### BEGIN HIDDEN TESTS\nassert x\n### END HIDDEN TESTS\nprint(x)\n"
    assert sandboxed_grading.split_hidden_tests(middle) == ("x = 1\nprint(x)\n", "x = 1\nassert x\nprint(x)\n")
    assert sandboxed_grading.split_hidden_tests("assert True\n") == ("assert True\n", "")


def test_cells_that_use_a_solution_run_with_the_students_code():
    names = sandboxed_grading.defined_names("def capture(model):\n    raise NotImplementedError()\nTHRESHOLD = 3\n")
    assert names == {"capture", "THRESHOLD"}
    assert sandboxed_grading.uses_any("curve = [capture(m) for m in models]", names)
    assert not sandboxed_grading.uses_any("curve = [capture_activations(m) for m in models]", names)
    assert sandboxed_grading.uses_any("this is not python (", names)


@needs_bwrap
def test_a_library_under_tmp_is_still_seen(tmp_path):
    # A fresh clone in /tmp (as CI makes): the sandbox's empty /tmp must not hide the library bound inside it.
    library = tmp_path / "clone" / "course_lib"
    library.mkdir(parents=True)
    (library / "marker.py").write_text("VALUE = 42\n")
    work = tmp_path / "work"
    work.mkdir()
    box = sandbox.Sandbox(workdir=work, read_only=(*sandboxed_grading.python_paths(), library))
    result = subprocess.run(box.command([sys.executable, "-c", f"print(open({str(library / 'marker.py')!r}).read())"]),
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "VALUE = 42", result.stderr


def _plan_with_a_slow_notebook_cell(seconds: float) -> dict:
    """A notebook whose own cell (the instructor's) sleeps before the one exercise and its test."""
    return {"cells": [{"index": 0, "role": "notebook", "source": f"import time\ntime.sleep({seconds})\n"},
                      {"index": 1, "role": "student", "source": "def add_one(x):\n    return x + 1\n", "solution": True},
                      {"index": 2, "role": "test"}],
            "tests": [{"grade_id": "add_one_tests", "cell": 2, "visible": "assert add_one(1) == 2\n",
                       "hidden": "assert add_one(-5) == -4\n", "points": 1.0}],
            "student_names": ["add_one"]}


def test_the_notebooks_own_slow_cells_do_not_count_against_a_test():
    # On a busy machine a smoke-size cell can take longer than a test's limit; the test must not pay.
    plan = _plan_with_a_slow_notebook_cell(4)
    limits = sandboxed_grading.Limits(seconds=2, notebook_seconds=60)
    verdicts, notes = sandboxed_grading.grade_notebook(plan, sandboxed=False, limits=limits)
    assert verdicts["add_one_tests"].status == "passed", (verdicts, notes)


def test_a_notebook_that_never_reaches_a_test_says_so():
    plan = _plan_with_a_slow_notebook_cell(30)
    limits = sandboxed_grading.Limits(seconds=60, notebook_seconds=2)
    verdicts, _ = sandboxed_grading.grade_notebook(plan, sandboxed=False, limits=limits)
    verdict = verdicts["add_one_tests"]
    assert verdict.status == "crashed"
    assert "notebook's own cells took more than 2 s" in verdict.message
