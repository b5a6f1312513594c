"""Tests for course_lib.config: profile and size choice, the size table, seeding, device choice, setup()."""

import dataclasses
import random

import numpy as np
import pytest
import torch

from course_lib import config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("COURSE_PROFILE", "COURSE_SIZE", "NBGRADER_EXECUTION", "COURSE_DEVICE", "COURSE_UNVERIFIED_FILES"):
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
    with pytest.raises(ValueError, match="smoke, standard, lite, real"):
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


# --- worlds and sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile, world, size, dataset, backbone, scratch", [
    ("smoke", "offline", "smoke", "shapeworld", "course-resnet", "course-resnet"),
    ("standard", "offline", "standard", "shapeworld", "course-resnet", "course-resnet"),
    # lite: EfficientNet-Lite0 from scratch is slower and weaker than the small ResNet
    ("lite", "lite", "standard", "fashion-mnist", "efficientnet-lite0", "course-resnet"),
    ("real", "real", "full", "cifar10", "resnet18", "resnet18"),
])
def test_profiles_are_presets_of_a_world_and_a_size(profile, world, size, dataset, backbone, scratch):
    cfg = config.setup(profile=profile, quiet=True)
    assert (cfg.profile, cfg.world, cfg.size) == (profile, world, size)
    assert cfg.offline == (world == "offline")
    assert (cfg.dataset, cfg.backbone, cfg.scratch_backbone) == (dataset, backbone, scratch)


def test_the_lite_world_upsamples_its_small_images_less_than_imagenet_size():
    sizes = [config.size_settings("lite", size)["image_size"] for size in config.SIZES]
    assert sizes == sorted(sizes) and sizes[1] < 224 == sizes[2]
    assert config.profile_name("lite", "smoke") == "lite (smoke size)"


def test_course_size_runs_the_real_world_at_smoke_size(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "real")
    monkeypatch.setenv("COURSE_SIZE", "smoke")
    cfg = config.setup()
    assert (cfg.world, cfg.size, cfg.dataset, cfg.backbone) == ("real", "smoke", "cifar10", "resnet18")
    assert cfg.profile == "real (smoke size)" and "COURSE_SIZE" in cfg.profile_reason
    assert cfg.train_per_class == config.size_settings("offline", "smoke")["train_per_class"]
    assert cfg.image_size < config.size_settings("real", "full")["image_size"]
    assert torch.get_num_threads() == 1
    assert "real world, smoke size" in capsys.readouterr().out


def test_size_choice_follows_the_profile_precedence(monkeypatch):
    assert config.choose_size("real") == ("full", "the real profile's size")
    assert config.choose_size("real", "standard") == ("standard", "requested by the notebook")
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    size, reason = config.choose_size("real", "full")
    assert size == "smoke" and "nbgrader" in reason
    monkeypatch.setenv("COURSE_SIZE", "standard")
    assert config.choose_size("real", "full") == ("standard", "COURSE_SIZE environment variable")


