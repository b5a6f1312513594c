"""The lite world runs end to end on real data and real ImageNet weights, offline, in every chapter.

``COURSE_PROFILE=lite COURSE_SIZE=smoke``: EfficientNet-Lite0's ImageNet weights from their pip
package, Fashion-MNIST from Debian's ``dataset-fashion-mnist`` and the genuine MNIST of
../shared/data (19.3's far target). Unlike tests/test_real_profile.py, nothing here is a stand-in
and no checksum is waived, so the accuracies printed are real ones, if from tiny runs.

Skipped, with the reason, where Fashion-MNIST or the shared MNIST is missing; under CI (``CI``
set) a missing Fashion-MNIST fails instead, since .ci/run installs it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from notebook_outputs import run_chapter, stream_text
from standins import link_shared_mnist_usps

pytestmark = [pytest.mark.slow, pytest.mark.notebook]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "solutions").glob("*/*.ipynb"))


@pytest.fixture(scope="module")
def lite_folders(tmp_path_factory, fashion_mnist) -> dict[str, Path]:
    """A data folder holding the genuine MNIST and USPS, and one feature cache for every chapter."""
    root = tmp_path_factory.mktemp("lite-world")
    if not link_shared_mnist_usps(root / "data"):
        pytest.skip("the genuine MNIST/USPS copy (../shared/data) is absent: 19.3's far target is MNIST")
    return {"data": root / "data", "cache": root / "cache"}


@pytest.fixture
def lite_smoke_env(lite_folders, monkeypatch) -> dict[str, Path]:
    for name in ("NBGRADER_EXECUTION", "COURSE_DEVICE", "COURSE_UNVERIFIED_FILES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COURSE_PROFILE", "lite")
    monkeypatch.setenv("COURSE_SIZE", "smoke")
    monkeypatch.setenv("COURSE_DATA_DIR", str(lite_folders["data"]))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(lite_folders["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return lite_folders


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.parent.name for path in NOTEBOOKS])
def test_chapter_runs_in_the_lite_world_at_smoke_size(path, lite_smoke_env):
    run = run_chapter(path)
    print(f"{path.name}: {run.seconds:.1f} s in the lite world at smoke size")
    code_cells, stdout, stderr = run.code_cells, run.stdout, run.stderr
    summary = stream_text(code_cells[0], "stdout")
    assert "lite world, smoke size" in summary and "ImageNet efficientnet-lite0" in summary
    assert "fashion-mnist" in stdout and "COURSE_UNVERIFIED_FILES" not in stderr
    if any("near_and_far_targets(cfg)" in cell.source for cell in code_cells):
        assert "mnist from" in stdout  # the far target is the real MNIST
    # No fall-back to the course's world, and a headline computed from the real run.
    assert not (lite_smoke_env["cache"] / "world").exists(), "shape-world images were generated"
    assert "target shapes of the course's world" not in stdout
    headlines = re.findall(r"HEADLINE \[lite \(smoke size\)[^\n]*", stdout)
    assert headlines, "the chapter printed no headline"
