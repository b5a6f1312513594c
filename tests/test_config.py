"""Tests for course_lib.config: profile choice, seeding, device choice, setup()."""

import random

import numpy as np
import pytest
import torch

from course_lib import config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("COURSE_PROFILE", "NBGRADER_EXECUTION", "COURSE_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # setup(profile="smoke") lowers it


def test_default_profile_is_standard():
    assert config.choose_profile() == ("standard", "default")


def test_notebook_request_is_used():
    assert config.choose_profile("real")[0] == "real"


def test_nbgrader_forces_smoke_over_notebook_request(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    profile, reason = config.choose_profile("standard")
    assert profile == "smoke" and "nbgrader" in reason


def test_environment_variable_wins(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    monkeypatch.setenv("COURSE_PROFILE", "standard")
    assert config.choose_profile("real") == ("standard", "COURSE_PROFILE environment variable")


@pytest.mark.parametrize("bad", ["fast", "Smoke", "full"])
def test_unknown_profile_names_the_valid_ones(monkeypatch, bad):
    monkeypatch.setenv("COURSE_PROFILE", bad)
    with pytest.raises(ValueError, match="smoke, standard, real"):
        config.setup(quiet=True)


def test_seed_everything_repeats_random_streams():
    config.seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    config.seed_everything(3)
    assert first == (random.random(), np.random.rand(), torch.rand(1).item())


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        config.seed_everything(bad)


def test_pick_device_cpu_and_errors(monkeypatch):
    assert config.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        config.pick_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            config.pick_device("cuda")
        monkeypatch.setenv("COURSE_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="COURSE_DEVICE"):
            config.pick_device()


def test_setup_returns_profile_sizes_and_prints_summary(capsys, tmp_path):
    cfg = config.setup(profile="smoke")
    out = capsys.readouterr().out
    assert cfg.profile == "smoke" and cfg.offline
    assert cfg.cache_dir == tmp_path / "cache"
    assert cfg.train_per_class < config.setup(quiet=True).train_per_class  # smoke is smaller
    for word in ("profile", "smoke", "device", "cpu" if cfg.device.type == "cpu" else "cuda", "torch", "cache"):
        assert word in out
    real = config.setup(profile="real", quiet=True)
    assert not real.offline and real.backbone == "resnet18"


def test_smoke_profile_uses_one_thread():
    config.setup(profile="smoke", quiet=True)
    assert torch.get_num_threads() == 1
