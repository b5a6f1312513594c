"""The book's text, checked statically in seconds (no build): chapter pages and lab code.

- Every glue role in a chapter page (``book/19_*.md``) names a lab notebook that exists and a
  key that notebook glues, in the form the book build understands (``tests/test_book.py`` builds
  a fixture book to prove the form, and that a missing key fails ``jupyter-book build -W``).
- A chapter page types no measured number: a percentage or a difference in points is pasted from
  its lab with glue, unless the line marks it as a published figure (CONTRIBUTING.md, "Writing
  the chapter pages").
- Every line of code in the instructor notebooks fits the book's column (88 characters).
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

import pytest
from repo_tools import load_tool

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_PAGES = sorted((ROOT / "book").glob("19_*.md"))
NOTEBOOKS = sorted((ROOT / "solutions").glob("*/*.ipynb"))
MAX_CODE_LINE = 88


book_notebooks = load_tool("book_notebooks")


def _cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of a markdown page outside fenced code blocks (``` or ~~~)."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif fence is not None and stripped.startswith(fence):
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


# --- glue roles ------------------------------------------------------------------------------------

# {glue}`doc::key`, {glue:text}`doc::key:.1f`, {glue:any}, {glue:md}, {glue:figure}, {glue:math}
GLUE_ROLE = re.compile(r"\{glue(?::(?P<kind>\w+))?\}`(?P<content>[^`]*)`")
EXAMPLE = "{glue:text}`notebooks/19_1_representations.ipynb::probe_gap:.1f`"


def glue_roles(text: str) -> list[dict]:
    """Every glue role in a page: line, kind, doc (as written), key and format spec (or None)."""
    roles = []
    for number, line in prose_lines(text):
        for match in GLUE_ROLE.finditer(line):
            kind, content = match["kind"] or "any", match["content"]
            doc, _, key = content.rpartition("::") if "::" in content else (None, "", content)
            fmt = None
            if kind == "text" and ":" in key:  # {glue:text}`doc::key:format`
                key, _, fmt = key.rpartition(":")
            roles.append({"line": number, "role": match[0], "kind": kind, "doc": doc, "key": key, "fmt": fmt})
    return roles


def glued_keys(notebook: dict) -> tuple[set[str], list[re.Pattern]]:
    """Keys a notebook glues: literal ``glue("key", ...)`` calls, patterns for f-string keys
    (``glue(f"probe_{stage}", ...)`` becomes ``probe_.+``), and the keys its saved outputs carry."""
    literal, patterns = set(), []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        for match in re.finditer(r"""\bglue\(\s*(?P<f>[fF]?)(?P<q>["'])(?P<key>.*?)(?P=q)""", _cell_source(cell)):
            if match["f"]:
                parts = re.split(r"\{[^{}]*\}", match["key"])
                patterns.append(re.compile(".+".join(re.escape(part) for part in parts)))
            else:
                literal.add(match["key"])
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                literal.add(name)
    return literal, patterns


def _shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def lab_sources() -> dict[str, Path]:
    """``book/notebooks/<stem>.ipynb`` and its real-data page ``<stem>-real-data.ipynb`` (relative
    to the repository) -> the ``solutions/`` notebook both are made from."""
    pairs = book_notebooks.notebook_targets(ROOT / "solutions", ROOT / "book" / "notebooks")
    labs = {}
    for source, target in pairs:
        real_data = target.with_name(target.stem + book_notebooks.REAL_DATA_SUFFIX + target.suffix)
        for page in (target, real_data):
            labs[page.relative_to(ROOT).as_posix()] = source
    return labs


def glue_problems(page: Path, text: str, labs: dict[str, Path]) -> list[str]:
    """What is wrong with each glue role of a chapter page, as lines an author can act on."""
    problems, keys = [], {}
    for role in glue_roles(text):
        where = f"{page.name}:{role['line']}: {role['role']}"
        if role["doc"] is None:
            problems.append(f"{where}: name the lab it comes from, as in {EXAMPLE}")
            continue
        if role["kind"] == "text" and not role["fmt"]:
            problems.append(f"{where}: add a format spec (':.1f', ':.0%', ':d' or ':s'); without one "
                            f"myst-nb 1.4 misreads the role. Example: {EXAMPLE}")
            continue
        if not role["doc"].endswith(".ipynb"):
            problems.append(f"{where}: write the lab's file name with '.ipynb' ({EXAMPLE}); without it "
                            f"the build cannot find the document")
            continue
        # As Sphinx resolves it: relative to the page's folder, or to the book's root with a leading '/'.
        doc = posixpath.normpath(role["doc"][1:] if role["doc"].startswith("/")
                                 else f"{page.parent.relative_to(ROOT).as_posix()}/{role['doc']}")
        if doc not in labs:
            problems.append(f"{where}: {doc} is not a lab page; the labs are {', '.join(sorted(labs))} "
                            f"(made from solutions/<assignment>/), written relative to the page: notebooks/<assignment>.ipynb")
            continue
        if doc not in keys:  # what the book's copy glues: hidden tests, for one, are not in it
            source = json.loads(labs[doc].read_text(encoding="utf-8"))
            keys[doc] = glued_keys(book_notebooks.book_notebook(source, "full", name=_shown(labs[doc])))
        literal, patterns = keys[doc]
        if role["key"] not in literal and not any(pattern.fullmatch(role["key"]) for pattern in patterns):
            problems.append(f"{where}: {_shown(labs[doc])} never glues {role['key']!r} (outside hidden tests); "
                            f"add glue({role['key']!r}, value, display=False) to it (from myst_nb import glue), "
                            f"the key written out or as an f-string such as glue(f'probe_{{stage}}', ...)")
    return problems


def test_glue_roles_are_parsed_into_lab_key_and_format():
    text = ("a {glue:text}`notebooks/x.ipynb::acc:.1f` b {glue}`/book/notebooks/x.ipynb::n`\n"
            "```\n{glue:text}`in_code::no:.1f`\n```\n{glue:text}`notebooks/x.ipynb::acc` {glue:text}`local:.2f`\n")
    assert [(r["line"], r["kind"], r["doc"], r["key"], r["fmt"]) for r in glue_roles(text)] == [
        (1, "text", "notebooks/x.ipynb", "acc", ".1f"),
        (1, "any", "/book/notebooks/x.ipynb", "n", None),
        (5, "text", "notebooks/x.ipynb", "acc", None),
        (5, "text", None, "local", ".2f"),
    ]


def test_glue_problems_name_what_to_fix(tmp_path):
    notebook = {"metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# 19.9 Demo"},
        {"cell_type": "code", "metadata": {}, "source": ['glue("acc", 0.9, display=False)\n', 'for s in "ab":\n',
                                                         '    glue(f"probe_{s}_gap", 1, display=False)\n'], "outputs": []},
        {"cell_type": "code", "metadata": {}, "outputs": [],
         "source": '### BEGIN HIDDEN TESTS\nglue("secret", 1, display=False)\n### END HIDDEN TESTS\n'},
        {"cell_type": "code", "metadata": {}, "source": "show()", "outputs": [
            {"output_type": "display_data", "data": {}, "metadata": {"scrapbook": {"name": "from_output"}}}]},
    ]}
    lab = tmp_path / "lab.ipynb"
    lab.write_text(json.dumps(notebook))
    labs = {"book/notebooks/19_9_demo.ipynb": lab}
    page = ROOT / "book" / "19_9_demo.md"
    good = ("{glue:text}`notebooks/19_9_demo.ipynb::acc:.1f` {glue:text}`notebooks/19_9_demo.ipynb::probe_a_gap:.0%` "
            "{glue}`/book/notebooks/19_9_demo.ipynb::from_output` {glue:text}`../book/notebooks/19_9_demo.ipynb::acc:.2f`")
    assert glue_problems(page, good, labs) == []
    bad = ("{glue:text}`notebooks/19_9_demo.ipynb::ac:.1f`\n{glue:text}`notebooks/19_9_demo::acc:.1f`\n"
           "{glue:text}`notebooks/19_9_demo.ipynb::acc`\n{glue:text}`notebooks/19_8.ipynb::acc:.1f`\n{glue}`acc`\n"
           "{glue:text}`notebooks/19_9_demo.ipynb::secret:d`\n")
    problems = glue_problems(page, bad, labs)
    assert len(problems) == 6, problems
    assert "never glues 'ac'" in problems[0] and "'.ipynb'" in problems[1] and "format spec" in problems[2]
    assert "not a lab page" in problems[3] and "name the lab" in problems[4] and "never glues 'secret'" in problems[5]


