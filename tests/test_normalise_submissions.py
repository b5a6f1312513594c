"""Normalising a submission before grading (tools/normalise_submissions.py), without running nbgrader.

The end-to-end results (scores, feedback, flags) are checked against the real nbgrader pipeline
in tests/test_grading.py; these check the rules themselves on small notebooks, in milliseconds.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions
from nbgrader.preprocessors.clearmarkingscheme import ClearMarkScheme

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import normalise_submissions  # noqa: E402  (tools/ is not a package)

STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


def _cell(kind: str, source: str, grade_id: str | None = None, **nbgrader) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    if grade_id is not None:
        cell.metadata["nbgrader"] = dict(grade_id=grade_id, schema_version=3, cell_type=kind, **nbgrader)
    return cell


def _released() -> nbformat.NotebookNode:
    """Text, an exercise (solution cell, test cell worth 2), a written answer, a second exercise."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        _cell("markdown", "# Chapter"),
        _cell("code", STUB, "ex1", solution=True, grade=False, locked=False),
        _cell("code", "assert answer() == 42", "ex1_tests", solution=False, grade=True, locked=True, points=2),
        _cell("markdown", "YOUR ANSWER HERE", "why", solution=True, grade=True, locked=False, points=1),
        _cell("code", STUB, "ex2", solution=True, grade=False, locked=False),
        _cell("code", "assert twice(2) == 4", "ex2_tests", solution=False, grade=True, locked=True, points=3),
    ]
    return notebook


def _answered(released: nbformat.NotebookNode) -> nbformat.NotebookNode:
    submitted = copy.deepcopy(released)
    submitted.cells[1].source = "def answer():\n    return 42"
    submitted.cells[3].source = "Because."
    submitted.cells[4].source = "def twice(x):\n    return 2 * x"
    return submitted


def test_markers_are_nbgraders_own_defaults():
    defaults = {ClearSolutions.begin_solution_delimeter.default_value, ClearSolutions.end_solution_delimeter.default_value,
                ClearHiddenTests.begin_test_delimeter.default_value, ClearHiddenTests.end_test_delimeter.default_value,
                ClearMarkScheme.begin_mark_scheme_delimeter.default_value,
                ClearMarkScheme.end_mark_scheme_delimeter.default_value}
    assert set(normalise_submissions.NBGRADER_MARKERS) == defaults
    config = (ROOT / "nbgrader_config.py").read_text()
    assert not re.search(r"delimeter\s*=", config), "nbgrader_config.py changes a marker: update NBGRADER_MARKERS and _MARKER"


@pytest.mark.parametrize("text", [
    "### BEGIN HIDDEN TESTS",
    "x = 1  # END SOLUTION",
    "s = 'XBEGIN SOLUTIONY'",  # nbgrader matches anywhere in a line
    "### begin  hidden\ttests",  # not a marker for nbgrader today; made inert all the same
    "BEGIN BEGIN HIDDEN TESTS END END MARK SCHEME",
])
def test_neutralised_text_has_no_marker_and_keeps_its_lines(text):
    neutral = normalise_submissions.neutralise_markers(text + "\nprint('kept')")
    assert not any(marker.lower() in neutral.lower() for marker in normalise_submissions.NBGRADER_MARKERS)
    assert neutral.splitlines()[1] == "print('kept')" and len(neutral.splitlines()) == 2
    assert neutral.replace("-", " ").replace("\t", " ").lower().split() == \
        text.replace("\t", " ").lower().split() + ["print('kept')"]


def test_answers_go_into_the_released_notebook_matched_by_grade_id():
    released = _released()
    submitted = _answered(released)
    submitted.cells.reverse()  # order does not matter
    submitted.cells.insert(0, _cell("code", "import os"))  # a cell the student added is not graded
    submitted.metadata["kernelspec"]["name"] = "something-else"
    normalised, notes = normalise_submissions.normalise_submission(released, submitted)
    assert notes == []
    assert [c.source for c in normalised.cells] == [
        "# Chapter", "def answer():\n    return 42", "assert answer() == 42", "Because.",
        "def twice(x):\n    return 2 * x", "assert twice(2) == 4"]
    assert normalised.metadata == released.metadata
    assert [c.metadata for c in normalised.cells] == [c.metadata for c in released.cells]
    assert [c.get("id") for c in normalised.cells] == [c.get("id") for c in released.cells]


