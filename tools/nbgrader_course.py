"""The course's nbgrader pipeline: generate the student lessons, check they are current, grade.

Used by ``make lessons`` / ``make grade`` and by ``tests/test_pipeline.py`` and
``tests/test_grading.py``. It drives the ``nbgrader`` command line (settings in
``nbgrader_config.py``) and nbgrader's gradebook; it does not import ``course_lib``::

    python tools/nbgrader_course.py lessons              # regenerate lessons/ from solutions/
    python tools/nbgrader_course.py check-lessons        # exit 1 if lessons/ is out of date
    python tools/nbgrader_course.py grade 19_1_representations
        # normalise submitted/*/19_1_representations into normalised/, grade those in a
        # sandbox (tools/sandboxed_grading.py), write feedback/ and grades.csv

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
import warnings
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
    """What :func:`grade` produced: the CSV of scores; per student, the test cells that could not finish
    (``flagged``: crashed or timed out, scored 0 and flagged for manual grading); notes from
    normalising and grading ({student: notes}); how many submissions it graded, in how many seconds
    (normalise, sandboxed grading, gradebook, feedback and export) with how many parallel workers."""

    csv_path: Path
    flagged: dict[str, list[str]]
    submissions: int
    seconds: float
    workers: int = 1
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    sandboxed: bool = True

    @property
    def seconds_per_submission(self) -> float:
        return self.seconds / self.submissions


NORMALISED_DIR = "normalised"


def _grade_student(student: str, assignment: str, course_root: Path, release: Path, source_dir: Path,
                   sandboxed: bool, limits) -> tuple[str, dict, list[str]]:
    """Grade one student's normalised notebooks in the sandbox: (student, {notebook: verdicts}, notes)."""
    import nbformat
    from sandboxed_grading import grade_notebook, grading_plan

    results, notes = {}, []
    for released_path in sorted((release / assignment).glob("*.ipynb")):
        released = nbformat.read(released_path, as_version=4)
        submitted_path = course_root / NORMALISED_DIR / student / assignment / released_path.name
        try:
            submitted = nbformat.read(submitted_path, as_version=4)
        except Exception:  # missing or not a notebook: normalising noted it; graded as unanswered
            submitted = None
        if submitted is None:
            results[released_path.stem] = None
            continue
        source = nbformat.read(source_dir / assignment / released_path.name, as_version=4)
        verdicts, run_notes = grade_notebook(grading_plan(released, source, submitted), sandboxed=sandboxed,
                                             limits=limits)
        results[released_path.stem] = (submitted, verdicts)
        notes += [f"{released_path.name}: {note}" for note in run_notes]
    return student, results, notes


def _record(gradebook, course_root: Path, assignment: str, student: str, results: dict) -> list[str]:
    """Write one student's verdicts into nbgrader's gradebook and their autograded notebooks; return flagged tests."""
    import nbformat
    from nbgrader.utils import compute_checksum, parse_utc
    from sandboxed_grading import verdict_output

    gradebook.update_or_create_student(student)
    stamp = course_root / NORMALISED_DIR / student / assignment / "timestamp.txt"
    timestamp = parse_utc(stamp.read_text().strip()) if stamp.is_file() and stamp.read_text().strip() else None
    if timestamp is not None:
        gradebook.update_or_create_submission(assignment, student, timestamp=timestamp)
    else:
        gradebook.update_or_create_submission(assignment, student)
    flagged = []
    out_folder = course_root / "autograded" / student / assignment
    if out_folder.exists():
        shutil.rmtree(out_folder)
    out_folder.mkdir(parents=True)
    if stamp.is_file():
        shutil.copy2(stamp, out_folder / "timestamp.txt")
    for notebook_id, result in results.items():
        submission = gradebook.find_submission_notebook(notebook_id, assignment, student)
        if result is None:
            for grade in submission.grades:
                grade.auto_score, grade.needs_manual_grade = 0, False
            continue
        notebook, verdicts = result
        for cell in notebook.cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            if meta.get("grade") and cell.cell_type == "code":
                grade = gradebook.find_grade(meta["grade_id"], notebook_id, assignment, student)
                verdict = verdicts[meta["grade_id"]]
                points = float(meta.get("points", 0))
                grade.auto_score = points if verdict.passed else 0.0
                could_not_finish = verdict.status in ("crashed", "timed out", "not run")
                grade.needs_manual_grade = grade.manual_score is not None or could_not_finish
                if could_not_finish:
                    flagged.append(meta["grade_id"])
                cell.outputs = [nbformat.from_dict(verdict_output(verdict, points))]
            if meta.get("solution"):
                comment = gradebook.find_comment(meta["grade_id"], notebook_id, assignment, student)
                comment.auto_comment = "No response." if meta.get("checksum") == compute_checksum(cell) else None
        gradebook.db.commit()
        nbformat.write(notebook, out_folder / f"{notebook_id}.ipynb")
    return flagged


