"""Tests for course_lib.steps: the default classification step and custom steps through the same fit.

The chapters after 19.3 are each a step function: a two-loader step (domain adaptation: labelled
source batches plus unlabelled target batches, with a loss on features) and a dict-target step
(multi-task: class and box targets, several losses) must run through ``fit`` and ``evaluate``
with history, callbacks and progress bars, on the CPU and, where there is one, a CUDA GPU with
mixed precision.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from course_lib.callbacks import Callback, LambdaCallback
from course_lib.metrics import accuracy, box_iou_matched
from course_lib.steps import ClassificationStep, PairedLoader, StepOutput
from course_lib.training import evaluate, fit

from toy import NUM_CLASSES, colour_images, loaders, small_cnn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class FeaturesAndLogits(nn.Module):
    """A small CNN whose body and head can be called apart (a step needs the features)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.body(x))


def mean_matching_step(model: FeaturesAndLogits, batch) -> StepOutput:
    """A two-loader step: cross-entropy on labelled source images plus a penalty pulling the mean
    target feature to the mean source feature (a one-line stand-in for CORAL or MMD)."""
    (source_images, source_labels), (target_images, _) = batch
    source_features, target_features = model.body(source_images), model.body(target_images)
    logits = model.head(source_features)
    alignment = (source_features.mean(0) - target_features.mean(0)).pow(2).sum()
    loss = nn.functional.cross_entropy(logits, source_labels) + 0.1 * alignment
    return StepOutput(loss, {"accuracy": accuracy(logits, source_labels), "alignment": alignment.item()}, len(source_labels))


