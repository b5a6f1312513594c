"""End to end: release chapter 19.1, grade simulated students in the sandbox, check scores, feedback and CSV.

A throwaway course folder (tmp_path) gets the course's nbgrader_config.py and a copy of
solutions/. Simulated submissions go to submitted/<student>/<assignment>/ and one call grades
them all (tools/nbgrader_course.py: `grade`): each submission is normalised, then run in a
bubblewrap sandbox (tools/sandboxed_grading.py), and the verdicts are written into nbgrader's
gradebook, from which nbgrader writes the feedback and the CSV. Each student's expected score per
exercise is derived from the notebook's own nbgrader metadata: an exercise is a solution cell
plus the test cells after it, worth those test cells' points.

There is no separate "reference" student: every exercise's right answer is in the submissions
of the students who got another exercise wrong, and they must score its full points. The attacks
on every chapter, at the level of one submission, are tests/test_attacks.py.

What is asserted here, through nbgrader's own gradebook, feedback and export:
- an edited test cell is replaced by the released one, a deleted one is put back: the tests that
  run are always the instructor's (normalising, tools/normalise_submissions.py);
- an exception or an endless loop in one exercise costs that exercise only; a process that dies
  (os._exit) costs only the exercise it died in, which is flagged for manual grading;
- a stray or unbalanced `### BEGIN HIDDEN TESTS` in a solution cell breaks no one's feedback
  and hides none of the student's code; edited nbgrader metadata neither stops grading nor earns
  points; a `course_lib/` folder sent beside the notebook is never imported;
- no feedback file holds a hidden test, because no graded notebook ever holds one.
"""

from __future__ import annotations

import copy
import csv
import html
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import nbgrader_course  # noqa: E402  (tools/ is not a package)
import sandboxed_grading  # noqa: E402

CHAPTER = "19_1_representations"
# Small, so that the endless-loop student costs little, but well above the slowest test cell of
# chapter 19.1 in `smoke` (a few seconds on a busy 2-core machine).
LIMITS = sandboxed_grading.Limits(seconds=40)
# The first exercise's wrong answer with its tests edited, and the second's test deleted (see `course`).
TAMPERED = "wrong-first-answer-tests-edited-and-deleted"
# Right answers with stray and unbalanced nbgrader markers; the third one wraps its code in a
# hidden-tests region, and this line of it must still be shown in the feedback.
STRAY_MARKERS = "stray-nbgrader-markers"
WRAPPED_LINE = "# my own check: this line stays visible"
MANGLED = "right-answers-metadata-mangled"
SHADOW = "shadow-course-lib-first-answer-wrong"
PROFILE = "reports-the-profile"
SOLUTION_MADE_TEST = "solution-cell-made-a-test-cell-first-answer-wrong"


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _exercises(notebook) -> dict[str, dict]:
    """{solution grade_id: {"points": ..., "tests": [test grade_ids]}} in notebook order."""
    exercises: dict[str, dict] = {}
    current = None
    for cell in notebook.cells:
        meta = _nbgrader(cell)
        if meta.get("solution") and cell.cell_type == "code":
            current = meta["grade_id"]
            exercises[current] = {"points": 0.0, "tests": []}
        elif meta.get("grade") and current is not None:
            exercises[current]["points"] += float(meta.get("points", 0))
            exercises[current]["tests"].append(meta["grade_id"])
    return exercises


def _function_name(notebook, grade_id: str) -> str:
    """The function a solution cell asks for (the first `def` of its released source)."""
    return re.search(r"^def (\w+)\(", notebook.cells[_cell_index(notebook, grade_id)].source, re.MULTILINE).group(1)


def _cell_index(notebook, grade_id: str) -> int:
    return next(i for i, cell in enumerate(notebook.cells) if _nbgrader(cell).get("grade_id") == grade_id)