def grade(course_root: Path, assignment: str, csv_path: Path | None = None, db_url: str | None = None,
          workers: int | None = None, sandboxed: bool = True, limits=None) -> GradingRun:
    """Grade every submission of ``assignment`` in a sandbox, write feedback and export the grades to CSV.

    Expects submissions in ``course_root/submitted/<student>/<assignment>/``. Generates the
    assignment's release into a temporary folder (this also registers it in the gradebook;
    ``lessons/`` is not touched), normalises every submission against it into
    ``course_root/normalised/`` (:func:`normalise_submissions`; ``submitted/`` is left as the
    students sent it), then grades each student in a bubblewrap sandbox
    (``tools/sandboxed_grading.py``), ``workers`` students at a time (default: one per core). The
    scores go into nbgrader's gradebook, the graded notebooks (the release with the student's
    answers and the grader's verdict under each test cell) into ``autograded/``; then
    ``nbgrader generate_feedback`` and ``nbgrader export`` run as usual.

    A test cell whose process crashed or ran out of time scores 0 and is flagged for manual
    grading (``flagged`` in the result); the student's other test cells are graded as usual.
    ``sandboxed=False`` grades without the sandbox (say so on the command line: ``--no-sandbox``).

    The gradebook is ``course_root/gradebook.db`` (SQLite) unless ``db_url`` names another
    database, e.g. ``postgresql://user@host/dbname`` for a class on a shared server.
    """
    from concurrent.futures import ThreadPoolExecutor

    from nbgrader.api import Gradebook
    from sandbox import Sandbox, check_sandbox_starts
    from sandboxed_grading import Limits, python_paths

    course_root = Path(course_root).resolve()
    submitted = sorted((course_root / "submitted").glob(f"*/{assignment}"))
    if not submitted:
        raise FileNotFoundError(
            f"No submissions of {assignment!r}: put each student's notebooks in "
            f"{course_root / 'submitted'}/<student>/{assignment}/."
        )
    limits = limits or Limits()
    if sandboxed:  # fail before any work, and loudly, where the sandbox cannot start
        with tempfile.TemporaryDirectory(prefix="course-sandbox-check-") as probe:
            check_sandbox_starts(Sandbox(Path(probe), python_paths()), sys.executable)
    workers = workers or min(len(os.sched_getaffinity(0)), len(submitted))
    csv_path = Path(csv_path).resolve() if csv_path is not None else course_root / "grades.csv"
    # Every nbgrader call must use the same gradebook: nbgrader reads no environment variable for it.
    db = [f"--CourseDirectory.db_url={db_url}"] if db_url else []
    started = time.perf_counter()
    students = [folder.parent.name for folder in submitted]
    with tempfile.TemporaryDirectory(prefix="course-release-") as release:
        run_nbgrader(course_root, "generate_assignment", assignment, "--force",
                     f"--CourseDirectory.release_directory={release}", *db)
        notes = normalise_submissions(course_root, assignment, Path(release), normalised_dir=NORMALISED_DIR)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            graded = list(pool.map(lambda s: _grade_student(s, assignment, course_root, Path(release),
                                                            course_root / "solutions", sandboxed, limits), students))
    flagged = {}
    url = db_url or f"sqlite:///{course_root / 'gradebook.db'}"
    with Gradebook(url, course_id=_course_id(course_root)) as gradebook, warnings.catch_warnings():
        # nbgrader's own add_submission trips SQLAlchemy's autoflush warnings (as under `nbgrader autograde`).
        warnings.simplefilter("ignore", category=Warning)
        for student, results, run_notes in graded:
            if run_notes:
                notes.setdefault(student, []).extend(run_notes)
            if tests := _record(gradebook, course_root, assignment, student, results):
                flagged[student] = tests
    run_nbgrader(course_root, "generate_feedback", assignment, "--force", *db)
    run_nbgrader(course_root, "export", f"--to={csv_path}", *db)
    return GradingRun(csv_path=csv_path, flagged=flagged, submissions=len(submitted),
                      seconds=time.perf_counter() - started, workers=workers, notes=notes, sandboxed=sandboxed)


def _course_id(course_root: Path) -> str:
    """The course_id that the course folder's nbgrader_config.py sets ("" when it sets none)."""
    match = re.search(r"""^c\.CourseDirectory\.course_id\s*=\s*["']([^"']*)["']""",
                      (course_root / CONFIG_NAME).read_text(encoding="utf-8"), re.MULTILINE)
    return match.group(1) if match else ""


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
    grade_parser.add_argument("--workers", type=int, help="students graded at once (default: one per core)")
    grade_parser.add_argument("--no-sandbox", action="store_true",
                              help="grade WITHOUT the bubblewrap sandbox: only where no student code can do harm")
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
        if args.no_sandbox:
            print("WARNING: grading without a sandbox (--no-sandbox): the students' code can read and change "
                  "everything this account can", file=sys.stderr)
        run = grade(args.repo_root, args.assignment, db_url=args.db_url, workers=args.workers,
                    sandboxed=not args.no_sandbox)
        print(f"graded {run.submissions} submission(s) of {args.assignment} in {run.seconds:.0f} s with "
              f"{run.workers} worker(s) ({run.seconds_per_submission:.1f} s each: normalise, sandboxed grading, "
              "gradebook, feedback, export)")
        print(f"grades written to {run.csv_path}; feedback in {args.repo_root / 'feedback'}")
        for student, notes in run.notes.items():
            print(f"{student}: " + "; ".join(notes), file=sys.stderr)
        for student, tests in run.flagged.items():
            print(f"{student}: {', '.join(tests)} could not finish (crashed or timed out): scored 0 and flagged "
                  "for manual grading", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
