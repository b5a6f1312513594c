"""Tests for course_lib.validation: the shared input checks and their messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.validation import (
    check_class_labels, check_feature_matrix, check_module, check_non_negative_int, check_positive_int,
    check_positive_number, check_same_feature_space, is_int,
)


def test_is_int_accepts_numpy_integers_but_not_bools_or_floats():
    assert is_int(3) and is_int(np.int64(3))
    assert not is_int(True) and not is_int(3.0) and not is_int("3")


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_check_positive_int_rejects_what_is_not_a_count(value):
    with pytest.raises(ValueError, match=r"^epochs must be a positive int, got .*\. Try epochs=5\.$"):
        check_positive_int(value, "epochs", hint="Try epochs=5.")


def test_checks_return_plain_python_values():
    assert type(check_positive_int(np.int64(4), "n")) is int
    assert check_non_negative_int(0, "seed") == 0
    assert check_positive_number(1, "lr") == 1.0
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        check_non_negative_int(-1, "seed")
    for bad in (0, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="lr must be a positive number"):
            check_positive_number(bad, "lr")


def test_check_module_names_the_function_and_what_it_needed():
    model = nn.Linear(2, 2)
    assert check_module(model, "freeze") is model
    with pytest.raises(TypeError, match=r"^freeze needs a torch.nn.Module, got generator\. Pass the model\.$"):
        check_module(model.parameters(), "freeze", "Pass the model.")
    with pytest.raises(TypeError, match=r"fine_tune needs the whole model \(a torch.nn.Module\), got list"):
        check_module([], "fine_tune", what="the whole model (a torch.nn.Module)")


def test_feature_matrix_and_labels_checks():
    features = torch.randn(4, 3)
    assert check_feature_matrix(features, "x").dtype == torch.float32
    with pytest.raises(TypeError, match="float tensor"):
        check_feature_matrix(torch.ones(4, 3, dtype=torch.int64), "x")
    with pytest.raises(ValueError, match="2-D"):
        check_feature_matrix(torch.randn(4, 3, 2), "x")
    with pytest.raises(ValueError, match="empty"):
        check_feature_matrix(torch.randn(0, 3), "x")
    with pytest.raises(ValueError, match="NaN"):
        check_feature_matrix(torch.tensor([[float("nan")]]), "x")
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.equal(check_class_labels(labels, features, "y", "x"), labels)
    with pytest.raises(TypeError, match=r"\.long\(\)"):
        check_class_labels(labels.float(), features, "y", "x")
    with pytest.raises(ValueError, match="x has 4 rows but y has 3 labels"):
        check_class_labels(labels[:3], features, "y", "x")
    with pytest.raises(ValueError, match="class indices 0, 1, 2"):
        check_class_labels(torch.tensor([0, -1, 2, 1]), features, "y", "x")
    with pytest.raises(ValueError, match="same layer"):
        check_same_feature_space(features, torch.randn(2, 5), "train", "test")
