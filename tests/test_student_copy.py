"""tools/student_copy.py: `make lab` works in my-lessons/, and lesson updates never overwrite it."""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import student_copy  # noqa: E402  (tools/ is not a package)
from student_copy import RECORD_NAME, StudentCopyError, sync  # noqa: E402

DAY = datetime.date(2026, 5, 1)


def notebook(text: str) -> str:
    """A minimal notebook whose one code cell holds ``text``."""
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": text}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A release like lessons/: a README and two chapters with one notebook each."""
    lessons = tmp_path / "lessons"
    write(lessons / "README.md", "# Student notebooks\n")
    write(lessons / "19_1_a" / "a.ipynb", notebook("raise NotImplementedError()"))
    write(lessons / "19_2_b" / "b.ipynb", notebook("raise NotImplementedError()  # b"))
    return lessons


@pytest.fixture
def mine(tmp_path: Path) -> Path:
    return tmp_path / "my-lessons"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (hidden ones too) with its bytes and modification time."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_first_run_copies_every_lesson(release: Path, mine: Path) -> None:
    report = sync(release, mine, DAY)
    assert report.created
    assert sorted(report.copied) == ["19_1_a/a.ipynb", "19_2_b/b.ipynb", "README.md"]
    for rel in report.copied:
        assert (mine / rel).read_bytes() == (release / rel).read_bytes()
    assert set(json.loads((mine / RECORD_NAME).read_text())["files"]) == set(report.copied)


