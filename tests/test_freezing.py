"""Tests for course_lib.freezing: freeze/unfreeze, FrozenBackbone, BatchNorm statistics and drift."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from course_lib.callbacks import LambdaCallback
from course_lib.finetuning import train_last_stages
from course_lib.freezing import FreezeBatchNorm, FrozenBackbone, batchnorm_drift, batchnorm_statistics, freeze, unfreeze
from course_lib.models import load_backbone, remove_head
from course_lib.training import fit

from fine_tuning_toys import (  # noqa: F401 (one_thread is an autouse fixture)
    COURSE_GROUPS, bn_changed_layers, bn_unchanged, changed_groups, images_loader, one_thread, snapshot, tiny_resnet,
)
from toy import quiet_fit


def course_resnet() -> nn.Module:
    """The course's pretrained source model (0.3 M parameters, loads in milliseconds)."""
    return load_backbone("course-resnet")


def cloned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


class WithClassifier(nn.Module):
    """A tiny model whose head is called `.classifier` (as in torchvision's VGG/DenseNet)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(5, 2)

    def forward(self, x):
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------------
# freeze and unfreeze


def test_freeze_and_unfreeze_flip_requires_grad_on_every_parameter_and_return_the_module():
    model = course_resnet()
    assert all(p.requires_grad for p in model.parameters())
    assert freeze(model) is model
    assert not any(p.requires_grad for p in model.parameters())
    assert unfreeze(model) is model
    assert all(p.requires_grad for p in model.parameters())


def test_freezing_a_submodule_leaves_the_rest_trainable():
    model = course_resnet()
    freeze(model.stage4)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith("stage4.")), name


def test_freeze_leaves_the_mode_alone():
    # Freezing is about gradients only; eval mode is FrozenBackbone's job.
    model = course_resnet().train()
    freeze(model)
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("function", [freeze, unfreeze, FrozenBackbone, batchnorm_statistics])
def test_passing_parameters_instead_of_a_module_names_the_fix(function):
    with pytest.raises(TypeError, match=r"torch\.nn\.Module.*not model\.parameters\(\)"):
        function(course_resnet().parameters())


# ---------------------------------------------------------------------------------------------
# FrozenBackbone


def test_frozen_backbone_copies_removes_the_head_and_freezes():
    original = course_resnet().train()
    before = cloned_state(original)
    frozen = FrozenBackbone(original)

    assert isinstance(frozen.backbone.head, nn.Identity) and frozen.feature_dim == 128
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.backbone.training
    # The original is untouched: same head, trainable, still in train mode, and shares no storage.
    assert isinstance(original.head, nn.Linear) and original.head.out_features == 24
    assert all(p.requires_grad for p in original.parameters())
    assert all(module.training for module in original.modules())
    copied = {p.data_ptr() for p in frozen.parameters()}
    assert not copied & {p.data_ptr() for p in original.parameters()}
    after = cloned_state(original)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_frozen_backbone_outputs_the_pooled_features_without_a_graph():
    original = course_resnet()
    frozen = FrozenBackbone(original)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = frozen(images)
    assert features.shape == (4, frozen.feature_dim)
    assert not features.requires_grad and features.grad_fn is None
    with torch.no_grad():
        assert torch.allclose(features, original.forward_features(images), atol=1e-6)


def test_frozen_backbone_stays_in_eval_mode_inside_a_model_put_in_train_mode():
    model = nn.Sequential(FrozenBackbone(course_resnet()), nn.Linear(128, 3))
    model.train()
    assert model.training and model[0].training and model[1].training
    assert not any(module.training for module in model[0].backbone.modules())
    model.eval()
    model.train()
    assert not any(module.training for module in model[0].backbone.modules())


def test_training_a_head_on_a_frozen_backbone_changes_only_the_head():
    model = nn.Sequential(FrozenBackbone(course_resnet()), nn.Linear(128, 3))
    backbone_before = cloned_state(model[0])
    head_before = cloned_state(model[1])
    statistics_before = batchnorm_statistics(model[0].backbone)

    quiet_fit(model, images_loader(), epochs=2, lr=1e-2)

    backbone_after = cloned_state(model[0])
    assert all(torch.equal(backbone_before[k], backbone_after[k]) for k in backbone_before)  # incl. num_batches_tracked
    assert not torch.equal(head_before["weight"], model[1].weight)
    drift = batchnorm_drift(statistics_before, batchnorm_statistics(model[0].backbone))
    assert len(drift) == 12 and all(value == 0.0 for value in drift.values())  # the course model has 12 BatchNorm layers


def test_a_frozen_backbone_left_in_train_mode_drifts():
    # The mistake FrozenBackbone prevents: requires_grad=False but BatchNorm in train mode.
    backbone = freeze(remove_head(course_resnet()))
    model = nn.Sequential(backbone, nn.Linear(128, 3))
    before = batchnorm_statistics(backbone)
    weights_before = {k: v for k, v in cloned_state(backbone).items() if "running" not in k and "num_batches" not in k}

    quiet_fit(model, images_loader(), epochs=1)

    drift = batchnorm_drift(before, batchnorm_statistics(backbone))
    assert all(value > 0 for value in drift.values())
    assert all(torch.equal(weights_before[k], backbone.state_dict()[k]) for k in weights_before)  # weights did not move


def test_frozen_backbone_on_a_torchvision_resnet18_and_a_classifier_head():
    resnet = torchvision.models.resnet18(weights=None)  # random weights: no download
    frozen = FrozenBackbone(resnet)
    assert isinstance(frozen.backbone.fc, nn.Identity) and isinstance(resnet.fc, nn.Linear)
    assert frozen.feature_dim == 512
    assert frozen(torch.rand(2, 3, 32, 32)).shape == (2, 512)

    small = WithClassifier()
    frozen = FrozenBackbone(small)
    assert isinstance(frozen.backbone.classifier, nn.Identity) and frozen.feature_dim == 5
    assert frozen(torch.rand(2, 3, 8, 8)).shape == (2, 5)


def test_frozen_backbone_without_a_head_says_to_pass_the_whole_model():
    with pytest.raises(TypeError, match=r"no linear head.*pass the whole pretrained model"):
        FrozenBackbone(remove_head(course_resnet()))
    with pytest.raises(TypeError, match="pass the whole pretrained model"):
        FrozenBackbone(course_resnet().stage4)


# ---------------------------------------------------------------------------------------------
# BatchNorm statistics and drift


def test_batchnorm_statistics_is_a_detached_copy_of_every_layer():
    model = course_resnet()
    statistics = batchnorm_statistics(model)
    assert set(statistics) == {name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert statistics["stem.1"].shape == (2, 16)
    assert torch.equal(statistics["stem.1"][0], model.stem[1].running_mean)
    assert torch.equal(statistics["stem.1"][1], model.stem[1].running_var)
    with torch.no_grad():
        model.stem[1].running_mean.add_(1.0)
    assert not torch.equal(statistics["stem.1"][0], model.stem[1].running_mean)  # a copy, not a view


def test_batchnorm_drift_is_relative_and_zero_when_nothing_moved():
    model = course_resnet()
    before = batchnorm_statistics(model)
    assert set(batchnorm_drift(before, batchnorm_statistics(model)).values()) == {0.0}
    with torch.no_grad():
        model.stem[1].running_mean.mul_(1.5)
        model.stem[1].running_var.mul_(1.5)
    drift = batchnorm_drift(before, batchnorm_statistics(model))
    assert drift["stem.1"] == pytest.approx(0.5, rel=1e-5)
    assert all(value == 0.0 for name, value in drift.items() if name != "stem.1")


def test_batchnorm_statistics_without_batchnorm_is_explained():
    with pytest.raises(ValueError, match="no BatchNorm layers.*Pass the backbone"):
        batchnorm_statistics(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="no BatchNorm"):
        batchnorm_statistics(nn.BatchNorm2d(3, track_running_stats=False))


def test_batchnorm_drift_rejects_snapshots_of_different_models():
    frozen = FrozenBackbone(course_resnet())
    with pytest.raises(ValueError, match="different BatchNorm layers.*same model"):
        batchnorm_drift(batchnorm_statistics(course_resnet()), batchnorm_statistics(frozen))  # 'stem.1' vs 'backbone.stem.1'
    with pytest.raises(ValueError, match="different BatchNorm layers"):
        batchnorm_drift(batchnorm_statistics(course_resnet()), batchnorm_statistics(WithClassifier()))


def test_batchnorm_drift_of_two_models_says_to_take_snapshots():
    with pytest.raises(TypeError, match=r"batchnorm_statistics\(model\) before and after"):
        batchnorm_drift(course_resnet(), course_resnet())


# ---------------------------------------------------------------------------------------------
# FreezeBatchNorm


def test_freeze_batchnorm_keeps_the_running_statistics_while_everything_trains():
    model = tiny_resnet()
    stats = batchnorm_statistics(model)
    before = snapshot(model)
    bn_weight = model.stage2.bn1.weight.detach().clone()
    modes = []
    record_modes = LambdaCallback(on_epoch_start=lambda s: modes.append(
        {(isinstance(m, nn.BatchNorm2d), m.training) for m in s.model.modules()}))
    fit(model, images_loader(), epochs=2, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        callbacks=[FreezeBatchNorm(), record_modes], progress=False)
    assert bn_unchanged(stats, model), "FreezeBatchNorm must keep every running mean and variance"
    assert changed_groups(before, model) == set(COURSE_GROUPS), "the parameters (head included) still train"
    assert not torch.equal(model.stage2.bn1.weight.detach(), bn_weight), "BatchNorm's weight still trains"
    assert modes == [{(True, False), (False, True)}] * 2, \
        "only the BatchNorm layers go to eval mode, in every epoch"


def test_without_freeze_batchnorm_the_statistics_move():
    model = tiny_resnet()
    stats = batchnorm_statistics(model)
    fit(model, images_loader(), epochs=1, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), progress=False)
    assert bn_changed_layers(stats, model) == set(stats), "control: training in train mode moves every BN layer"


def test_freeze_batchnorm_with_a_frozen_backbone_changes_only_the_head():
    model = tiny_resnet()
    train_last_stages(model, 0)
    stats, before = batchnorm_statistics(model), snapshot(model)
    fit(model, images_loader(), epochs=2, optimizer=torch.optim.Adam(model.head.parameters(), lr=1e-2),
        callbacks=[FreezeBatchNorm()], progress=False)
    assert bn_unchanged(stats, model)
    assert changed_groups(before, model) == {"head"}
