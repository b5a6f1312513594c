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
import importlib.util
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

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_DIR = ROOT / "_build" / "screenshots"
CHAPTERS_CAPTION = "Chapters"


def _load_tool():
    spec = importlib.util.spec_from_file_location("book_notebooks", ROOT / "tools" / "book_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


book_notebooks = _load_tool()


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


# --- the built book ------------------------------------------------------------------------------

def chapter_pages() -> list[str]:
    """The files listed under the "Chapters" part of _toc.yml (narratives and notebooks)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for part in toc.get("parts", []):
        if part.get("caption") == CHAPTERS_CAPTION:
            return [entry["file"] for entry in part["chapters"]]
    raise AssertionError(f"_toc.yml has no part captioned {CHAPTERS_CAPTION!r}")


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    """Build a copy of the book in the smoke profile; return its folder (HTML in _build/html)."""
    source = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "book", source / "book", ignore=shutil.ignore_patterns("notebooks", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "solutions", source / "solutions", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    missing = [page for page in chapter_pages()
               if not page.startswith("book/notebooks/") and not list((source).glob(page + ".*"))]
    missing += [f"solutions/{Path(page).name}/*.ipynb" for page in chapter_pages()
                if page.startswith("book/notebooks/") and not list((source / "solutions" / Path(page).name).glob("*.ipynb"))]
    assert not missing, f"_toc.yml lists chapter pages whose sources do not exist: {missing}"

    env = dict(os.environ, COURSE_PROFILE="smoke", COURSE_CACHE_DIR=str(source / "cache"), HF_HUB_OFFLINE="1")
    prepare = subprocess.run([sys.executable, str(ROOT / "tools" / "book_notebooks.py"), "--root", str(source)],
                             capture_output=True, text=True, env=env)
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
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
