"""The book: tools/book_notebooks.py, and the whole book built in the smoke profile and opened in Chromium.

The fast tests check how an instructor notebook becomes a book page. The slow ones build a copy
of the book (once per module, in a temporary folder, every notebook executed with
``COURSE_PROFILE=smoke``) and then check the result as a reader's browser sees it: each chapter
page loads, its figures are there, its math is typeset by the locally served MathJax with the
network switched off, and no hidden test or nbgrader marker leaked into the HTML. A screenshot of
each chapter page is kept in ``_build/screenshots/`` for a human to look at.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from repo_tools import load_tool
from standins import link_shared_mnist_usps

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_DIR = ROOT / "_build" / "screenshots"
CHAPTERS_CAPTION = "Chapters"


book_notebooks = load_tool("book_notebooks")


# --- a small instructor notebook with the course's nbgrader conventions -----------------------

HIDDEN_CHECK = "assert square(-2) == 4  # hidden check"


def _graded(cell, **nbgrader):
    cell.metadata["nbgrader"] = {"schema_version": 3, "grade_id": f"cell-{id(cell)}", **nbgrader}
    return cell


def make_instructor_notebook() -> nbformat.NotebookNode:
    """An nbgrader source notebook: a solution cell, visible and hidden tests, a written answer."""
    notebook = new_notebook(cells=[
        new_markdown_cell("# Squares\n\nWe compute $x^2$."),
        _graded(new_code_cell("import numpy as np"), grade=False, solution=False, locked=True),
        _graded(new_code_cell(
            'def square(x):\n    """Return x squared."""\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION\n'
        ), grade=False, solution=True, locked=False),
        _graded(new_code_cell(
            f"assert square(3) == 9\n### BEGIN HIDDEN TESTS\n{HIDDEN_CHECK}\n### END HIDDEN TESTS\n"
        ), grade=True, solution=False, locked=True, points=1),
        _graded(new_code_cell("### BEGIN HIDDEN TESTS\nassert square(0) == 0\n### END HIDDEN TESTS"),
                grade=True, solution=False, locked=True, points=1),
        _graded(new_markdown_cell("It is never negative."), grade=True, solution=True, points=1),
    ])
    notebook.metadata["nbgrader"] = {"kernelspec": "python3"}
    return notebook


def write_solutions(folder: Path, notebooks: dict[str, list[str]]) -> Path:
    """Write ``{assignment: [notebook names]}`` instructor notebooks under ``folder``."""
    for assignment, names in notebooks.items():
        (folder / assignment).mkdir(parents=True, exist_ok=True)
        for name in names:
            nbformat.write(make_instructor_notebook(), folder / assignment / name)
    return folder


# --- conversion --------------------------------------------------------------------------------

def test_strip_hidden_tests_removes_the_region_and_its_markers():
    source = "a = 1\n    ### BEGIN HIDDEN TESTS\n    secret()\n    ### END HIDDEN TESTS\nb = 2\n"
    assert book_notebooks.strip_hidden_tests(source) == "a = 1\nb = 2\n"


def test_strip_solution_markers_keeps_the_solution():
    source = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"
    assert book_notebooks.strip_solution_markers(source) == "def f():\n    return 1\n"


@pytest.mark.parametrize("source", [
    "### BEGIN HIDDEN TESTS\nx\n",
    "x\n### END HIDDEN TESTS\n",
    "### BEGIN HIDDEN TESTS\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n",
])
def test_unbalanced_hidden_markers_are_an_error(source):
    with pytest.raises(ValueError, match="HIDDEN TESTS"):
        book_notebooks.strip_hidden_tests(source, where="nb, cell 3")


@pytest.mark.parametrize("source", ["### BEGIN SOLUTION\nx\n", "x\n### END SOLUTION\n"])
def test_unbalanced_solution_markers_are_an_error(source):
    with pytest.raises(ValueError, match="SOLUTION"):
        book_notebooks.strip_solution_markers(source)


def test_full_edition_collapses_solutions_and_drops_hidden_tests():
    result = book_notebooks.book_notebook(make_instructor_notebook(), "full")
    sources = [cell["source"] for cell in result["cells"]]
    text = "\n".join(sources)
    assert "return x * x" in text
    assert "### BEGIN" not in text and "### END" not in text
    assert HIDDEN_CHECK not in text and "square(0)" not in text
    assert len(result["cells"]) == 5, "the test cell holding only hidden tests should be dropped"
    solution = next(cell for cell in result["cells"] if "return x * x" in cell["source"])
    assert solution["metadata"]["tags"] == ["hide-input"]
    assert "{admonition} Solution" in sources[-1] and ":class: dropdown" in sources[-1]
    assert "nbgrader" not in result["metadata"]
    assert all("nbgrader" not in cell["metadata"] for cell in result["cells"])


def test_no_solutions_edition_removes_solution_code_but_keeps_the_cell():
    result = book_notebooks.book_notebook(make_instructor_notebook(), "no-solutions")
    solution = next(cell for cell in result["cells"] if "def square" in cell["source"])
    # The input is removed from the page by myst-nb, but the cell still runs: later cells need it.
    assert solution["metadata"]["tags"] == ["remove-input"]
    assert not any("never negative" in cell["source"] for cell in result["cells"])


def test_conversion_does_not_change_the_input():
    notebook = make_instructor_notebook()
    before = json.dumps(notebook, sort_keys=True)
    book_notebooks.book_notebook(notebook, "full")
    assert json.dumps(notebook, sort_keys=True) == before


def test_student_stub_left_in_a_solutions_notebook_is_an_error():
    notebook = make_instructor_notebook()
    notebook.cells.append(new_code_cell("# YOUR CODE HERE\nraise NotImplementedError()"))
    with pytest.raises(ValueError, match="YOUR CODE HERE.*fix the cell in solutions"):
        book_notebooks.book_notebook(notebook, "full", name="squares.ipynb")


def test_unknown_edition_and_non_notebooks_are_errors():
    with pytest.raises(ValueError, match="edition 'teacher'.*full, no-solutions"):
        book_notebooks.book_notebook(make_instructor_notebook(), "teacher")
    with pytest.raises(ValueError, match="not a Jupyter notebook"):
        book_notebooks.book_notebook({"metadata": {}}, "full")


def test_write_book_notebooks_names_pages_after_assignments(tmp_path):
    solutions = write_solutions(tmp_path / "solutions", {"19_1_a": ["one.ipynb"], "19_2_b": ["x.ipynb", "y.ipynb"]})
    out = tmp_path / "book" / "notebooks"
    out.mkdir(parents=True)
    (out / "renamed_away.ipynb").write_text("{}")
    written = book_notebooks.write_book_notebooks(solutions, out, "full")
    assert sorted(path.name for path in written) == ["19_1_a.ipynb", "19_2_b-x.ipynb", "19_2_b-y.ipynb"]
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in written), "stale page kept"
    notebook = nbformat.read(out / "19_1_a.ipynb", as_version=4)
    nbformat.validate(notebook)


def test_real_data_pages_are_written_next_to_each_lab_and_say_what_they_ran(tmp_path):
    solutions = write_solutions(tmp_path / "solutions", {"19_1_a": ["one.ipynb"]})
    out = tmp_path / "book" / "notebooks"
    written = book_notebooks.write_book_notebooks(solutions, out, "full", real_data=True)
    assert [path.name for path in written] == ["19_1_a.ipynb", "19_1_a-real-data.ipynb"]
    lab, real = (nbformat.read(path, as_version=4) for path in written)
    nbformat.validate(real)
    assert real.cells[0].source.startswith("# Lab on real data: Squares\n")
    assert real.cells[1].source == book_notebooks.REAL_DATA_NOTE and "COURSE_PROFILE=lite" in real.cells[1].source
    assert [cell.source for cell in real.cells[2:]] == [cell.source for cell in lab.cells[1:]]
    assert "Lab on real data" not in lab.cells[0].source


@pytest.mark.parametrize("environ, size", [
    ({}, "standard"), ({"COURSE_PROFILE": "smoke"}, "smoke"), ({"COURSE_PROFILE": "real"}, "full"),
    ({"COURSE_PROFILE": "standard", "COURSE_SIZE": "smoke"}, "smoke"),
])
def test_real_data_pages_run_at_the_size_of_the_books_profile(environ, size, monkeypatch):
    for name in ("COURSE_PROFILE", "COURSE_SIZE", "NBGRADER_EXECUTION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert book_notebooks.real_data_size() == size


def test_an_unknown_book_profile_is_an_error(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError, match="Unknown course profile 'fast'"):
        book_notebooks.real_data_size()


def test_write_book_notebooks_reports_missing_and_corrupt_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="No solutions folder"):
        book_notebooks.write_book_notebooks(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "solutions" / "19_1_a").mkdir(parents=True)
    (tmp_path / "solutions" / "19_1_a" / "broken.ipynb").write_text("{ not json")
    with pytest.raises(ValueError, match="broken.ipynb is not valid notebook JSON.*re-save"):
        book_notebooks.write_book_notebooks(tmp_path / "solutions", tmp_path / "out")


def test_cli_writes_notebooks_and_links_mathjax(tmp_path, capsys):
    write_solutions(tmp_path / "solutions", {"19_1_a": ["one.ipynb"]})
    assert book_notebooks.main(["--root", str(tmp_path), "--edition", "no-solutions"]) == 0
    assert (tmp_path / "book" / "notebooks" / "19_1_a.ipynb").is_file()
    assert (tmp_path / "_build" / "mathjax" / "mathjax" / "MathJax.js").is_file()
    assert (tmp_path / "_build" / "mathjax" / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()
    # Running twice replaces the link rather than failing on it.
    assert book_notebooks.main(["--root", str(tmp_path)]) == 0
    assert "no-solutions edition" in capsys.readouterr().out


def test_config_serves_mathjax2_locally():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert config["html_static_path"] == ["_build/mathjax"]
    assert not config["mathjax_path"].startswith(("http:", "https:", "//"))
    assert config["mathjax_path"].startswith("mathjax/MathJax.js?config=")
    assert config["mathjax2_config"] and config["mathjax3_config"] is None
    assert config["myst_update_mathjax"] is False


# --- one chapter, its lab a child page: titles and the table of contents ----------------------------

@pytest.mark.parametrize("heading, expected", [
    ("# 19.1 Why transfer works", "# 19.1 Lab: Why transfer works"),
    ("# 19.3 Fine-tuning: a lower learning rate\n", "# 19.3 Lab: Fine-tuning: a lower learning rate"),
    ("# Squares", "# Lab: Squares"),
    ("# 19.1 Lab: Why transfer works", "# 19.1 Lab: Why transfer works"),  # converting twice
])
def test_lab_heading(heading, expected):
    assert book_notebooks.lab_heading(heading) == expected


def test_book_notebook_retitles_only_the_first_heading_as_a_lab():
    notebook = make_instructor_notebook()
    notebook.cells[0].source = "```python\n# 19.9 not a heading\n```\n# 19.9 Squares\n\nText.\n\n# Second"
    result = book_notebooks.book_notebook(notebook, "full")
    assert result["cells"][0]["source"] == "```python\n# 19.9 not a heading\n```\n# 19.9 Lab: Squares\n\nText.\n\n# Second"
    assert book_notebooks.book_notebook(make_instructor_notebook())["cells"][0]["source"].startswith("# Lab: Squares\n")


def test_a_notebook_without_a_title_is_an_error():
    notebook = make_instructor_notebook()
    notebook.cells[0].source = "## Only a subsection"
    with pytest.raises(ValueError, match="squares.ipynb has no title.*'# 19.x Title'"):
        book_notebooks.book_notebook(notebook, "full", name="squares.ipynb")


def test_toc_nests_each_lab_under_its_chapter():
    entries = chapter_entries()
    assignments = sorted(path.name for path in (ROOT / "solutions").iterdir() if list(path.glob("*.ipynb")))
    assert [Path(entry["file"]).name for entry in entries] == assignments, (
        "_toc.yml's Chapters part should list one narrative page per assignment in solutions/, in order")
    labs = {Path(target).stem for _, target in book_notebooks.notebook_targets(ROOT / "solutions", Path("book/notebooks"))}
    for entry in entries:
        assert entry["file"].startswith("book/19_") and (ROOT / f"{entry['file']}.md").is_file(), entry
        sections = [section["file"] for section in entry.get("sections", [])]
        own = sorted(stem for stem in labs
                     if stem == Path(entry["file"]).name or stem.startswith(Path(entry["file"]).name + "-"))
        # Each lab, then the same lab on real data.
        expected = [f"book/notebooks/{stem}{suffix}" for stem in own for suffix in ("", book_notebooks.REAL_DATA_SUFFIX)]
        assert sections == expected, f"{entry['file']}: its lab pages should be its sections, found {sections}"


def _first_heading(text: str) -> str:
    return next(line.strip() for line in text.splitlines() if line.startswith("# "))


LAB_TARGETS = book_notebooks.notebook_targets(ROOT / "solutions", ROOT / "book" / "notebooks")


@pytest.mark.parametrize("source, target", LAB_TARGETS, ids=[target.stem for _, target in LAB_TARGETS])
def test_each_lab_title_names_its_chapter_without_repeating_it(source, target):
    chapter = _first_heading((ROOT / "book" / f"{target.stem.split('-')[0]}.md").read_text(encoding="utf-8"))
    number = chapter.split()[1]
    lab = book_notebooks.book_notebook(json.loads(source.read_text(encoding="utf-8")), "full", name=str(source))
    title = _first_heading(next(cell["source"] for cell in lab["cells"] if cell["cell_type"] == "markdown"))
    assert title.startswith(f"# {number} Lab: ") and title != chapter, (chapter, title)


def _output_doctree():
    """A myst-nb-like doctree: a cell with a progress-bar widget output and a text output."""
    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import new_document

    document = new_document("lab", get_default_settings(Parser))

    def bundle(*mime_types):
        node = nodes.container(nb_element="mime_bundle")
        for mime_type in mime_types:
            node += nodes.container("", nodes.literal_block(text=f"{mime_type} data"), mime_type=mime_type)
        return node

    both = nodes.container(nb_element="cell_code_output")
    both += bundle(book_notebooks.WIDGET_VIEW_MIME, "text/plain")
    both += bundle("text/plain")
    only_widget = nodes.container(nb_element="cell_code_output")
    only_widget += bundle("text/plain", book_notebooks.WIDGET_VIEW_MIME)
    document += nodes.container("", both, only_widget, nb_element="cell_code")
    return document


def test_widget_outputs_are_left_out_of_the_book():
    document = _output_doctree()
    assert book_notebooks.drop_widget_outputs(document) == 2
    outputs = [node for node in document.findall() if getattr(node, "get", lambda _: None)("nb_element") == "cell_code_output"]
    assert len(outputs) == 1, "an output box left empty by the removal should go too"
    mime_types = [node.get("mime_type") for node in document.findall() if getattr(node, "get", lambda _: None)("mime_type")]
    assert mime_types == ["text/plain"]


def test_config_loads_the_widget_filter():
    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert sphinx["local_extensions"] == {"book_notebooks": "tools/"}
    assert callable(book_notebooks.setup)
    assert sphinx["config"]["nb_ipywidgets_js"] == {}, "the offline book loads no widget JavaScript"


# --- the built book ------------------------------------------------------------------------------

def chapter_entries(toc_path: Path = ROOT / "_toc.yml") -> list[dict]:
    """The entries of the "Chapters" part of _toc.yml: ``{"file": narrative, "sections": [lab]}``."""
    toc = yaml.safe_load(Path(toc_path).read_text())
    for part in toc.get("parts", []):
        if part.get("caption") == CHAPTERS_CAPTION:
            return part["chapters"]
    raise AssertionError(f"_toc.yml has no part captioned {CHAPTERS_CAPTION!r}")


def chapter_pages() -> list[str]:
    """The files listed under the "Chapters" part of _toc.yml: each narrative, then its lab."""
    pages = []
    for entry in chapter_entries():
        pages.append(entry["file"])
        pages += [section["file"] for section in entry.get("sections", [])]
    return pages


@pytest.fixture(scope="module")
def built_book(tmp_path_factory, fashion_mnist) -> Path:
    """Build a copy of the book in the smoke profile; return its folder (HTML in _build/html).

    The labs' real-data pages run at smoke size in the lite profile, with Debian's Fashion-MNIST
    and the genuine MNIST of ../shared/data (skipped, with the reason, where that is absent).
    """
    source = tmp_path_factory.mktemp("book")
    data = source / "data"
    if not link_shared_mnist_usps(data):
        pytest.skip("the genuine MNIST/USPS copy (../shared/data) is absent: the real-data labs' far target is MNIST")
    for name in ("_config.yml", "_toc.yml", "tools/book_notebooks.py"):  # the last is a Sphinx extension too
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "book", source / "book", ignore=shutil.ignore_patterns("notebooks", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "solutions", source / "solutions", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    missing = [page for page in chapter_pages()
               if not page.startswith("book/notebooks/") and not list((source).glob(page + ".*"))]
    assignments = {page: Path(page).name.removesuffix(book_notebooks.REAL_DATA_SUFFIX) for page in chapter_pages()
                   if page.startswith("book/notebooks/")}  # a real-data page is made from its lab's notebook
    missing += [f"solutions/{name}/*.ipynb" for name in assignments.values()
                if not list((source / "solutions" / name).glob("*.ipynb"))]
    assert not missing, f"_toc.yml lists chapter pages whose sources do not exist: {missing}"

    env = dict(os.environ, COURSE_PROFILE="smoke", COURSE_CACHE_DIR=str(source / "cache"), HF_HUB_OFFLINE="1",
               COURSE_DATA_DIR=str(data))
    for name in ("COURSE_SIZE", "COURSE_UNVERIFIED_FILES", "NBGRADER_EXECUTION"):
        env.pop(name, None)
    prepare = subprocess.run([sys.executable, str(ROOT / "tools" / "book_notebooks.py"), "--root", str(source),
                              "--real-data"], capture_output=True, text=True, env=env)
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert prepare.stdout.count("in the lite profile (smoke size)") == len(LAB_TARGETS), prepare.stdout
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    start = time.perf_counter()
    build = subprocess.run([str(jupyter_book), "build", str(source), "--all", "--warningiserror", "--keep-going"],
                           capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - start
    assert build.returncode == 0, f"book build failed after {seconds:.0f} s:\n{build.stdout[-6000:]}\n{build.stderr[-6000:]}"
    print(f"smoke book build: {seconds:.0f} s")
    return source


def built_page(book: Path, page: str) -> Path:
    return book / "_build" / "html" / f"{page}.html"


@pytest.mark.notebook
def test_build_succeeds_with_every_chapter_page(built_book):
    for page in chapter_pages():
        assert built_page(built_book, page).is_file(), f"chapter page {page} was not built"


class _TextAndImages(HTMLParser):
    """Collects a page's visible text and its <img> sources."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_data(self, data):
        self.text.append(data)


