"""Tests for course_lib.world: determinism, pairing, annotations, novel classes, cache, errors."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from course_lib.world import (
    ATTRIBUTE_NAMES, DOMAINS, NAMED_SHAPES, SOURCE_CLASSES, SPLITS, TARGET_CLASSES, WORLD_MEAN, WORLD_STD, Domain,
    ShapeWorld, class_attributes, describe_class, interpolate_domains, normalize, novel_classes, render_batch,
    shape_class, task_sequence, world_generation_speed,
)
from course_lib.world import dataset as dataset_module


def small(**kwargs) -> ShapeWorld:
    kwargs.setdefault("n_per_class", 2)
    kwargs.setdefault("cache_dir", False)
    return ShapeWorld(**kwargs)


# -- catalogue and splits ------------------------------------------------------------------------


def test_catalogue_has_source_and_target_classes_that_partition_the_named_shapes():
    assert len(SOURCE_CLASSES) == 24 and len(TARGET_CLASSES) == 10
    assert set(SOURCE_CLASSES).isdisjoint(TARGET_CLASSES)
    assert set(SOURCE_CLASSES) | set(TARGET_CLASSES) == set(NAMED_SHAPES)
    assert SPLITS["all_named"] == SOURCE_CLASSES + TARGET_CLASSES


def test_descriptions_and_class_attributes():
    assert describe_class("star5") == "a five-pointed star with sharp points"
    descriptions = [describe_class(name) for name in NAMED_SHAPES]
    assert len(set(descriptions)) == len(descriptions)
    assert class_attributes("ring")["has_hole"] == 1.0
    assert class_attributes("hexagon")["n_corners"] == 6.0
    assert class_attributes("circle")["has_curved_edges"] == 1.0 and class_attributes("square")["convex"] == 1.0


def test_every_named_shape_fits_in_the_unit_circle_and_is_not_empty():
    grid = np.linspace(-1.2, 1.2, 241, dtype=np.float32)
    x, y = np.meshgrid(grid, grid)
    outside_unit_circle = np.hypot(x, y) > 1.0
    for name, spec in NAMED_SHAPES.items():
        inside = spec.sdf(x, y) < 0
        assert inside.mean() > 0.1, name
        assert not (inside & outside_unit_circle).any(), name


def test_named_shapes_differ_from_each_other():
    # Canonical masks, best overlap over rotations: no two classes may be (nearly) the same shape.
    grid = np.linspace(-1, 1, 96, dtype=np.float32)
    x, y = np.meshgrid(grid, grid)
    masks = {name: spec.sdf(x, y) < 0 for name, spec in NAMED_SHAPES.items()}
    names = list(NAMED_SHAPES)
    for angle in np.linspace(0, 2 * np.pi, 24, endpoint=False):
        c, s = np.cos(angle), np.sin(angle)
        rotated = {name: NAMED_SHAPES[name].sdf(c * x + s * y, -s * x + c * y) < 0 for name in names}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                iou = (masks[a] & rotated[b]).sum() / (masks[a] | rotated[b]).sum()
                # Regular polygons overlap most (a hexagon and a heptagon: 0.91); their corners tell them apart.
                assert iou < 0.92, (a, b, angle, iou)


def test_task_sequences():
    tasks = task_sequence("class-incremental")
    assert len(tasks) == 5 and all(len(t.classes) == 2 and t.domain == "studio" for t in tasks)
    assert sum((t.classes for t in tasks), ()) == TARGET_CLASSES
    domains = task_sequence("domain-incremental")
    assert [t.domain for t in domains] == ["studio", "phone", "sketch", "night"]
    assert all(t.classes == TARGET_CLASSES for t in domains)
    with pytest.raises(ValueError, match="class-incremental"):
        task_sequence("task-incremental-typo")


# -- images and annotations ----------------------------------------------------------------------


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_shapes_dtypes_and_ranges(domain):
    world = small(split="target", domain=domain, image_size=48)
    n = 2 * len(TARGET_CLASSES)
    assert world.images.shape == (n, 3, 48, 48) and world.images.dtype == torch.uint8
    assert world.labels.dtype == torch.int64 and world.labels.shape == (n,)
    assert world.attributes.shape == (n, len(ATTRIBUTE_NAMES)) and world.attributes.dtype == torch.float32
    assert world.boxes.shape == (n, 4) and world.boxes.dtype == torch.float32
    assert world.masks.shape == (n, 48, 48) and world.masks.dtype == torch.bool
    assert world.images.float().std() > 10  # not a blank canvas
    image, label = world[3]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and label == 3
    raw = small(split="target", domain=domain, image_size=48, transform=lambda x: x)[3][0]
    assert 0.0 <= raw.min() and raw.max() <= 1.0
    torch.testing.assert_close(image, normalize(raw))


def test_class_balance_and_labels():
    world = small(split="source", n_per_class=3)
    assert len(world) == 72 and world.num_classes == 24
    assert torch.bincount(world.labels).tolist() == [3] * 24
    assert world.labels[:24].tolist() == list(range(24))


def test_determinism_independent_of_batch_size_and_subset():
    classes = ["star5", "gear", "glyph-000123"]
    indices = np.arange(12)
    labels = indices % 3
    for domain in ("phone", "texture"):
        whole = render_batch(classes, labels, indices, 7, domain, 64)
        again = render_batch(classes, labels, indices, 7, domain, 64)
        np.testing.assert_array_equal(whole.images, again.images)
        pieces = [render_batch(classes, labels[i:i + 5], indices[i:i + 5], 7, domain, 64) for i in range(0, 12, 5)]
        np.testing.assert_array_equal(whole.images, np.concatenate([p.images for p in pieces]))
        reversed_order = render_batch(classes, labels[::-1], indices[::-1], 7, domain, 64)
        np.testing.assert_array_equal(whole.images, reversed_order.images[::-1])
    smaller = small(split="target", n_per_class=2, domain="night")
    larger = small(split="target", n_per_class=3, domain="night")
    assert torch.equal(smaller.images, larger.images[:20]) and torch.equal(smaller.masks, larger.masks[:20])


def test_seeds_give_different_images():
    assert not torch.equal(small(seed=0).images, small(seed=1).images)


def test_domains_are_paired_same_geometry_different_pixels():
    studio, night = small(split="target", domain="studio"), small(split="target", domain="night")
    assert torch.equal(studio.masks, night.masks) and torch.equal(studio.boxes, night.boxes)
    assert not torch.equal(studio.images, night.images)
    assert night.images.float().mean() < studio.images.float().mean() - 60  # night is dark


def test_boxes_match_masks_and_shapes_stay_inside():
    world = small(split="all_named", image_size=64)
    for mask, box in zip(world.masks, world.boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert not world.masks[:, 0, :].any() and not world.masks[:, -1, :].any()
    assert not world.masks[:, :, 0].any() and not world.masks[:, :, -1].any()
    side = world.boxes[:, 2:] - world.boxes[:, :2]
    assert side.max() <= 0.76 * 64 and side.max(dim=1).values.min() >= 0.15 * 64


def test_attributes_columns():
    world = small(split="source", domain="sketch")
    column = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}
    assert "n_corners" in column and "hue" in column and len(ATTRIBUTE_NAMES) == len(set(ATTRIBUTE_NAMES))
    assert (world.attributes[:, column["filled"]] == 0).all()  # sketches are outlines
    star = SOURCE_CLASSES.index("star5")
    assert (world.attributes[world.labels == star, column["n_corners"]] == 10).all()
    sizes = world.attributes[:, column["relative_size"]]
    assert 0.35 <= sizes.min() and sizes.max() <= 0.75


def test_custom_domain_object():
    noisy = dataclasses.replace(DOMAINS["studio"], noise_std=0.1)
    assert noisy.noise_std == (0.1, 0.1)
    clean, shaky = small(domain="studio"), small(domain=noisy)
    assert shaky.domain_name == "studio" and shaky.fingerprint != clean.fingerprint
    difference = (shaky.images.float() - clean.images.float()).abs().mean()
    assert 5 < difference < 40  # same picture (same name, same draws) plus noise
    with pytest.raises(ValueError, match="noise_std"):
        Domain("bad", noise_std=(0.3, 0.1))
    with pytest.raises(ValueError, match="probability"):
        Domain("bad", p_outline=1.5)


def _values(domain: Domain) -> dict:
    """Every field of ``domain`` but its name."""
    return {key: value for key, value in dataclasses.asdict(domain).items() if key != "name"}


@pytest.mark.parametrize("start, end", [("studio", "night"), ("sketch", "texture"), ("phone", "studio")])
def test_interpolated_domains_start_and_end_at_the_originals(start, end):
    assert _values(interpolate_domains(start, end, 0)) == _values(DOMAINS[start])
    assert _values(interpolate_domains(start, end, 1.0)) == _values(DOMAINS[end])
    assert interpolate_domains(start, end, 0.25).name == f"{start}→{end}"
    assert interpolate_domains(DOMAINS[start], DOMAINS[end], 0.5, name="halfway").name == "halfway"


def test_interpolated_domain_halfway_is_the_mean_of_every_field():
    studio, night = DOMAINS["studio"], DOMAINS["night"]
    middle = interpolate_domains("studio", "night", 0.5)
    assert middle.background_value == pytest.approx(tuple((a + b) / 2 for a, b in zip(studio.background_value,
                                                                                      night.background_value)))
    assert middle.noise_std == pytest.approx((0.03, 0.06)) and middle.p_gradient == pytest.approx(0.2)
    assert middle.tint == pytest.approx((0.85, 0.925, 1.125))
    # Outline and texture probabilities still sum to at most 1 (sketch: all outlines, texture: all textured).
    mixed = interpolate_domains("sketch", "texture", 0.5)
    assert (mixed.p_outline, mixed.p_textured) == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("bad_t", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_interpolate_domains_rejects_t_outside_0_to_1(bad_t):
    with pytest.raises(ValueError, match="t must be a number from 0"):
        interpolate_domains("studio", "night", bad_t)


def test_interpolate_domains_rejects_unknown_domains():
    with pytest.raises(ValueError, match="Unknown domain 'nite'"):
        interpolate_domains("studio", "nite", 0.5)


def test_interpolated_domains_render_and_darken_step_by_step_towards_night():
    domains = [interpolate_domains("studio", "night", t) for t in (0, 0.5, 1)]
    worlds = [small(split="target", domain=domain, image_size=32) for domain in domains]
    assert len({world.fingerprint for world in worlds}) == 3  # each blend has its own cache entry
    assert len({world.cache_path() for world in worlds}) == 3 and worlds[1].domain_name == "studio→night"
    assert all(torch.equal(world.masks, worlds[0].masks) for world in worlds)  # same shapes, other light
    brightness = [world.images.float().mean() for world in worlds]
    assert brightness[0] > brightness[1] > brightness[2]


def test_one_path_keeps_each_images_draws_so_the_images_change_smoothly():
    path = lambda t, **name: small(split="target", domain=interpolate_domains("studio", "night", t, **name)).images
    step = lambda a, b: (a.float() - b.float()).abs().mean()
    # A small step along the path changes the pixels a little; the same step with new draws, a lot.
    assert 2 * step(path(0.5), path(0.55)) < step(path(0.5), path(0.55, name="other draws"))
    # At t=0 under start's own name, the images are start's.
    assert torch.equal(path(0, name="studio"), small(split="target", domain="studio").images)


def test_world_mean_and_std_constants_match_the_data():
    x = small(split="source", n_per_class=40).images.float() / 255
    np.testing.assert_allclose(x.mean((0, 2, 3)).numpy(), WORLD_MEAN, atol=0.02)
    np.testing.assert_allclose(x.std((0, 2, 3)).numpy(), WORLD_STD, atol=0.02)


# -- novel classes -------------------------------------------------------------------------------


def test_novel_classes_are_deterministic_and_named():
    names = novel_classes(8, seed=3)
    assert names == novel_classes(8, seed=3) and len(set(names)) == 8
    assert all(name.startswith("glyph-") and len(name) == 12 for name in names)
    assert novel_classes(10, seed=3)[:8] == names
    assert set(novel_classes(8, seed=4)).isdisjoint(names)


def test_novel_classes_are_consistent_and_distinct():
    names = novel_classes(12, seed=0)
    grid = np.linspace(-1, 1, 96, dtype=np.float32)
    x, y = np.meshgrid(grid, grid)
    masks = [shape_class(name).sdf(x, y) < 0 for name in names]
    assert all(np.array_equal(m, shape_class(n).sdf(x, y) < 0) for m, n in zip(masks, names))
    ious = [(a & b).sum() / (a | b).sum() for i, a in enumerate(masks) for b in masks[i + 1:]]
    assert max(ious) < 0.9 and np.mean(ious) < 0.7
    world = small(classes=names[:2], n_per_class=4)
    assert world.class_names == tuple(names[:2]) and len(world) == 8
    # Same class, two images: the masks have the same area up to scale (only the pose changed).
    area = world.masks.flatten(1).sum(1).float() / (world.attributes[:, ATTRIBUTE_NAMES.index("relative_size")] ** 2)
    assert area[0::2].std() / area[0::2].mean() < 0.1


# -- cache ---------------------------------------------------------------------------------------


def test_cache_is_written_then_loaded_without_rendering(tmp_path, monkeypatch):
    first = small(split="target", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and first.fingerprint in files[0].name
    assert not list(tmp_path.glob("*.tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("rendered although a cache file exists")

    monkeypatch.setattr(dataset_module, "render_batch", fail)
    second = small(split="target", cache_dir=tmp_path)
    for key in ("images", "labels", "attributes", "boxes", "masks"):
        assert torch.equal(getattr(first, key), getattr(second, key)), key


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    world = ShapeWorld("target", n_per_class=1)
    assert world.cache_path().parent == tmp_path / "world" and world.cache_path().exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_corrupted_cache_warns_and_regenerates(tmp_path, damage):
    original = small(split="target", cache_dir=tmp_path)
    path = original.cache_path(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file")
    else:  # a flipped byte inside the images: only the checksum can tell
        middle = data.index(b"images.npy") + 4000
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    with pytest.warns(UserWarning, match="regenerated"):
        rebuilt = small(split="target", cache_dir=tmp_path)
    assert torch.equal(rebuilt.images, original.images) and torch.equal(rebuilt.masks, original.masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small(split="target", cache_dir=tmp_path)  # the file is healthy again


def test_fingerprint_is_stable_and_specific():
    a = small(split="target", n_per_class=1)
    assert a.fingerprint == small(split="target", n_per_class=1).fingerprint
    others = [small(split="target", n_per_class=2), small(split="target", n_per_class=1, seed=1),
              small(split="target", n_per_class=1, domain="phone"), small(split="target", n_per_class=1, image_size=32),
              small(split="source", n_per_class=1)]
    assert len({a.fingerprint} | {o.fingerprint for o in others}) == 6


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(split="sourse"), ValueError, "Unknown split 'sourse'.*source"),
        (dict(domain="nite"), ValueError, "Unknown domain 'nite'.*night"),
        (dict(domain=3), TypeError, "domain must be"),
        (dict(classes=["circle", "blob"]), ValueError, "Unknown shape class 'blob'.*glyph"),
        (dict(classes="circle"), TypeError, "list of class names"),
        (dict(classes=["circle", "circle"]), ValueError, "without repeats"),
        (dict(classes=[]), ValueError, "non-empty"),
        (dict(n_per_class=0), ValueError, "n_per_class must be at least 1"),
        (dict(n_per_class=2.5), TypeError, "n_per_class must be an int"),
        (dict(image_size=8), ValueError, "image_size must be between 16"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(transform="normalize"), TypeError, "transform must be callable"),
        (dict(cache_dir=True), TypeError, "cache_dir"),
    ],
)
def test_bad_arguments_raise_helpful_errors(kwargs, error, message):
    kwargs.setdefault("cache_dir", False)
    with pytest.raises(error, match=message):
        ShapeWorld(**{"n_per_class": 1, **kwargs})


def test_other_bad_input():
    with pytest.raises(IndexError, match="out of range"):
        small(split="target")[20]
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        normalize(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="count"):
        novel_classes(0)
    with pytest.raises(TypeError, match="str"):
        shape_class(5)


def test_generation_speed_reports_a_positive_rate():
    # How fast is a figure of `make bench`, not a test; here only that a rate comes back.
    speed = world_generation_speed(n=8, repeats=1)
    assert isinstance(speed, float) and np.isfinite(speed) and speed > 0
    with pytest.raises(ValueError, match="at least 1"):
        world_generation_speed(n=0)
