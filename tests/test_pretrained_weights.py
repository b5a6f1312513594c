"""Tests for course_lib.pretrained_weights: torchvision's and timm's caches, hash checks, stand-in weights."""

import pytest
import torch
from standins import write_resnet18_checkpoint

from course_lib import models, pretrained_weights
from course_lib.pretrained_weights import (
    load_timm_backbone,
    load_torchvision_backbone,
    timm_checkpoint_path,
    torchvision_checkpoint_path,
    torchvision_weights,
)

pytestmark = pytest.mark.usefixtures("verified_files_only")


def test_torchvision_backbone_from_the_real_cache_layout(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = torchvision_checkpoint_path("resnet18")
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError, match="download=True"):
        models.load_backbone("resnet18")

    reference = torchvision.models.resnet18(weights=None)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    # The file is ours, not torchvision's: its hash cannot match the name, and that is caught.
    with pytest.raises(ValueError, match="does not match the hash"):
        models.load_backbone("resnet18")
    loaded = load_torchvision_backbone("resnet18", check_hash=False)
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)


def test_timm_backbone_from_the_hugging_face_cache_layout(tmp_path, monkeypatch):
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert timm_checkpoint_path("resnet18.a1_in1k") is None
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        models.load_backbone("timm:resnet18.a1_in1k")

    reference = timm.create_model("resnet18")
    repo = tmp_path / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snapshot / "model.safetensors"))
    loaded = models.load_backbone("timm:resnet18.a1_in1k")
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)
    with pytest.raises(ValueError, match="no pretrained weights"):
        models.load_backbone("timm:not-a-model")


def test_stand_in_weights_are_refused_unless_allowed_and_then_named_every_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, state = write_resnet18_checkpoint(tmp_path, seed=1)
    with pytest.raises(ValueError, match="does not match the hash") as info:
        load_torchvision_backbone("resnet18")
    assert str(path) in str(info.value) and capsys.readouterr().err == ""

    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    for _ in range(2):
        model = load_torchvision_backbone("resnet18")
        err = capsys.readouterr().err
        assert "WARNING: COURSE_UNVERIFIED_FILES=1" in err and str(path) in err and "SHA-256" in err
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())


def test_unverified_weights_still_need_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    with pytest.raises(FileNotFoundError, match="not in the torch cache"):
        load_torchvision_backbone("resnet18")


def test_torchvision_weights_names_valid_models():
    assert torchvision_weights("resnet18").url.endswith(".pth")
    with pytest.raises(ValueError, match="no model called 'resnet19'"):
        torchvision_weights("resnet19")


def test_the_loaders_live_in_one_module_only():
    for name in ("load_torchvision_backbone", "load_timm_backbone", "torchvision_checkpoint_path", "timm_checkpoint_path"):
        assert name in pretrained_weights.__all__ and name not in models.__all__
    assert load_timm_backbone.__module__ == "course_lib.pretrained_weights"
