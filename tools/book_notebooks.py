"""Prepare the book's generated inputs: chapter notebooks from ``solutions/`` and offline MathJax.

Run by ``make book`` and by ``tests/test_book.py`` before ``jupyter-book build``::

    python tools/book_notebooks.py                          # full edition (solutions behind a toggle)
    python tools/book_notebooks.py --edition no-solutions   # solution code removed, outputs kept

What it writes (both are generated, gitignored, and rewritten on every run):

``book/notebooks/<assignment>.ipynb``
    one per ``solutions/<assignment>/*.ipynb`` (``<assignment>-<name>.ipynb`` when an assignment
    has several notebooks). The instructor notebook is turned into a reader's page: hidden-test
    regions are deleted, the solution markers are deleted, solution cells are collapsed behind a
    "show code" toggle (myst-nb tag ``hide-input``) so a reader can try first and then look, or,
    in the ``no-solutions`` edition, their code is dropped from the page (tag ``remove-input``;
    their outputs stay). nbgrader's metadata is stripped. The notebook's title (its first ``# ``
    heading, ``# 19.1 Why transfer works``) becomes ``# 19.1 Lab: Why transfer works``: in the
    table of contents the notebook is a child page of its chapter's narrative page (``_toc.yml``),
    so it must not repeat the chapter's title.

``book/notebooks/<assignment>-real-data.ipynb``
    the same lab run on real data: the ``lite`` profile (Fashion-MNIST and MNIST, EfficientNet-Lite0's
    ImageNet weights, all offline), titled ``# 19.1 Lab on real data: ...``. This script executes
    it (``--real-data``, what ``make book`` does) at the size of the book's own profile
    (``COURSE_PROFILE``; standard unless set), because one book build runs two profiles; the
    book then renders its stored outputs (``_config.yml`` excludes these pages from execution),
    and each chapter's narrative page glues its "On real data" numbers from them.

``_build/mathjax/mathjax``
    a link to (or copy of) MathJax 2.7 from the ``jupyter-server-mathjax`` package, so that math
    renders without a network. ``_config.yml`` lists ``_build/mathjax`` in ``html_static_path``;
    it must not live under ``_static/``, because Jupyter Book turns every ``.js`` file there
    into a ``<script>`` tag.

The module is also a Sphinx extension (``setup``; ``_config.yml`` loads it through
``sphinx.local_extensions``) that leaves ipywidget outputs out of the executed book: tqdm's
progress bars, which would otherwise show as frozen ``0%|          | 0/1`` lines. Students in
JupyterLab still see live bars; only the book drops them. (tqdm's ``TQDM_DISABLE`` environment
variable cannot do this: tqdm 4.70 lets an explicit ``disable=`` argument win over it, and both
``course_lib`` and ``tqdm.notebook`` pass one.)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EDITIONS = ("full", "no-solutions")

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
# Text that only belongs in the students' version (nbgrader's stubs) or in the instructor's.
FORBIDDEN_IN_BOOK = ("### BEGIN", "### END", "YOUR CODE HERE", "YOUR ANSWER HERE")
# "# 19.1 Why transfer works" -> number "19.1", rest "Why transfer works".
_NUMBERED_TITLE = re.compile(r"#\s+(?P<number>\d+(?:\.\d+)*)\s+(?P<rest>.+)")
LAB = "Lab:"
REAL_DATA_LAB = "Lab on real data:"
REAL_DATA_SUFFIX = "-real-data"
# The lite profile: real data and a real ImageNet backbone, offline (course_lib.config).
REAL_DATA_PROFILE = "lite"
REAL_DATA_NOTE = (
    "This page is the lab of the previous page run on **real data**: the `lite` profile, in which "
    "the frozen backbone is EfficientNet-Lite0 with its ImageNet weights, the near target is "
    "Fashion-MNIST and the far target MNIST (28-px images upsampled), all installed offline. The "
    "chapter's section \"On real data\" quotes its numbers. The chapter's sentences are asserted "
    "only in the course's world; here each one is printed with whether it holds for real data "
    "(`claim holds: ...` or `claim not checked in this run, and it does not hold here: ...`). "
    "Run it yourself with `COURSE_PROFILE=lite`.\n"
)
# ipywidgets (tqdm's progress bars) need widget JavaScript the offline book does not load.
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def _strip_regions(source: str, begin: str, end: str, keep_inside: bool, where: str) -> str:
    """Delete the ``begin``/``end`` marker lines; keep what lies between them only if ``keep_inside``."""
    kept: list[str] = []
    inside = False
    for line in source.splitlines(keepends=True):
        marker = line.strip()
        if marker.startswith(begin):
            if inside:
                raise ValueError(f"{where}: nested {begin!r}; close the first region with {end!r}.")
            inside = True
        elif marker.startswith(end):
            if not inside:
                raise ValueError(f"{where}: {end!r} without a {begin!r} before it; add or remove a marker.")
            inside = False
        elif keep_inside or not inside:
            kept.append(line)
    if inside:
        raise ValueError(f"{where}: {begin!r} is never closed; add a {end!r} line after it.")
    return "".join(kept)


def strip_hidden_tests(source: str, where: str = "cell") -> str:
    """Delete every hidden-test region (the marker lines and everything between them)."""
    return _strip_regions(source, BEGIN_HIDDEN, END_HIDDEN, keep_inside=False, where=where)


def strip_solution_markers(source: str, where: str = "cell") -> str:
    """Delete the ``### BEGIN/END SOLUTION`` marker lines and keep the solution between them."""
    return _strip_regions(source, BEGIN_SOLUTION, END_SOLUTION, keep_inside=True, where=where)