class ClassAndBox(Dataset):
    """Images with dict targets: a class and a box (x0, y0, x1, y1) that depends on the class."""

    def __init__(self, n: int, seed: int):
        self.images, self.labels = colour_images(n, seed).tensors
        self.boxes = torch.stack([torch.tensor([2.0, 2.0, 8.0 + 2 * k, 8.0 + 2 * k]) for k in self.labels.tolist()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], {"class": self.labels[i], "box": self.boxes[i]}


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classes = nn.Linear(8, NUM_CLASSES)
        self.box = nn.Linear(8, 4)

    def forward(self, x):
        features = self.body(x)
        corner, size = (8 * torch.sigmoid(self.box(features))).split(2, dim=1)
        return {"class": self.classes(features), "box": torch.cat([corner, corner + size], dim=1)}


def class_and_box_step(model: nn.Module, batch) -> StepOutput:
    """A dict-target step: cross-entropy for the class plus a smooth-L1 loss for the box."""
    images, targets = batch
    out = model(images)
    loss = nn.functional.cross_entropy(out["class"], targets["class"]) + nn.functional.smooth_l1_loss(out["box"], targets["box"])
    metrics = {"accuracy": accuracy(out["class"], targets["class"]),
               "box_iou": box_iou_matched(out["box"].detach(), targets["box"]).mean().item()}
    return StepOutput(loss, metrics, len(images))


class CountBatches(Callback):
    def __init__(self):
        self.batches = 0

    def on_batch_end(self, state):
        self.batches += 1


@pytest.mark.parametrize("device", DEVICES)
def test_a_two_loader_step_runs_through_fit(device):
    source, _ = loaders(n_train=96)
    target = DataLoader(colour_images(40, seed=5), batch_size=16)  # shorter: it is cycled
    model = FeaturesAndLogits().to(device)
    counter = CountBatches()
    history = fit(model, PairedLoader(source, target), epochs=3, lr=1e-2, step=mean_matching_step,
                  val_loader=DataLoader(colour_images(32, seed=1), batch_size=16), val_step=ClassificationStep(),
                  callbacks=[counter], progress=True)
    assert len(history) == 3 and counter.batches == 3 * len(source)
    assert {"train_loss", "train_accuracy", "train_alignment", "val_loss", "val_accuracy"} <= set(history.metrics())
    assert history["train_loss"][-1] < history["train_loss"][0], "the two-loader step must make training progress"


@pytest.mark.parametrize("device", DEVICES)
def test_a_dict_target_step_runs_through_fit_and_evaluate(device):
    train = DataLoader(ClassAndBox(96, seed=0), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = DataLoader(ClassAndBox(48, seed=1), batch_size=16)
    model = TwoHeads().to(device)
    before = evaluate(model, test, step=class_and_box_step)
    stopped_at = []
    history = fit(model, train, epochs=6, lr=1e-2, step=class_and_box_step, val_loader=test,
                  callbacks=[LambdaCallback(on_epoch_end=lambda s: stopped_at.append(s.epoch))])
    after = evaluate(model, test, step=class_and_box_step)
    assert set(after) == {"loss", "accuracy", "box_iou"}
    assert after["loss"] < before["loss"] and after["box_iou"] > before["box_iou"]
    assert history["val_box_iou"][-1] == pytest.approx(after["box_iou"])
    assert stopped_at == list(range(1, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (mixed precision)")
def test_custom_steps_train_with_mixed_precision_on_cuda():
    model = TwoHeads().cuda()
    train = DataLoader(ClassAndBox(64, seed=0), batch_size=16)
    seen_dtypes = []
    model.classes.register_forward_hook(lambda module, inputs, output: seen_dtypes.append(output.dtype))
    history = fit(model, train, epochs=2, lr=1e-2, step=class_and_box_step, mixed_precision=True, progress=False)
    assert seen_dtypes and seen_dtypes[0] in (torch.bfloat16, torch.float16), "autocast must cover the step's forward pass"
    assert all(torch.isfinite(torch.tensor(history["train_loss"])))


def test_a_step_that_is_also_a_callback_gets_its_hooks_run():
    class ScheduledStep(ClassificationStep, Callback):
        def __init__(self):
            super().__init__()
            self.epochs_started = []

        def on_epoch_start(self, state):
            self.epochs_started.append(state.epoch)

    step = ScheduledStep()
    fit(small_cnn(), loaders()[0], epochs=2, step=step, progress=False)
    assert step.epochs_started == [1, 2]


def test_default_step_matches_the_classification_loss_and_accuracy():
    _, val = loaders()
    model = small_cnn()
    scores = evaluate(model, val)
    logits = torch.cat([model.eval()(x) for x, _ in val]).detach()
    labels = torch.cat([y for _, y in val])
    assert scores["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert scores["accuracy"] == pytest.approx(accuracy(logits, labels))


def test_bad_steps_get_clear_errors():
    train, _ = loaders()
    with pytest.raises(ValueError, match="either step= or loss_fn="):
        fit(small_cnn(), train, epochs=1, step=ClassificationStep(), loss_fn=nn.CrossEntropyLoss(), progress=False)
    with pytest.raises(TypeError, match="must return StepOutput"):
        fit(small_cnn(), train, epochs=1, step=lambda model, batch: model(batch[0]).sum(), progress=False)
    with pytest.raises(TypeError, match="scalar tensor"):
        fit(small_cnn(), train, epochs=1, step=lambda m, b: StepOutput(m(b[0]), {}, len(b[0])), progress=False)
    with pytest.raises(ValueError, match="does not depend on any trainable parameter"):
        fit(small_cnn(), train, epochs=1, step=lambda m, b: StepOutput(torch.tensor(1.0), {}, len(b[0])), progress=False)
    with pytest.raises(TypeError, match="Metric 'accuracy' of the step must be a number"):
        fit(small_cnn(), train, epochs=1,
            step=lambda m, b: StepOutput(m(b[0]).mean(), {"accuracy": "high"}, len(b[0])), progress=False)
    with pytest.raises(TypeError, match="step must be a function"):
        fit(small_cnn(), train, epochs=1, step="classification", progress=False)


def test_paired_loader_cycles_the_shorter_second_loader():
    first = DataLoader(TensorDataset(torch.arange(10)), batch_size=2)
    second = DataLoader(TensorDataset(torch.arange(3)), batch_size=2)
    pairs = list(PairedLoader(first, second))
    assert len(pairs) == len(PairedLoader(first, second)) == 5
    assert [p[1][0].tolist() for p in pairs] == [[0, 1], [2], [0, 1], [2], [0, 1]]
    with pytest.raises(TypeError, match="must be a DataLoader"):
        PairedLoader(first, iter(second))
    with pytest.raises(ValueError, match="second yields no batches"):
        PairedLoader(first, DataLoader(TensorDataset(torch.arange(0)), batch_size=2))


def test_classification_batches_that_are_not_pairs_say_what_to_do():
    with pytest.raises(TypeError, match=r"pair \(inputs, targets\).*step="):
        evaluate(small_cnn(), [torch.zeros(2, 3, 16, 16)])