@pytest.mark.parametrize("page", CHAPTER_PAGES, ids=[page.stem for page in CHAPTER_PAGES])
def test_every_glue_role_names_a_key_its_lab_glues(page):
    problems = glue_problems(page, page.read_text(encoding="utf-8"), lab_sources())
    if problems:
        pytest.fail(f"{len(problems)} glue role(s) in {page.relative_to(ROOT)} would not paste a number:\n"
                    + "\n".join(problems), pytrace=False)


# --- no typed measured numbers ---------------------------------------------------------------------

# A number with a unit of measured results: 99.8%, 45 percent, 18.2 points, 3 percentage points, 2 pp.
MEASURED = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s*(?:%|percent\b|per cent\b|(?:percentage )?points?\b|pp\b)")
# What exempts a line (a published figure): a citation, "(Kornblith et al., 2019)",
# "Yosinski et al. (2014)", or the marker comment <!-- published -->.
CITATION = re.compile(r"\((?:[A-Z][^()]*?,\s*)?(?:19|20)\d\d[a-z]?\)")
PUBLISHED_MARKER = "<!-- published -->"
INLINE_CODE = re.compile(r"(`+).*?\1")  # glue roles' content and code spans


def typed_numbers(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line that types a measured number instead of gluing it."""
    offending = []
    for number, line in prose_lines(text):
        if PUBLISHED_MARKER in line or CITATION.search(line):
            continue
        if MEASURED.search(INLINE_CODE.sub("", line)):
            offending.append((number, line.strip()))
    return offending


def test_typed_numbers_are_found_and_published_figures_are_not():
    text = (
        "Probe accuracy is 99.8% on stage 4, a gap of 18.2 points.\n"
        "Pasted: {glue:text}`notebooks/x.ipynb::acc:.1%` and `0%|` in code.\n"
        "The paper reports 91.5% (Kornblith et al., 2019).\n"
        "Yosinski et al. (2014) lose 2 percent when the layers co-adapt.\n"
        "On ImageNet 76.1% top-1 <!-- published -->\n"
        "```\nprint('12%')\n```\n"
        "Stages 1 to 4, seeds 0 to 4, 2026, 3 exercises.\n"
    )
    assert typed_numbers(text) == [(1, "Probe accuracy is 99.8% on stage 4, a gap of 18.2 points.")]


@pytest.mark.parametrize("page", CHAPTER_PAGES, ids=[page.stem for page in CHAPTER_PAGES])
def test_chapter_pages_type_no_measured_numbers(page):
    offending = typed_numbers(page.read_text(encoding="utf-8"))
    listing = "\n".join(f"  {page.relative_to(ROOT)}:{number}: {line}" for number, line in offending)
    if offending:
        pytest.fail(
            f"{len(offending)} line(s) of {page.relative_to(ROOT)} type a measured number (a % or points). "
            f"Glue it from the lab instead, e.g. {EXAMPLE} with glue('probe_gap', value, display=False) in the "
            f"notebook; a figure from a paper keeps a citation '(Author, 2019)' or {PUBLISHED_MARKER} on its "
            f"line (CONTRIBUTING.md, 'Writing the chapter pages'):\n{listing}", pytrace=False)


# --- code fits the book's column -------------------------------------------------------------------

def long_code_lines(notebook: dict, limit: int = MAX_CODE_LINE) -> list[tuple[int, int, int, str]]:
    """``(cell index, line number, length, line)`` of each code line longer than ``limit``."""
    found = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        for number, line in enumerate(_cell_source(cell).splitlines(), start=1):
            if len(line) > limit:
                found.append((index, number, len(line), line))
    return found


def test_long_code_lines_are_found():
    notebook = {"cells": [{"cell_type": "markdown", "source": "x" * 100},
                          {"cell_type": "code", "source": ["ok = 1\n", "y = '" + "a" * 90 + "'\n"]}]}
    assert [(cell, line, length) for cell, line, length, _ in long_code_lines(notebook)] == [(1, 2, 96)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.parent.name for path in NOTEBOOKS])
def test_code_lines_fit_the_book_column(notebook):
    long = long_code_lines(json.loads(notebook.read_text(encoding="utf-8")))
    listing = "\n".join(f"  {notebook.relative_to(ROOT)}, cell {cell}, line {line} ({length} chars): {text.strip()}"
                        for cell, line, length, text in long)
    if long:
        pytest.fail(f"{len(long)} code line(s) of {notebook.relative_to(ROOT)} are longer than {MAX_CODE_LINE} "
                    f"characters, so the book scrolls them sideways; wrap them:\n{listing}", pytrace=False)
