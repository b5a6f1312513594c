"""nbgrader settings for the course (instructors: see README, "For instructors", and CONTRIBUTING.md).

Instructor notebooks live in `solutions/<assignment>/`; the student versions in
`lessons/<assignment>/` are generated from them with `python tools/nbgrader_course.py lessons`
(`make lessons`), which runs `nbgrader generate_assignment` in a throwaway course folder.
"""

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import ClearHiddenTests, GetGrades
from nbgrader.utils import is_grade


class HideHiddenTestsInFeedback(ClearHiddenTests):
    """Feedback for students must not give the hidden tests away.

    nbgrader's feedback shows the autograded notebook, whose test cells hold the hidden tests
    again (autograding restores them). This removes the hidden regions from the test cells'
    source and, because a Python traceback quotes the failing source lines, shortens those
    cells' error tracebacks to the error's type and message.
    """

    def preprocess_cell(self, cell, resources, cell_index):
        had_hidden_tests = self.begin_test_delimeter in cell.source
        cell, resources = super().preprocess_cell(cell, resources, cell_index)
        if had_hidden_tests and is_grade(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources


c = get_config()  # noqa: F821 (provided by nbgrader when it reads this file)

c.CourseDirectory.root = "."
# The gradebook's key for this course. PostgreSQL needs one (each assignment row refers to its
# course; nbgrader's default, "", creates no course row); one server can then hold several courses.
c.CourseDirectory.course_id = "transfer_learning_hands_on"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "lessons"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
# Instructor-only files next to a source notebook that students must not receive.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "wrong_answers.json"]

# The course grades with tools/nbgrader_course.py (`make grade`), which runs the student's code in
# a sandbox and the tests in the grader, with its own time limits (tools/sandboxed_grading.py,
# Limits). These settings apply if someone runs `nbgrader autograde` by hand: it then runs every
# notebook, unsandboxed, in the fast `smoke` profile (course_lib.setup sees NBGRADER_EXECUTION).
c.Execute.timeout = 60
# A test cell a student edited is restored from the gradebook (nbgrader always does this); one a
# student deleted is put back and graded: deleting a test neither hides a failure nor loses points.
c.OverwriteCells.add_missing_cells = True
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# nbgrader's default feedback shows the hidden tests: remove them (see the class above).
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTestsInFeedback, CSSHTMLHeaderPreprocessor]