def _parse(markup: str) -> _TextAndImages:
    parser = _TextAndImages()
    parser.feed(markup)
    return parser


class _VisibleText(HTMLParser):
    """A page's text as a reader sees it: without <script> and <style> contents (widget state, code)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        self._skipping += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skipping -= tag in ("script", "style") and self._skipping > 0

    def handle_data(self, data):
        if not self._skipping:
            self.text.append(data)


def visible_text(markup: str) -> str:
    parser = _VisibleText()
    parser.feed(markup)
    return "".join(parser.text)


# A tqdm bar as drawn before it ran: "  0%|          | 0/1 [00:00<?, ?it/s]".
FROZEN_BAR = re.compile(r"(?<![\d.])0%\|")


@pytest.mark.notebook
def test_no_frozen_progress_bars_in_the_book(built_book):
    for page in chapter_pages():
        text = visible_text(built_page(built_book, page).read_text(encoding="utf-8"))
        frozen = [line.strip() for line in text.splitlines() if FROZEN_BAR.search(line)]
        assert not frozen, (f"{page} shows progress bars frozen at 0% (a widget's text fallback): {frozen[:3]}; "
                            "tools/book_notebooks.py's Sphinx extension should have left them out")


@pytest.mark.notebook
def test_each_lab_is_titled_as_its_chapters_lab(built_book):
    for entry in chapter_entries(built_book / "_toc.yml"):
        chapter = visible_text(re.search(r"<h1.*?</h1>", built_page(built_book, entry["file"]).read_text(encoding="utf-8"), re.S)[0])
        number = chapter.split()[0]
        for section in entry.get("sections", []):
            markup = built_page(built_book, section["file"]).read_text(encoding="utf-8")
            title = visible_text(re.search(r"<h1.*?</h1>", markup, re.S)[0]).strip().rstrip("#").strip()
            lab = (book_notebooks.REAL_DATA_LAB if section["file"].endswith(book_notebooks.REAL_DATA_SUFFIX)
                   else book_notebooks.LAB)
            assert title.startswith(f"{number} {lab} "), f"{section['file']} is titled {title!r}"
            assert title != chapter.strip().rstrip("#").strip()
            # In the navigation the lab is the chapter's child: a second-level entry under it.
            chapter_markup = built_page(built_book, entry["file"]).read_text(encoding="utf-8")
            link = f'href="{Path(section["file"]).relative_to(Path(entry["file"]).parent).as_posix()}.html"'
            assert re.search(r'<li class="toctree-l2[^"]*"><a[^>]*' + re.escape(link), chapter_markup), (
                f"{entry['file']}'s navigation does not list {section['file']} as its child page")


# --- glue: the narrative's numbers come from its lab, and a missing one fails the build ----------------

GLUING_CELL = """from myst_nb import glue
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="runs"):
    pass
