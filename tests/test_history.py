"""Tests for course_lib.history: the per-epoch record of a training run."""

from __future__ import annotations

import json

import pytest

from course_lib.history import History, is_number, metric_mode


def test_history_best_last_as_dict_and_json_round_trip(tmp_path):
    history = History([
        {"epoch": 1, "val_loss": 1.0, "val_accuracy": 0.5, "lr": [0.1]},
        {"epoch": 2, "val_loss": 0.5, "val_accuracy": 0.7, "lr": [0.1], "extra": float("nan")},
        {"epoch": 3, "val_loss": 0.7, "val_accuracy": 0.6, "lr": [0.05]},
    ])
    assert history.best("val_loss")["epoch"] == 2
    assert history.best("val_accuracy")["epoch"] == 2
    assert history.best("val_loss", mode="max")["epoch"] == 1
    assert history.last["epoch"] == 3
    assert history["extra"][0] is None and history[-1]["epoch"] == 3
    assert history.as_dict()["val_accuracy"] == [0.5, 0.7, 0.6]
    text = history.to_json(tmp_path / "history.json")
    assert json.loads(text)[1]["extra"] is None  # NaN is not valid JSON
    again = History.from_json(tmp_path / "history.json")
    assert again["val_loss"] == [1.0, 0.5, 0.7] and again["lr"] == [[0.1], [0.1], [0.05]]
    assert History.from_json(text)["epoch"] == [1, 2, 3]
    assert "3 epochs" in repr(history)


def test_history_bad_requests_are_clear():
    with pytest.raises(KeyError, match="records"):
        History([{"epoch": 1}])["val_accuracy"]
    with pytest.raises(ValueError, match="empty"):
        History().last
    with pytest.raises(ValueError, match="mode"):
        History([{"epoch": 1, "a": 1.0}]).best("a", mode="biggest")


def test_metric_mode_and_is_number():
    assert metric_mode("val_loss", None) == "min" and metric_mode("val_accuracy", None) == "max"
    assert metric_mode("val_loss", "max") == "max"
    assert is_number(0.5) and is_number(3) and not is_number(True) and not is_number(float("nan")) and not is_number("1")
