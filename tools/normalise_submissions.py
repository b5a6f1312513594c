"""Normalising a submission before it is graded: only the student's answers come from the student.

A submitted notebook is rebuilt from the released one: every cell, its metadata, its id, the
order of cells and the notebook's metadata come from the release; only the *source* of each
solution cell comes from the student. So edited or deleted test cells, changed metadata, added
cells or a solution cell dressed up as a test neither gain nor lose points. nbgrader's region
markers inside a student's answer are made inert (``BEGIN HIDDEN TESTS`` -> ``BEGIN-HIDDEN-TESTS``),
so a stray marker cannot break feedback for the class, and no line is added or removed, so
nothing can be hidden either. The files a student sent are never changed: the normalised copies
go to a separate folder. Used by ``tools/nbgrader_course.py grade``.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import nbformat


# nbgrader's region markers (its defaults; nbgrader_config.py does not change them). nbgrader finds
# them anywhere in a line, in any cell: ClearSolutions (BEGIN/END SOLUTION), ClearHiddenTests (BEGIN/END
# HIDDEN TESTS, run on every cell of the feedback) and ClearMarkScheme (BEGIN/END MARK SCHEME).
NBGRADER_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS",
                    "BEGIN MARK SCHEME", "END MARK SCHEME")
# Matched more loosely than nbgrader does (any case, any run of spaces), so that a student's text
# cannot start to match after a change of nbgrader's or the course's settings.
_MARKER = re.compile(r"(BEGIN|END)[^\S\r\n]+(SOLUTION|HIDDEN[^\S\r\n]+TESTS|MARK[^\S\r\n]+SCHEME)", re.IGNORECASE)


def neutralise_markers(text: str) -> str:
    """``text`` with every nbgrader region marker made inert: ``BEGIN HIDDEN TESTS`` becomes ``BEGIN-HIDDEN-TESTS``.

    Only the spaces inside a marker change, so no line is added or removed and the code means the
    same (a marker is a comment; one inside a string literal changes that string by those spaces).
    """
    # Repeated until nothing matches, in case a replacement and its neighbours ever formed a new
    # marker; it ends, because each pass removes spaces.
    while _MARKER.search(text):
        text = _MARKER.sub(lambda match: re.sub(r"[^\S\r\n]+", "-", match.group(0)), text)
    return text


def _grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _is_solution(cell) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def _students_answer(released_cell, submitted_cells: list) -> str | None:
    """The source of the submitted cell that answers ``released_cell``, or None when none does.

    Matched by nbgrader ``grade_id`` (several cells claiming it: the one that also has the released
    cell's id, else the first), else by the cell's id (a cell whose nbgrader metadata was edited or
    removed keeps its id in Jupyter). Never by position: students add and move cells.
    """
    grade_id, cell_id = _grade_id(released_cell), released_cell.get("id")
    by_grade_id = [cell for cell in submitted_cells if _grade_id(cell) == grade_id]
    by_cell_id = [cell for cell in submitted_cells if cell_id is not None and cell.get("id") == cell_id]
    both = [cell for cell in by_grade_id if any(cell is other for other in by_cell_id)]
    for candidates in (both, by_grade_id, by_cell_id):
        if candidates:
            return candidates[0].get("source", "")
    return None


def normalise_submission(released: nbformat.NotebookNode,
                         submitted: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The notebook to grade: ``released`` with the student's answers from ``submitted`` in its solution cells.

    Every cell, its metadata, its id and the cell order come from the released notebook, so edited
    or removed nbgrader metadata (a test cell's ``grade_id`` or ``locked``, a solution cell turned
    into a test cell with points) can neither stop grading nor earn points. Only the source of
    each solution cell comes from the student (matched as :func:`_students_answer` says), with
    nbgrader's markers made inert (:func:`neutralise_markers`): a stray ``### BEGIN HIDDEN TESTS``
    can neither break feedback for the class nor hide part of the student's code. Code in cells
    the student added is not graded. Returns the notebook and one note per solution cell that
    had no answer in the submission (graded as unanswered, as released). Used by :func:`grade`.
    """
    normalised = copy.deepcopy(released)
    notes = []
    for cell in normalised.cells:
        if not _is_solution(cell):
            continue
        answer = _students_answer(cell, submitted.get("cells", []))
        if answer is None:
            notes.append(f"{_grade_id(cell)}: no cell with this grade_id or cell id; graded as unanswered")
        else:
            cell.source = neutralise_markers(answer)
    return normalised, notes


def normalise_submissions(course_root: Path, assignment: str, release_dir: Path,
                          submitted_dir: str = "submitted", normalised_dir: str = "normalised") -> dict[str, list[str]]:
    """Copy ``submitted/<student>/<assignment>/`` to ``normalised/``, each released notebook normalised.

    The students' files are never changed: other files (nbgrader's ``timestamp.txt``) are copied
    as they are, and a notebook that is not valid JSON is copied unchanged, so that nbgrader fails
    it and :func:`grade` lists the student. Returns {student: notes} for the submissions that needed
    a note (see :func:`normalise_submission`).
    """
    course_root = Path(course_root)
    target_root = course_root / normalised_dir
    for stale in target_root.glob(f"*/{assignment}"):
        shutil.rmtree(stale)  # a submission withdrawn since the last run must not be graded again
    notes: dict[str, list[str]] = {}
    for folder in sorted((course_root / submitted_dir).glob(f"*/{assignment}")):
        student = folder.parent.name
        target = target_root / student / assignment
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        for released_path in sorted((Path(release_dir) / assignment).glob("*.ipynb")):
            submitted_path = target / released_path.name
            if not submitted_path.is_file():
                notes.setdefault(student, []).append(f"{released_path.name}: not submitted")
                continue
            try:
                submitted = nbformat.read(submitted_path, as_version=4)
            except Exception as error:  # nbformat raises several types for a broken file
                notes.setdefault(student, []).append(f"{released_path.name}: not a valid notebook ({error})")
                continue
            normalised, cell_notes = normalise_submission(nbformat.read(released_path, as_version=4), submitted)
            nbformat.write(normalised, submitted_path)
            notes.setdefault(student, []).extend(f"{released_path.name}: {note}" for note in cell_notes)
    return {student: lines for student, lines in notes.items() if lines}
