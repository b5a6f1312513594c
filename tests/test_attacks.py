"""Hostile and unlucky submissions against every chapter, graded in the sandbox (tools/sandboxed_grading.py).

The submissions come from tools/simulated_students.py, built from each chapter's own metadata, so
a new chapter is attacked by these tests without new code. Each test checks the score per test
cell and, for the attacks on the course, that nothing outside the submission changed and no
hidden line reached what a student is shown. The end-to-end run through nbgrader's gradebook,
feedback and export is tests/test_grading.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sandboxed_grading  # noqa: E402  (tools/ is not a package)
import simulated_students as sim  # noqa: E402

CHAPTERS = sorted(p for p in (ROOT / "lessons").glob("*/*.ipynb") if (ROOT / "solutions" / p.parent.name / "wrong_answers.json").is_file())
# Far above the slowest test cell in `smoke` (a few seconds), so that only the endless loop hits it.
LIMITS = sandboxed_grading.Limits(seconds=30)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bwrap") is None,
                                                   reason="needs bubblewrap (`apt-get install bubblewrap`; .ci/run installs it)")]


@pytest.fixture(scope="module", params=CHAPTERS, ids=[p.parent.name for p in CHAPTERS])
def chapter(request):
    return sim.Chapter.load(ROOT / "solutions", request.param)


def grade(chapter, notebook, sandboxed=True):
    plan = sandboxed_grading.grading_plan(chapter.released, chapter.source, notebook)
    verdicts, notes = sandboxed_grading.grade_notebook(plan, sandboxed=sandboxed, limits=LIMITS)
    return verdicts, notes


def check_scores(verdicts, expected):
    got = {grade_id: verdict.status for grade_id, verdict in verdicts.items()}
    wrong = {g: (got[g], want) for g, want in expected.items()
             if not (got[g] == want if isinstance(want, str) else got[g] in want)}
    assert not wrong, f"test cells with the wrong outcome (got, expected): {wrong}; all: {got}"


def hidden_lines(chapter) -> list[str]:
    """Lines of the hidden tests and of the solutions that no student notebook shows."""
    visible = {line.strip() for cell in chapter.released.cells for line in cell.source.splitlines()}
    lines = []
    for cell in chapter.source.cells:
        meta = sim._meta(cell)
        if meta.get("grade"):
            _, hidden = sandboxed_grading.split_hidden_tests(cell.source)
            lines += hidden.splitlines()
        elif meta.get("solution"):
            lines += cell.source.splitlines()
    return [line.strip() for line in lines if len(line.strip()) >= 16 and line.strip() not in visible
            and not line.strip().startswith(("#", "print(", ")", "]"))]


def test_right_answers_pass_and_unanswered_fail(chapter):
    for build in (sim.right_answers, sim.unanswered):
        notebook, expected = build(chapter)
        check_scores(grade(chapter, notebook)[0], expected)


def test_every_recorded_wrong_answer_loses_its_exercise_only(chapter):
    for index, exercise in enumerate(chapter.exercises):
        notebook, expected = sim.wrong_answer(chapter, index)
        check_scores(grade(chapter, notebook)[0], expected)


def test_a_crash_costs_only_its_own_exercise(chapter):
    notebook, expected = sim.crashes(chapter)
    verdicts, notes = grade(chapter, notebook)
    check_scores(verdicts, expected)
    assert any("run again without them" in note for note in notes), notes


def test_an_endless_loop_costs_only_its_own_exercise(chapter):
    notebook, expected = sim.endless_loop(chapter)
    check_scores(grade(chapter, notebook)[0], expected)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _lingering() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and sim.LINGERING_MARKER in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _course(tmp_path: Path, chapter) -> tuple[Path, list[Path]]:
    """A course folder as an instructor's machine has it: gradebook, instructor notebook, another student's work, release."""
    course = tmp_path / "course"
    (course / "solutions" / chapter.name).mkdir(parents=True)
    shutil.copy2(ROOT / "solutions" / chapter.name / chapter.notebook_name, course / "solutions" / chapter.name)
    (course / "submitted" / "another-student" / chapter.name).mkdir(parents=True)
    (course / "submitted" / "another-student" / chapter.name / chapter.notebook_name).write_text("{}")
    (course / "lessons" / chapter.name).mkdir(parents=True)
    (course / "lessons" / chapter.name / chapter.notebook_name).write_text("{}")
    (course / "gradebook.db").write_bytes(b"SQLite format 3\x00")
    targets = [course / "gradebook.db", course / "solutions" / chapter.name / chapter.notebook_name,
               course / "submitted" / "another-student" / chapter.name / chapter.notebook_name,
               course / "lessons" / chapter.name, ROOT / "solutions" / chapter.name / chapter.notebook_name,
               ROOT / "course_lib" / "checks.py"]
    return course, targets


def test_a_vandal_changes_nothing_and_leaves_no_process(chapter, tmp_path):
    course, targets = _course(tmp_path, chapter)
    before, repo_before = _snapshot(course), {t: t.read_bytes() for t in targets[-2:]}
    notebook, expected = sim.vandal(chapter, targets)
    check_scores(grade(chapter, notebook)[0], expected)
    assert _snapshot(course) == before, "the vandal changed the course folder"
    assert {t: t.read_bytes() for t in targets[-2:]} == repo_before, "the vandal changed the repository"
    assert _lingering() == [], "a process the submission started outlived its grading"


def test_the_vandal_check_would_see_an_unsandboxed_vandal(chapter, tmp_path):
    # Proof that the test above can fail: without the sandbox the same code wrecks the course
    # folder (only the throwaway one: the repository's files are not among these targets).
    course, targets = _course(tmp_path, chapter)
    before = _snapshot(course)
    notebook, _ = sim.vandal(chapter, targets[:4])
    try:
        grade(chapter, notebook, sandboxed=False)
        assert _snapshot(course) != before
    finally:
        for pid in _lingering():
            os.kill(pid, 9)


def test_no_secret_reaches_what_the_student_is_shown(chapter, tmp_path):
    course, _ = _course(tmp_path, chapter)
    notebook, expected = sim.secret_reader(chapter, [course / "solutions" / chapter.name / chapter.notebook_name])
    verdicts, _ = grade(chapter, notebook)
    check_scores(verdicts, expected)
    shown = "\n".join(sandboxed_grading.verdict_output(v, 1)["evalue" if not v.passed else "text"]
                      for v in verdicts.values())
    assert "LEAK:" in shown, "the spy's message did not come through: the check below would prove nothing"
    secrets = hidden_lines(chapter)
    assert len(secrets) >= 10
    assert [line for line in secrets if line in shown] == []


def test_the_secret_check_would_see_an_unsandboxed_leak(chapter, tmp_path):
    # Proof that the test above can fail: without the sandbox the spy reads the instructor notebook.
    course, _ = _course(tmp_path, chapter)
    notebook, _ = sim.secret_reader(chapter, [course / "solutions" / chapter.name / chapter.notebook_name])
    verdicts, _ = grade(chapter, notebook, sandboxed=False)
    shown = "\n".join(v.message for v in verdicts.values())
    assert [line for line in hidden_lines(chapter) if line in shown]


def test_floods_are_bounded_and_cost_only_their_exercises(chapter):
    notebook, expected = sim.feedback_flood(chapter)
    verdicts, _ = grade(chapter, notebook)
    check_scores(verdicts, expected)
    assert all(len(v.message) <= 2000 for v in verdicts.values())


def test_ipython_input_transformers_do_not_reach_the_tests(chapter):
    notebook, expected = sim.ipython_tricks(chapter)
    check_scores(grade(chapter, notebook)[0], expected)


def test_a_forged_report_does_not_score(chapter):
    notebook, expected = sim.forged_report(chapter)
    check_scores(grade(chapter, notebook)[0], expected)


def test_patched_checks_do_not_reach_the_verdict(chapter):
    notebook, expected = sim.patched_checks(chapter)
    check_scores(grade(chapter, notebook)[0], expected)


# Exercises whose point is a function the library already has, and how a student would call it
# instead of writing their own (``args`` are the exercise function's parameters).
LIBRARY_VERSIONS = {
    ("19_1_representations", "ex3_linear_cka"): ("course_lib.metrics", "linear_cka", "x, y"),
    ("19_3_fine_tuning", "ex1_layerwise_lr"): ("course_lib.finetuning", "layerwise_lr_groups", "model, head_lr, factor"),
    ("19_4_domain_adaptation", "ex2_coral"): ("course_lib.adaptation", "coral_loss", "source, target"),
    # The library's adabn is decorated (@torch.no_grad()): forbidding it must reach the function it wraps.
    ("19_4_domain_adaptation", "ex3_adabn"): ("course_lib.adaptation", "adabn", "model, [images]"),
    ("19_7_continual_learning", "ex2_distillation_loss"): ("course_lib.continual", "lwf_loss",
                                                          "new_logits, old_logits, temperature"),
}


@pytest.mark.parametrize("how", ["direct", "alias", "closure"])
def test_the_librarys_own_version_does_not_pass(chapter, how):
    found = [(ex, LIBRARY_VERSIONS[(chapter.name, ex.solution_id)]) for ex in chapter.exercises
             if (chapter.name, ex.solution_id) in LIBRARY_VERSIONS]
    if not found:
        pytest.skip(f"{chapter.name} has no exercise that re-implements a library function")
    for exercise, (module, function, args) in found:
        notebook, expected = sim.library_version(chapter, exercise, module, function, args, how)
        check_scores(grade(chapter, notebook)[0], expected)
