"""Tests for course_lib.models: the source model, head swaps, and load_backbone for every kind of backbone."""

import json

import pytest
import torch
from torch import nn

from course_lib import models
from course_lib.core import file_sha256

from standins import write_resnet18_checkpoint


def test_course_resnet_shapes_and_stages():
    model = models.CourseResNet(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 5)
    assert model.forward_features(x).shape == (2, model.feature_dim)
    sizes = []
    for name in models.stage_names(model):
        x = model.get_submodule(name)(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]


@pytest.mark.parametrize("bad_shape", [(3, 64, 64), (2, 1, 64, 64), (2, 64, 64, 3)])
def test_course_resnet_rejects_wrong_shapes(bad_shape):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        models.CourseResNet()(torch.randn(*bad_shape))


def test_replace_head_keeps_backbone_and_device():
    model = models.CourseResNet(num_classes=24)
    stem_before = model.stem[0].weight.clone()
    models.replace_head(model, 7)
    assert models.get_head(model).out_features == 7 and models.get_head(model).weight.requires_grad
    assert torch.equal(model.stem[0].weight, stem_before)
    with pytest.raises(ValueError, match="positive int"):
        models.replace_head(model, 0)
    with pytest.raises(TypeError, match="no linear head"):
        models.replace_head(nn.Sequential(nn.ReLU()), 3)


def test_torchvision_and_timm_names_share_the_vocabulary():
    import timm

    for model in (models.load_backbone("resnet18", pretrained=False), timm.create_model("resnet18")):
        assert models.stage_names(model) == ["layer1", "layer2", "layer3", "layer4"]
        models.replace_head(model, 4)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    with pytest.raises(TypeError, match="stages"):
        models.stage_names(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no model called"):
        models.load_backbone("resnet19", pretrained=False)


def test_shipped_course_weights_load_and_match_recipe():
    recipe = json.loads(models.COURSE_RESNET_RECIPE.read_text())
    assert file_sha256(models.COURSE_RESNET_WEIGHTS) == recipe["sha256"]
    assert recipe["held_out_accuracy"]["studio"] >= 0.95
    model = models.load_backbone("course-resnet")
    assert not model.training
    assert models.get_head(model).out_features == len(recipe["classes"])
    random_model = models.load_backbone("course-resnet", pretrained=False)
    assert not torch.equal(model.stem[0].weight, random_model.stem[0].weight)


def test_corrupted_course_weights_are_refused(tmp_path, monkeypatch):
    broken = tmp_path / "course_resnet.safetensors"
    broken.write_bytes(models.COURSE_RESNET_WEIGHTS.read_bytes()[:1000])
    monkeypatch.setattr(models, "COURSE_RESNET_WEIGHTS", broken)
    with pytest.raises(ValueError, match="checksum"):
        models.load_course_resnet()
    with pytest.raises(ValueError, match="Could not read"):
        models.load_course_resnet(broken)  # an explicit file skips the checksum but not the reader
    monkeypatch.setattr(models, "COURSE_RESNET_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="course_lib.pretrain"):
        models.load_course_resnet()


def test_load_backbone_reads_torchvision_weights_from_the_torch_cache(tmp_path, monkeypatch):
    # The loaders themselves are tested in test_pretrained_weights.py; here: load_backbone finds them.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    _, state = write_resnet18_checkpoint(tmp_path, seed=3)
    model = models.load_backbone("resnet18")
    assert not model.training and torch.equal(model.conv1.weight, state["conv1.weight"])
    monkeypatch.delenv("COURSE_UNVERIFIED_FILES")
    with pytest.raises(ValueError, match="does not match the hash"):
        models.load_backbone("resnet18")


def test_remove_head_turns_a_classifier_into_a_feature_extractor():
    model = models.CourseResNet(num_classes=24).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_features(images)
    assert models.remove_head(model) is model  # changed in place, as the docstring says
    with torch.no_grad():
        features = model(images)
    assert torch.allclose(features, expected)
    assert all(not isinstance(module, nn.Linear) for module in model.modules())
    with pytest.raises(TypeError, match="no linear head"):
        models.remove_head(nn.Sequential(nn.ReLU()))


def test_feature_layer_is_what_the_head_reads():
    import torchvision

    from course_lib.models import feature_layer

    assert feature_layer(models.load_backbone("course-resnet")) == "stage4"
    assert feature_layer(torchvision.models.resnet18()) == "layer4"
