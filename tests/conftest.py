"""What the test markers mean, applied in one place (the markers are declared in pyproject.toml).

``slow``
    takes more than a few seconds; ``make test-fast`` (``pytest -m "not slow" tests``) leaves it out.
``notebook``
    executes notebooks (nbclient, nbgrader or jupyter-book); always slow, so it is marked slow here.
``realdata``
    needs the real datasets in ``../shared/data`` (or ``$COURSE_SHARED_DATA``); skipped, with the
    reason, when that folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The folder of real datasets the ``realdata`` tests read: ``$COURSE_SHARED_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("COURSE_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")


# tryfirst: the marks must be in place before pytest selects tests with -m.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("notebook") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("realdata") and not shared_data_dir().is_dir():
        pytest.skip(f"needs the real datasets in {shared_data_dir()}, which is absent "
                    f"(set COURSE_SHARED_DATA to the folder that holds them)")
