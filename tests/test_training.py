"""Tests for course_lib.training: fit, evaluate, predict, eval_mode, model_device, count_parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.callbacks import EarlyStopping, LambdaCallback
from course_lib.core import model_device
from course_lib.training import evaluate, predict

from toy import NUM_CLASSES, colour_images, loaders, quiet_fit, small_cnn


# ---------------------------------------------------------------------------------------------
# fit


def test_fit_learns_the_toy_problem_and_records_history():
    train, val = loaders()
    model = small_cnn()
    before = evaluate(model, val)
    history = quiet_fit(model, train, epochs=6, lr=0.05, val_loader=val)

    assert len(history) == 6
    assert history["epoch"] == [1, 2, 3, 4, 5, 6]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history.last["val_accuracy"] > max(0.8, before["accuracy"] + 0.2)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "lr"):
        assert key in history.last
    assert history["lr"][0] == [0.05]
    assert history.last["val_accuracy"] == pytest.approx(evaluate(model, val)["accuracy"])


def test_fit_trains_a_linear_head_on_cached_features():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(NUM_CLASSES, 8, generator=generator) * 3
    labels = torch.arange(120) % NUM_CLASSES
    features = centres[labels] + torch.randn(120, 8, generator=generator)
    loader = DataLoader(TensorDataset(features, labels), batch_size=32, shuffle=True, generator=generator)
    head = nn.Linear(8, NUM_CLASSES)
    history = quiet_fit(head, loader, epochs=15, lr=0.05, val_loader=loader)
    assert history.last["val_accuracy"] > 0.9


def test_fit_records_the_lr_of_each_parameter_group_and_steps_epoch_schedulers():
    train, _ = loaders()
    model = small_cnn()
    optimizer = torch.optim.SGD(
        [{"params": model[:2].parameters(), "lr": 0.1}, {"params": model[5].parameters(), "lr": 0.01}], lr=0.1
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    history = quiet_fit(model, train, epochs=3, optimizer=optimizer, scheduler=scheduler)
    assert history["lr"] == [pytest.approx([0.1, 0.01]), pytest.approx([0.05, 0.005]), pytest.approx([0.025, 0.0025])]


def test_fit_steps_one_cycle_schedulers_after_every_batch():
    train, _ = loaders()
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    epochs = 3
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=epochs, steps_per_epoch=len(train))
    # OneCycleLR raises if stepped more than epochs * steps_per_epoch times, and would barely warm
    # up if stepped once per epoch.
    history = quiet_fit(model, train, epochs=epochs, optimizer=optimizer, scheduler=scheduler)
    assert scheduler.last_epoch == epochs * len(train)
    assert history["lr"][1][0] > history["lr"][0][0]


def test_fit_reduce_on_plateau_gets_the_validation_loss():
    train, val = loaders()
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    history = quiet_fit(model, train, epochs=2, optimizer=optimizer, scheduler=scheduler, val_loader=val)
    assert scheduler.best == pytest.approx(min(history["val_loss"]))


def test_fit_with_channels_last_on_cpu_when_asked():
    train, _ = loaders(48)
    model = small_cnn()
    history = quiet_fit(model, train, epochs=1, channels_last=True)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert len(history) == 1


# ---------------------------------------------------------------------------------------------
# evaluate and predict


def test_evaluate_runs_without_gradients_and_restores_each_layers_mode():
    _, val = loaders()
    model = small_cnn()
    model.train()
    model[1].eval()  # e.g. a BatchNorm deliberately frozen during fine-tuning
    grad_enabled = []
    model.register_forward_hook(lambda *args: grad_enabled.append(torch.is_grad_enabled()))
    running_mean = model[1].running_mean.clone()
    result = evaluate(model, val)
    assert set(result) == {"loss", "accuracy"} and 0.0 <= result["accuracy"] <= 1.0
    assert grad_enabled and not any(grad_enabled)
    assert model.training and model[0].training and not model[1].training
    assert torch.equal(model[1].running_mean, running_mean)


def test_predict_returns_logits_and_targets_in_loader_order():
    _, val = loaders()
    model = small_cnn()
    logits, targets = predict(model, val)
    assert logits.shape == (48, NUM_CLASSES) and logits.dtype == torch.float32
    assert torch.equal(targets, colour_images(48, seed=1).tensors[1])
    accuracy = (logits.argmax(1) == targets).float().mean().item()
    assert accuracy == pytest.approx(evaluate(model, val)["accuracy"])


# ---------------------------------------------------------------------------------------------
# bad input


def test_a_loader_yielding_something_else_than_pairs_is_an_error():
    triples = DataLoader(TensorDataset(torch.rand(8, 3, 16, 16), torch.zeros(8, dtype=torch.long), torch.zeros(8)), batch_size=4)
    with pytest.raises(TypeError, match=r"pair \(inputs, targets\)"):
        quiet_fit(small_cnn(), triples, epochs=1)
    with pytest.raises(TypeError, match=r"pair \(inputs, targets\)"):
        evaluate(small_cnn(), [torch.rand(4, 3, 16, 16)])


@pytest.mark.parametrize(
    "targets, error, message",
    [
        (torch.zeros(8), TypeError, r"labels.long\(\)"),                        # float class indices
        (torch.zeros(8, dtype=torch.int32), TypeError, r"labels.long\(\)"),     # wrong integer dtype
        (torch.zeros(8, 1, dtype=torch.long), TypeError, r"view\(-1\)"),        # (N, 1) labels
        (torch.full((8,), 7), ValueError, "replace_head"),                     # more classes than outputs
    ],
)
def test_wrong_targets_are_explained(targets, error, message):
    loader = DataLoader(TensorDataset(torch.rand(8, 3, 16, 16), targets), batch_size=4)
    with pytest.raises(error, match=message):
        quiet_fit(small_cnn(), loader, epochs=1)


def test_soft_label_targets_shaped_like_the_logits_are_accepted():
    soft = torch.softmax(torch.randn(8, NUM_CLASSES), dim=1)
    loader = DataLoader(TensorDataset(torch.rand(8, 3, 16, 16), soft), batch_size=4)
    history = quiet_fit(small_cnn(), loader, epochs=1)
    assert 0.0 <= history.last["train_accuracy"] <= 1.0


def test_a_model_that_does_not_return_logits_is_an_error():
    loader = DataLoader(colour_images(8, 0), batch_size=4)
    model = nn.Sequential(nn.Conv2d(3, 3, 1))  # forgot the pooling and the head
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        quiet_fit(model, loader, epochs=1)


def test_all_frozen_parameters_is_an_error_that_says_how_to_fix_it():
    loader = DataLoader(colour_images(8, 0), batch_size=4)
    model = small_cnn().requires_grad_(False)
    with pytest.raises(ValueError, match="frozen.*[Uu]nfreeze"):
        quiet_fit(model, loader, epochs=1)
    with pytest.raises(ValueError, match="frozen"):
        quiet_fit(model, loader, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_requesting_another_device_than_the_models_is_an_error():
    loader = DataLoader(colour_images(8, 0), batch_size=4)
    with pytest.raises(ValueError, match=r"model.to\('meta'\)"):
        quiet_fit(small_cnn(), loader, epochs=1, device="meta")
    with pytest.raises(ValueError, match="model is on cpu"):
        evaluate(small_cnn(), loader, device="meta")
    assert model_device(small_cnn(), "cpu") == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters at all


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(epochs=0), ValueError, "epochs"),
        (dict(epochs=1, lr=-1.0), ValueError, "lr"),
        (dict(epochs=1, callbacks=EarlyStopping()), TypeError, r"callbacks=\[my_callback\]"),
        (dict(epochs=1, callbacks=[print]), TypeError, "LambdaCallback"),
        (dict(epochs=1, mixed_precision=True), ValueError, "CUDA"),
    ],
)
def test_bad_fit_arguments(kwargs, error, message):
    loader = DataLoader(colour_images(8, 0), batch_size=4)
    with pytest.raises(error, match=message):
        quiet_fit(small_cnn(), loader, **kwargs)


def test_empty_loaders_are_errors():
    empty = DataLoader(TensorDataset(torch.rand(0, 3, 16, 16), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="no batches"):
        quiet_fit(small_cnn(), empty, epochs=1)
    with pytest.raises(ValueError, match="no batches"):
        evaluate(small_cnn(), empty)


def test_unfreezing_layers_the_default_optimizer_does_not_hold_is_an_error():
    train, _ = loaders(48)
    model = small_cnn()
    model[:2].requires_grad_(False)
    unfreeze = LambdaCallback(on_epoch_start=lambda s: s.model[:2].requires_grad_(True), epochs=[2])
    with pytest.raises(ValueError, match="not in the optimizer"):
        quiet_fit(model, train, epochs=2, callbacks=[unfreeze])
