"""The library's layers: every module imports only from its own layer or lower ones, with no circles.

The order is written down twice in course_lib/__init__.py, as ``LAYERS`` and in the package
docstring; these tests read every module's imports (top-level and inside functions) with ``ast``.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import course_lib

PACKAGE = Path(course_lib.__file__).parent
LAYER_OF = {module: index for index, (_, modules) in enumerate(course_lib.LAYERS) for module in modules}


def library_modules() -> list[str]:
    """Top-level module names of course_lib (a subpackage such as world counts as one module)."""
    names = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    names |= {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    return sorted(names)


def imports_of(module: str) -> set[str]:
    """The course_lib modules that ``module`` imports, anywhere in its files."""
    files = [PACKAGE / f"{module}.py"] if (PACKAGE / f"{module}.py").exists() else sorted((PACKAGE / module).rglob("*.py"))
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in getattr(node, "names", [])] \
                if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "course_lib" and len(parts) > 1 and parts[1] != module:
                    found.add(parts[1])
                elif isinstance(node, ast.ImportFrom) and name == "course_lib":
                    found |= {alias.name for alias in node.names}
    return found


def test_every_module_is_in_exactly_one_layer():
    listed = [module for _, modules in course_lib.LAYERS for module in modules]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    assert sorted(listed) == library_modules(), "LAYERS must list every module of course_lib, and only those"


@pytest.mark.parametrize("module", library_modules())
def test_module_imports_nothing_from_a_higher_layer(module):
    higher = {other: course_lib.LAYERS[LAYER_OF[other]][0] for other in imports_of(module) if LAYER_OF[other] > LAYER_OF[module]}
    assert not higher, (
        f"course_lib.{module} (layer {course_lib.LAYERS[LAYER_OF[module]][0]!r}) imports from a higher layer: {higher}. "
        "Move the shared code down, or the module up."
    )


def test_the_foundations_import_nothing_from_the_library():
    for module in course_lib.LAYERS[0][1]:
        assert imports_of(module) == set(), f"course_lib.{module} is a foundation but imports {imports_of(module)}"


def test_there_are_no_import_circles():
    graph = {module: imports_of(module) for module in library_modules()}

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(module):] + (module,)))
        for other in graph[module]:
            visit(other, path + (module,))

    for module in graph:
        visit(module, ())


def test_the_docstring_lists_the_layers_in_order():
    documented = re.findall(r":mod:`course_lib\.(\w+)`", course_lib.__doc__)
    assert documented == [module for _, modules in course_lib.LAYERS for module in modules]


def test_no_public_name_has_two_homes():
    """A function or class in a module's __all__ is defined in that module, not imported (no re-exports)."""
    for module in library_modules():
        imported = importlib.import_module(f"course_lib.{module}")
        for name in getattr(imported, "__all__", []):
            value = getattr(imported, name)
            if callable(value):
                assert value.__module__.startswith(f"course_lib.{module}"), (
                    f"course_lib.{module} exports {name}, which is defined in {value.__module__}: import it from there"
                )
