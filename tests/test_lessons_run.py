"""Student notebooks in lessons/ run top to bottom and fail only where the student has work to do.

A fresh student notebook has `raise NotImplementedError()` in every exercise, so the exercise's
test cell fails (and the exercise cell itself, if it runs the unfinished code); every other cell
(set-up, demonstrations, figures) must run, so that a student who has not finished an exercise
still sees the rest of the lesson.
(The instructor versions in solutions/ are run in full by nbval: `pytest --nbval-lax solutions`.)
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("*/*.ipynb"))


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def test_every_chapter_has_a_lesson():
    solutions = sorted(path.relative_to(ROOT / "solutions") for path in (ROOT / "solutions").glob("*/*.ipynb"))
    assert solutions, "no instructor notebooks found in solutions/"
    assert [path.relative_to(ROOT / "lessons") for path in LESSONS] == solutions


@pytest.mark.notebook
@pytest.mark.parametrize("path", LESSONS, ids=[path.parent.name for path in LESSONS])
def test_lesson_fails_only_at_exercises(path, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    monkeypatch.setenv("COURSE_CACHE_DIR", os.environ.get("COURSE_CACHE_DIR", str(tmp_path / "cache")))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, allow_errors=True, resources={"metadata": {"path": str(path.parent)}}).execute()

    exercises = 0
    for index, cell in enumerate(notebook.cells):
        errors = [out for out in cell.get("outputs", []) if out.get("output_type") == "error"]
        meta = _nbgrader(cell)
        if cell.cell_type != "code":
            continue
        if meta.get("solution"):
            # Defining an unfinished function is fine; running unfinished code must say so.
            exercises += 1
            assert all(e["ename"] == "NotImplementedError" for e in errors), (
                f"exercise cell {index} of {path.name} failed with {errors[0]['ename']}, not NotImplementedError"
            )
        elif meta.get("grade"):
            assert errors, f"test cell {index} of {path.name} passes on an unanswered exercise: it tests nothing"
        else:
            assert not errors, (
                f"cell {index} of {path.name} is not an exercise but failed in the student version: "
                f"{errors[0]['ename']}: {errors[0]['evalue']}\n{cell.source[:300]}"
            )
    assert exercises >= 3, f"{path.name} has {exercises} exercises; every chapter needs at least three"
