"""Time the grading of a simulated class: 100 submissions of one chapter, right, wrong and hostile ones.

    python tools/grading_bench.py                       # chapter 19.1, 100 students, one worker per core
    python tools/grading_bench.py --chapter 19_3_fine_tuning --students 40 --workers 2

It builds a throwaway course folder, writes the submissions (tools/simulated_students.py: right
answers, each recorded wrong answer, unanswered notebooks, crashes, endless loops, vandals,
secret readers, floods, IPython tricks), grades them with ``tools/nbgrader_course.py grade``
exactly as ``make grade`` does (sandbox, gradebook, feedback, export), prints the wall time,
and checks every student's score per test cell against what their submission should get.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook

import nbgrader_course
import simulated_students as sim

REPO_ROOT = Path(__file__).resolve().parent.parent


def simulated_class(chapter: sim.Chapter, size: int, course_root: Path) -> dict[str, dict]:
    """``size`` submissions in ``course_root/submitted/``; returns {student: expected status per test cell}."""
    targets = [course_root / "gradebook.db", course_root / "solutions", course_root / "submitted"]
    secrets = [course_root / "solutions" / chapter.name / chapter.notebook_name]
    kinds = ([("right", lambda i: sim.right_answers(chapter))] * 40
             + [(f"wrong{i}", lambda i: sim.wrong_answer(chapter, i % len(chapter.exercises), i // len(chapter.exercises)))
                for i in range(30)]
             + [("unanswered", lambda i: sim.unanswered(chapter))] * 5
             + [("crashes", lambda i: sim.crashes(chapter))] * 5
             + [("endless", lambda i: sim.endless_loop(chapter))] * 2
             + [("vandal", lambda i: sim.vandal(chapter, targets))] * 5
             + [("spy", lambda i: sim.secret_reader(chapter, secrets))] * 5
             + [("flood", lambda i: sim.feedback_flood(chapter))] * 4
             + [("ipython", lambda i: sim.ipython_tricks(chapter))] * 4)
    expected = {}
    for number in range(size):
        kind, build = kinds[number % len(kinds)]
        student = f"student{number:03d}-{kind}"
        notebook, expected[student] = build(number)
        folder = course_root / "submitted" / student / chapter.name
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / chapter.notebook_name)
    return expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapter", default="19_1_representations")
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)

    (released_path,) = sorted((REPO_ROOT / "lessons" / args.chapter).glob("*.ipynb"))
    chapter = sim.Chapter.load(REPO_ROOT / "solutions", released_path)
    with tempfile.TemporaryDirectory(prefix="course-grading-bench-") as folder:
        course_root = nbgrader_course.make_course_folder(Path(folder) / "course")
        expected = simulated_class(chapter, args.students, course_root)
        run = nbgrader_course.grade(course_root, args.chapter, workers=args.workers)
        mismatched = []
        with Gradebook(f"sqlite:///{course_root / 'gradebook.db'}", course_id="transfer_learning_hands_on") as gradebook:
            notebook_id = chapter.notebook_name.removesuffix(".ipynb")
            for student, statuses in expected.items():
                grades = {g.name: (g.score, g.max_score) for g in
                          gradebook.find_submission_notebook(notebook_id, args.chapter, student).grades}
                for test_id, status in statuses.items():
                    score, max_score = grades[test_id]
                    should_pass = status == "passed"
                    if (score == max_score) != should_pass:
                        mismatched.append(f"{student} {test_id}: {score}/{max_score}")
    print(f"HEADLINE grading: {run.submissions} submissions of {args.chapter} in {run.seconds:.0f} s with "
          f"{run.workers} worker(s), {run.seconds_per_submission:.1f} s per submission "
          f"(sandbox, gradebook, feedback, export); {len(run.flagged)} flagged for manual grading")
    print(f"scores as expected for {args.students * len(chapter.exercises) - len(mismatched)} of "
          f"{args.students * len(chapter.exercises)} test cells" + (": " + "; ".join(mismatched[:10]) if mismatched else ""))
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
