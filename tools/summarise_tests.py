"""One line at the end of ``make test``: what passed, what failed, and what was skipped and why.

``make test`` runs pytest twice (the tests, then the instructor notebooks under nbval), each
writing a JUnit XML report (``--junitxml``); this reads the reports and prints::

    make test: 712 passed, 0 failed, 5 skipped. Skipped: 5 x Chromium is not installed, ...

so that a skipped check (no browser, no real datasets) cannot scroll by unnoticed::

    python tools/summarise_tests.py _build/test-reports/tests.xml _build/test-reports/notebooks.xml

A report that is missing (its run crashed or was interrupted) is named in the line.
It always exits 0: the Makefile keeps pytest's own exit status.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path


@dataclasses.dataclass
class Outcomes:
    """Counts from one or more pytest runs, and every skip reason with how often it was given."""

    passed: int = 0
    failed: int = 0
    xfailed: int = 0
    skip_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    missing: list[str] = dataclasses.field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(self.skip_reasons.values())


def _one_line(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip() or "no reason given"


def read_report(path: Path, outcomes: Outcomes) -> None:
    """Add the test cases of the JUnit XML report at ``path`` to ``outcomes``."""
    try:
        root = ElementTree.parse(path).getroot()
    except FileNotFoundError:
        outcomes.missing.append(str(path))
        return
    except ElementTree.ParseError as error:
        raise ValueError(f"{path} is not a JUnit XML report ({error}); rerun the tests to rewrite it.") from error
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes.failed += 1
        elif (skipped := case.find("skipped")) is not None:
            if skipped.get("type") == "pytest.xfail":
                outcomes.xfailed += 1
            else:
                outcomes.skip_reasons[_one_line(skipped.get("message"))] += 1
        else:
            outcomes.passed += 1


def summary_line(outcomes: Outcomes, title: str) -> str:
    """The line printed at the end: counts, then every skip reason (most frequent first)."""
    counts = f"{outcomes.passed} passed, {outcomes.failed} failed, {outcomes.skipped} skipped"
    if outcomes.xfailed:
        counts += f", {outcomes.xfailed} expected failures"
    if outcomes.skip_reasons:
        reasons = "; ".join(f"{n} x {reason}" for reason, n in outcomes.skip_reasons.most_common())
        skips = f"Skipped: {reasons}"
    else:
        skips = "Nothing was skipped."
    line = f"{title}: {counts}. {skips}"
    if outcomes.missing:
        line += f" No report from {', '.join(outcomes.missing)}: that run did not finish."
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="JUnit XML files written by pytest --junitxml")
    parser.add_argument("--title", default="make test", help="what the line is about (default: make test)")
    args = parser.parse_args(argv)
    outcomes = Outcomes()
    for path in args.reports:
        read_report(path, outcomes)
    print(summary_line(outcomes, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
