"""Tests for course_lib.shift_data: label shift, class-by-class splits, MNIST -> USPS (19.4)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from standins import SHARED_DATA

from course_lib import config
from course_lib.config import CourseConfig
from course_lib.data import backbone_statistics, dataset_targets
from course_lib.shift_data import (
    DomainShiftData,
    Normalize,
    SeverityShift,
    digits_domain_shift,
    long_tail_proportions,
    stratified_split,
    subset_with_proportions,
)



# --- label shift: subset_with_proportions, long_tail_proportions ------------------------------

# 4 classes with 30, 20, 10 and 5 examples, shuffled.
SHIFT_LABELS = torch.repeat_interleave(torch.arange(4), torch.tensor([30, 20, 10, 5]))
SHIFT_LABELS = SHIFT_LABELS[torch.randperm(65, generator=torch.Generator().manual_seed(0))]


def test_subset_with_proportions_draws_exact_counts_without_repeats():
    indices = subset_with_proportions(SHIFT_LABELS, [0.5, 0.25, 0.15, 0.1], total=40, seed=0)
    assert indices.dtype == torch.int64 and torch.equal(indices, indices.sort().values)
    assert len(indices.unique()) == len(indices) == 40
    assert torch.bincount(SHIFT_LABELS[indices], minlength=4).tolist() == [20, 10, 6, 4]


def test_subset_with_proportions_rounds_by_the_largest_remainder_and_normalises_weights():
    labels = torch.arange(3).repeat(10)
    # 10 / 3 each: 3 whole examples per class, and the one left goes to class 0 (ties: lower class first).
    assert torch.bincount(labels[subset_with_proportions(labels, [1, 1, 1], 10)]).tolist() == [4, 3, 3]
    # 7 * (0.5, 0.3, 0.2) = 3.5, 2.1, 1.4: whole parts 3, 2, 1, and the missing one goes to class 0 (.5).
    weights = torch.tensor([5.0, 3, 2])
    assert torch.bincount(labels[subset_with_proportions(labels, weights, 7)]).tolist() == [4, 2, 1]
    halves = subset_with_proportions(labels, [2, 1, 1], 8, seed=3)
    assert torch.equal(halves, subset_with_proportions(labels, [0.5, 0.25, 0.25], 8, seed=3))
    assert torch.bincount(labels[subset_with_proportions(labels, [0, 1, 0], 5)], minlength=3).tolist() == [0, 5, 0]


def test_subset_with_proportions_is_reproducible_per_seed_and_varies_with_it():
    draws = [subset_with_proportions(SHIFT_LABELS, [0.4, 0.3, 0.2, 0.1], 20, seed=seed) for seed in range(4)]
    assert torch.equal(draws[0], subset_with_proportions(SHIFT_LABELS, [0.4, 0.3, 0.2, 0.1], 20, seed=0))
    assert len({tuple(draw.tolist()) for draw in draws}) == 4


def test_subset_with_proportions_names_the_class_that_is_too_small():
    with pytest.raises(ValueError, match=r"class 3 needs 10 but has 5\. Use total <= 50"):
        subset_with_proportions(SHIFT_LABELS, [0.4, 0.3, 0.2, 0.1], 100)


@pytest.mark.parametrize(
    "proportions, total, error, message",
    [
        ([0.5, 0.5], 10, ValueError, "classes 0 to 3, so at least 4 numbers"),
        ([[0.5, 0.5], [0.5, 0.5]], 10, ValueError, "one number per class"),
        ([0.5, -0.1, 0.3, 0.3], 10, ValueError, "non-negative"),
        ([0.5, float("nan"), 0.3, 0.2], 10, ValueError, "finite"),
        ([0, 0, 0, 0], 10, ValueError, "all zero"),
        (["a", "b", "c", "d"], 10, TypeError, "list or tensor of numbers"),
        ([0.25] * 4, 0, ValueError, "total must be a positive int"),
        ([0.25] * 4, 2.5, ValueError, "total must be a positive int"),
    ],
)
def test_subset_with_proportions_bad_inputs(proportions, total, error, message):
    with pytest.raises(error, match=message):
        subset_with_proportions(SHIFT_LABELS, proportions, total)


def test_subset_with_proportions_accepts_extra_empty_classes_but_not_negative_labels():
    # Labels of a dataset that happens to lack its last class: a zero share for it is fine.
    assert len(subset_with_proportions(SHIFT_LABELS, [0.5, 0.5, 0, 0, 0], 10)) == 10
    with pytest.raises(ValueError, match="class 4 needs 2 but has 0"):
        subset_with_proportions(SHIFT_LABELS, [0.2] * 5, 10)
    with pytest.raises(ValueError, match="class indices"):
        subset_with_proportions(torch.tensor([-1, 0, 1]), [0.5, 0.5], 2)


def test_long_tail_proportions_fall_geometrically_by_the_ratio():
    p = long_tail_proportions(10, 100)
    assert p.shape == (10,) and float(p.sum()) == pytest.approx(1.0)
    assert float(p[0] / p[-1]) == pytest.approx(100.0, rel=1e-5)
    ratios = p[:-1] / p[1:]
    assert torch.allclose(ratios, ratios[0].expand(9)) and (ratios > 1).all()
    assert torch.allclose(long_tail_proportions(4, 1), torch.full((4,), 0.25))
    assert long_tail_proportions(1, 5).tolist() == [1.0]
    for bad_ratio in (0.5, float("inf"), "10", True):
        with pytest.raises(ValueError, match="ratio must be a number >= 1"):
            long_tail_proportions(10, bad_ratio)
    with pytest.raises(ValueError, match="num_classes"):
        long_tail_proportions(0, 10)


# --- stratified_split --------------------------------------------------------------------------


def test_stratified_split_halves_every_class_disjointly():
    first, second = stratified_split(SHIFT_LABELS, seed=0)
    assert set(first.tolist()).isdisjoint(second.tolist())
    assert sorted(first.tolist() + second.tolist()) == list(range(len(SHIFT_LABELS)))
    # 30, 20, 10, 5 examples: halves, the odd class's extra one in the first part.
    assert torch.bincount(SHIFT_LABELS[first]).tolist() == [15, 10, 5, 3]
    assert torch.bincount(SHIFT_LABELS[second]).tolist() == [15, 10, 5, 2]
    assert torch.equal(first, stratified_split(SHIFT_LABELS, seed=0)[0])
    assert not torch.equal(first, stratified_split(SHIFT_LABELS, seed=1)[0])
    assert torch.bincount(SHIFT_LABELS[stratified_split(SHIFT_LABELS, 0.2)[0]]).tolist() == [6, 4, 2, 1]


@pytest.mark.parametrize("bad_fraction", [0, 1, 1.5, -0.5, "half", True])
def test_stratified_split_rejects_fractions_outside_0_to_1(bad_fraction):
    with pytest.raises(ValueError, match="fraction must be a number between 0 and 1"):
        stratified_split(SHIFT_LABELS, bad_fraction)


def _config(world: str, **changes) -> CourseConfig:
    """A small CourseConfig of ``world`` at smoke size without calling setup() (which seeds and sets thread counts)."""
    settings = dict(
        profile="test", profile_reason="test", world=world, size="smoke", device=torch.device("cpu"), seed=0,
        data_dir=SHARED_DATA, cache_dir=Path("unused"),
        dataset={"offline": "shapeworld", "lite": "fashion-mnist"}.get(world, "mnist"),
        backbone={"offline": "course-resnet", "lite": "efficientnet-lite0"}.get(world, "resnet18"),
        scratch_backbone="resnet18" if world == "real" else "course-resnet",
        **config.size_settings(world, "smoke"),
    )
    settings.update(image_size=32, train_per_class=3, test_per_class=2)
    return CourseConfig(**{**settings, **changes})


# --- digits_domain_shift: MNIST -> USPS --------------------------------------------------------

USPS_TEST_COUNTS = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]  # the 2,007 images of USPS's test split


def _digits(**changes) -> DomainShiftData:
    """The MNIST -> USPS problem from the shared real-data folder, small: 3 + 2 MNIST images per class, 20 px."""
    cfg = _config("real", data_dir=SHARED_DATA, image_size=20)
    return digits_domain_shift(dataclasses.replace(cfg, **changes), source_per_class=3, source_test_per_class=2)


@pytest.fixture(scope="module")
def digits() -> DomainShiftData:
    """One MNIST -> USPS problem for the tests below; skipped where the real MNIST/USPS files are absent."""
    needed = [SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte", SHARED_DATA / "usps" / "usps.t.bz2"]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"real MNIST/USPS files not found: {', '.join(missing)} "
                    "(set COURSE_SHARED_DATA to their folder)")
    return _digits()


@pytest.mark.realdata
def test_usps_halves_are_disjoint_stratified_and_cover_the_test_split(digits):
    adapt, test = digits.target_adapt, digits.target_test
    assert set(adapt.indices).isdisjoint(test.indices)
    assert sorted(adapt.indices + test.indices) == list(range(2007))
    adapt_counts = torch.bincount(dataset_targets(adapt), minlength=10)
    test_counts = torch.bincount(dataset_targets(test), minlength=10)
    assert (adapt_counts + test_counts).tolist() == USPS_TEST_COUNTS
    assert (adapt_counts - test_counts).abs().max() <= 1
    assert (len(adapt), len(test)) == (1005, 1002)


@pytest.mark.realdata
def test_digits_images_look_alike_on_both_sides(digits):
    assert (len(digits.source_train), len(digits.source_test)) == (30, 20)
    assert torch.bincount(dataset_targets(digits.source_train)).tolist() == [3] * 10
    assert digits.num_classes == 10 and digits.class_names[0].startswith("0")
    assert (digits.mean, digits.std) == backbone_statistics("resnet18")
    images = [part[0] for part in (digits.source_train, digits.source_test, digits.target_adapt, digits.target_test)]
    for image, label in images:
        assert image.shape == (3, 20, 20) and image.dtype == torch.float32 and isinstance(label, int)
    # Normalised the same way: USPS's white-on-black digits sit on the same dark background as MNIST's.
    background = [float(image[:, 0, 0].mean()) for image, _ in images]
    assert max(background) - min(background) < 0.5
    assert "MNIST" in digits.description and str(SHARED_DATA / "usps") in digits.description


@pytest.mark.realdata
def test_digits_domain_shift_is_reproducible_and_follows_the_backbone(digits):
    lite = _digits(world="lite", backbone="efficientnet-lite0")
    assert lite.target_adapt.indices == digits.target_adapt.indices
    assert lite.source_train.indices == digits.source_train.indices
    assert (lite.mean, lite.std) == backbone_statistics("efficientnet-lite0")


def test_digits_domain_shift_is_not_for_the_offline_world():
    with pytest.raises(ValueError, match="offline world.*interpolate_domains"):
        digits_domain_shift(_config("offline"))


def test_digits_domain_shift_without_files_says_where_they_go(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "MNIST" / "raw")):
        digits_domain_shift(_config("real", data_dir=tmp_path))
    (tmp_path / "MNIST").symlink_to(shared_data / "MNIST")  # MNIST there, USPS not: the error names USPS's file
    with pytest.raises(FileNotFoundError, match=r"usps\.t\.bz2"):
        digits_domain_shift(_config("real", data_dir=tmp_path))


# --- Normalize: the batched standardisation of [0, 1] images -------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_normalize_matches_torchvision_on_one_image_and_per_image_of_a_batch():
    from torchvision.transforms import Normalize as TorchvisionNormalize

    ours, theirs = Normalize(MEAN, STD), TorchvisionNormalize(MEAN, STD)
    batch = torch.rand(5, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ours(batch[0]), theirs(batch[0]), atol=1e-6) and ours(batch[0]).shape == (3, 7, 9)
    normalised = ours(batch)
    assert normalised.shape == batch.shape
    for image, expected in zip(batch, normalised):
        assert torch.allclose(expected, theirs(image), atol=1e-6)
    # Per channel: channel 1 of a grey image is (0.5 - 0.456) / 0.224.
    grey = ours(torch.full((3, 2, 2), 0.5))
    assert torch.allclose(grey[1], torch.full((2, 2), (0.5 - 0.456) / 0.224))
    assert ours(batch.double()).dtype == torch.float64 and not torch.equal(ours(batch), batch)
    assert repr(ours) == f"Normalize(mean={MEAN}, std={STD})"
    assert (ours.mean, ours.std) == (MEAN, STD)


@pytest.mark.parametrize(
    "images",
    [torch.rand(7, 9), torch.rand(1, 7, 9), torch.rand(4, 7, 9), torch.rand(2, 1, 7, 9), torch.rand(1, 2, 3, 7, 9),
     torch.rand(3, 7, 9).numpy(), [[0.5]]],
    ids=["2-d", "1-channel", "4-channel", "batch-of-1-channel", "5-d", "numpy", "list"],
)
def test_normalize_rejects_other_shapes(images):
    with pytest.raises(ValueError, match=r"Normalize needs images shaped \(3, H, W\) or \(N, 3, H, W\), got"):
        Normalize(MEAN, STD)(images)


def test_normalize_rejects_integer_images():
    # An integer dtype would round 0.485 and 0.229 to 0: a division by zero, not standardised images.
    with pytest.raises(TypeError, match=r"float images.*uint8.*images\.float\(\) / 255"):
        Normalize(MEAN, STD)(torch.full((3, 2, 2), 200, dtype=torch.uint8))


@pytest.mark.parametrize(
    "mean, std",
    [((0.5, 0.5), STD), (MEAN, (0.2, 0.2, 0.2, 0.2)), (MEAN, (0.2, 0.0, 0.2)), (MEAN, (0.2, -0.1, 0.2)),
     (MEAN, (0.2, float("nan"), 0.2)), (MEAN, (float("inf"),) * 3), ((float("nan"), 0.5, 0.5), STD)],
    ids=["2-means", "4-stds", "zero-std", "negative-std", "nan-std", "inf-std", "nan-mean"],
)
def test_normalize_rejects_bad_statistics(mean, std):
    with pytest.raises(ValueError, match="mean and std need 3 finite numbers each, std > 0"):
        Normalize(mean, std)


# --- SeverityShift: one severity knob on any [0, 1] images ---------------------------------------


class _Images(torch.utils.data.Dataset):
    """``(image, label)`` items of a tensor of images, labels as given (ints, strings...)."""

    def __init__(self, images: torch.Tensor, labels):
        self.images, self.labels = images, list(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


UNIT_IMAGES = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
SHIFT_NORMALIZE = Normalize((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))


def _shift(t: float, seed: int = 0, images: torch.Tensor = UNIT_IMAGES, normalize=SHIFT_NORMALIZE) -> SeverityShift:
    return SeverityShift(_Images(images, range(len(images))), t, normalize, seed=seed)


def test_severity_zero_is_the_normalised_image_exactly():
    shifted = _shift(0.0)
    assert len(shifted) == len(UNIT_IMAGES)
    for i, image in enumerate(UNIT_IMAGES):
        assert torch.equal(shifted[i][0], SHIFT_NORMALIZE(image))
    assert torch.equal(_shift(0)[2][0], SHIFT_NORMALIZE(UNIT_IMAGES[2]))  # an int t is fine


def test_severity_one_is_the_night_look_inverted_dimmed_and_noisy():
    identity = _shift(1.0, normalize=lambda x: x)
    night = torch.stack([identity[i][0] for i in range(len(identity))])
    assert night.min() >= 0 and night.max() <= 1
    expected = 0.15 + 0.35 * (1 - UNIT_IMAGES)  # before the noise: light and dark swapped, dimmer
    inside = (night > 0) & (night < 1)  # where the clamp did not act
    assert inside.float().mean() > 0.95
    noise = (night - expected)[inside]
    assert abs(float(noise.mean())) < 0.01 and 0.07 < float(noise.std()) < 0.09  # NOISE = 0.08
    # Bright pixels (x = 1) sit at 0.15 + noise: some fall below 0 and are clamped to exactly 0.
    white = _shift(1.0, images=torch.ones(4, 3, 16, 16), normalize=lambda x: x)
    white_night = torch.stack([white[i][0] for i in range(len(white))])
    assert (white_night == 0).any() and white_night.min() == 0
    assert abs(float(white_night.mean()) - 0.15) < 0.02
    # The normalisation is applied last, to the shifted image.
    assert torch.allclose(_shift(1.0)[3][0], SHIFT_NORMALIZE(night[3]), atol=1e-6)


def test_severity_moves_in_a_straight_line_with_the_same_noise_at_every_t():
    identity = {t: _shift(t, normalize=lambda x: x) for t in (0.0, 0.25, 1.0)}
    for i in range(len(UNIT_IMAGES)):
        x, night = identity[0.0][i][0], identity[1.0][i][0]
        assert torch.allclose(identity[0.25][i][0], 0.75 * x + 0.25 * night, atol=1e-6)


def test_severity_shift_is_deterministic_per_index_and_seed():
    shifted = _shift(1.0, seed=0)
    assert torch.equal(shifted[1][0], shifted[1][0])
    assert torch.equal(shifted[1][0], _shift(1.0, seed=0)[1][0])  # a new dataset, the same images
    assert not torch.equal(shifted[1][0], _shift(1.0, seed=1)[1][0])  # another seed, other noise
    assert torch.equal(shifted[-1][0], shifted[len(shifted) - 1][0])  # a negative index is the same image
    # The same image at two indices gets two draws of the noise.
    twins = _shift(1.0, images=UNIT_IMAGES[:1].repeat(2, 1, 1, 1))
    assert not torch.equal(twins[0][0], twins[1][0])
    with pytest.raises(IndexError):
        shifted[len(shifted)]


def test_severity_shift_passes_labels_through():
    images = UNIT_IMAGES[:3]
    shifted = SeverityShift(_Images(images, [7, 2, 9]), 0.5, SHIFT_NORMALIZE, seed=3)
    assert [shifted[i][1] for i in range(3)] == [7, 2, 9] and isinstance(shifted[0][1], int)
    assert SeverityShift(_Images(images, ["a", "b", "c"]), 1.0, SHIFT_NORMALIZE)[1][1] == "b"
    assert (shifted.t, shifted.seed) == (0.5, 3)


@pytest.mark.parametrize(
    "images",
    [SHIFT_NORMALIZE(UNIT_IMAGES), UNIT_IMAGES * 255, UNIT_IMAGES[:, :, :, 0]],
    ids=["normalised", "0-to-255", "2-d-images"],
)
def test_severity_shift_needs_unit_images_and_says_how_to_get_them(images):
    shifted = _shift(0.5, images=images)
    with pytest.raises(ValueError, match=r"images in \[0, 1\].*imagenet_transform\(\.\.\., mean=\(0, 0, 0\), std=\(1, 1, 1\)\)"):
        shifted[0]


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_severity_shift_needs_t_from_0_to_1(t):
    with pytest.raises(ValueError, match=r"t must be a number from 0 \(the images as they are\) to 1"):
        _shift(t)


def test_severity_shift_checks_normalize_and_seed():
    with pytest.raises(TypeError, match="normalize must be a function"):
        _shift(0.5, normalize=(0.5, 0.5, 0.5))
    for seed in (-1, 1.5, "0"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            _shift(0.5, seed=seed)