def _hidden_lines(source: str) -> list[str]:
    """The non-trivial lines inside hidden-test regions (comments included: they are instructor notes)."""
    lines, inside = [], False
    for line in source.splitlines():
        marker = line.strip()
        if "BEGIN HIDDEN TESTS" in marker:
            inside = True
        elif "END HIDDEN TESTS" in marker:
            inside = False
        elif inside and len(marker) >= 12 and marker.strip("#=-_ ") and not marker.startswith(("print(", ")", "]")):
            lines.append(marker)
    return lines


def _visible_text(path: Path) -> str:
    """What a reader of an HTML or notebook file sees: tags dropped (highlighting splits code), entities decoded."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".html":
        text = html.unescape(re.sub(r"<[^>]+>", "", text))
    elif path.suffix == ".ipynb":
        text = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
    return text


def _leaked(lines: list[str], files: list[Path]) -> list[str]:
    return [f"{path.name}: {line!r}" for path in files for line in lines if line in _visible_text(path)]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A graded course: chapter 19.1 released, every simulated student autograded, feedback and CSV written."""
    source_path = ROOT / "solutions" / CHAPTER
    notebooks = sorted(source_path.glob("*.ipynb"))
    assert notebooks, f"no instructor notebook in solutions/{CHAPTER}/: the grading test needs chapter 19.1"
    assert (source_path / "wrong_answers.json").is_file(), f"solutions/{CHAPTER}/wrong_answers.json is missing"

    root = nbgrader_course.make_course_folder(tmp_path_factory.mktemp("course") / "course")
    release = nbgrader_course.generate_release(root, [CHAPTER])

    name = notebooks[0].name
    source = nbformat.read(root / "solutions" / CHAPTER / name, as_version=4)
    student_nb = nbformat.read(release / CHAPTER / name, as_version=4)
    exercises = _exercises(source)
    wrong_answers = json.loads((source_path / "wrong_answers.json").read_text())
    ids = list(exercises)
    full = {ex: info["points"] for ex, info in exercises.items()}

    def with_solutions(**replaced: str):
        notebook = copy.deepcopy(student_nb)
        for ex in ids:
            notebook.cells[_cell_index(notebook, ex)].source = replaced.get(ex, source.cells[_cell_index(source, ex)].source)
        return notebook

    students: dict[str, tuple] = {}  # student -> (notebook, expected points per exercise)
    students["untouched"] = (copy.deepcopy(student_nb), {ex: 0.0 for ex in ids})
    for ex in ids:
        assert wrong_answers.get(ex), f"wrong_answers.json has no wrong answer for exercise {ex!r}"
    # The first exercise's wrong answer comes with its test cells edited to pass, and the second
    # exercise's (right) answer with its first test cell deleted: nbgrader must restore the edited
    # tests, so the wrong answer still scores 0, and add the deleted one back, so the right answer
    # keeps its points.
    tampered = with_solutions(**{ids[0]: wrong_answers[ids[0]][0]})
    for test in exercises[ids[0]]["tests"]:
        tampered.cells[_cell_index(tampered, test)].source = 'print("all tests passed")'
    del tampered.cells[_cell_index(tampered, exercises[ids[1]]["tests"][0])]
    students[TAMPERED] = (tampered, {**full, ids[0]: 0.0})
    for ex in ids[1:]:
        students[f"wrong-{ex}"] = (with_solutions(**{ex: wrong_answers[ex][0]}), {**full, ex: 0.0})
    # Two failures in one notebook: the rest of it must still be graded. The endless loop sleeps
    # rather than spins: what is tested is the timeout, and spinning would take a core from the
    # other test worker for CELL_TIMEOUT_S seconds.
    endless = "import time\nwhile True:\n    time.sleep(0.1)"
    students["raises-and-loops"] = (
        with_solutions(**{ids[0]: 'raise RuntimeError("a bug in my code")', ids[1]: endless}),
        {**full, ids[0]: 0.0, ids[1]: 0.0},
    )
    stray = with_solutions()
    first, second, third = (stray.cells[_cell_index(stray, ex)] for ex in ids[:3])
    first.source = "### BEGIN HIDDEN TESTS (a stray marker)\n" + first.source
    second.source += "\n### END HIDDEN TESTS\n### BEGIN SOLUTION"
    third.source = f"### BEGIN HIDDEN TESTS\n{WRAPPED_LINE}\n{third.source}\n### END HIDDEN TESTS"
    students[STRAY_MARKERS] = (stray, dict(full))
    # Right answers, but the metadata edited: the first solution cell's nbgrader metadata removed,
    # the third's made into another cell's, a test cell renamed and unlocked; and a scratch cell
    # added at the top, so that matching by position would be wrong.
    mangled = with_solutions()
    del mangled.cells[_cell_index(mangled, ids[0])].metadata["nbgrader"]
    mangled.cells[_cell_index(mangled, ids[2])].metadata["nbgrader"].update(grade_id="my_answer", solution=False)
    renamed = mangled.cells[_cell_index(mangled, exercises[ids[1]]["tests"][0])].metadata["nbgrader"]
    renamed.update(grade_id="my_tests")
    renamed.pop("locked")
    mangled.cells.insert(0, nbformat.v4.new_markdown_cell("my notes"))
    students[MANGLED] = (mangled, dict(full))
    # A wrong answer whose solution cell claims to be a test cell worth 100 points, plus an added
    # cell claiming 50: the points come from the release, so this scores exactly the wrong answer.
    made_test = with_solutions(**{ids[0]: wrong_answers[ids[0]][0]})
    made_test.cells[_cell_index(made_test, ids[0])].metadata["nbgrader"].update(
        grade=True, solution=False, locked=True, points=100)
    bonus = nbformat.v4.new_code_cell("print('bonus')")
    bonus.metadata["nbgrader"] = dict(grade=True, solution=False, locked=True, points=50, grade_id="bonus",
                                      schema_version=3)
    made_test.cells.append(bonus)
    students[SOLUTION_MADE_TEST] = (made_test, {**full, ids[0]: 0.0})
    unproven = [ex for ex in ids if not any(expected[ex] == full[ex] for _, expected in students.values())]
    assert not unproven, f"no simulated student has the right answer to {unproven}: add one"
    # The process dies in the first exercise: only that exercise is lost.
    students["kernel-crash"] = (with_solutions(**{ids[0]: "import os\nos._exit(1)"}), {**full, ids[0]: 0.0})
    # A wrong first answer sent with a course_lib/ package whose checks always pass: never imported.
    students[SHADOW] = (with_solutions(**{ids[0]: wrong_answers[ids[0]][0]}), {**full, ids[0]: 0.0})
    # Which profile grading runs in, told by the only channel a student has: a visible test's message.
    fails_with_profile = source.cells[_cell_index(source, ids[0])].source + (
        "\n\nimport course_lib.config\n_real_cfg = cfg\n"
        f"def {_function_name(student_nb, ids[0])}(*args, **kwargs):\n"
        "    raise AssertionError(f'grading profile {_real_cfg.profile}')\n")
    students[PROFILE] = (with_solutions(**{ids[0]: fails_with_profile}), {**full, ids[0]: 0.0})

    for student, (notebook, _) in students.items():
        folder = root / "submitted" / student / CHAPTER
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / name)
    shadow = root / "submitted" / SHADOW / CHAPTER / "course_lib"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("def setup(*args, **kwargs):\n    raise SystemExit('shadow course_lib imported')\n")
    (shadow / "checks.py").write_text("def check_close(*args, **kwargs):\n    pass\n")
    sent = {path: path.read_bytes() for path in (root / "submitted").rglob("*") if path.is_file()}

    env = {"COURSE_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "HF_HUB_OFFLINE": "1"}
    saved = {key: os.environ.get(key) for key in (*env, "COURSE_PROFILE")}
    os.environ.update(env)
    os.environ.pop("COURSE_PROFILE", None)  # the smoke profile must be chosen by nbgrader's presence alone
    try:
        result = nbgrader_course.grade(root, CHAPTER, limits=LIMITS)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    # The cost of grading is a figure to read, not a test (the same line `make grade` prints).
    print(f"\ngraded {result.submissions} submissions of {CHAPTER} in {result.seconds:.0f} s "
          f"with {result.workers} workers ({result.seconds_per_submission:.1f} s each, sandboxed grading + feedback + export)")
    visible = {line.strip() for cell in student_nb.cells for line in cell.source.splitlines()}
    hidden = [line for cell in source.cells for line in _hidden_lines(cell.source) if line not in visible]
    return dict(root=root, name=name, source=source, exercises=exercises, students=students,
                result=result, hidden=hidden, sent=sent)


def _scores(course, student: str) -> dict[str, float]:
    with Gradebook(f"sqlite:///{course['root'] / 'gradebook.db'}") as gradebook:
        submitted = gradebook.find_submission_notebook(course["name"].removesuffix(".ipynb"), CHAPTER, student)
        by_test = {grade.name: grade.score for grade in submitted.grades}
    return {ex: sum(by_test[test] for test in info["tests"]) for ex, info in course["exercises"].items()}


STUDENTS = ["untouched", "raises-and-loops", "kernel-crash", STRAY_MARKERS, MANGLED, SOLUTION_MADE_TEST, SHADOW]


@pytest.mark.notebook
@pytest.mark.parametrize("student", STUDENTS)
def test_student_gets_expected_score(course, student):
    _, expected = course["students"][student]
    assert _scores(course, student) == expected


@pytest.mark.notebook
def test_edited_tests_are_restored_and_deleted_tests_added_back(course):
    first, second, *_ = course["exercises"]
    scores = _scores(course, TAMPERED)
    assert scores[first] == 0, "the edited test cell was not restored: a wrong answer scored points"
    assert scores[second] == course["exercises"][second]["points"], "the deleted test cell was not added back and graded"
    assert scores == course["students"][TAMPERED][1]


@pytest.mark.notebook
def test_each_wrong_answer_loses_exactly_its_exercise(course):
    wrong = [s for s in course["students"] if s.startswith("wrong-")]
    assert len(wrong) == len(course["exercises"]) >= 3
    for student in wrong:
        assert _scores(course, student) == course["students"][student][1], student


@pytest.mark.notebook
def test_a_crash_or_endless_loop_is_flagged_for_manual_grading_and_costs_only_its_exercise(course):
    first, second, *_ = course["exercises"]
    assert course["result"].flagged == {"kernel-crash": course["exercises"][first]["tests"],
                                         "raises-and-loops": course["exercises"][second]["tests"]}
    with Gradebook(f"sqlite:///{course['root'] / 'gradebook.db'}") as gradebook:
        crashed = gradebook.find_submission(CHAPTER, "kernel-crash")
        assert crashed.needs_manual_grade
        assert crashed.score == sum(info["points"] for ex, info in course["exercises"].items() if ex != first)
        assert not gradebook.find_submission(CHAPTER, "untouched").needs_manual_grade


@pytest.mark.notebook
def test_grading_runs_in_the_smoke_profile(course):
    autograded = course["root"] / "autograded" / PROFILE / CHAPTER / course["name"]
    assert "grading profile smoke" in _visible_text_with_outputs(autograded)


def _visible_text_with_outputs(path: Path) -> str:
    return json.dumps(nbformat.read(path, as_version=4).cells)


@pytest.mark.notebook
def test_feedback_and_lessons_do_not_show_hidden_tests(course):
    hidden = course["hidden"]
    assert len(hidden) >= 3, "the chapter should have hidden tests"
    feedback = sorted((course["root"] / "feedback").glob(f"*/{CHAPTER}/*.html"))
    autograded = sorted((course["root"] / "autograded").glob(f"*/{CHAPTER}/*.ipynb"))
    assert {path.parts[-3] for path in feedback} == set(course["students"])
    assert _leaked(hidden, autograded) == [], "a graded notebook holds hidden tests: feedback is built from it"
    lessons = sorted((ROOT / "lessons" / CHAPTER).glob("*")) + sorted((course["root"] / "lessons" / CHAPTER).glob("*"))
    assert [p.name for p in lessons if p.name == "wrong_answers.json"] == []
    assert _leaked(hidden, feedback + lessons) == []


@pytest.mark.notebook
def test_hidden_test_check_would_catch_the_instructor_notebook(course):
    # Proof that the check above can fail: the instructor notebook holds the hidden lines it looks for.
    assert _leaked(course["hidden"], [course["root"] / "solutions" / CHAPTER / course["name"]])


@pytest.mark.notebook
def test_a_shadow_course_lib_sent_with_the_notebook_is_not_imported(course):
    assert _scores(course, SHADOW) == course["students"][SHADOW][1]


@pytest.mark.notebook
def test_csv_has_one_row_per_student_with_their_score(course):
    with open(course["result"].csv_path, newline="", encoding="utf-8") as handle:
        rows = {row["student_id"]: row for row in csv.DictReader(handle) if row["assignment"] == CHAPTER}
    assert set(rows) == set(course["students"])
    max_score = sum(info["points"] for info in course["exercises"].values())
    for student, (_, expected) in course["students"].items():
        assert float(rows[student]["score"]) == pytest.approx(sum(expected.values())), student
        assert float(rows[student]["max_score"]) == pytest.approx(max_score)


@pytest.mark.notebook
def test_stray_markers_break_no_feedback_and_hide_no_code(course):
    feedback = course["root"] / "feedback" / STRAY_MARKERS / CHAPTER / course["name"].replace(".ipynb", ".html")
    assert feedback.is_file(), "the stray markers stopped feedback (for the whole class, in nbgrader 0.9.6 alone)"
    assert WRAPPED_LINE in _visible_text(feedback), "a hidden-tests region in a solution cell hid the student's code"
    graded = course["root"] / "autograded" / STRAY_MARKERS / CHAPTER / course["name"]
    assert "BEGIN-HIDDEN-TESTS" in _visible_text(graded), "what was graded should show the neutralised marker"


@pytest.mark.notebook
def test_mangled_metadata_is_graded_not_flagged(course):
    assert _scores(course, MANGLED) == course["students"][MANGLED][1]
    with Gradebook(f"sqlite:///{course['root'] / 'gradebook.db'}") as gradebook:
        for student in (MANGLED, STRAY_MARKERS, SOLUTION_MADE_TEST):
            assert not gradebook.find_submission(CHAPTER, student).needs_manual_grade, student
    # Each matched its solution cells: nothing was graded as unanswered.
    assert not any(course["result"].notes.get(student) for student in (MANGLED, STRAY_MARKERS, SOLUTION_MADE_TEST))


@pytest.mark.notebook
def test_solution_cell_made_a_test_cell_gains_nothing(course):
    full = sum(info["points"] for info in course["exercises"].values())
    with Gradebook(f"sqlite:///{course['root'] / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(CHAPTER, SOLUTION_MADE_TEST)
        assert submission.max_score == pytest.approx(full)
        assert submission.score == pytest.approx(sum(course["students"][SOLUTION_MADE_TEST][1].values()))
        assert {grade.name for grade in gradebook.find_submission_notebook(
            course["name"].removesuffix(".ipynb"), CHAPTER, SOLUTION_MADE_TEST).grades} == {
            test for info in course["exercises"].values() for test in info["tests"]}


@pytest.mark.notebook
def test_submissions_are_kept_as_the_students_sent_them(course):
    now = {path: path.read_bytes() for path in (course["root"] / "submitted").rglob("*") if path.is_file()}
    assert now == course["sent"]
    normalised = sorted(p.parts[-3] for p in (course["root"] / "normalised").glob(f"*/{CHAPTER}/*.ipynb"))
    assert normalised == sorted(course["students"])


def test_grade_without_submissions_says_where_to_put_them(tmp_path):
    nbgrader_course.make_course_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"submitted.*<student>"):
        nbgrader_course.grade(tmp_path / "empty", CHAPTER)
