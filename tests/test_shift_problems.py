"""Tests for course_lib.shift_problems: 19.4's source model, source data and targets in every world.

The offline world at smoke size (4 images per class, the course's own source model) and the lite
world at smoke size on the genuine MNIST/USPS of ../shared/data (skipped, with the reason, where
it is absent): EfficientNet-Lite0 trained for 8 steps of 16 images at 32 px, cached, then loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import course_lib
from course_lib import shift_problems
from course_lib.config import CourseConfig
from course_lib.data import backbone_statistics, dataset_targets
from course_lib.shift_data import Normalize, SeverityShift
from course_lib.shift_problems import (
    SEVERITIES,
    WORLD_TARGET_DOMAINS,
    ShiftProblem,
    TargetDomain,
    _trained_digit_model,
    shift_problem,
)
from course_lib.world import SOURCE_CLASSES, WORLD_MEAN, WORLD_STD, get_domain, normalize


@pytest.fixture(scope="module")
def world_cfg(smoke_env) -> CourseConfig:
    cfg = course_lib.setup(profile="smoke", quiet=True)
    assert cfg.offline and cfg.cache_dir == smoke_env
    return cfg


@pytest.fixture(scope="module")
def world(world_cfg) -> ShiftProblem:
    return shift_problem(world_cfg)


def _images(dataset, limit: int | None = None) -> torch.Tensor:
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([dataset[i][0] for i in range(count)])


def _labels(dataset) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


# --- the offline world -------------------------------------------------------------------------


def test_world_problem_has_the_four_target_domains_of_the_24_source_classes(world, world_cfg):
    assert isinstance(world, ShiftProblem)
    assert list(world.targets) == list(WORLD_TARGET_DOMAINS) == ["phone", "sketch", "night", "texture"]
    assert world.class_names == list(SOURCE_CLASSES) and world.num_classes == 24
    for name, target in world.targets.items():
        assert isinstance(target, TargetDomain) and name in target.description
        assert target.adapt.domain_name == target.test.domain_name == name
        assert len(target.adapt) == world_cfg.shift_per_class * 24
        assert len(target.test) == world_cfg.shift_test_per_class * 24
        assert _labels(target.adapt) == _labels(target.test)  # both 4 of each class, in class order
        assert sorted(set(_labels(target.adapt))) == list(range(24))
        assert not torch.equal(target.adapt[0][0], target.test[0][0])  # other images (other seeds)
    assert world.published == {} and world.published_source == ""  # the course's own world: nothing to compare


def test_world_problem_sizes_follow_the_config(world_cfg):
    # Smoke size has 4 and 4: other numbers tell the two sizes apart.
    problem = shift_problem(dataclasses.replace(world_cfg, shift_per_class=3, shift_test_per_class=2),
                            severities=(0.5,))
    for target in [*problem.targets.values(), *problem.severity.values()]:
        assert (len(target.adapt), len(target.test)) == (3 * 24, 2 * 24)
    assert (len(problem.source_train), len(problem.source_train_unit), len(problem.source_test)) == (72, 72, 48)
    assert torch.bincount(dataset_targets(problem.source_train)).tolist() == [3] * 24
    assert "3 labelled images per class" in problem.description and "2 to test on" in problem.description


def test_world_source_train_and_its_unit_copy_hold_the_same_images(world, world_cfg):
    assert len(world.source_train) == len(world.source_train_unit) == world_cfg.shift_per_class * 24
    assert _labels(world.source_train) == _labels(world.source_train_unit)
    unit, normalised = _images(world.source_train_unit), _images(world.source_train)
    assert unit.min() >= 0 and unit.max() <= 1 and unit.shape == (96, 3, 64, 64)
    assert normalised.min() < 0  # standardised, not [0, 1]
    assert torch.allclose(world.normalize(unit), normalised, atol=1e-6)
    assert (world.mean, world.std) == (tuple(WORLD_MEAN), tuple(WORLD_STD)) and world.normalize is normalize
    # The held-out source images are other studio images.
    assert world.source_test.domain_name == "studio" and len(world.source_test) == world_cfg.shift_test_per_class * 24
    assert not torch.equal(world.source_test[0][0], world.source_train[0][0])


def test_world_severity_runs_from_studio_to_night(world, world_cfg):
    assert list(world.severity) == list(SEVERITIES) and world.severity_name == "studio -> night"
    studio, night = get_domain("studio"), get_domain("night")

    def fields(domain) -> dict:
        return {key: value for key, value in dataclasses.asdict(domain).items() if key != "name"}

    start, end = world.severity[0.0].adapt.domain, world.severity[1.0].adapt.domain
    assert fields(start) == fields(studio) and fields(end) == fields(night)
    for t, target in world.severity.items():
        assert f"t = {t:g}" in target.description
        assert (len(target.adapt), len(target.test)) == (world_cfg.shift_per_class * 24, world_cfg.shift_test_per_class * 24)
        assert target.test.domain == target.adapt.domain
    # Paired images: the same shapes (labels) at t = 0 and t = 1, but they look different.
    zero, one = world.severity[0.0].adapt, world.severity[1.0].adapt
    assert _labels(zero) == _labels(one)
    assert (_images(zero, 8) - _images(one, 8)).abs().mean() > 0.1
    # Night is darker: the mean pixel in [0, 1] falls with t.
    brightness = [float((_images(world.severity[t].test, 24) * torch.tensor(WORLD_STD)[:, None, None]
                         + torch.tensor(WORLD_MEAN)[:, None, None]).mean()) for t in SEVERITIES]
    assert brightness[0] > brightness[-1]


def test_world_source_model_is_the_course_model_in_eval_mode(world, world_cfg):
    model = world.source_model
    assert isinstance(model, torch.nn.Module) and not model.training
    assert all(not module.training for module in model.modules())
    assert next(model.parameters()).device.type == world_cfg.device.type
    with torch.no_grad():
        logits = model(_images(world.source_train, 4).to(world_cfg.device))
    assert logits.shape == (4, 24)


def test_world_severities_can_be_chosen(world_cfg):
    problem = shift_problem(world_cfg, severities=[0, 0.3])
    assert list(problem.severity) == [0.0, 0.3]
    assert all(isinstance(t, float) for t in problem.severity)


@pytest.mark.parametrize(
    "severities", [[], [1.5], [-0.1], [0.0, float("nan")], [float("inf")], 0.5, "0.5", [None], ["half"], [True]],
    ids=["empty", "above-1", "below-0", "nan", "inf", "one-number", "string", "none", "word", "bool"],
)
def test_bad_severities_are_a_value_error(world_cfg, severities):
    with pytest.raises(ValueError, match=r"severities must be a list of numbers from 0 to 1, e\.g\. \(0\.0, 0\.25"):
        shift_problem(world_cfg, severities=severities)


@pytest.mark.parametrize("not_a_config", [None, "smoke", {"profile": "smoke"}])
def test_shift_problem_needs_a_config(not_a_config):
    with pytest.raises(TypeError, match=r"needs the notebook's cfg \(course_lib\.setup\(\)\)"):
        shift_problem(not_a_config)


def test_the_digits_model_needs_two_training_steps_before_anything_is_loaded(world_cfg):
    cfg = dataclasses.replace(world_cfg, world="lite", backbone="efficientnet-lite0", source_steps=1)
    with pytest.raises(ValueError, match=r"cfg\.source_steps is 1: .*at least 2 training steps .*course_lib\.config"):
        _trained_digit_model(cfg, source_train=None, num_classes=10)


# --- the lite world: MNIST -> USPS --------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cfg(lite_smoke_cfg) -> CourseConfig:
    cfg = lite_smoke_cfg
    assert (cfg.world, cfg.size, cfg.backbone, cfg.source_steps) == ("lite", "smoke", "efficientnet-lite0", 8)
    return cfg


@pytest.fixture(scope="module")
def digits(digits_cfg) -> ShiftProblem:
    return shift_problem(digits_cfg)  # trains the source model (8 steps) and caches it


def _checkpoints(cfg: CourseConfig) -> list[Path]:
    return sorted((cfg.cache_dir / "shift").glob("*.pt"))


@pytest.mark.realdata
def test_digits_problem_is_mnist_to_usps_with_a_10_digit_model(digits, digits_cfg):
    assert set(digits.targets) == {"USPS"} and digits.num_classes == 10
    usps = digits.targets["USPS"]
    assert (len(usps.adapt), len(usps.test)) == (1005, 1002)  # the USPS test split, halved per class
    assert set(usps.adapt.indices).isdisjoint(usps.test.indices)
    model = digits.source_model
    assert not model.training and model.get_classifier().out_features == 10
    with torch.no_grad():
        logits = model(_images(usps.test, 3).to(digits_cfg.device))
    assert logits.shape == (3, 10)
    assert (digits.mean, digits.std) == backbone_statistics("efficientnet-lite0")
    assert "MNIST -> USPS" in digits.description
    # The published figures make bench print MNIST -> USPS next to the benchmark's own numbers.
    assert digits.published == {"source-only": 0.82, "DANN": 0.92}
    assert "Transfer-Learning-Library" in digits.published_source


@pytest.mark.realdata
def test_digits_source_images_in_unit_and_normalised_form_match(digits, digits_cfg):
    n = digits_cfg.shift_per_class * 10
    assert len(digits.source_train) == len(digits.source_train_unit) == n
    assert len(digits.source_test) == digits_cfg.shift_test_per_class * 10
    assert torch.bincount(dataset_targets(digits.source_train)).tolist() == [digits_cfg.shift_per_class] * 10
    assert digits.source_train.indices == digits.source_train_unit.indices
    unit, normalised = _images(digits.source_train_unit), _images(digits.source_train)
    assert unit.min() >= 0 and unit.max() <= 1 and unit.shape == (n, 3, 32, 32)
    assert isinstance(digits.normalize, Normalize)
    assert (digits.normalize.mean, digits.normalize.std) == backbone_statistics("efficientnet-lite0")
    assert torch.allclose(digits.normalize(unit), normalised, atol=1e-5)


@pytest.mark.realdata
def test_digits_severity_knob_shifts_held_out_mnist_images(digits, digits_cfg):
    assert list(digits.severity) == list(SEVERITIES)
    per_class = digits_cfg.shift_test_per_class
    for t, target in digits.severity.items():
        assert isinstance(target.adapt, SeverityShift) and target.adapt.t == t and f"t = {t:g}" in target.description
        # Halves of the same held-out images: disjoint, balanced, and not the same noise.
        assert set(target.adapt.dataset.indices).isdisjoint(target.test.dataset.indices)
        for half in (target.adapt, target.test):
            assert torch.bincount(dataset_targets(half.dataset)).tolist() == [per_class] * 10
        assert target.adapt.seed != target.test.seed
    zero, one = digits.severity[0.0].adapt, digits.severity[1.0].adapt
    unit_image, label = zero.dataset[0]
    assert torch.equal(zero[0][0], digits.normalize(unit_image)) and zero[0][1] == label
    assert (zero[0][0] - one[0][0]).abs().mean() > 0.3 and one[0][1] == label


@pytest.mark.realdata
def test_digits_source_model_is_loaded_from_the_cache_the_second_time(digits, digits_cfg, capsys, monkeypatch):
    [checkpoint] = _checkpoints(digits_cfg)
    assert "8steps" in checkpoint.name and "efficientnet-lite0" in checkpoint.name
    modified = checkpoint.stat().st_mtime_ns
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("the source model was trained again instead of loaded from the cache")

    monkeypatch.setattr(shift_problems, "fine_tune_on_target", no_training)
    again = shift_problem(digits_cfg, severities=(0.0,))
    assert f"Loaded trained weights from {checkpoint}" in capsys.readouterr().out
    assert checkpoint.stat().st_mtime_ns == modified and _checkpoints(digits_cfg) == [checkpoint]
    before, after = digits.source_model.state_dict(), again.source_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not again.source_model.training


@pytest.mark.realdata
def test_digits_source_model_was_trained_and_its_cache_key_holds_the_steps(digits, digits_cfg, capsys):
    from course_lib.models import load_backbone

    # Trained, not just given a new head: the body's weights moved away from the pretrained ones.
    pretrained = load_backbone("efficientnet-lite0").state_dict()
    trained = digits.source_model.state_dict()
    body = [name for name in pretrained if not name.startswith("classifier") and pretrained[name].is_floating_point()]
    assert any(not torch.equal(pretrained[name], trained[name].cpu()) for name in body)
    # Another number of steps is another model: trained again, saved under another name.
    capsys.readouterr()
    shorter = shift_problem(dataclasses.replace(digits_cfg, source_steps=2), severities=(1.0,))
    assert "Saved trained weights" in capsys.readouterr().out
    assert [path.name for path in _checkpoints(digits_cfg) if "2steps" in path.name]
    other = shorter.source_model.state_dict()
    assert any(not torch.equal(trained[name], other[name]) for name in body)


@pytest.mark.realdata
def test_digits_with_fewer_than_two_source_steps_is_a_helpful_error(digits_cfg):
    for steps in (0, 1):
        with pytest.raises(ValueError, match=rf"cfg\.source_steps is {steps}: the digits' source model needs at least 2"):
            shift_problem(dataclasses.replace(digits_cfg, source_steps=steps))
    assert not [path for path in _checkpoints(digits_cfg) if "0steps" in path.name or "1steps" in path.name]


def test_smoke_sizes_keep_the_shift_problem_small():
    # The tests above rely on these: 4 images per class, and 8 source steps in the lite world.
    for world in ("offline", "lite"):
        sizes = course_lib.config.size_settings(world, "smoke")
        assert (sizes["shift_per_class"], sizes["shift_test_per_class"]) == (4, 4)
    assert course_lib.config.size_settings("lite", "smoke")["source_steps"] == 8
    assert SEVERITIES == (0.0, 0.25, 0.5, 0.75, 1.0)
