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

from standins import SHARED_DATA


_COURSE_ENVIRONMENT = ("COURSE_PROFILE", "COURSE_SIZE", "NBGRADER_EXECUTION", "COURSE_DEVICE",
                       "COURSE_UNVERIFIED_FILES", "COURSE_DATA_DIR")


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory):
    """A clean environment for setup() with its own cache folder (ShapeWorld and the source models cache
    under COURSE_CACHE_DIR), yielded; the thread count that setup(size="smoke") lowers is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for name in _COURSE_ENVIRONMENT:
            patch.delenv(name, raising=False)
        cache = tmp_path_factory.mktemp("course-cache")
        patch.setenv("COURSE_CACHE_DIR", str(cache))
        yield cache
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite_smoke_cfg(smoke_env, tmp_path_factory):
    """The lite world's config at smoke size, reading the genuine MNIST/USPS through links in a folder of its
    own, caching under ``smoke_env``; skipped, with the reason, where that copy is absent."""
    import dataclasses

    import course_lib
    from standins import link_shared_mnist_usps

    data = tmp_path_factory.mktemp("lite-data")
    if not link_shared_mnist_usps(data):
        pytest.skip("the genuine MNIST/USPS copy (../shared/data, or $COURSE_SHARED_DATA) is absent")
    cfg = course_lib.setup(profile="lite", size="smoke", quiet=True)
    return dataclasses.replace(cfg, data_dir=Path(data), cache_dir=smoke_env / "lite")


# tryfirst: the marks must be in place before pytest selects tests with -m.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("notebook") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        if "shared_data" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("realdata"):
            item.add_marker(pytest.mark.realdata)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("realdata") and not SHARED_DATA.is_dir():
        pytest.skip(f"needs the real datasets in {SHARED_DATA}, which is absent "
                    f"(set COURSE_SHARED_DATA to the folder that holds them)")


@pytest.fixture
def shared_data() -> Path:
    """The real MNIST/USPS folder (``realdata`` tests); the test is skipped, with the reason, when it is absent."""
    folder = SHARED_DATA
    if not (folder / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST/USPS copy not found at {folder} (set COURSE_SHARED_DATA to use another folder)")
    return folder


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """Debian's Fashion-MNIST folder (the lite world); skipped, with the reason, where it is absent,
    except under CI (``CI`` set), where it fails: .ci/run installs it."""
    from course_lib.real_datasets import DEBIAN_FASHION_MNIST

    if not (DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").exists():
        message = f"Fashion-MNIST is not installed in {DEBIAN_FASHION_MNIST} (tools/ensure_fashion_mnist.sh)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run should have installed it")
        pytest.skip(message)
    return DEBIAN_FASHION_MNIST


@pytest.fixture
def verified_files_only(monkeypatch) -> None:
    """Checksums are enforced: ``COURSE_UNVERIFIED_FILES`` is unset (the weight loaders' tests)."""
    monkeypatch.delenv("COURSE_UNVERIFIED_FILES", raising=False)
