"""19.7's problem in every world (course_lib.continual_problems): tasks, models and the frozen backbone."""

from __future__ import annotations


import pytest
import torch

import course_lib
from course_lib.config import CourseConfig, size_settings
from course_lib.continual_data import MNIST_MEAN, MNIST_STD, world_tasks
from course_lib.continual_problems import BackboneInputs, continual_problem
from course_lib.continual_runs import PUBLISHED_CLASS_INCREMENTAL, train_sequence
from course_lib.models import get_head, load_backbone, remove_head


@pytest.fixture(scope="module")
def world_cfg(smoke_env) -> CourseConfig:
    return course_lib.setup(profile="smoke", quiet=True)


@pytest.fixture(scope="module")
def world(world_cfg):
    return continual_problem(world_cfg)


def test_the_worlds_problem_has_a_class_split_and_a_domain_sequence(world, world_cfg):
    assert [task.classes for task in world.class_split] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [task.name.split(": ")[1] for task in world.domain_sequence] == ["studio", "phone", "sketch", "night"]
    assert all(task.classes == tuple(range(10)) for task in world.domain_sequence)
    first = world.class_split[0]
    assert len(first.train_labels) == 2 * world_cfg.continual_per_class
    assert len(first.test_labels) == 2 * world_cfg.continual_test_per_class
    assert world.published is None and len(world.class_names) == 10


def test_the_worlds_tasks_hold_the_frozen_source_models_features(world, world_cfg):
    source_model = load_backbone(world_cfg.backbone).eval()
    feature_dim = get_head(source_model).in_features
    first = world.class_split[0]
    assert first.train_inputs.shape[1:] == (feature_dim,) and str(feature_dim) in world.inputs
    # The same numbers as the source model's own penultimate layer on the task's images.
    images = world_tasks("class-incremental", train_per_class=world_cfg.continual_per_class,
                         test_per_class=world_cfg.continual_test_per_class, image_size=64)[0].train_inputs[:4]
    with torch.no_grad():
        expected = remove_head(source_model)(images).flatten(1)
    assert torch.allclose(first.train_inputs[:4], expected, atol=1e-5)
    mlp = world.model_factory(10)
    assert mlp(first.train_inputs[:4]).shape == (4, 10)
    assert sum(p.numel() for p in mlp.parameters()) == feature_dim * 400 + 400 + 400 * 400 + 400 + 400 * 10 + 10
    assert torch.equal(world.backbone_factory(10)(first.train_inputs[:4]), first.train_inputs[:4])
    assert world.model_factory(10) is not mlp  # a fresh model every call


def test_nearest_class_means_on_the_frozen_backbone_do_not_forget(world):
    # The source model's features separate the target shapes; old means never move.
    result = train_sequence(world.backbone_factory, world.class_split, "ncm", scenario="class-incremental")
    diagonal = result.accuracy_matrix.diagonal()
    assert result.accuracy_matrix[-1, 0] >= diagonal[0] - 0.15
    assert result.average_accuracy > 0.5  # chance is 10%


def test_the_sizes_are_in_every_row_of_the_size_table():
    for world in ("offline", "lite", "real"):
        for size in ("smoke", "standard", "full"):
            sizes = size_settings(world, size)
            assert sizes["continual_iterations"] >= 1 and sizes["continual_seeds"] >= 1
    assert size_settings("offline", "standard")["continual_seeds"] >= 3


def test_backbone_inputs_undo_one_normalisation_and_apply_another():
    adapter = BackboneInputs((0.5,), (0.25,), 8, (0.0, 0.0, 0.0), (0.5, 0.5, 0.5))
    images = torch.full((2, 1, 4, 4), 2.0)  # pixels 2 * 0.25 + 0.5 = 1.0
    out = adapter(images)
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(out, torch.full_like(out, 2.0))  # (1.0 - 0) / 0.5


def test_backbone_inputs_refuse_flattened_images_and_bad_statistics():
    adapter = BackboneInputs((MNIST_MEAN,), (MNIST_STD,), 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="flatten=False"):
        adapter(torch.zeros(2, 784))
    with pytest.raises(ValueError, match="positive"):
        BackboneInputs((0.0,), (0.0,), 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="1 or 3 finite numbers"):
        BackboneInputs((0.0, 0.0), (1.0, 1.0), 32, (0.5,) * 3, (0.5,) * 3)


def test_the_digits_problem_is_split_mnist_with_the_published_figures(lite_smoke_cfg):
    problem = continual_problem(lite_smoke_cfg)
    assert [task.classes for task in problem.class_split] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert problem.domain_sequence is problem.class_split
    assert problem.published == PUBLISHED_CLASS_INCREMENTAL
    images = problem.class_split[0].train_inputs[:3]
    assert images.shape[1:] == (1, 28, 28) and len(problem.class_split[0].train_labels) == 16
    assert problem.model_factory(10)(images).shape == (3, 10) and "pixels" in problem.inputs
    features = problem.backbone_factory(10)(images)
    assert features.ndim == 2 and features.shape[0] == 3