glue("accuracy", 0.8765, display=False)
glue("fraction", 0.4567, display=False)
glue("count", 12, display=False)
"""


def build_glue_book(folder: Path, narrative: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Build a two-page book like the course's (a chapter page, its lab notebook as a child) with -W.

    The lab glues ``accuracy`` = 0.8765, ``fraction`` = 0.4567 and ``count`` = 12, and shows a
    tqdm bar. Returns the build's result and the HTML folder.
    """
    (folder / "book" / "notebooks").mkdir(parents=True)
    (folder / "_build" / "mathjax").mkdir(parents=True)  # html_static_path must exist
    (folder / "tools").mkdir()
    shutil.copy2(ROOT / "_config.yml", folder / "_config.yml")
    shutil.copy2(ROOT / "tools" / "book_notebooks.py", folder / "tools" / "book_notebooks.py")
    (folder / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nparts:\n  - caption: Chapters\n    chapters:\n"
        "      - file: book/19_9_demo\n        sections:\n          - file: book/notebooks/19_9_demo\n")
    (folder / "book" / "intro.md").write_text("# Intro\n\nA fixture book.\n")
    (folder / "book" / "19_9_demo.md").write_text(narrative)
    lab = new_notebook(cells=[new_markdown_cell("# 19.9 Lab: Demo"), new_code_cell(GLUING_CELL)])
    lab.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(lab, folder / "book" / "notebooks" / "19_9_demo.ipynb")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    build = subprocess.run([str(jupyter_book), "build", str(folder), "--all", "--warningiserror", "--keep-going"],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return build, folder / "_build" / "html" / "book"


@pytest.mark.notebook
def test_cross_page_glue_pastes_the_labs_numbers(tmp_path):
    # The forms CONTRIBUTING.md documents: the lab's path relative to the page, .ipynb included,
    # and for {glue:text} always a format spec (without one myst-nb 1.4 misreads the role).
    narrative = (
        "# 19.9 Demo\n\n"
        "A: {glue:text}`notebooks/19_9_demo.ipynb::accuracy:.1f` end.\n\n"
        "B: {glue:text}`notebooks/19_9_demo.ipynb::fraction:.0%` end.\n\n"
        "C: {glue:text}`/book/notebooks/19_9_demo.ipynb::accuracy:.3f` end.\n\n"
        "D: {glue}`notebooks/19_9_demo.ipynb::count` end.\n\n"
        "E: about 91.5% on CIFAR-10 (Kornblith et al., 2019) <!-- published --> end.\n"
    )
    build, html_dir = build_glue_book(tmp_path, narrative)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    text = " ".join(visible_text((html_dir / "19_9_demo.html").read_text(encoding="utf-8")).split())
    for pasted in ("A: 0.9 end.", "B: 46% end.", "C: 0.876 end.", "D: 12 end.", "(Kornblith et al., 2019) end."):
        assert pasted in text, f"{pasted!r} not in the page: {text[:600]}"
    assert "published" not in text, "the <!-- published --> marker should be invisible"
    lab = visible_text((html_dir / "notebooks" / "19_9_demo.html").read_text(encoding="utf-8"))
    assert not FROZEN_BAR.search(lab), "the lab's tqdm bar shows frozen at 0%"


@pytest.mark.notebook
def test_a_missing_or_misspelt_glue_reference_fails_the_build(tmp_path):
    narrative = (
        "# 19.9 Demo\n\n"
        "M: {glue:text}`notebooks/19_9_demo.ipynb::never_glued:.1f` end.\n\n"
        "N: {glue:text}`notebooks/19_9_demo::accuracy:.1f` end.\n\n"  # no .ipynb
        "O: {glue:text}`notebooks/19_9_demo.ipynb::accuracy` end.\n"  # no format spec
    )
    build, _ = build_glue_book(tmp_path, narrative)
    log = build.stdout + build.stderr
    assert build.returncode != 0, f"the build passed despite bad glue references:\n{log[-4000:]}"
    assert "Glue reference 'never_glued' not found in doc 'book/notebooks/19_9_demo'" in log, log[-4000:]
    assert "19_9_demo.md:5: WARNING: Pending glue reference document not found" in log, log[-4000:]
    assert "19_9_demo.md:7: WARNING: No key 'notebooks/19_9_demo.ipynb:' found" in log, log[-4000:]


def _hidden_test_lines(solutions: Path) -> set[str]:
    """Lines of hidden tests that appear in no visible cell of any notebook (so are secret).

    A line such as ``g = torch.Generator().manual_seed(0)`` may sit in one lesson's hidden
    tests and in another lesson's visible code: readers see it anyway, so it is not a leak.
    """
    sources = []
    for path in sorted(solutions.glob("*/*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        sources += ["".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                    for cell in notebook["cells"]]
    visible = "\n".join(book_notebooks.strip_hidden_tests(source) for source in sources)
    secret = set()
    for source in sources:
        for region in re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", source, flags=re.S):
            secret |= {line.strip() for line in region.splitlines()
                       if len(line.strip()) >= 8 and line.strip() not in visible}
    return secret


@pytest.mark.notebook
def test_no_hidden_tests_or_markers_in_the_built_book(built_book):
    html_dir = built_book / "_build" / "html"
    secret = _hidden_test_lines(built_book / "solutions")
    files = [path for path in html_dir.rglob("*")
             if path.is_file() and "_static" not in path.parts and path.suffix in {".html", ".js", ".ipynb", ".md", ".txt"}]
    assert any(path.suffix == ".html" for path in files)
    for path in files:
        raw = path.read_text(encoding="utf-8", errors="replace")
        # Code is split into highlighting spans: compare the text a reader sees, not the markup.
        text = "".join(_parse(raw).text) if path.suffix == ".html" else html.unescape(raw)
        for marker in book_notebooks.FORBIDDEN_IN_BOOK:
            assert marker not in text, f"{marker!r} appears in {path.relative_to(html_dir)}"
        leaked = [line for line in secret if line in text]
        assert not leaked, f"hidden test source appears in {path.relative_to(html_dir)}: {leaked[:3]}"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail("CI is set but no Chromium was found: install it with "
                    "`tools/ensure_chromium.sh --required` (see .ci/run).")
    pytest.skip("Chromium is not installed, so the built book pages are not checked in a browser "
                "(`make chromium` installs Debian's package as root, or says what to do)")


def _run_chromium(browser: str, profile_dir: Path, *args: str) -> subprocess.CompletedProcess:
    # Every flag that could reach the network is off: the page must render from local files only.
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile_dir}", "--virtual-time-budget=5000"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def chapter_doms(built_book, tmp_path_factory) -> dict[str, str]:
    """Each chapter page's DOM after its scripts (MathJax) ran; screenshots saved on the way."""
    browser = _chromium()
    profile_dir = tmp_path_factory.mktemp("chromium-profile")
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    doms = {}
    for page in chapter_pages():
        screenshot = SCREENSHOT_DIR / (page.replace("/", "__") + ".png")
        screenshot.unlink(missing_ok=True)
        # One browser start per page does both: the DOM on stdout and the screenshot.
        run = _run_chromium(browser, profile_dir, "--hide-scrollbars", "--window-size=1280,6000",
                            f"--screenshot={screenshot}", "--dump-dom", built_page(built_book, page).as_uri())
        assert run.returncode == 0, f"Chromium failed on {page}: {run.stderr[-2000:]}"
        assert screenshot.is_file(), f"no screenshot of {page}: {run.stderr[-2000:]}"
        doms[page] = run.stdout
    return doms


@pytest.mark.notebook
def test_chapter_pages_load_in_a_browser(chapter_doms):
    for page, dom in chapter_doms.items():
        assert "<article" in dom and re.search(r"<h1[^>]*>", dom), f"{page} did not render an article with a title"
        for problem in ("Math Processing Error", "File failed to load", "Traceback (most recent call last)"):
            assert problem not in dom, f"{page} shows {problem!r}"


@pytest.mark.notebook
def test_chapter_figures_are_present(built_book, chapter_doms):
    for page, dom in chapter_doms.items():
        page_dir = built_page(built_book, page).parent
        for src in _parse(dom).images:
            if src.startswith("data:image/"):
                continue
            assert src and not src.startswith(("http:", "https:", "//")), f"{page}: image {src!r} is not local"
            assert (page_dir / src.split("#")[0].split("?")[0]).is_file(), f"{page}: image {src!r} is missing"
    chapters = {Path(page).name for page in chapter_doms}
    for chapter in chapters:
        figures = sum(len(_parse(dom).images) for page, dom in chapter_doms.items() if Path(page).name == chapter)
        assert figures > 0, f"chapter {chapter} has no figure at all in the book; did its plots fail to render?"


@pytest.mark.notebook
def test_math_is_typeset_offline(built_book, chapter_doms):
    total = 0
    for page, dom in chapter_doms.items():
        static = built_page(built_book, page).read_text(encoding="utf-8")
        assert not re.search(r"<script[^>]+src=\"(https?:)?//", static), f"{page} loads a script from the network"
        expected = len(re.findall(r'class="math notranslate nohighlight"', static))
        typeset = len(re.findall(r'id="MathJax-Element-\d+-Frame"', dom))
        assert typeset >= expected, f"{page}: {expected} formulas in the page but MathJax typeset {typeset}"
        total += typeset
    assert total > 0, ("no chapter page contains math, so offline math rendering is untested: "
                       "add a formula to a chapter or a math check page")
