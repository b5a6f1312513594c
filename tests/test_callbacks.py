"""Tests for course_lib.callbacks: Callback, LambdaCallback, EarlyStopping, TrackMetric."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from course_lib.callbacks import Callback, EarlyStopping, LambdaCallback, TrackMetric
from course_lib.training import evaluate

from toy import loaders, quiet_fit, small_cnn


# ---------------------------------------------------------------------------------------------
# callbacks


def test_early_stopping_stops_when_the_metric_stops_improving():
    train, _ = loaders(48)
    stopper = EarlyStopping("constant", patience=2, mode="max")
    history = quiet_fit(small_cnn(), train, epochs=10, callbacks=[TrackMetric(lambda m: 1.0, "constant"), stopper])
    # epoch 1 sets the best, epochs 2 and 3 do not improve on it: stop after epoch 3
    assert history["epoch"] == [1, 2, 3]
    assert stopper.best_epoch == 1


def test_early_stopping_restores_the_best_weights():
    train, _ = loaders(48)
    model = small_cnn()
    values = iter([3.0, 1.0, 2.0, 0.5, 0.1])  # best (highest) at epoch 1
    snapshots = []
    callbacks = [
        TrackMetric(lambda m: next(values), "score"),
        LambdaCallback(on_epoch_end=lambda s: snapshots.append(s.model[5].weight.detach().clone())),
        EarlyStopping("score", patience=2, mode="max", restore_best=True),
    ]
    history = quiet_fit(model, train, epochs=5, lr=0.05, callbacks=callbacks)
    assert len(history) == 3
    assert torch.equal(model[5].weight, snapshots[0])
    assert not torch.equal(model[5].weight, snapshots[-1])


def test_early_stopping_on_a_metric_that_is_not_recorded_says_what_to_do():
    train, _ = loaders(48)
    with pytest.raises(KeyError, match="val_loader"):
        quiet_fit(small_cnn(), train, epochs=2, callbacks=[EarlyStopping("val_loss")])


def test_lambda_callback_runs_only_at_the_given_epochs_with_the_trainer_state():
    train, _ = loaders(48)
    seen = []
    model = small_cnn()
    hook = LambdaCallback(on_epoch_start=lambda s: seen.append((s.epoch, s.model is model, s.optimizer is not None)), epochs=[2, 4])
    quiet_fit(model, train, epochs=4, callbacks=[hook])
    assert seen == [(2, True, True), (4, True, True)]


def test_callback_hooks_fire_in_order_and_can_stop_training():
    class Recorder(Callback):
        def __init__(self):
            self.calls = []

        def on_epoch_start(self, state):
            self.calls.append(("start", state.epoch, state.model.training))

        def on_batch_end(self, state):
            self.calls.append(("batch", state.epoch, state.batch))

        def on_epoch_end(self, state):
            self.calls.append(("end", state.epoch, len(state.history)))
            state.stop_training = state.epoch == 2

        def on_fit_end(self, state):
            self.calls.append(("fit_end", state.epoch, None))

    train, _ = loaders(32)  # two batches of 16
    recorder = Recorder()
    history = quiet_fit(small_cnn(), train, epochs=5, callbacks=[recorder])
    assert len(history) == 2
    assert recorder.calls == [
        ("start", 1, True), ("batch", 1, 0), ("batch", 1, 1), ("end", 1, 1),
        ("start", 2, True), ("batch", 2, 0), ("batch", 2, 1), ("end", 2, 2),
        ("fit_end", 2, None),
    ]


def test_gradual_unfreezing_with_an_on_epoch_start_hook():
    train, _ = loaders(48)
    model = small_cnn()
    model[:2].requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)  # holds the frozen layers too
    conv_weights = []
    callbacks = [
        LambdaCallback(on_epoch_start=lambda s: s.model[:2].requires_grad_(True), epochs=[2]),
        LambdaCallback(on_epoch_end=lambda s: conv_weights.append(s.model[0].weight.detach().clone())),
    ]
    original = model[0].weight.detach().clone()
    quiet_fit(model, train, epochs=2, optimizer=optimizer, callbacks=callbacks)
    assert torch.equal(conv_weights[0], original)  # frozen during epoch 1
    assert not torch.equal(conv_weights[1], original)  # trained during epoch 2


def test_track_metric_records_fn_of_the_model_in_eval_mode_every_epoch():
    train, val = loaders(48)
    modes = []

    def source_accuracy(model):
        modes.append(model.training)
        return evaluate(model, val)["accuracy"]

    model = small_cnn()
    history = quiet_fit(model, train, epochs=2, callbacks=[TrackMetric(source_accuracy, "source_accuracy")])
    assert modes == [False, False]
    assert len(history["source_accuracy"]) == 2
    assert history.last["source_accuracy"] == pytest.approx(evaluate(model, val)["accuracy"])


def test_track_metric_rejects_non_numbers_and_name_clashes():
    train, _ = loaders(32)
    with pytest.raises(TypeError, match="must return a number"):
        quiet_fit(small_cnn(), train, epochs=1, callbacks=[TrackMetric(lambda m: "high", "score")])
    with pytest.raises(ValueError, match="overwrite"):
        quiet_fit(small_cnn(), train, epochs=1, callbacks=[TrackMetric(lambda m: 1.0, "train_loss")])


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_callback_arguments():
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(TypeError, match="function"):
        LambdaCallback(on_epoch_start="unfreeze")
    with pytest.raises(TypeError, match="function"):
        TrackMetric(0.5, "score")


# ---------------------------------------------------------------------------------------------
# imports


def test_callbacks_import_on_their_own_without_a_circular_import():
    # course_lib.training imports course_lib.callbacks, so callbacks must not import training at import time.
    code = (
        "import sys, course_lib.callbacks; "
        "assert 'course_lib.training' not in sys.modules, 'course_lib.callbacks imported course_lib.training'; "
        "import course_lib.training"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
