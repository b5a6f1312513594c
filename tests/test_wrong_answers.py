"""Every wrong answer an author recorded in wrong_answers.json fails its exercise's test cell.

The end-to-end grading test sends one wrong answer per exercise through nbgrader; this test checks
all of them, cheaply, in one kernel: run the instructor notebook up to its last test cell, then
for each wrong answer run it in place of the solution followed by the exercise's test cell, which
must raise. The cells after the last test cell (a chapter's closing experiment) are not needed
here: nbval runs every cell of the instructor notebooks (`pytest --nbval-lax solutions`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(path.parent for path in (ROOT / "solutions").glob("*/wrong_answers.json"))


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _test_cell_after(cells: list, solution_index: int):
    for cell in cells[solution_index + 1:]:
        if _nbgrader(cell).get("grade"):
            return cell
    raise AssertionError(f"no test cell follows solution cell {solution_index}")


@pytest.mark.notebook
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.name for path in CHAPTERS])
def test_each_recorded_wrong_answer_fails_its_tests(chapter, monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    monkeypatch.setenv("COURSE_CACHE_DIR", os.environ.get("COURSE_CACHE_DIR", str(tmp_path / "cache")))
    wrong_answers = json.loads((chapter / "wrong_answers.json").read_text())
    (notebook_path,) = chapter.glob("*.ipynb")
    notebook = nbformat.read(notebook_path, as_version=4)
    solutions = {
        cell.metadata["nbgrader"]["grade_id"]: index
        for index, cell in enumerate(notebook.cells)
        if _nbgrader(cell).get("solution") and cell.cell_type == "code"
    }
    assert set(wrong_answers) == set(solutions), "wrong_answers.json must cover exactly the exercises"

    last_test = max(index for index, cell in enumerate(notebook.cells) if _nbgrader(cell).get("grade"))

    client = NotebookClient(notebook, timeout=300, allow_errors=True, resources={"metadata": {"path": str(chapter)}})
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells[:last_test + 1]):
            client.execute_cell(cell, index)
            errors = [out for out in cell.get("outputs", []) if out.get("output_type") == "error"]
            assert not errors, f"the instructor notebook failed at cell {index}: {errors[0]['evalue']}"
        original = list(notebook.cells)

        def run_extra(source: str):
            cell = nbformat.v4.new_code_cell(source)
            notebook.cells.append(cell)  # nbclient stores results by index in the notebook
            client.execute_cell(cell, len(notebook.cells) - 1)
            return cell

        for grade_id, answers in wrong_answers.items():
            solution_source = original[solutions[grade_id]].source
            test_source = _test_cell_after(original, solutions[grade_id]).source
            assert len(answers) >= 2, f"record at least two wrong answers for {grade_id}"
            for number, answer in enumerate(answers):
                run_extra(answer)
                tests = run_extra(test_source)
                assert any(out.get("output_type") == "error" for out in tests.outputs), (
                    f"wrong answer {number} of {grade_id} passes its tests:\n{answer}"
                )
            run_extra(solution_source)  # later exercises may use the right answer