def _add_tag(cell: dict, tag: str) -> None:
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def book_cell(cell: dict, edition: str, where: str = "cell") -> dict | None:
    """Return the reader's version of one instructor cell, or None when nothing of it is left.

    Code solution cells get the tag ``hide-input`` (full edition) or ``remove-input``
    (no-solutions); a markdown solution (a written answer) goes into a collapsed "Solution"
    dropdown, or is left out in the no-solutions edition.
    """
    if edition not in EDITIONS:
        raise ValueError(f"Unknown edition {edition!r}: use one of {', '.join(EDITIONS)}.")
    cell = copy.deepcopy(cell)
    nbgrader = cell.get("metadata", {}).pop("nbgrader", {})
    source = cell.get("source", "")
    if isinstance(source, list):
        source = "".join(source)
    source = strip_solution_markers(strip_hidden_tests(source, where), where)
    is_solution = bool(nbgrader.get("solution"))
    if cell.get("cell_type") == "code":
        # A test cell whose tests were all hidden has nothing left for the reader.
        if not source.strip() and nbgrader.get("grade") and not is_solution:
            return None
        if is_solution:
            _add_tag(cell, "hide-input" if edition == "full" else "remove-input")
    elif cell.get("cell_type") == "markdown" and is_solution:
        if edition == "no-solutions":
            return None
        source = f":::{{admonition}} Solution\n:class: dropdown\n\n{source.strip()}\n:::\n"
    for text in FORBIDDEN_IN_BOOK:
        if text in source:
            raise ValueError(
                f"{where}: {text!r} is still in the cell after conversion. Solutions notebooks must mark "
                f"solutions with {BEGIN_SOLUTION!r}/{END_SOLUTION!r} and hidden tests with "
                f"{BEGIN_HIDDEN!r}/{END_HIDDEN!r} on lines of their own; fix the cell in solutions/."
            )
    cell["source"] = source
    return cell


def lab_heading(line: str, lab: str = LAB) -> str:
    """``# 19.1 Why transfer works`` -> ``# 19.1 Lab: Why transfer works`` (unnumbered: ``# Lab: ...``).

    ``lab`` is the word put in (``Lab on real data:`` for the real-data copy). A heading that
    already says it is returned unchanged, so converting twice is harmless.
    """
    title = line.strip()
    if not title.startswith("# "):
        raise ValueError(f"{line!r} is not a level-1 markdown heading ('# Title').")
    if lab in title:
        return title
    numbered = _NUMBERED_TITLE.fullmatch(title)
    if numbered:
        return f"# {numbered['number']} {lab} {numbered['rest'].strip()}"
    return f"# {lab} {title[2:].strip()}"


