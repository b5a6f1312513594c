"""Tests for course_lib.pretrain: the command that re-creates the shipped source model."""

import json

import pytest
import torch

from course_lib import models, pretrain
from course_lib.core import file_sha256

TINY = ["--epochs", "2", "--train-per-class", "8", "--test-per-class", "2", "--batch-size", "32"]


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.slow
def test_pretrain_writes_loadable_weights_and_recipe(tmp_path, capsys):
    out = tmp_path / "weights"
    assert pretrain.main(["--out", str(out), *TINY]) == 0
    recipe = json.loads((out / "course_resnet.json").read_text())
    weights = out / "course_resnet.safetensors"
    assert recipe["sha256"] == file_sha256(weights)
    assert recipe["settings"]["epochs"] == 2 and recipe["settings"]["train_per_class"] == 8
    assert set(recipe["held_out_accuracy"]) == {"studio", "phone", "sketch", "night", "texture"}
    assert all(0.0 <= a <= 1.0 for a in recipe["held_out_accuracy"].values())
    assert "--train-per-class 8" in recipe["command"]
    model = models.load_course_resnet(weights)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 24)
    assert "held-out accuracy" in capsys.readouterr().out


def test_pretrain_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "weights"
    out.mkdir()
    existing = out / "course_resnet.safetensors"
    existing.write_bytes(b"keep me")
    assert pretrain.main(["--out", str(out), *TINY]) == 2
    assert existing.read_bytes() == b"keep me"
    assert "--force" in capsys.readouterr().err


def test_too_short_a_schedule_is_refused_with_advice(tmp_path):
    with pytest.raises(ValueError, match="raise --epochs"):
        pretrain.main(["--out", str(tmp_path), "--epochs", "1", "--train-per-class", "2", "--batch-size", "32"])


def test_augmentation_keeps_shape_and_range_and_changes_images():
    images = torch.rand(16, 3, 64, 64)
    augmented = pretrain.augment_batch(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and augmented.min() >= 0 and augmented.max() <= 1
    assert not torch.allclose(augmented, images)
