"""Tests for course_lib.adaptation: gradient reversal, the DANN schedule, CORAL, the steps, pseudo-labels and AdaBN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.adaptation import (
    CoralStep, DANNStep, DomainClassifier, SelfTrainingStep, SourceOnlyStep, adabn, confident_pseudo_labels, coral_loss,
    dann_lambda, dann_parameters, features_and_logits, grad_reverse,
)
from course_lib.models import load_backbone, remove_head
from course_lib.steps import ClassificationStep, PairedLoader
from course_lib.training import evaluate

from fine_tuning_toys import one_thread  # noqa: F401 (an autouse fixture)
from toy import NUM_CLASSES, colour_images, quiet_fit, small_cnn


def modes(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


# ---------------------------------------------------------------------------------------------
# Gradient reversal


@pytest.mark.parametrize("lambda_", [0.0, 0.5, 1.0, 3])
@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 3, 4)])
def test_grad_reverse_is_the_identity_forward_and_multiplies_the_gradient_by_minus_lambda(lambda_, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = grad_reverse(x, lambda_)
    assert y is not x and torch.equal(y, x)
    upstream = torch.randn(shape, dtype=torch.float64)
    y.backward(upstream)
    assert torch.allclose(x.grad, -lambda_ * upstream)
    jacobian = torch.autograd.functional.jacobian(lambda t: grad_reverse(t, lambda_), x.detach())
    assert torch.allclose(jacobian.reshape(x.numel(), x.numel()), -lambda_ * torch.eye(x.numel(), dtype=torch.float64))


def test_only_the_gradient_into_the_reversed_tensor_is_reversed():
    x, w = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    (w * grad_reverse(x, 2.0)).sum().backward()
    assert torch.allclose(x.grad, -2.0 * w.detach()) and torch.allclose(w.grad, x.detach())


def test_lambda_zero_stops_the_gradient():
    x = torch.randn(3, requires_grad=True)
    grad_reverse(x, 0.0).pow(2).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))


@pytest.mark.parametrize("lambda_", [-0.1, math.nan, math.inf, "1", True, None])
def test_grad_reverse_refuses_a_bad_lambda(lambda_):
    with pytest.raises(ValueError, match="lambda_ must be a finite number >= 0"):
        grad_reverse(torch.randn(3), lambda_)


def test_grad_reverse_needs_a_tensor():
    with pytest.raises(TypeError, match="needs a tensor"):
        grad_reverse([1.0, 2.0])


def test_dann_lambda_rises_from_zero_towards_one():
    values = [dann_lambda(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] < 1
    assert dann_lambda(0.5, gamma=1.0) < dann_lambda(0.5)


@pytest.mark.parametrize(("progress", "gamma"), [(-0.1, 10.0), (1.5, 10.0), (math.nan, 10.0), (0.5, 0.0)])
def test_dann_lambda_refuses_bad_progress_and_gamma(progress, gamma):
    with pytest.raises(ValueError, match="progress|gamma"):
        dann_lambda(progress, gamma)


# ---------------------------------------------------------------------------------------------
# CORAL


def test_coral_is_zero_for_identical_batches_and_ignores_a_shift():
    source, target = torch.randn(20, 5), torch.randn(30, 5)
    assert coral_loss(source, source).item() == 0.0
    assert torch.allclose(coral_loss(source, target + 7.0), coral_loss(source, target), rtol=1e-4)


def test_coral_grows_with_the_fourth_power_of_a_common_scale():
    # Covariances scale by s^2, so their squared difference scales by s^4.
    source, target = torch.randn(20, 5, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64)
    assert torch.allclose(coral_loss(3 * source, 3 * target), 81 * coral_loss(source, target))


def test_coral_matches_a_reference_computed_with_numpy():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(12, 4)), rng.normal(2.0, 3.0, size=(9, 4))
    difference = np.cov(source, rowvar=False, ddof=1) - np.cov(target, rowvar=False, ddof=1)
    expected = (difference ** 2).sum() / (4 * 4 ** 2)
    loss = coral_loss(torch.from_numpy(source), torch.from_numpy(target))
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(expected, rel=1e-12)
    assert coral_loss(torch.randn(4, 3).half(), torch.randn(4, 3).half()).dtype == torch.float32


def test_coral_gradients_reach_both_batches():
    source, target = torch.randn(8, 3, requires_grad=True), torch.randn(8, 3, requires_grad=True)
    coral_loss(source, target).backward()
    assert source.grad.abs().sum() > 0 and target.grad.abs().sum() > 0


@pytest.mark.parametrize(("source", "target", "match"), [
    (torch.randn(8), torch.randn(8, 3), "shaped \\(examples, features\\)"),
    (torch.randn(8, 3), torch.randn(8, 4), "same width"),
    (torch.randn(1, 3), torch.randn(8, 3), "at least 2 examples"),
    (torch.ones(8, 3, dtype=torch.int64), torch.randn(8, 3), "float features"),
])
def test_coral_names_what_is_wrong_with_its_inputs(source, target, match):
    with pytest.raises(ValueError, match=match):
        coral_loss(source, target)


# ---------------------------------------------------------------------------------------------
# Features and logits of one pass, and the domain classifier


def test_features_and_logits_of_the_course_model_are_its_features_and_its_output():
    model, images = load_backbone("course-resnet", pretrained=False), torch.randn(2, 3, 32, 32)
    features, logits = features_and_logits(model, images)
    assert torch.allclose(features, model.forward_features(images)) and torch.allclose(logits, model(images))
    features.sum().backward()
    assert model.stem[0].weight.grad is not None


@pytest.mark.parametrize("name", ["resnet18", "efficientnet-lite0"])
def test_features_and_logits_reads_the_heads_of_the_imagenet_backbones(name):
    model = load_backbone(name, pretrained=False)
    with torch.no_grad():
        features, logits = features_and_logits(model, torch.randn(2, 3, 32, 32))
    head = model.fc if name == "resnet18" else model.classifier
    assert features.shape == (2, head.in_features) and torch.allclose(logits, head(features))


def test_features_and_logits_of_a_sequential_ending_in_a_linear_layer():
    model, images = small_cnn(), torch.randn(3, 3, 16, 16)
    features, logits = features_and_logits(model.eval(), images)
    assert torch.allclose(features, model[:-1](images)) and torch.allclose(logits, model(images))


def test_features_and_logits_needs_a_head():
    with pytest.raises(TypeError, match="no linear classifier.*remove_head"):
        features_and_logits(remove_head(load_backbone("course-resnet", pretrained=False)), torch.randn(2, 3, 32, 32))


def test_the_domain_classifier_reverses_the_gradient_into_the_features():
    torch.manual_seed(0)
    classifier, features = DomainClassifier(6, hidden=8), torch.randn(5, 6, requires_grad=True)
    assert classifier(features).shape == (5,)
    classifier.layers(features).sum().backward()
    plain = features.grad.clone()
    features.grad = None
    classifier(features, lambda_=0.5).sum().backward()
    assert torch.allclose(features.grad, -0.5 * plain)
    with pytest.raises(ValueError, match="takes 6 features but got 4"):
        classifier(torch.randn(5, 4))


def test_dann_parameters_are_the_trainable_ones_of_both():
    model, discriminator = small_cnn(), DomainClassifier(4, hidden=8)
    model[0].requires_grad_(False)
    expected = [p for p in model.parameters() if p.requires_grad] + list(discriminator.parameters())
    assert [id(p) for p in dann_parameters(model, discriminator)] == [id(p) for p in expected]


# ---------------------------------------------------------------------------------------------
# The steps, through fit


def paired(target_labels: torch.Tensor | None = None, n_source: int = 48, n_target: int = 32) -> PairedLoader:
    """Labelled colour images as the source; as the target, brighter ones with the given (garbage) labels."""
    generator = torch.Generator().manual_seed(0)
    source = DataLoader(colour_images(n_source, seed=0), batch_size=16, shuffle=True, generator=generator)
    target_images = colour_images(n_target, seed=1).tensors[0] * 1.5 + 0.2
    labels = torch.full((n_target,), -1) if target_labels is None else target_labels
    return PairedLoader(source, DataLoader(TensorDataset(target_images, labels), batch_size=16))


def all_steps() -> dict[str, object]:
    return {"source only": SourceOnlyStep(), "coral": CoralStep(weight=2.0),
            "dann": DANNStep(DomainClassifier(4, hidden=8), total_steps=6),
            "self-training": SelfTrainingStep(threshold=0.0)}


@pytest.mark.parametrize("name", list(all_steps()))
def test_every_step_trains_through_fit_with_unlabelled_targets(name):
    model, step = small_cnn(), all_steps()[name]
    parameters = dann_parameters(model, step.discriminator) if name == "dann" else model.parameters()
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    history = quiet_fit(model, paired(), epochs=2, step=step, optimizer=optimizer,
                        val_loader=DataLoader(colour_images(16, seed=2), batch_size=16), val_step=ClassificationStep())
    assert all(math.isfinite(loss) for loss in history["train_loss"]) and "val_accuracy" in history.last
    assert {"train_accuracy", *{"coral": ["train_coral"], "dann": ["train_domain_accuracy", "train_lambda"],
            "self-training": ["train_pseudo_fraction"]}.get(name, [])} <= set(history.last)


@pytest.mark.parametrize("name", list(all_steps()))
def test_no_step_reads_the_target_labels(name):
    model, step = small_cnn().eval(), all_steps()[name]
    garbage = [paired(torch.full((32,), math.nan)), paired(torch.arange(32)), paired()]
    outputs = [step(model, next(iter(loader))) for loader in garbage]
    assert all(torch.equal(output.loss, outputs[0].loss) for output in outputs)
    images_only = (next(iter(garbage[0]))[0], [torch.rand(16, 3, 16, 16)])  # a target loader without labels
    assert torch.isfinite(step(model, images_only).loss)


@pytest.mark.parametrize("name", list(all_steps()))
def test_a_plain_batch_asks_for_a_paired_loader(name):
    images, labels = colour_images(8, seed=0).tensors
    with pytest.raises(TypeError, match="PairedLoader.*val_step=ClassificationStep"):
        all_steps()[name](small_cnn(), (images, labels))


def test_the_source_only_step_learns_the_source():
    model = small_cnn()
    history = quiet_fit(model, paired(), epochs=4, step=SourceOnlyStep(), lr=1e-2)
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_dann_advances_lambda_in_training_only_and_trains_the_discriminator():
    model, discriminator, loader = small_cnn(), DomainClassifier(4, hidden=8), paired()
    step = DANNStep(discriminator, total_steps=2 * len(loader))
    before = [p.detach().clone() for p in discriminator.parameters()]
    history = quiet_fit(model, loader, epochs=1, step=step, val_loader=loader,
                        optimizer=torch.optim.Adam(dann_parameters(model, discriminator), 1e-2))
    assert step.steps_done == len(loader) and history.last["val_lambda"] == pytest.approx(dann_lambda(0.5))
    assert 0 < history.last["train_lambda"] < dann_lambda(0.5)
    assert any(not torch.equal(p, p0) for p, p0 in zip(discriminator.parameters(), before))
    evaluate(model, loader, step=step)
    assert step.steps_done == len(loader)
    quiet_fit(model, loader, epochs=1, step=step, optimizer=torch.optim.Adam(dann_parameters(model, discriminator)))
    assert step.steps_done == len(loader)  # a new fit restarts the schedule


def test_dann_refuses_an_optimizer_without_the_discriminator():
    step = DANNStep(DomainClassifier(4, hidden=8), total_steps=3)
    with pytest.raises(ValueError, match="discriminator's parameters.*dann_parameters"):
        quiet_fit(small_cnn(), paired(), epochs=1, step=step)


def test_dann_step_arguments_are_checked():
    with pytest.raises(TypeError, match="DomainClassifier"):
        DANNStep(nn.Linear(4, 1), total_steps=3)
    with pytest.raises(ValueError, match="total_steps"):
        DANNStep(DomainClassifier(4), total_steps=0)
    with pytest.raises(ValueError, match="weight"):
        CoralStep(weight=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        SelfTrainingStep(threshold=1.5)


def logits_model() -> nn.Sequential:
    """A model whose logits are its inputs (an identity linear head), so that tests choose the logits."""
    model = nn.Sequential(nn.Identity(), nn.Linear(3, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))
        model[1].bias.zero_()
    return model


TARGET_LOGITS = torch.tensor([[10.0, 0, 0], [0, 0, 0], [2.0, 0, 0], [0, 5.0, 0]])  # top probabilities 1.0 .33 .79 .99


def test_self_training_uses_only_the_confident_target_examples():
    source, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    output = SelfTrainingStep(threshold=0.9, weight=0.5)(logits_model(), ((source, labels), (TARGET_LOGITS, labels)))
    expected = F.cross_entropy(source, labels) + 0.5 * F.cross_entropy(TARGET_LOGITS[[0, 3]], torch.tensor([0, 1]))
    assert output.metrics["pseudo_fraction"] == 0.5 and torch.allclose(output.loss, expected)
    none = SelfTrainingStep(threshold=1.0)(logits_model(), ((source, labels), (TARGET_LOGITS, labels)))
    assert none.metrics["pseudo_fraction"] == 0.0 and torch.allclose(none.loss, F.cross_entropy(source, labels))


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_confident_pseudo_labels_finds_the_sure_ones_and_restores_the_mode(mode):
    model = logits_model().train(mode != "eval")
    if mode == "mixed":
        model[0].eval()
    was = modes(model)
    loader = DataLoader(TensorDataset(TARGET_LOGITS, torch.full((4,), -1)), batch_size=3)
    indices, labels, confidences = confident_pseudo_labels(model, loader, threshold=0.9)
    assert indices.tolist() == [0, 3] and labels.tolist() == [0, 1]
    assert torch.allclose(confidences, TARGET_LOGITS[[0, 3]].softmax(1).max(1).values) and modes(model) == was


def test_confident_pseudo_labels_refuses_shuffling_empty_loaders_and_bad_thresholds():
    dataset = TensorDataset(TARGET_LOGITS)
    with pytest.raises(ValueError, match="shuffle=False"):
        confident_pseudo_labels(logits_model(), DataLoader(dataset, shuffle=True), 0.9)
    with pytest.raises(ValueError, match="no batches"):
        confident_pseudo_labels(logits_model(), [], 0.9)
    with pytest.raises(ValueError, match="threshold"):
        confident_pseudo_labels(logits_model(), DataLoader(dataset), -0.1)


# ---------------------------------------------------------------------------------------------
# AdaBN


def bn_first_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, NUM_CLASSES))
    model[0].momentum, model[2].momentum = 0.3, None
    return model


def target_images(n: int = 10) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 8, 8, generator=generator) * torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1) + 2


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_adabn_stores_the_exact_statistics_of_the_whole_loader_and_changes_nothing_else(mode):
    model, images = bn_first_model().train(mode != "eval"), target_images()
    if mode == "mixed":
        model[2].eval()
    was, weights = modes(model), {name: p.detach().clone() for name, p in model.named_parameters()}
    # Batches of 4, 4 and 2: an average of per-batch statistics would not be exact.
    assert adabn(model, DataLoader(TensorDataset(images, torch.full((10,), -1)), batch_size=4)) is model
    assert torch.allclose(model[0].running_mean, images.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(model[0].running_var, images.transpose(0, 1).reshape(3, -1).var(dim=1), atol=1e-6)
    assert not torch.allclose(model[2].running_var, torch.ones(4)) and model[0].num_batches_tracked == 3
    assert modes(model) == was and (model[0].momentum, model[2].momentum) == (0.3, None)
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())


def test_adabn_reads_loaders_of_images_without_labels():
    model, images = bn_first_model(), target_images()
    adabn(model, DataLoader(TensorDataset(images), batch_size=5))
    assert torch.allclose(model[0].running_mean, images.mean(dim=(0, 2, 3)), atol=1e-6)


def test_adabn_needs_batchnorm_and_images():
    with pytest.raises(ValueError, match="no BatchNorm layers"):
        adabn(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), [torch.randn(2, 3)])
    model = bn_first_model()
    with pytest.raises(ValueError, match="no batches"):
        adabn(model, DataLoader(TensorDataset(torch.empty(0, 3, 8, 8)), batch_size=4))
    assert torch.equal(model[0].running_mean, torch.zeros(3)) and model[0].momentum == 0.3