def retitle_as_lab(cells: list[dict], name: str = "notebook", lab: str = LAB) -> None:
    """Rewrite the notebook's first ``# `` heading (outside code fences) with :func:`lab_heading`, in place."""
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        lines = cell["source"].splitlines(keepends=True)
        fenced = False
        for index, line in enumerate(lines):
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and line.startswith("# "):
                ending = line[len(line.rstrip("\r\n")):]
                lines[index] = lab_heading(line, lab) + ending
                cell["source"] = "".join(lines)
                return
    raise ValueError(
        f"{name} has no title: the book names a chapter's lab page after the notebook's first "
        f"'# ' heading, so start its first markdown cell with '# 19.x Title' (in solutions/)."
    )


def book_notebook(notebook: dict, edition: str = "full", name: str = "notebook", real_data: bool = False) -> dict:
    """Return the reader's version of an instructor (nbgrader source) notebook, as nbformat JSON.

    With ``real_data``, the version for the lab's real-data page: titled "Lab on real data", with
    :data:`REAL_DATA_NOTE` after the title (it still has to be executed in that profile:
    :func:`execute_real_data`).
    """
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise ValueError(f"{name}: not a Jupyter notebook (no 'cells' list); is the file an .ipynb saved by Jupyter?")
    result = copy.deepcopy(notebook)
    result.get("metadata", {}).pop("nbgrader", None)
    cells = []
    for index, cell in enumerate(notebook["cells"]):
        converted = book_cell(cell, edition, where=f"{name}, cell {index}")
        if converted is not None:
            cells.append(converted)
    retitle_as_lab(cells, name, REAL_DATA_LAB if real_data else LAB)
    if real_data:
        title_cell = next(index for index, cell in enumerate(cells) if REAL_DATA_LAB in cell.get("source", ""))
        note = {"cell_type": "markdown", "metadata": {}, "source": REAL_DATA_NOTE}
        if any("id" in cell for cell in cells):  # nbformat 4.5 and later: every cell has an id
            note["id"] = "real-data-note"
        cells.insert(title_cell + 1, note)
    result["cells"] = cells
    return result


def notebook_targets(solutions_dir: Path, out_dir: Path) -> list[tuple[Path, Path]]:
    """Pair every ``solutions/<assignment>/*.ipynb`` with the book notebook it becomes."""
    solutions_dir = Path(solutions_dir)
    if not solutions_dir.is_dir():
        raise FileNotFoundError(f"No solutions folder at {solutions_dir}: run from the repository root or pass --solutions.")
    pairs = []
    for assignment in sorted(p for p in solutions_dir.iterdir() if p.is_dir()):
        sources = sorted(p for p in assignment.glob("*.ipynb"))
        for source in sources:
            stem = assignment.name if len(sources) == 1 else f"{assignment.name}-{source.stem}"
            pairs.append((source, Path(out_dir) / f"{stem}.ipynb"))
    return pairs


