"""tools/summarise_tests.py: the line at the end of `make test` names what was skipped and why."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import summarise_tests  # noqa: E402  (tools/ is not a package)

SAMPLE_TESTS = '''
import pytest

def test_passes():
    pass

def test_fails():
    assert 1 == 2

@pytest.mark.parametrize("n", [1, 2])
def test_needs_a_browser(n):
    pytest.skip("Chromium is not installed, so\\n the pages are not checked")

@pytest.mark.skipif(True, reason="needs the real datasets")
def test_real_data():
    pass

@pytest.mark.xfail(reason="known bug")
def test_known_bug():
    assert False

@pytest.fixture
def broken():
    raise RuntimeError("set-up failed")

def test_with_broken_fixture(broken):
    pass
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A JUnit report written by a real pytest run of SAMPLE_TESTS."""
    folder = tmp_path_factory.mktemp("sample")
    (folder / "test_sample.py").write_text(textwrap.dedent(SAMPLE_TESTS))
    path = folder / "report.xml"
    # No plugins (nbval, xdist...): pytest's own JUnit writer is what is read, and it starts faster.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={path}",
                          "test_sample.py"], cwd=folder, capture_output=True, text=True,
                         env=dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert run.returncode == 1 and path.is_file(), run.stdout + run.stderr
    return path


def test_counts_and_groups_skip_reasons(report):
    outcomes = summarise_tests.Outcomes()
    summarise_tests.read_report(report, outcomes)
    assert (outcomes.passed, outcomes.failed, outcomes.xfailed, outcomes.skipped) == (1, 2, 1, 3)
    assert outcomes.skip_reasons == {"Chromium is not installed, so the pages are not checked": 2,
                                     "needs the real datasets": 1}
    assert summarise_tests.summary_line(outcomes, "make test") == (
        "make test: 1 passed, 2 failed, 3 skipped, 1 expected failures. Skipped: "
        "2 x Chromium is not installed, so the pages are not checked; 1 x needs the real datasets"
    )


def test_reports_add_up_and_a_missing_one_is_named(report, tmp_path, capsys):
    missing = tmp_path / "notebooks.xml"
    assert summarise_tests.main([str(report), str(report), str(missing), "--title", "make test-fast"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("make test-fast: 2 passed, 4 failed, 6 skipped, 2 expected failures. Skipped: 4 x Chromium")
    assert line.endswith(f"No report from {missing}: that run did not finish.")
    assert "\n" not in line


def test_nothing_skipped_says_so_and_a_broken_report_is_an_error(tmp_path):
    assert summarise_tests.summary_line(summarise_tests.Outcomes(passed=3), "make test") == (
        "make test: 3 passed, 0 failed, 0 skipped. Nothing was skipped.")
    (tmp_path / "broken.xml").write_text("<testsuites><testcase")
    with pytest.raises(ValueError, match="not a JUnit XML report.*rerun the tests"):
        summarise_tests.read_report(tmp_path / "broken.xml", summarise_tests.Outcomes())