def test_nbgrader_makes_an_explicit_profile_smoke_sized(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    monkeypatch.setenv("COURSE_PROFILE", "real")
    cfg = config.setup(quiet=True)
    assert (cfg.world, cfg.size, cfg.profile) == ("real", "smoke", "real (smoke size)")
    assert "nbgrader" in cfg.profile_reason
    # The offline world at smoke size *is* the smoke preset, and is named so.
    monkeypatch.setenv("COURSE_PROFILE", "standard")
    assert config.setup(quiet=True).profile == "smoke"


@pytest.mark.parametrize("bad", ["tiny", "Smoke", "real"])
def test_unknown_size_names_the_valid_ones(monkeypatch, bad):
    monkeypatch.setenv("COURSE_SIZE", bad)
    with pytest.raises(ValueError, match="smoke, standard, full.*COURSE_SIZE"):
        config.setup(quiet=True)
    with pytest.raises(ValueError, match="Unknown world"):
        config.size_settings("online", "smoke")
    with pytest.raises(ValueError, match="Unknown world 'online': use one of offline, lite, real"):
        config.world_settings("online")


def test_every_row_of_the_size_table_sets_every_size_field():
    size_fields = set(config._SIZE_FIELDS)
    other_fields = {"profile", "profile_reason", "world", "size", "device", "seed", "data_dir", "cache_dir", "dataset", "backbone",
                    "scratch_backbone"}
    assert size_fields | other_fields == {field.name for field in dataclasses.fields(config.CourseConfig)}
    assert set(config._SIZE_TABLE) == {(world, size) for world in config.WORLDS for size in config.SIZES}
    for world in config.WORLDS:
        rows = [config.size_settings(world, size) for size in config.SIZES]
        assert all(set(row) == size_fields for row in rows)
        # Larger sizes never use fewer images.
        for small, large in zip(rows, rows[1:]):
            assert small["train_per_class"] <= large["train_per_class"] and small["test_per_class"] <= large["test_per_class"]
    assert {config.size_settings("offline", size)["image_size"] for size in config.SIZES} == {64}  # the source model's size


def test_the_presets_keep_the_sizes_the_notebooks_used_to_hard_code():
    # 19.1: 128 CKA images in the real profile, else 256; 19.2: 2 from-scratch epochs in smoke, else
    # scratch_epochs' default; 19.3: batches of 16 / 2 epochs of 2 batches in smoke, 32 / 8 x 20 in standard,
    # 32 / 10 x 50 in real; its largest training set has 6,000 images from the standard size on.
    # 19.2's from-scratch budget at the largest size: 2 epochs in smoke, 30 in standard.
    expected = {"smoke": (256, 2, 2, 16, 2, 2, 16), "standard": (256, None, 30, 32, 8, 20, 600),
                "real": (128, None, 30, 32, 10, 50, 1000)}
    for profile, values in expected.items():
        cfg = config.setup(profile=profile, quiet=True)
        assert (cfg.cka_images, cfg.scratch_epochs, cfg.scratch_budget, cfg.finetune_batch_size, cfg.finetune_epochs,
                cfg.finetune_batches_per_epoch, cfg.finetune_large_per_class) == values, profile
    assert config.setup(profile="standard", quiet=True).finetune_large_per_class * 10 > 5000
    for world in config.WORLDS:
        for size in config.SIZES:
            row = config.size_settings(world, size)
            assert row["finetune_large_per_class"] > row["train_per_class"], (world, size)


def test_profile_names_are_readable():
    assert config.profile_name("real", "full") == "real"
    assert config.profile_name("real", "smoke") == "real (smoke size)"
    assert config.profile_name("standard", "smoke") == "smoke"
    assert config.profile_name("standard", "full") == "standard (full size)"


def test_unverified_files_are_refused_unless_allowed_loudly(monkeypatch, capsys):
    assert not config.allow_unverified("/some/file.pth", "its hash differs")
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "0")
    assert not config.allow_unverified("/some/file.pth", "its hash differs")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    assert config.allow_unverified("/some/file.pth", "its hash differs")
    err = capsys.readouterr().err
    assert "WARNING" in err and "/some/file.pth" in err and "its hash differs" in err
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "true")
    with pytest.raises(ValueError, match="must be 1"):
        config.allow_unverified("/some/file.pth", "its hash differs")


def test_finetune_draws_are_at_most_the_seeds_and_one_in_smoke():
    # 19.3 draws the far target's training images this many times per cell; a smoke run once.
    for world in config.WORLDS:
        for size in config.SIZES:
            row = config.size_settings(world, size)
            assert 1 <= row["finetune_draws"] <= row["num_seeds"], (world, size)
            if size == "smoke":
                assert row["finetune_draws"] == 1, world
    assert config.setup(profile="standard", quiet=True).finetune_draws == 2
