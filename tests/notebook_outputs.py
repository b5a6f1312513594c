"""Reading an executed notebook's outputs in tests: which cells must draw a figure, what they printed.

Shared by the tests that run every chapter outside the course's world (test_real_profile.py,
test_lite_profile.py).
"""

from __future__ import annotations

import ast
import dataclasses
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def _is_offline_branch(node: ast.AST) -> bool:
    """``if cfg.offline:``: a block that only the offline world runs."""
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Attribute) and test.attr == "offline" and isinstance(test.value, ast.Name) \
        and test.value.id == "cfg"


def real_world_calls(source: str) -> list[ast.Call]:
    """The calls in a cell that run in the real world: those outside ``if cfg.offline:`` blocks
    (their ``else:`` branches count)."""
    calls = []

    def visit(node: ast.AST) -> None:
        children = node.orelse if _is_offline_branch(node) else ast.iter_child_nodes(node)
        if isinstance(node, ast.Call):
            calls.append(node)
        for child in children:
            visit(child)

    visit(ast.parse(source))
    return calls


def calls_in_real_world(source: str, function: str) -> bool:
    """Whether a cell calls ``function`` (a plain name) outside ``if cfg.offline:`` blocks."""
    return any(isinstance(call.func, ast.Name) and call.func.id == function
               for call in real_world_calls(source))


def draws_figure(source: str) -> bool:
    """Whether a cell draws a figure in the real world: it calls ``plots.*`` or ``plt.show()``
    outside ``if cfg.offline:`` blocks."""
    return any(isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
               and (call.func.value.id == "plots"
                    or (call.func.value.id == "plt" and call.func.attr == "show"))
               for call in real_world_calls(source))


def stream_text(cell, stream: str) -> str:
    """Everything ``cell`` printed to ``stream`` (``"stdout"`` or ``"stderr"``)."""
    return "".join(out.get("text", "") for out in cell.get("outputs", [])
                   if out.get("output_type") == "stream" and out.get("name") == stream)


@dataclasses.dataclass
class ExecutedNotebook:
    """A chapter notebook after a run: its code cells, all they printed, and how long it took."""

    code_cells: list
    stdout: str
    stderr: str
    seconds: float


def run_chapter(path: Path) -> ExecutedNotebook:
    """Execute the notebook at ``path`` in its folder (the first failing cell stops the run with its traceback)
    and check that every cell that should draw a figure (:func:`draws_figure`) did."""
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute()
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for index, cell in enumerate(code_cells):
        if draws_figure(cell.source):
            assert any("image/png" in out.get("data", {}) for out in cell.outputs), (
                f"code cell {index} of {path.name} should draw a figure but shows none:\n{cell.source[:300]}")
    return ExecutedNotebook(code_cells, "".join(stream_text(cell, "stdout") for cell in code_cells),
                            "".join(stream_text(cell, "stderr") for cell in code_cells), time.perf_counter() - started)
