"""The gradebook in PostgreSQL: grade two students of chapter 19.1 into a real server the test starts.

A class on a shared server keeps nbgrader's gradebook in PostgreSQL instead of the default
``gradebook.db`` (SQLite): ``tools/nbgrader_course.py grade ASSIGNMENT --db-url postgresql://...``.
The fixture below starts a throwaway PostgreSQL server (Debian's ``postgresql`` package; ``.ci/run``
installs it) on a free local port, grades one right and one wrong submission into it, and the
tests read the scores back from PostgreSQL. Skipped, with the reason, when the server's programs
or the ``psycopg`` driver are missing.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as ``nobody``,
in a folder of its own under the system's temporary folder (pytest's ``tmp_path`` is private to
root, so ``nobody`` could not enter it).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from test_grading import CHAPTER, ROOT, _cell_index, _exercises, nbgrader_course

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres", "createdb")
DB_USER, DB_NAME = "nbgrader", "gradebook"


def _postgres_bindir() -> Path | None:
    """The folder holding PostgreSQL's server programs: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).parent] if on_path else []
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for bindir in candidates + debian[::-1]:  # the newest version first
        if all((bindir / program).is_file() for program in SERVER_PROGRAMS):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_server_user(*command: str | Path) -> list[str]:
    """``command`` run as ``nobody`` when this is root (PostgreSQL will not run as root), else as is."""
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    return prefix + [str(part) for part in command]


def _run(*command: str | Path) -> None:
    result = subprocess.run(_as_server_user(*command), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(map(str, command))}` failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")


@pytest.fixture(scope="module")
def postgres_url():
    """A running PostgreSQL server with an empty database; yields its URL and stops the server afterwards."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("needs PostgreSQL's server programs (initdb, pg_ctl, postgres): install Debian's "
                    "`postgresql` package (`apt-get install postgresql`; .ci/run does)")
    pytest.importorskip("psycopg", reason="needs the psycopg driver for PostgreSQL: run `make venv` "
                        "(the course extra installs psycopg[binary])")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root, and there is no `runuser` to start PostgreSQL as an unprivileged user")
    folder = Path(tempfile.mkdtemp(prefix="course-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, user="nobody")
    data, log, port = folder / "data", folder / "server.log", _free_port()
    try:
        _run(bindir / "initdb", "-D", data, "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        # The unix socket goes in our folder too: the default one (/var/run/postgresql) may not be writable.
        _run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start",
             "-o", f"-k {folder} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off")
        try:
            _run(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME)
            yield f"postgresql://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"
        finally:
            _run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
    except RuntimeError as error:
        server_log = log.read_text(errors="replace")[-4000:] if log.exists() else "(no server log)"
        raise RuntimeError(f"{error}\nPostgreSQL's log:\n{server_log}") from error
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def graded(postgres_url, tmp_path_factory):
    """Chapter 19.1 graded into PostgreSQL for a student with every answer right and one with the first wrong."""
    root = nbgrader_course.make_course_folder(tmp_path_factory.mktemp("pg-course") / "course")
    release = nbgrader_course.generate_release(root, [CHAPTER])
    # Generating the release wrote a SQLite gradebook; with it gone, any nbgrader call of `grade`
    # that ignored the PostgreSQL URL would create it again (checked below).
    (root / "gradebook.db").unlink()
    name = sorted((root / "solutions" / CHAPTER).glob("*.ipynb"))[0].name
    source = nbformat.read(root / "solutions" / CHAPTER / name, as_version=4)
    student_nb = nbformat.read(release / CHAPTER / name, as_version=4)
    exercises = _exercises(source)
    first = next(iter(exercises))
    wrong_answer = json.loads((ROOT / "solutions" / CHAPTER / "wrong_answers.json").read_text())[first][0]

    def answered(**replaced: str):
        notebook = copy.deepcopy(student_nb)
        for ex in exercises:
            notebook.cells[_cell_index(notebook, ex)].source = replaced.get(ex, source.cells[_cell_index(source, ex)].source)
        return notebook

    full = {ex: info["points"] for ex, info in exercises.items()}
    students = {"right": (answered(), full), "wrong-first": (answered(**{first: wrong_answer}), {**full, first: 0.0})}
    for student, (notebook, _) in students.items():
        (root / "submitted" / student / CHAPTER).mkdir(parents=True)
        nbformat.write(notebook, root / "submitted" / student / CHAPTER / name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COURSE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("COURSE_PROFILE", raising=False)
        result = nbgrader_course.grade(root, CHAPTER, db_url=postgres_url)
    return dict(root=root, url=postgres_url, notebook=name.removesuffix(".ipynb"), exercises=exercises,
                expected={student: expected for student, (_, expected) in students.items()}, result=result)


@pytest.mark.notebook
def test_scores_read_back_from_postgres_are_the_expected_ones(graded):
    assert graded["result"].flagged == {}
    with Gradebook(graded["url"]) as gradebook:
        assert gradebook.engine.dialect.name == "postgresql"
        assert sorted(student.id for student in gradebook.students) == sorted(graded["expected"])
        for student, expected in graded["expected"].items():
            by_test = {grade.name: grade.score
                       for grade in gradebook.find_submission_notebook(graded["notebook"], CHAPTER, student).grades}
            scores = {ex: sum(by_test[test] for test in info["tests"]) for ex, info in graded["exercises"].items()}
            assert scores == expected, student
            assert gradebook.find_submission(CHAPTER, student).score == pytest.approx(sum(expected.values()))


@pytest.mark.notebook
def test_no_sqlite_gradebook_is_written_when_grading_into_postgres(graded):
    assert not (graded["root"] / "gradebook.db").exists(), "some nbgrader call of `grade` ignored db_url"
    assert graded["result"].csv_path.is_file()