def write_book_notebooks(solutions_dir: Path, out_dir: Path, edition: str = "full",
                         real_data: bool = False) -> list[Path]:
    """Write the book's notebooks from the solutions notebooks; return the files written.

    With ``real_data``, each lab also gets its real-data page, ``<stem>-real-data.ipynb``, written
    after the lab (not executed here: :func:`execute_real_data`). ``out_dir`` is generated: old
    notebooks in it are deleted first, so a renamed assignment does not leave a stale page behind.
    """
    if edition not in EDITIONS:
        raise ValueError(f"Unknown edition {edition!r}: use one of {', '.join(EDITIONS)}.")
    pairs = notebook_targets(solutions_dir, out_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.ipynb"):
        stale.unlink()
    written = []
    for source, target in pairs:
        try:
            notebook = json.loads(source.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{source} is not valid notebook JSON ({error}); open and re-save it in Jupyter.") from error
        versions = [(target, False)]
        if real_data:
            versions.append((target.with_name(target.stem + REAL_DATA_SUFFIX + target.suffix), True))
        for path, on_real_data in versions:
            result = book_notebook(notebook, edition, name=str(source), real_data=on_real_data)
            path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(path)
    return written


def real_data_size() -> str:
    """The size the real-data labs run at: the book's own size, by the course's rules
    (``COURSE_SIZE``, else the size of the ``COURSE_PROFILE`` preset; :func:`course_lib.config.choose_size`)."""
    from course_lib.config import choose_profile, choose_size

    profile, _ = choose_profile()
    return choose_size(profile)[0]


def execute_real_data(paths: list[Path], timeout_s: int = 1800) -> list[str]:
    """Execute each real-data lab in place, in the lite profile at :func:`real_data_size`; return one line per lab.

    A cell that fails stops the build with the notebook's name and the error, like the book's own
    execution does (a missing dataset says which package or folder provides it).
    """
    import time

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    size = real_data_size()
    kernel_env = dict(os.environ, COURSE_PROFILE=REAL_DATA_PROFILE, COURSE_SIZE=size)
    lines = []
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(env=kernel_env)
        except CellExecutionError as error:
            raise RuntimeError(f"{path.name} failed in the {REAL_DATA_PROFILE} profile ({size} size):\n{error}") from error
        nbformat.write(notebook, path)
        lines.append(f"executed {path.name} in the {REAL_DATA_PROFILE} profile ({size} size) in "
                     f"{time.perf_counter() - started:.0f} s")
    return lines


def mathjax_source() -> Path:
    """The MathJax 2.7 tree shipped by the ``jupyter-server-mathjax`` package."""
    try:
        import jupyter_server_mathjax
    except ImportError as error:
        raise ImportError(
            "The book serves MathJax from the package jupyter-server-mathjax, which is not installed: "
            "run `make venv` (or `pip install -c requirements/constraints.txt jupyter-server-mathjax`)."
        ) from error
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").is_file():
        raise FileNotFoundError(f"{static / 'MathJax.js'} is missing: reinstall jupyter-server-mathjax.")
    return static


def install_mathjax(build_dir: Path) -> Path:
    """Make ``<build_dir>/mathjax/mathjax`` point at MathJax; return that path.

    A symbolic link avoids copying 600 files on every build; where links are not allowed
    (Windows without developer mode) the tree is copied instead, which Sphinx serves the same way.
    """
    target = Path(build_dir) / "mathjax" / "mathjax"
    source = mathjax_source()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    try:
        target.symlink_to(source, target_is_directory=True)
    except OSError:
        shutil.copytree(source, target)
    return target


def drop_widget_outputs(document) -> int:
    """Delete the outputs that carry an ipywidget (tqdm's bars) from a myst-nb doctree; return how many.

    In a live notebook a progress bar is a widget; the book renders no widgets (``_config.yml``),
    and the widget's plain-text fallback is the bar as it was drawn, before it ran: a frozen
    ``0%|          | 0/1``. Readers lose nothing by not seeing it.
    """
    from docutils import nodes

    def is_widget_bundle(node) -> bool:
        return (isinstance(node, nodes.container) and node.get("nb_element") == "mime_bundle"
                and any(child.get("mime_type") == WIDGET_VIEW_MIME for child in node.children))

    dropped = 0
    for bundle in list(document.findall(is_widget_bundle)):
        parent = bundle.parent
        parent.remove(bundle)
        dropped += 1
        if not parent.children and parent.get("nb_element") == "cell_code_output":
            parent.parent.remove(parent)  # no empty output box under the cell
    return dropped


def setup(app):
    """Sphinx extension (``_config.yml``: ``sphinx.local_extensions``): leave widget outputs out."""
    from sphinx.transforms.post_transforms import SphinxPostTransform

    class DropWidgetOutputs(SphinxPostTransform):
        # Before myst-nb's SelectMimeType (priority 4) would render the widget's text fallback.
        default_priority = 3

        def run(self, **kwargs) -> None:
            drop_widget_outputs(self.document)

    app.add_post_transform(DropWidgetOutputs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edition", choices=EDITIONS, default="full", help="full (default) or no-solutions")
    parser.add_argument("--root", type=Path, default=REPO_ROOT,
                        help="book root holding _config.yml (default: this repository)")
    parser.add_argument("--solutions", type=Path, default=None,
                        help="instructor notebooks folder (default: <root>/solutions)")
    parser.add_argument("--real-data", action="store_true",
                        help="also write each lab's real-data page and execute it in the lite profile (make book)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    solutions = args.solutions if args.solutions is not None else root / "solutions"
    written = write_book_notebooks(solutions, root / "book" / "notebooks", args.edition, real_data=args.real_data)
    mathjax = install_mathjax(root / "_build")
    for path in written:
        print(f"wrote {path.relative_to(root) if path.is_relative_to(root) else path} ({args.edition} edition)")
    if args.real_data:
        for line in execute_real_data([path for path in written if path.stem.endswith(REAL_DATA_SUFFIX)]):
            print(line, flush=True)
    print(f"MathJax for the book: {mathjax} -> {mathjax.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
