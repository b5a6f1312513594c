"""The course's nbgrader pipeline: generate the student lessons, check they are current, grade.

Used by ``make lessons`` / ``make grade`` and by ``tests/test_pipeline.py`` and
``tests/test_grading.py``. It only drives the ``nbgrader`` command line (settings in
``nbgrader_config.py``); it does not import ``course_lib``::

    python tools/nbgrader_course.py lessons              # regenerate lessons/ from solutions/
    python tools/nbgrader_course.py check-lessons        # exit 1 if lessons/ is out of date
    python tools/nbgrader_course.py grade 19_1_representations
        # normalise submitted/*/19_1_representations into normalised/, autograde those,
        # write feedback/ and grades.csv

Student notebooks are generated in a throwaway course folder (a temporary directory with a copy
of ``nbgrader_config.py`` and of ``solutions/``), so that generating or checking never leaves a
``gradebook.db`` in the repository and ``lessons/`` is replaced cleanly (nbgrader itself refuses
to overwrite a release without ``--force``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from normalise_submissions import normalise_submissions


REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_NAME = "nbgrader_config.py"


def nbgrader_executable() -> str:
    """The ``nbgrader`` next to the running Python (the course's venv), else the one on PATH."""
    beside_python = Path(sys.executable).with_name("nbgrader")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nbgrader")
    if found is None:
        raise FileNotFoundError("nbgrader is not installed: run `make venv` (it installs the course's pinned stack).")
    return found


def run_nbgrader(course_root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``nbgrader ARGS`` in ``course_root`` (its ``nbgrader_config.py`` applies) and return the result.

    With ``check`` (the default), raises RuntimeError, with nbgrader's own log, when the command fails.
    """
    course_root = Path(course_root)
    if not (course_root / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{course_root} has no {CONFIG_NAME}: run nbgrader from the course's root folder.")
    executable = nbgrader_executable()
    # nbgrader starts further programs of its environment (alembic for the gradebook, the
    # kernel): put that environment's bin folder first, even when it is not activated.
    path = os.pathsep.join([str(Path(executable).parent), os.environ.get("PATH", "")])
    result = subprocess.run(
        [executable, *args], cwd=course_root, capture_output=True, text=True, env=dict(os.environ, PATH=path)
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`nbgrader {' '.join(args)}` failed in {course_root} (exit {result.returncode}); its log:\n"
            f"{result.stdout[-4000:]}{result.stderr[-8000:]}"
        )
    return result


def assignments(solutions_dir: Path) -> list[str]:
    """The assignment names: every folder of ``solutions_dir`` that holds a notebook, sorted."""
    solutions_dir = Path(solutions_dir)
    if not solutions_dir.is_dir():
        raise FileNotFoundError(f"No instructor notebooks folder at {solutions_dir}.")
    return sorted(p.name for p in solutions_dir.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def make_course_folder(course_root: Path, solutions_dir: Path = REPO_ROOT / "solutions",
                       config_path: Path = REPO_ROOT / CONFIG_NAME) -> Path:
    """Create a course folder at ``course_root``: the course's nbgrader config and a copy of ``solutions/``.

    Everything nbgrader writes there (the release, ``gradebook.db``, submissions, grades) stays
    inside it. Used for generating lessons and by the grading tests.
    """
    course_root = Path(course_root)
    course_root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(config_path, course_root / CONFIG_NAME)
    shutil.copytree(solutions_dir, course_root / "solutions",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    return course_root


def generate_release(course_root: Path, assignment_names: list[str] | None = None) -> Path:
    """Run ``nbgrader generate_assignment`` for each assignment in ``course_root``; return its ``lessons/``.

    This also registers the assignments (notebooks, cells, points) in the course's gradebook,
    which autograding needs.
    """
    course_root = Path(course_root)
    if assignment_names is None:
        # All of them in one nbgrader process ("*" is a glob nbgrader expands): each start costs seconds.
        patterns = ["*"] if assignments(course_root / "solutions") else []
    else:
        patterns = list(assignment_names)
    for pattern in patterns:
        run_nbgrader(course_root, "generate_assignment", pattern, "--force")
    return course_root / "lessons"


def generate_lessons_into(workdir: Path, repo_root: Path = REPO_ROOT) -> Path:
    """Generate the student version of every assignment of ``repo_root`` in a course folder under ``workdir``.

    Uses ``repo_root``'s ``solutions/`` and ``nbgrader_config.py``; returns the generated ``lessons/``.
    """
    repo_root = Path(repo_root)
    course_root = make_course_folder(Path(workdir) / "course", repo_root / "solutions", repo_root / CONFIG_NAME)
    return generate_release(course_root)


def _normalised_notebook(path: Path) -> dict:
    """A notebook's JSON as data: formatting and key order do not count as differences."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid notebook ({error}): regenerate it with `make lessons`.") from error


def _files(folder: Path) -> dict[str, Path]:
    skip = {".ipynb_checkpoints", "__pycache__"}
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not skip.intersection(p.relative_to(folder).parts)}


def _notebook_differences(name: str, expected: dict, found: dict) -> list[str]:
    if expected.get("metadata") != found.get("metadata"):
        return [f"{name}: the notebook metadata differs"]
    expected_cells, found_cells = expected.get("cells", []), found.get("cells", [])
    for index, (want, got) in enumerate(zip(expected_cells, found_cells)):
        for key in ("cell_type", "source", "metadata", "outputs"):
            if want.get(key) != got.get(key):
                return [f"{name}: cell {index} differs in its {key}"]
    if len(expected_cells) != len(found_cells):
        return [f"{name}: {len(found_cells)} cells, but generation gives {len(expected_cells)}"]
    if expected != found:
        return [f"{name}: the notebook differs (nbformat version or cell ids)"]
    return []


def compare_lessons(expected_root: Path, lessons_root: Path, assignment_names: list[str]) -> list[str]:
    """Differences between a freshly generated release and ``lessons/`` (empty when they agree).

    Notebooks are compared as parsed JSON (cells' types, sources, metadata, outputs; notebook
    metadata), other files byte for byte. A lessons folder with no instructor source is reported.
    """
    differences: list[str] = []
    for name in assignment_names:
        want, have = _files(Path(expected_root) / name), _files(Path(lessons_root) / name)
        for rel in sorted(set(want) - set(have)):
            differences.append(f"{name}/{rel}: missing from lessons/")
        for rel in sorted(set(have) - set(want)):
            differences.append(f"{name}/{rel}: in lessons/ but not generated from solutions/")
        for rel in sorted(set(want) & set(have)):
            if rel.endswith(".ipynb"):
                differences += _notebook_differences(f"{name}/{rel}", _normalised_notebook(want[rel]),
                                                     _normalised_notebook(have[rel]))
            elif want[rel].read_bytes() != have[rel].read_bytes():
                differences.append(f"{name}/{rel}: content differs")
    known = set(assignment_names)
    for folder in sorted(p for p in Path(lessons_root).iterdir() if p.is_dir()) if Path(lessons_root).is_dir() else []:
        if folder.name not in known and not folder.name.startswith("."):
            differences.append(f"{folder.name}/: in lessons/ but there is no solutions/{folder.name}/")
    return differences


def check_lessons(repo_root: Path = REPO_ROOT) -> list[str]:
    """Generate the lessons afresh in a temporary folder and list how ``lessons/`` differs (19.x all chapters)."""
    with tempfile.TemporaryDirectory(prefix="course-lessons-") as workdir:
        generated = generate_lessons_into(Path(workdir), repo_root)
        return compare_lessons(generated, Path(repo_root) / "lessons", assignments(Path(repo_root) / "solutions"))


def write_lessons(repo_root: Path = REPO_ROOT) -> list[str]:
    """Regenerate ``lessons/<assignment>/`` for every assignment in ``solutions/``; return the names written.

    Each assignment folder is replaced as a whole; other files in ``lessons/`` (its README) are
    kept. Lessons folders whose instructor source is gone are left alone and reported by
    ``check-lessons``: delete them by hand if the chapter was removed on purpose.
    """
    repo_root = Path(repo_root)
    names = assignments(repo_root / "solutions")
    with tempfile.TemporaryDirectory(prefix="course-lessons-") as workdir:
        generated = generate_lessons_into(Path(workdir), repo_root)
        for name in names:
            target = repo_root / "lessons" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(generated / name, target)
    return names


@dataclasses.dataclass(frozen=True)
class GradingRun:
    """What :func:`grade` produced: the CSV of scores, the students whose notebook could not be graded,
    notes from normalising the submissions ({student: notes}, see :func:`normalise_submissions`),
    and how many submissions it graded in how many seconds (normalise, autograde, feedback and export)."""

    csv_path: Path
    failed_students: list[str]
    submissions: int
    seconds: float
    normalisation_notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def seconds_per_submission(self) -> float:
        return self.seconds / self.submissions


def _failed_students(autograde_log: str, assignment: str) -> list[str]:
    """Students whose submission nbgrader could not autograde (e.g. their code crashed the kernel)."""
    pattern = re.compile(r"There was an error processing assignment: .*[/\\]([^/\\]+)[/\\]" + re.escape(assignment) + r"\s*$")
    return sorted({match.group(1) for line in autograde_log.splitlines() if (match := pattern.search(line))})


NORMALISED_DIR = "normalised"


def grade(course_root: Path, assignment: str, csv_path: Path | None = None, db_url: str | None = None) -> GradingRun:
    """Autograde every submission of ``assignment``, write feedback and export the grades to CSV.

    Expects submissions in ``course_root/submitted/<student>/<assignment>/``. Generates the
    assignment's release into a temporary folder (this also registers it in the gradebook;
    ``lessons/`` is not touched), normalises every submission against it into
    ``course_root/normalised/`` (:func:`normalise_submissions`; ``submitted/`` is left as the
    students sent it), then runs ``nbgrader autograde`` on those (one call grades every student),
    ``nbgrader generate_feedback`` and ``nbgrader export``.

    A submission that nbgrader cannot grade at all (its code killed the kernel) does not stop the
    others: nbgrader records it with 0 points, flagged for manual grading, and it is listed in the
    result's ``failed_students`` (and printed by the command line) so the instructor can look at it.

    The gradebook is ``course_root/gradebook.db`` (SQLite) unless ``db_url`` names another
    database, e.g. ``postgresql://user@host/dbname`` for a class on a shared server.
    """
    course_root = Path(course_root).resolve()
    submitted = sorted((course_root / "submitted").glob(f"*/{assignment}"))
    if not submitted:
        raise FileNotFoundError(
            f"No submissions of {assignment!r}: put each student's notebooks in "
            f"{course_root / 'submitted'}/<student>/{assignment}/."
        )
    csv_path = Path(csv_path).resolve() if csv_path is not None else course_root / "grades.csv"
    # Every nbgrader call must use the same gradebook: nbgrader reads no environment variable for it.
    db = [f"--CourseDirectory.db_url={db_url}"] if db_url else []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="course-release-") as release:
        run_nbgrader(course_root, "generate_assignment", assignment, "--force",
                     f"--CourseDirectory.release_directory={release}", *db)
        notes = normalise_submissions(course_root, assignment, Path(release), normalised_dir=NORMALISED_DIR)
    autograded = run_nbgrader(course_root, "autograde", assignment, "--force",
                              f"--CourseDirectory.submitted_directory={NORMALISED_DIR}", *db, check=False)
    failed = _failed_students(autograded.stdout + autograded.stderr, assignment)
    if autograded.returncode != 0 and not failed:
        raise RuntimeError(f"`nbgrader autograde {assignment}` failed in {course_root}; its log:\n"
                           f"{autograded.stdout[-4000:]}{autograded.stderr[-8000:]}")
    run_nbgrader(course_root, "generate_feedback", assignment, "--force", *db)
    run_nbgrader(course_root, "export", f"--to={csv_path}", *db)
    return GradingRun(csv_path=csv_path, failed_students=failed, submissions=len(submitted),
                      seconds=time.perf_counter() - started, normalisation_notes=notes)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``lessons``, ``check-lessons`` or ``grade ASSIGNMENT`` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-root", type=Path, default=REPO_ROOT,
                        help="the folder holding solutions/, lessons/ and nbgrader_config.py (default: this repository)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("lessons", help="regenerate lessons/ from solutions/")
    commands.add_parser("check-lessons", help="exit 1 if lessons/ differs from what generation gives now")
    grade_parser = commands.add_parser("grade", help="autograde submitted/*/ASSIGNMENT, write feedback/ and grades.csv")
    grade_parser.add_argument("assignment")
    grade_parser.add_argument("--db-url", help="the gradebook's database, e.g. postgresql://user@host/dbname "
                              "(needs the psycopg driver); default: sqlite:///gradebook.db in the course folder")
    args = parser.parse_args(argv)

    if args.command == "lessons":
        names = write_lessons(args.repo_root)
        print(f"regenerated lessons/ for {', '.join(names) or 'no assignments'}")
    elif args.command == "check-lessons":
        differences = check_lessons(args.repo_root)
        if differences:
            print("lessons/ is out of date (run `make lessons`):\n  " + "\n  ".join(differences))
            return 1
        print("lessons/ matches solutions/")
    elif args.command == "grade":
        run = grade(args.repo_root, args.assignment, db_url=args.db_url)
        print(f"graded {run.submissions} submission(s) of {args.assignment} in {run.seconds:.0f} s "
              f"({run.seconds_per_submission:.1f} s each, autograde + feedback + export)")
        print(f"grades written to {run.csv_path}; feedback in {args.repo_root / 'feedback'}")
        for student, notes in run.normalisation_notes.items():
            print(f"{student}: " + "; ".join(notes), file=sys.stderr)
        if run.failed_students:
            print(f"could not autograde (kernel died; scored 0, flagged for manual grading): "
                  f"{', '.join(run.failed_students)}; see autograde's log with `nbgrader autograde {args.assignment} "
                  f"--student=NAME --force --CourseDirectory.submitted_directory={NORMALISED_DIR}`", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