def test_second_run_changes_nothing(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    before = snapshot(mine)
    report = sync(release, mine, DAY)
    assert snapshot(mine) == before
    assert (report.created, report.copied, report.updated, report.beside, report.missing) == (
        False, [], [], [], [])


def test_edited_notebook_survives_a_changed_release(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    answer = write(mine / "19_1_a" / "a.ipynb", notebook("answer = 42  # the student's work")).read_bytes()
    write(release / "19_1_a" / "a.ipynb", notebook("raise NotImplementedError()  # clearer"))
    report = sync(release, mine, DAY)
    assert (mine / "19_1_a" / "a.ipynb").read_bytes() == answer
    update = mine / "19_1_a" / "a.updated-2026-05-01.ipynb"
    assert update.read_bytes() == (release / "19_1_a" / "a.ipynb").read_bytes()
    assert report.beside == [("19_1_a/a.ipynb", "19_1_a/a.updated-2026-05-01.ipynb")]
    message = "\n".join(report.lines(release))
    assert "UPDATE BESIDE YOUR WORK" in message and "a.updated-2026-05-01.ipynb" in message
    # Delivered once: the next run neither repeats it nor touches the student's file.
    before = snapshot(mine)
    assert sync(release, mine, DAY).beside == []
    assert snapshot(mine) == before


def test_a_second_update_the_same_day_takes_a_free_name(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    write(mine / "19_1_a" / "a.ipynb", notebook("answer = 42"))
    for version in ("v2", "v3"):
        write(release / "19_1_a" / "a.ipynb", notebook(f"raise NotImplementedError()  # {version}"))
        sync(release, mine, DAY)
    assert "v2" in (mine / "19_1_a" / "a.updated-2026-05-01.ipynb").read_text()
    assert "v3" in (mine / "19_1_a" / "a.updated-2026-05-01-2.ipynb").read_text()
    assert "answer = 42" in (mine / "19_1_a" / "a.ipynb").read_text()


def test_a_new_chapter_arrives(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    before = snapshot(mine)
    write(release / "19_3_c" / "c.ipynb", notebook("raise NotImplementedError()  # c"))
    report = sync(release, mine, DAY)
    assert report.copied == ["19_3_c/c.ipynb"]
    assert (mine / "19_3_c" / "c.ipynb").read_bytes() == (release / "19_3_c" / "c.ipynb").read_bytes()
    after = snapshot(mine)
    assert {rel: after[rel] for rel in before if rel != RECORD_NAME} == {
        rel: value for rel, value in before.items() if rel != RECORD_NAME}
    assert "new lesson file:" in "\n".join(report.lines(release))


def test_an_untouched_notebook_is_updated_in_place(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    write(release / "19_2_b" / "b.ipynb", notebook("raise NotImplementedError()  # b, fixed"))
    report = sync(release, mine, DAY)
    assert report.updated == ["19_2_b/b.ipynb"] and report.beside == []
    assert (mine / "19_2_b" / "b.ipynb").read_bytes() == (release / "19_2_b" / "b.ipynb").read_bytes()
    assert list((mine / "19_2_b").glob("*.updated-*")) == []


def test_a_notebook_taken_from_an_update_is_updated_in_place_later(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    write(mine / "19_1_a" / "a.ipynb", notebook("answer = 42"))
    write(release / "19_1_a" / "a.ipynb", notebook("v2"))
    sync(release, mine, DAY)
    # The student replaces their file with the delivered update, unchanged: it is a release again.
    (mine / "19_1_a" / "a.ipynb").write_bytes((mine / "19_1_a" / "a.updated-2026-05-01.ipynb").read_bytes())
    write(release / "19_1_a" / "a.ipynb", notebook("v3"))
    report = sync(release, mine, DAY)
    assert report.updated == ["19_1_a/a.ipynb"]
    assert "v3" in (mine / "19_1_a" / "a.ipynb").read_text()


def test_files_the_student_added_are_never_removed(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    notes = write(mine / "19_1_a" / "notes.md", "my notes")
    scratch = write(mine / "scratch.ipynb", notebook("x = 1"))
    for path in (release / "19_2_b").iterdir():  # a chapter withdrawn from the release
        path.unlink()
    (release / "19_2_b").rmdir()
    sync(release, mine, DAY)
    assert notes.read_text() == "my notes" and "x = 1" in scratch.read_text()
    assert (mine / "19_2_b" / "b.ipynb").is_file()


def test_a_removed_lesson_is_not_recreated_and_is_named(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    (mine / "README.md").unlink()
    report = sync(release, mine, DAY)
    assert not (mine / "README.md").exists()
    assert report.missing == ["README.md"]
    assert "cp " in "\n".join(report.lines(release))


def test_without_the_record_existing_files_count_as_the_students(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    (mine / RECORD_NAME).unlink()
    write(release / "19_2_b" / "b.ipynb", notebook("b, changed"))
    report = sync(release, mine, DAY)
    assert report.updated == [] and report.beside == [("19_2_b/b.ipynb", "19_2_b/b.updated-2026-05-01.ipynb")]
    assert "# b" in (mine / "19_2_b" / "b.ipynb").read_text()


def test_an_existing_folder_made_by_hand_is_kept(release: Path, mine: Path) -> None:
    own = write(mine / "19_1_a" / "a.ipynb", notebook("started before make lab"))
    report = sync(release, mine, DAY)
    assert not report.created and "started before" in own.read_text()
    assert report.beside == [("19_1_a/a.ipynb", "19_1_a/a.updated-2026-05-01.ipynb")]
    assert sorted(report.copied) == ["19_2_b/b.ipynb", "README.md"]


@pytest.mark.parametrize("case, pattern", [
    ("missing release", r"does not exist.*course folder"),
    ("release is a file", r"is not a folder"),
    ("empty release", r"holds no lessons.*make lessons"),
    ("copy is a file", r"is a file, not a folder.*move it away"),
    ("copy inside release", r"inside .*lessons.*regenerates"),
    ("release inside copy", r"inside .*copy would contain its own source"),
])
def test_bad_paths_give_clear_errors(tmp_path: Path, release: Path, case: str, pattern: str) -> None:
    source, copy = {
        "missing release": (tmp_path / "nowhere", tmp_path / "my-lessons"),
        "release is a file": (release / "README.md", tmp_path / "my-lessons"),
        "empty release": ((tmp_path / "empty"), tmp_path / "my-lessons"),
        "copy is a file": (release, write(tmp_path / "my-lessons", "a file")),
        "copy inside release": (release, release / "mine"),
        "release inside copy": (release, tmp_path),
    }[case]
    if case == "empty release":
        source.mkdir()
    with pytest.raises(StudentCopyError, match=pattern):
        sync(source, copy, DAY)


def test_a_damaged_record_is_reported_and_nothing_is_touched(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    write(mine / RECORD_NAME, "{not json")
    before = snapshot(mine)
    with pytest.raises(StudentCopyError, match=r"damaged.*delete it.*Your files are kept"):
        sync(release, mine, DAY)
    assert snapshot(mine) == before


def test_submission_lines_name_each_chapters_notebook(release: Path, mine: Path) -> None:
    sync(release, mine, DAY)
    write(mine / "19_1_a" / "a.ipynb", notebook("answer"))
    write(release / "19_1_a" / "a.ipynb", notebook("v2"))
    sync(release, mine, DAY)
    (mine / "19_2_b" / "b.ipynb").unlink()
    lines = student_copy.submission_lines(release, mine)
    assert "submitted/<student>/<chapter>/<notebook>.ipynb" in lines[0]
    chapter_a = next(line for line in lines if line.strip().startswith("19_1_a:"))
    assert chapter_a.split()[1].endswith("my-lessons/19_1_a/a.ipynb")
    assert "a.updated-2026-05-01.ipynb" in chapter_a
    assert "missing" in next(line for line in lines if line.strip().startswith("19_2_b:"))
    assert not any(line.strip().startswith("README") for line in lines)


def test_the_command_line_prints_the_copy_and_what_to_submit(release: Path, mine: Path, capsys) -> None:
    assert student_copy.main([str(release), str(mine), "--date", "2026-05-01"]) == 0
    out = capsys.readouterr().out
    assert "Created" in out and re.search(r"19_2_b: .*my-lessons/19_2_b/b\.ipynb", out)
    assert student_copy.main([str(release / "nowhere"), str(mine)]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_course_lessons_copy_with_one_notebook_per_chapter(tmp_path: Path) -> None:
    report = sync(ROOT / "lessons", tmp_path / "my-lessons", DAY)
    chapters = sorted(p.parent.name for p in (ROOT / "solutions").glob("*/*.ipynb"))
    notebooks = [rel for rel in report.copied if rel.endswith(".ipynb")]
    assert sorted(rel.split("/")[0] for rel in notebooks) == chapters
    lines = student_copy.submission_lines(ROOT / "lessons", tmp_path / "my-lessons")
    assert len(lines) == 1 + len(chapters)


def test_make_lab_prepares_the_copy_before_jupyter_opens_it() -> None:
    recipe = re.search(r"^lab:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    steps = [line.strip() for line in recipe.splitlines()]
    assert steps == ["$(BIN)/python tools/student_copy.py lessons my-lessons",
                     "$(BIN)/jupyter lab my-lessons"]
    assert "/my-lessons/" in (ROOT / ".gitignore").read_text().splitlines()
