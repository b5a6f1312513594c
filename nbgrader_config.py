"""nbgrader settings for the course (instructors: see README, "For instructors").

Instructor notebooks live in `solutions/<assignment>/`; the student versions in
`lessons/<assignment>/` are generated from them with `nbgrader generate_assignment`.
"""

c = get_config()  # noqa: F821 (provided by nbgrader when it reads this file)

c.CourseDirectory.root = "."
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "lessons"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"

# Grading runs every notebook in the fast `smoke` profile (course_lib.setup sees
# NBGRADER_EXECUTION); a cell that runs longer than this is stopped and scores zero.
c.Execute.timeout = 60
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
