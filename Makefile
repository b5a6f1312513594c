# Transfer Learning, Hands-On: every command a student, instructor or reader needs.
# `make book` and `make test` set everything up themselves on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# JUnit reports of the test runs, read by tools/summarise_tests.py for the closing line.
REPORTS := _build/test-reports
# Notebooks and the book are executed offline: never wait on the Hugging Face hub.
export HF_HUB_OFFLINE := 1

.PHONY: help venv test test-fast chromium fashion-mnist book bench lab pretrain clean lessons check-lessons grade

help:
	@echo "make book      set up, execute every lesson (in the course's world and on real data), build the book to _build/html"
	@echo "make test      the whole test suite (about 5 minutes on 2 cores after set-up); ends with what was skipped and why"
	@echo "make test-fast the tests that take seconds (no notebooks, grading or book; about 1 minute): the edit-test loop"
	@echo "make chromium  install Chromium for the book's browser checks (Debian's package, as root)"
	@echo "make fashion-mnist  install Fashion-MNIST for the lite profile (Debian's dataset-fashion-mnist, as root)"
	@echo "make lab       JupyterLab on my-lessons/, your own copy of the lessons (updates arrive beside your work)"
	@echo "make bench     benchmarks: world speed, source-model accuracy, caching cost, lite input size and 19.2 scratch baselines, Split MNIST, every chapter's headlines (standard and lite)"
	@echo "make pretrain  re-create the course's source model (writes to ./pretrained)"
	@echo "make lessons   regenerate the student notebooks in lessons/ from solutions/"
	@echo "make grade ASSIGNMENT=19_1_representations [DB_URL=postgresql://user@host/db] [WORKERS=n] [SANDBOX=no]   grade submitted/*/ASSIGNMENT in a sandbox, write feedback/ and grades.csv"

venv: $(STAMP)

$(STAMP): requirements/constraints.txt pyproject.toml tools/install_torchvision_fix.py tools/course_torchvision_fix.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a resolver that sees an unpinned torch pulls CUDA builds.
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt torch
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[course,dev]"
	$(BIN)/python tools/install_torchvision_fix.py
	touch $(STAMP)

# The tests, then the instructor notebooks with their hidden tests (nbval, one notebook at a time).
# Both runs always run; the last line sums them up, skips and their reasons included, and the
# target fails if either run failed.
test: venv chromium fashion-mnist
	@rm -rf $(REPORTS)
	@status=0; \
	$(BIN)/python -m pytest -n 2 --dist loadfile --junitxml=$(REPORTS)/tests.xml tests || status=$$?; \
	COURSE_PROFILE=smoke $(BIN)/python -m pytest -p no:xdist --nbval-lax --junitxml=$(REPORTS)/notebooks.xml solutions || status=$$?; \
	$(BIN)/python tools/summarise_tests.py $(REPORTS)/tests.xml $(REPORTS)/notebooks.xml; \
	exit $$status

# Everything not marked slow (see tests/conftest.py): no notebook runs, no grading, no book.
test-fast: venv
	@rm -f $(REPORTS)/fast.xml
	@status=0; \
	$(BIN)/python -m pytest -n 2 -m "not slow" --junitxml=$(REPORTS)/fast.xml tests || status=$$?; \
	$(BIN)/python tools/summarise_tests.py --title "make test-fast" $(REPORTS)/fast.xml; \
	exit $$status

# The book's browser checks need Chromium: found, installed (root with apt-get), or explained.
chromium:
	@tools/ensure_chromium.sh

# The lite profile's target task: found, installed (root with apt-get), or explained.
fashion-mnist:
	@tools/ensure_fashion_mnist.sh

# The labs run twice: in the course's world (executed by jupyter-book) and on real data (the lite
# profile, executed by book_notebooks.py: Fashion-MNIST from Debian's package, MNIST in COURSE_DATA_DIR).
book: venv fashion-mnist
	$(BIN)/python tools/book_notebooks.py --real-data
	$(BIN)/jupyter-book build . --all --warningiserror --keep-going
	@echo "open _build/html/index.html"

bench: venv fashion-mnist
	$(BIN)/python -m course_lib.bench

# Students work in my-lessons/, their own copy (tools/student_copy.py): created from lessons/ on the
# first run; later runs add new lessons and put changed ones beside the student's files, never over them.
lab: venv
	$(BIN)/python tools/student_copy.py lessons my-lessons
	$(BIN)/jupyter lab my-lessons

pretrain: venv
	$(BIN)/python -m course_lib.pretrain --out pretrained

lessons: venv
	$(BIN)/python tools/nbgrader_course.py lessons

check-lessons: venv
	$(BIN)/python tools/nbgrader_course.py check-lessons

grade: venv
	@test -n "$(ASSIGNMENT)" || { echo "usage: make grade ASSIGNMENT=19_1_representations"; exit 2; }
	$(BIN)/python tools/nbgrader_course.py grade $(ASSIGNMENT) $(if $(DB_URL),--db-url $(DB_URL)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(filter no,$(SANDBOX)),--no-sandbox)

clean:
	rm -rf _build .pytest_cache
