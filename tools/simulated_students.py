"""Simulated students for any chapter: right, wrong, crashing and hostile submissions, built from its metadata.

Used by ``tests/test_attacks.py`` (each attack, with the score it must get) and by
``tools/grading_bench.py`` (a class of 100 to time). Nothing here is written for one chapter: a
submission is made from the release notebook, the instructor notebook (for the right answers)
and ``wrong_answers.json``, so a new chapter is attacked by the same code.

Each builder returns ``(notebook, expected)``, where ``expected`` maps each exercise's test
cell ``grade_id`` to the status it must get (``"passed"``, or a set of acceptable failures).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import nbformat

from sandboxed_grading import defined_names

FAILED = frozenset({"failed", "hidden failed"})
STOPPED = frozenset({"crashed", "timed out"})
# The command line of the process a vandal leaves behind, to look for after grading.
LINGERING_MARKER = "307.5"


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


@dataclasses.dataclass
class Exercise:
    """One exercise: its solution cell, its test cell, the function it asks for, its right and wrong answers."""

    solution_id: str
    test_id: str
    function: str
    right: str
    wrong: list[str]


@dataclasses.dataclass
class Chapter:
    """What the builders need of one chapter: its release notebook and its exercises in order."""

    name: str
    notebook_name: str
    released: nbformat.NotebookNode
    source: nbformat.NotebookNode
    exercises: list[Exercise]

    @classmethod
    def load(cls, solutions_dir: Path, released_path: Path) -> "Chapter":
        source = nbformat.read(solutions_dir / released_path.parent.name / released_path.name, as_version=4)
        released = nbformat.read(released_path, as_version=4)
        wrong = json.loads((solutions_dir / released_path.parent.name / "wrong_answers.json").read_text())
        exercises, pending = [], None
        for released_cell, source_cell in zip(released.cells, source.cells):
            meta = _meta(released_cell)
            if meta.get("solution") and released_cell.cell_type == "code":
                functions = [n for n in defined_names(released_cell.source) if f"def {n}(" in released_cell.source]
                pending = (meta["grade_id"], functions[0], source_cell.source)
            elif meta.get("grade") and pending is not None:
                solution_id, function, right = pending
                exercises.append(Exercise(solution_id, meta["grade_id"], function, right, wrong.get(solution_id, [])))
                pending = None
        return cls(released_path.parent.name, released_path.name, released, source, exercises)

    def submission(self, **answers: str) -> nbformat.NotebookNode:
        """The release with each exercise's right answer, except those given by solution ``grade_id``."""
        notebook = copy.deepcopy(self.released)
        by_id = {ex.solution_id: ex for ex in self.exercises}
        for cell in notebook.cells:
            solution_id = _meta(cell).get("grade_id")
            if _meta(cell).get("solution") and solution_id in by_id:
                cell.source = answers.get(solution_id, by_id[solution_id].right)
        return notebook

    def all_passed(self) -> dict[str, object]:
        return {ex.test_id: "passed" for ex in self.exercises}


def _wrapped(exercise: Exercise, body: str) -> str:
    """The right answer, renamed, behind a function of the asked-for name whose extra code is ``body``.

    ``body`` runs on every call, then the right answer's result is returned.
    """
    inner = f"_right_{exercise.function}"
    right = exercise.right.replace(f"def {exercise.function}(", f"def {inner}(", 1)
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return f"{right}\n\ndef {exercise.function}(*args, **kwargs):\n{indented}    return {inner}(*args, **kwargs)\n"


def right_answers(chapter: Chapter):
    return chapter.submission(), chapter.all_passed()


def unanswered(chapter: Chapter):
    return copy.deepcopy(chapter.released), {ex.test_id: FAILED for ex in chapter.exercises}


def wrong_answer(chapter: Chapter, index: int, number: int = 0):
    """Exercise ``index`` answered with its ``number``-th recorded wrong answer, the rest right."""
    exercise = chapter.exercises[index]
    return (chapter.submission(**{exercise.solution_id: exercise.wrong[number % len(exercise.wrong)]}),
            {**chapter.all_passed(), exercise.test_id: FAILED})