def test_edited_metadata_cannot_earn_points_or_change_tests():
    released = _released()
    submitted = _answered(released)
    solution = submitted.cells[1].metadata["nbgrader"]
    solution.update(grade=True, solution=False, locked=True, points=100)  # "my solution is a test worth 100"
    submitted.cells[2].source = "pass"
    submitted.cells[2].metadata["nbgrader"].pop("locked")
    submitted.cells.append(_cell("code", "pass", "bonus", solution=False, grade=True, locked=True, points=50))
    normalised, _ = normalise_submissions.normalise_submission(released, submitted)
    assert normalised.cells[1].source == "def answer():\n    return 42"  # still graded, as a solution
    assert [c.metadata for c in normalised.cells] == [c.metadata for c in released.cells]
    assert normalised.cells[2].source == "assert answer() == 42"
    assert len(normalised.cells) == len(released.cells)


def test_cell_without_its_nbgrader_metadata_is_matched_by_cell_id():
    released = _released()
    submitted = _answered(released)
    del submitted.cells[1].metadata["nbgrader"]
    submitted.cells[4].metadata["nbgrader"]["grade_id"] = "renamed"
    submitted.cells.insert(1, _cell("markdown", "my notes"))  # so position would pick the wrong cell
    normalised, notes = normalise_submissions.normalise_submission(released, submitted)
    assert notes == []
    assert normalised.cells[1].source == "def answer():\n    return 42"
    assert normalised.cells[4].source == "def twice(x):\n    return 2 * x"


def test_grade_id_claimed_twice_takes_the_cell_with_the_released_id():
    released = _released()
    submitted = _answered(released)
    impostor = _cell("code", "def answer():\n    return 0", "ex1", solution=True, grade=False, locked=False)
    submitted.cells.insert(0, impostor)
    normalised, _ = normalise_submissions.normalise_submission(released, submitted)
    assert normalised.cells[1].source == "def answer():\n    return 42"


def test_unmatched_solution_is_graded_as_unanswered_with_a_note():
    released = _released()
    submitted = _answered(released)
    lost = submitted.cells[4]
    del lost.metadata["nbgrader"]
    lost.id = "pasted-cell"  # Jupyter gives a pasted cell a new id
    normalised, notes = normalise_submissions.normalise_submission(released, submitted)
    assert normalised.cells[4].source == STUB
    assert notes == ["ex2: no cell with this grade_id or cell id; graded as unanswered"]


def test_stray_markers_no_longer_break_nbgraders_hidden_test_removal():
    released = _released()
    submitted = _answered(released)
    submitted.cells[1].source = "### BEGIN HIDDEN TESTS\n" + submitted.cells[1].source
    submitted.cells[4].source = "### BEGIN HIDDEN TESTS\n# mine\n" + submitted.cells[4].source + "\n### END HIDDEN TESTS"
    # What feedback runs on every cell (this course's HideHiddenTestsInFeedback extends it).
    remover = ClearHiddenTests(enforce_metadata=False)
    with pytest.raises(RuntimeError, match="hidden tests"):
        remover.preprocess(copy.deepcopy(submitted), {})
    normalised, _ = normalise_submissions.normalise_submission(released, submitted)
    cleared, _ = remover.preprocess(copy.deepcopy(normalised), {})
    assert [c.source for c in cleared.cells] == [c.source for c in normalised.cells], "the student's code was hidden"
    assert "# mine" in cleared.cells[4].source


def test_submissions_are_copied_and_normalised_and_the_originals_kept(tmp_path):
    release = tmp_path / "release"
    (release / "ch").mkdir(parents=True)
    nbformat.write(_released(), release / "ch" / "work.ipynb")
    for student in ("ana", "bo", "cy"):
        (tmp_path / "submitted" / student / "ch").mkdir(parents=True)
    nbformat.write(_answered(_released()), tmp_path / "submitted" / "ana" / "ch" / "work.ipynb")
    (tmp_path / "submitted" / "ana" / "ch" / "timestamp.txt").write_text("2024-01-01 10:00:00")
    (tmp_path / "submitted" / "bo" / "ch" / "work.ipynb").write_text("{not json")
    stale = tmp_path / "normalised" / "gone" / "ch"
    stale.mkdir(parents=True)
    sent = {p: p.read_bytes() for p in (tmp_path / "submitted").rglob("*") if p.is_file()}

    notes = normalise_submissions.normalise_submissions(tmp_path, "ch", release)

    assert {p: p.read_bytes() for p in (tmp_path / "submitted").rglob("*") if p.is_file()} == sent
    assert not stale.exists()
    out = tmp_path / "normalised"
    assert (out / "ana" / "ch" / "timestamp.txt").read_text() == "2024-01-01 10:00:00"
    assert nbformat.read(out / "ana" / "ch" / "work.ipynb", as_version=4).cells[1].source == "def answer():\n    return 42"
    assert (out / "bo" / "ch" / "work.ipynb").read_text() == "{not json"  # nbgrader fails it and grade() lists bo
    assert set(notes) == {"bo", "cy"}
    assert notes["bo"][0].startswith("work.ipynb: not a valid notebook")
    assert notes["cy"] == ["work.ipynb: not submitted"]
