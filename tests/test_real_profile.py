"""The real world runs end to end: every chapter notebook, on stand-in files in the real layouts.

``COURSE_PROFILE=real COURSE_SIZE=smoke`` runs the torchvision datasets and the ImageNet ResNet-18
at smoke size. No machine here has the real files or internet, so the test builds them in the
real on-disk layouts (tests/standins.py): a tiny CIFAR-10 and SVHN, a randomly initialised
ResNet-18 checkpoint in torch's hub cache, and links to the genuine MNIST/USPS copy where it exists.
``COURSE_UNVERIFIED_FILES=1`` lets the loaders accept the stand-ins (their checksums cannot match),
with a warning naming each file, which the test then looks for.

Accuracy on random images means nothing; what is checked is that every cell runs (hidden tests
included), that every figure is drawn, and that nothing fell back to the offline world.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from notebook_outputs import calls_in_real_world, draws_figure, run_chapter, stream_text
from standins import link_shared_mnist_usps, write_cifar10, write_resnet18_checkpoint, write_svhn

from course_lib import config
from course_lib.data import dataset_targets, lesson_data
from course_lib.feature_cache import FeatureCache, weights_fingerprint
from course_lib.features import extract_features
from course_lib.models import load_backbone
from course_lib.real_datasets import load_real_dataset

pytestmark = [pytest.mark.slow, pytest.mark.notebook]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "solutions").glob("*/*.ipynb"))


@dataclasses.dataclass(frozen=True)
class RealFiles:
    data_dir: Path
    torch_home: Path
    cache_dir: Path
    checkpoint: Path
    checkpoint_fingerprint: str
    has_mnist_usps: bool


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> RealFiles:
    """Stand-in data and weights, shared by every notebook (with one feature cache, as for a student)."""
    root = tmp_path_factory.mktemp("real-world")
    data_dir, torch_home = root / "data", root / "torch"
    # 16 training images per class: 19.3's largest training set at smoke size.
    write_cifar10(data_dir, train_per_class=16)
    write_svhn(data_dir, train_per_class=16)
    has_mnist_usps = link_shared_mnist_usps(data_dir)
    checkpoint, state = write_resnet18_checkpoint(torch_home)
    reference = load_backbone("resnet18", pretrained=False)
    reference.load_state_dict(state)
    return RealFiles(data_dir, torch_home, root / "cache", checkpoint, weights_fingerprint(reference), has_mnist_usps)


@pytest.fixture
def real_smoke_env(real_files, monkeypatch) -> RealFiles:
    """The environment of a CI run of the real world at smoke size (notebook kernels inherit it)."""
    for name in ("NBGRADER_EXECUTION", "COURSE_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COURSE_PROFILE", "real")
    monkeypatch.setenv("COURSE_SIZE", "smoke")
    monkeypatch.setenv("COURSE_DATA_DIR", str(real_files.data_dir))
    monkeypatch.setenv("TORCH_HOME", str(real_files.torch_home))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(real_files.cache_dir))
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return real_files


def test_draws_figure_skips_offline_only_plots():
    assert draws_figure("fig = plots.plot_curves(x, y)")
    assert draws_figure("for a in b:\n    plt.show()")
    assert not draws_figure("plt.subplots_adjust()\nprint(plots)")
    assert not draws_figure("if cfg.offline:\n    plt.show()\nelse:\n    print('one domain')")
    assert draws_figure("if cfg.offline:\n    pass\nelse:\n    plots.show_images(x)")


def test_calls_in_real_world_skips_offline_only_calls():
    assert calls_in_real_world("targets = near_and_far_targets(cfg)", "near_and_far_targets")
    assert not calls_in_real_world("if cfg.offline:\n    t = near_and_far_targets(cfg)", "near_and_far_targets")
    assert calls_in_real_world("if cfg.offline:\n    pass\nelse:\n    f(near_and_far_targets(cfg))",
                               "near_and_far_targets")
    assert not calls_in_real_world("# near_and_far_targets(cfg)\nx = 1", "near_and_far_targets")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.parent.name for path in NOTEBOOKS])
def test_chapter_runs_in_the_real_world_at_smoke_size(path, real_smoke_env):
    files = real_smoke_env
    shift_chapter = "shift_problem(cfg)" in path.read_text()  # 19.4: MNIST -> USPS, not CIFAR-10
    if shift_chapter and not files.has_mnist_usps:
        pytest.skip("19.4's real world is MNIST -> USPS, and the genuine copy (../shared/data) is absent")
    continual_chapter = "continual_problem(cfg)" in path.read_text()  # 19.7: Split MNIST
    if continual_chapter and not files.has_mnist_usps:
        pytest.skip("19.7's real world is Split MNIST, and the genuine copy (../shared/data) is absent")
    features_before = set((files.cache_dir / "features").glob("*.pt"))
    run = run_chapter(path)
    print(f"{path.name}: {run.seconds:.1f} s in the real world at smoke size")
    code_cells, stdout, stderr = run.code_cells, run.stdout, run.stderr

    # The setup summary names the real world, its data folder and the ImageNet backbone.
    summary = stream_text(code_cells[0], "stdout")
    assert "profile   real (smoke size)" in summary and "real world, smoke size" in summary
    assert f"cifar10 from {files.data_dir}" in summary and "ImageNet resnet18" in summary

    # The data came from the stand-in files and the backbone is the stand-in checkpoint.
    if shift_chapter:
        assert f"source MNIST from {files.data_dir}" in stdout and f"USPS test split from {files.data_dir}" in stdout
    elif continual_chapter:
        assert f"Split MNIST from {files.data_dir}" in stdout
    else:
        assert f"cifar10 from {files.data_dir}" in stdout
        assert f"using {files.data_dir / 'cifar-10-batches-py'}" in stderr
    assert f"using {files.checkpoint}" in stderr
    fingerprints = set(re.findall(r"weights fingerprint ([0-9a-f]{16})", stdout))
    assert fingerprints <= {files.checkpoint_fingerprint}, "the backbone is not the stand-in ResNet-18"
    if any(calls_in_real_world(cell.source, "near_and_far_targets") for cell in code_cells):  # 19.3: SVHN
        assert f"svhn from {files.data_dir}" in stdout and f"using {files.data_dir / 'svhn'}" in stderr

    # Nothing fell back to the offline world: no shape-world images were made, no offline task described.
    assert not (files.cache_dir / "world").exists(), "the notebook generated shape-world images in the real world"
    assert "target shapes of the course's world" not in stdout
    if any("cache=cache" in cell.source for cell in code_cells):
        assert set((files.cache_dir / "features").glob("*.pt")) - features_before, "no features were cached"


def test_chapters_print_the_stand_in_fingerprint(real_smoke_env):
    # The check above only bites where a notebook prints the fingerprint: make sure some do.
    printing = [path.name for path in NOTEBOOKS if "weights fingerprint" in path.read_text()]
    assert len(printing) >= 2, printing


def test_genuine_mnist_through_the_real_world_at_smoke_size(real_smoke_env):
    if not real_smoke_env.has_mnist_usps:
        pytest.skip("the genuine MNIST/USPS copy (../shared/data) is absent")
    cfg = config.setup(quiet=True)
    task = lesson_data(dataclasses.replace(cfg, dataset="mnist"))
    assert task.train[0][0].shape == (3, cfg.image_size, cfg.image_size)
    assert torch.bincount(dataset_targets(task.train)).tolist() == [cfg.train_per_class] * 10
    backbone = load_backbone(cfg.backbone)
    features, labels = extract_features(backbone, task.test, cache=FeatureCache(), progress=False)
    assert features.shape == (len(task.test), 1000) and torch.equal(labels, dataset_targets(task.test))
    usps = load_real_dataset("usps", train=False)
    assert len(usps) == 2007