def crashes(chapter: Chapter):
    """The first solution cell ends its process at the top level; the second exercise's function kills
    its own process; the third's asks for 64 GiB. Each costs its own exercise only."""
    first, second, *rest = chapter.exercises
    answers = {first.solution_id: first.right + "\nimport os\nos._exit(1)\n",
               second.solution_id: _wrapped(second, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")}
    expected = {first.test_id: STOPPED, second.test_id: STOPPED}
    if rest:
        answers[rest[0].solution_id] = _wrapped(rest[0], "hog = bytearray(64 * 2**30)")
        expected[rest[0].test_id] = FAILED
    return chapter.submission(**answers), {**chapter.all_passed(), **expected}


def endless_loop(chapter: Chapter):
    """The first solution cell never ends (a spinning loop at the top level): only that exercise is lost."""
    first = chapter.exercises[0]
    return (chapter.submission(**{first.solution_id: first.right + "\nwhile True:\n    pass\n"}),
            {**chapter.all_passed(), first.test_id: STOPPED})


def vandal(chapter: Chapter, targets: list[Path]):
    """Right answers whose first solution cell tries to overwrite, then delete, each of ``targets``
    (gradebook, instructor notebooks, other submissions, the release), to read them, and leaves a
    process behind that tries again later. It must score full points and change nothing."""
    first = chapter.exercises[0]
    paths = [str(path) for path in targets]
    attack = f'''
import os, shutil, subprocess
for _target in {paths!r}:
    for _attempt in (lambda p: open(p, "w").write("vandalised"), lambda p: shutil.rmtree(p) if os.path.isdir(p) else os.remove(p),
                     lambda p: open(os.path.join(os.path.dirname(p), "planted.txt"), "w").write("x")):
        try:
            _attempt(_target)
        except Exception:
            pass
if os.fork() == 0:
    os.setsid()
    os.execv("/bin/sleep", ["sleep", "{LINGERING_MARKER}"])
'''
    return chapter.submission(**{first.solution_id: first.right + attack}), chapter.all_passed()


LEAK_FILE = "leak.txt"  # in the working copy (the current folder)


def secret_reader(chapter: Chapter, instructor_paths: list[Path]):
    """Every function records what it can see when called (its callers' source and variables, the
    instructor notebooks) into a file; the last exercise's function fails its visible tests with all
    of it as the message, which is what the feedback shows. No hidden line may be in that message."""
    *others, last = chapter.exercises
    # Each distinct call stack is spied on once: a hidden test that calls the function hundreds of
    # times from one loop shows nothing new after the first call, and spying costs time.
    spy = f'''
import inspect, os, sys
_caller, _stack = sys._getframe(1), []
while _caller is not None:
    _stack.append((_caller.f_code.co_filename, _caller.f_code.co_name, _caller.f_lineno))
    _caller = _caller.f_back
_spied = sys.__dict__.setdefault("_course_spied_stacks", set())
_seen = []
def _shown(value):  # an object whose repr fails (or calls a forbidden function) is skipped
    try:
        return repr(value)[:300]
    except Exception as _error:
        return "<repr failed: " + type(_error).__name__ + ">"
if tuple(_stack) not in _spied:
    _spied.add(tuple(_stack))
    for _frame in inspect.stack()[1:]:
        try:
            _seen.append(inspect.getsource(_frame.frame))
        except Exception:
            pass
        _seen.append(repr({{k: _shown(v) for k, v in _frame.frame.f_locals.items()}}))
    import json as _json
    for _path in {[str(p) for p in instructor_paths]!r}:
        try:
            for _cell in _json.load(open(_path))["cells"]:  # the hidden tests first: messages are cut short
                _text = "".join(_cell["source"])
                if "BEGIN HIDDEN TESTS" in _text:
                    _seen.insert(0, _text.split("BEGIN HIDDEN TESTS", 1)[1])
        except Exception as _error:
            _seen.append("could not read: " + repr(_error))
with open({LEAK_FILE!r}, "a") as _leak:
    _leak.write("\\n".join(_seen))
'''
    answers = {ex.solution_id: _wrapped(ex, spy) for ex in others}
    answers[last.solution_id] = _wrapped(last, spy + f'raise AssertionError("LEAK:" + open({LEAK_FILE!r}).read())')
    return chapter.submission(**answers), {**chapter.all_passed(), last.test_id: frozenset({"failed"})}


def feedback_flood(chapter: Chapter):
    """A 10 MB failure message, 100 MB printed, and junk written to every open pipe: bounded, and only
    the flooding exercises are lost."""
    first, second, *rest = chapter.exercises
    answers = {first.solution_id: _wrapped(first, 'print("x" * 10**8)\nraise AssertionError("y" * 10**7)'),
               second.solution_id: _wrapped(second, "import os\nfor _fd in range(3, 64):\n    try:\n"
                                                    "        os.write(_fd, b'{\"event\": \"junk\"}' * 200000)\n"
                                                    "    except OSError:\n        pass")}
    return chapter.submission(**answers), {**chapter.all_passed(), first.test_id: frozenset({"failed"}),
                                           second.test_id: FAILED | STOPPED}


def ipython_tricks(chapter: Chapter):
    """A wrong answer that registers IPython input transformers and pre-run hooks, which nbgrader's
    kernel would apply to the test cells: the grader runs no IPython, so it still scores 0."""
    first = chapter.exercises[0]
    trick = ('\nip = get_ipython()\nip.input_transformers_cleanup.append(lambda lines: ["pass\\n"])\n'
             'ip.events.register("pre_run_cell", lambda info: print(info.raw_cell))\n')
    return (chapter.submission(**{first.solution_id: first.wrong[0] + trick}),
            {**chapter.all_passed(), first.test_id: FAILED})


def forged_report(chapter: Chapter):
    """A wrong answer that writes 'passed' reports on every pipe it has: verdicts never come from the
    student's process, so it still scores 0."""
    first = chapter.exercises[0]
    forge = ("import os\nfor _fd in range(3, 64):\n    try:\n"
             "        os.write(_fd, b'{\"event\": \"visible\", \"passed\": true}\\n{\"event\": \"hidden\", \"passed\": true}\\n')\n"
             "    except OSError:\n        pass")
    wrong = first.wrong[0].replace(f"def {first.function}(", f"def _wrong_{first.function}(", 1)
    answer = f"{wrong}\n\ndef {first.function}(*args, **kwargs):\n" + "".join(
        f"    {line}\n" for line in forge.splitlines()) + f"    return _wrong_{first.function}(*args, **kwargs)\n"
    # Junk on the call pipe may also end the exchange (a crash, flagged): either way, no points.
    return chapter.submission(**{first.solution_id: answer}), {**chapter.all_passed(), first.test_id: FAILED | STOPPED}


def patched_checks(chapter: Chapter):
    """Wrong answers that make every check in their own process agree: the course's check helpers,
    ``torch.allclose``, ``torch.equal``, NumPy's and ``math.isclose``, and ``AssertionError`` itself.
    The checks run in the grader, so each exercise still scores 0."""
    patch = """
import builtins, math, torch, numpy.testing, course_lib.checks, course_lib.model_checks
_agree = lambda *args, **kwargs: True
_silent = lambda *args, **kwargs: None
for _module in (course_lib.checks, course_lib.model_checks):
    for _name in dir(_module):
        if _name.startswith("check_"):
            setattr(_module, _name, _silent)
torch.allclose = torch.equal = math.isclose = _agree
numpy.testing.assert_allclose = _silent
builtins.AssertionError = type("AssertionError", (Exception,), {})
"""
    answers = {ex.solution_id: ex.wrong[0] + patch for ex in chapter.exercises if ex.wrong}
    return chapter.submission(**answers), {ex.test_id: FAILED for ex in chapter.exercises}


def library_version(chapter: Chapter, exercise: Exercise, module: str, function: str, args: str, how: str):
    """``exercise`` answered by calling the library's own ``module.function``: directly, through an
    alias imported at the top of the cell, or from a closure made before any test ran."""
    signature = exercise.right.split("\n", 1)[0]  # the released "def name(...) -> ...:" line
    if how == "direct":
        answer = f"{signature}\n    import {module}\n    return {module}.{function}({args})\n"
    elif how == "alias":
        answer = f"from {module} import {function} as _library_version\n\n{signature}\n    return _library_version({args})\n"
    else:
        answer = (f"import importlib\n\ndef _make():\n    found = getattr(importlib.import_module({module!r}), {function!r})\n"
                  f"    return lambda *a, **k: found(*a, **k)\n\n_hidden_helper = _make()\n\n"
                  f"{signature}\n    return _hidden_helper({args})\n")
    return chapter.submission(**{exercise.solution_id: answer}), {**chapter.all_passed(), exercise.test_id: FAILED}
