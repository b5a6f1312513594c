"""lessons/ is exactly what `nbgrader generate_assignment` makes from solutions/ now (tools/nbgrader_course.py).

The check generates the student notebooks in a temporary course folder and compares them with
lessons/ as parsed JSON (cell types, sources, metadata, outputs), other files byte for byte.
`make lessons` fixes a failure. The mechanics are tested on a tiny fixture assignment in tmp_path.
Every test that runs nbgrader, or needs the fixture it generates, is marked slow (seconds per call).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import nbgrader_course  # noqa: E402  (tools/ is not a package)

HIDDEN_LINE = "assert square(-4) == 16, 'negative inputs must work too'"


def _code(source: str, **nbgrader) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if nbgrader:
        cell.metadata["nbgrader"] = dict(schema_version=3, **nbgrader)
    return cell


def write_fixture_assignment(folder: Path) -> None:
    """A two-exercise assignment with hidden tests and a wrong_answers.json, like a chapter's."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Fixture"),
        _code("def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION",
              grade=False, solution=True, locked=False, grade_id="square"),
        _code(f"assert square(3) == 9, 'square(3) should be 9'\n### BEGIN HIDDEN TESTS\n{HIDDEN_LINE}\n### END HIDDEN TESTS",
              grade=True, solution=False, locked=True, points=2, grade_id="test_square"),
        _code("def mean(xs):\n    ### BEGIN SOLUTION\n    return sum(xs) / len(xs)\n    ### END SOLUTION",
              grade=False, solution=True, locked=False, grade_id="mean"),
        _code("assert mean([1, 3]) == 2\n### BEGIN HIDDEN TESTS\nassert mean([0.5, 0.25, 0.75]) == 0.5\n### END HIDDEN TESTS",
              grade=True, solution=False, locked=True, points=3, grade_id="test_mean"),
    ]
    folder.mkdir(parents=True)
    nbformat.write(notebook, folder / "tiny.ipynb")
    (folder / "wrong_answers.json").write_text(json.dumps({"square": ["def square(x):\n    return x * abs(x)"]}))


@pytest.fixture(scope="module")
def fixture_repo(tmp_path_factory) -> Path:
    """A repository-shaped folder with the fixture assignment, stale lessons, then `lessons` run on it."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copy2(ROOT / "nbgrader_config.py", repo / "nbgrader_config.py")
    write_fixture_assignment(repo / "solutions" / "tiny")
    (repo / "lessons" / "tiny").mkdir(parents=True)
    (repo / "lessons" / "README.md").write_text("Student notebooks\n")
    (repo / "lessons" / "tiny" / "tiny.ipynb").write_text("stale")
    (repo / "lessons" / "tiny" / "old_helper.py").write_text("stale")
    assert nbgrader_course.main(["--repo-root", str(repo), "lessons"]) == 0
    return repo


@pytest.mark.slow
def test_lessons_regenerate_cleanly_without_instructor_material(fixture_repo):
    lessons = fixture_repo / "lessons"
    assert sorted(p.name for p in (lessons / "tiny").iterdir()) == ["tiny.ipynb"]  # stale files gone
    assert (lessons / "README.md").read_text() == "Student notebooks\n"
    assert not list(fixture_repo.rglob("gradebook.db")), "generation must not leave a gradebook in the repository"
    text = (lessons / "tiny" / "tiny.ipynb").read_text()
    assert "raise NotImplementedError()" in text
    for secret in ("return x * x", "BEGIN HIDDEN TESTS", "square(-4)", "BEGIN SOLUTION"):
        assert secret not in text


@pytest.mark.slow
def test_check_passes_after_regeneration(fixture_repo, capsys):
    assert nbgrader_course.main(["--repo-root", str(fixture_repo), "check-lessons"]) == 0
    assert "matches" in capsys.readouterr().out


@pytest.fixture
def lessons_copy(fixture_repo, tmp_path) -> Path:
    copy = tmp_path / "lessons"
    shutil.copytree(fixture_repo / "lessons", copy)
    return copy


def _compare(fixture_repo, lessons: Path) -> list[str]:
    return nbgrader_course.compare_lessons(fixture_repo / "lessons", lessons, ["tiny"])


@pytest.mark.slow
def test_reformatted_json_is_not_a_difference(fixture_repo, lessons_copy):
    path = lessons_copy / "tiny" / "tiny.ipynb"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4, sort_keys=True))
    assert _compare(fixture_repo, lessons_copy) == []


@pytest.mark.slow
def test_hand_edited_lesson_is_reported(fixture_repo, lessons_copy):
    path = lessons_copy / "tiny" / "tiny.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[1].source = "def square(x):\n    return x * x  # solved by hand"
    nbformat.write(notebook, path)
    assert _compare(fixture_repo, lessons_copy) == ["tiny/tiny.ipynb: cell 1 differs in its source"]


@pytest.mark.slow
def test_changed_metadata_is_reported(fixture_repo, lessons_copy):
    path = lessons_copy / "tiny" / "tiny.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[2].metadata["nbgrader"]["points"] = 20
    nbformat.write(notebook, path)
    assert _compare(fixture_repo, lessons_copy) == ["tiny/tiny.ipynb: cell 2 differs in its metadata"]


@pytest.mark.slow
def test_missing_extra_and_orphan_files_are_reported(fixture_repo, lessons_copy):
    (lessons_copy / "tiny" / "tiny.ipynb").unlink()
    (lessons_copy / "tiny" / "wrong_answers.json").write_text("{}")
    (lessons_copy / "19_9_removed").mkdir()
    assert _compare(fixture_repo, lessons_copy) == [
        "tiny/tiny.ipynb: missing from lessons/",
        "tiny/wrong_answers.json: in lessons/ but not generated from solutions/",
        "19_9_removed/: in lessons/ but there is no solutions/19_9_removed/",
    ]


@pytest.mark.slow
def test_corrupted_lesson_notebook_says_how_to_fix(fixture_repo, lessons_copy):
    (lessons_copy / "tiny" / "tiny.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="make lessons"):
        _compare(fixture_repo, lessons_copy)


def test_bad_folders_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="instructor notebooks"):
        nbgrader_course.assignments(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nbgrader_config.py"):
        nbgrader_course.run_nbgrader(tmp_path, "--version")


@pytest.mark.slow
def test_repository_lessons_match_solutions():
    differences = nbgrader_course.check_lessons(ROOT)
    assert differences == [], "lessons/ is out of date; run `make lessons`:\n" + "\n".join(differences)


def test_repository_lessons_hold_no_instructor_material():
    for folder in sorted(p for p in (ROOT / "lessons").iterdir() if p.is_dir()):
        assert not (folder / "wrong_answers.json").exists()
        for path in folder.glob("*.ipynb"):
            text = path.read_text(encoding="utf-8")
            assert "BEGIN HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text, path
