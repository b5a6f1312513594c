"""Tests for course_lib.shift_augment: augmentation toward the target domain (19.4)."""

import pytest
import torch

from course_lib.shift_augment import (
    TARGET_AUGMENTATIONS, AugmentedBatches, background, camera, lighting, style,
)
from course_lib.world import ShapeWorld, normalize

NAMES = sorted(TARGET_AUGMENTATIONS)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def world_images() -> torch.Tensor:
    """48 studio images in [0, 1] (2 per source class)."""
    world = ShapeWorld("source", "studio", 2, seed=0, transform=torch.nn.Identity(), cache_dir=False, progress=False)
    return torch.stack([world[i][0] for i in range(len(world))])


def _many(images: torch.Tensor, copies: int = 8) -> torch.Tensor:
    return images.repeat(copies, 1, 1, 1)


def test_the_four_augmentations_are_listed_without_a_baseline():
    assert TARGET_AUGMENTATIONS == {"lighting": lighting, "camera": camera, "background": background, "style": style}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(5, 3, 64, 64), (2, 3, 32, 48)])
def test_shape_dtype_and_range_are_kept(name, shape):
    images = torch.rand(shape)
    out = TARGET_AUGMENTATIONS[name](images, _gen())
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(images, images.clone())  # the input is left alone (no in-place changes)


@pytest.mark.parametrize("name", NAMES)
def test_float64_images_stay_float64(name):
    out = TARGET_AUGMENTATIONS[name](torch.rand(2, 3, 16, 16, dtype=torch.float64), _gen())
    assert out.dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_images_other_seed_other_images(name, world_images):
    augment = TARGET_AUGMENTATIONS[name]
    first, again = augment(world_images, _gen(3)), augment(world_images, _gen(3))
    assert torch.equal(first, again)
    assert not torch.allclose(first, augment(world_images, _gen(4)))


@pytest.mark.parametrize("name", NAMES)
def test_each_image_is_augmented_on_its_own(name, world_images):
    """Per-image draws: two copies of one image in a batch come out different."""
    pair = world_images[:1].repeat(2, 1, 1, 1)
    out = TARGET_AUGMENTATIONS[name](pair, _gen(1))
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("name", NAMES)
def test_the_generator_advances(name, world_images):
    generator = _gen(0)
    augment = TARGET_AUGMENTATIONS[name]
    assert not torch.allclose(augment(world_images, generator), augment(world_images, generator))


def test_lighting_inverts_about_half_and_spreads_brightness(world_images):
    images = _many(world_images)  # 384 light-background studio images
    out = lighting(images, _gen())
    corner = out[:, :, :4, :4].mean(dim=(1, 2, 3))  # the background, light in every studio image
    dark = (corner < 0.5).float().mean().item()
    assert 0.35 < dark < 0.65, f"{dark:.0%} of the backgrounds became dark; inversion should hit about half"
    assert out.mean(dim=(1, 2, 3)).std() > 3 * images.mean(dim=(1, 2, 3)).std()


def test_lighting_lowers_contrast_and_casts_colour(world_images):
    out = lighting(world_images, _gen())
    assert (out.std(dim=(1, 2, 3)) < 0.8 * world_images.std(dim=(1, 2, 3))).any()
    grey = torch.full((64, 3, 8, 8), 0.5)
    cast = lighting(grey, _gen()).mean(dim=(2, 3))
    spread = (cast.max(dim=1).values - cast.min(dim=1).values)
    assert (spread > 0.1).float().mean() > 0.5, "the red, green and blue factors should differ per image"


def test_lighting_draws_brightness_and_contrast():
    """On a two-level image, (difference of the halves) / (mean level) = contrast / brightness-shifted level.

    The colour cast multiplies both and cancels; without contrast changes the ratio would stay in
    [0.31, 0.67], without brightness changes in [0.2, 0.48].
    """
    images = torch.full((256, 3, 8, 8), 0.4)
    images[..., 4:] = 0.6
    out = lighting(images, _gen())
    left, right = out[..., :4].mean(dim=(2, 3)), out[..., 4:].mean(dim=(2, 3))
    ratio = ((right - left).abs() / ((left + right) / 2)).mean(dim=1)
    assert ratio.min() < 0.18 and ratio.max() > 0.55, (ratio.min().item(), ratio.max().item())


def _high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels, per image: large for sharp edges and noise."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return dx.pow(2).mean(dim=(1, 2, 3)) + dy.pow(2).mean(dim=(1, 2, 3))


def test_camera_blurs_and_adds_noise(world_images):
    images = _many(world_images, 4)
    out = camera(images, _gen())
    ratio = _high_frequency_energy(out) / _high_frequency_energy(images)
    assert (ratio < 0.7).any(), "some images (much blur, little noise) should lose their sharp edges"
    flat = torch.full((64, 3, 32, 32), 0.5)
    noisy = camera(flat, _gen())
    assert (noisy.std(dim=(1, 2, 3)) > 0.03).float().mean() > 0.5, "noise should raise per-pixel variance"
    assert noisy.mean().sub(0.5).abs() < 0.01  # zero-mean noise and edge-preserving blur keep the level


def test_camera_blur_scales_with_image_size():
    """Blur sizes are for 64x64: at 128x128 the same draws spread an edge over twice as many pixels."""
    def edge_spread(size: int) -> float:
        image = torch.full((64, 3, size, size), 0.25)
        image[..., size // 2:] = 0.75  # one vertical edge, far enough from 0 and 1 that noise is not clipped
        profile = camera(image, _gen(2)).mean(dim=(0, 1, 2))  # averaging over images and rows cancels the noise
        return (profile - image[0, 0, 0]).abs().sum().item()  # grows in proportion to the blur's width

    ratio = edge_spread(128) / edge_spread(64)
    assert 1.6 < ratio < 2.4, f"the edge spread {ratio:.2f} times wider at 128 px; expected about 2"


def _changed_box_is_full(changed: torch.Tensor) -> bool:
    """True if the changed pixels of one image (H, W) fill their bounding box exactly."""
    rows, cols = changed.any(dim=1).nonzero(), changed.any(dim=0).nonzero()
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return bool(box.all())


def test_background_erases_rectangles():
    images = torch.full((96, 3, 64, 64), 0.5)
    out = background(images, _gen())
    changed = (out != images).any(dim=1)  # (B, H, W)
    assert changed.flatten(1).any(dim=1).all(), "every image gets at least one rectangle"
    fraction = changed.float().mean().item()
    assert 0.01 < fraction < 0.5
    single_boxes = sum(_changed_box_is_full(c) for c in changed)
    assert single_boxes > 10, "images with one rectangle should change in exactly one contiguous box"
    assert not all(_changed_box_is_full(c) for c in changed), "some images should get two or three rectangles"


def test_background_fills_with_colours_and_noise():
    images = torch.full((64, 3, 64, 64), 0.5)
    out = background(images, _gen())
    changed = (out != images).any(dim=1)
    # the spread of each channel inside the box: 0 for a plain colour, about 0.29 for uniform noise
    boxes = [i for i in range(len(out)) if _changed_box_is_full(changed[i])]
    spread = [out[i][:, changed[i]].std(dim=1).max().item() for i in boxes]
    assert min(spread) < 1e-6 and max(spread) > 0.2, "plain colour and noise fills should both occur"


def test_style_makes_about_half_greyscale(world_images):
    out = style(_many(world_images), _gen())
    channel_spread = (out.max(dim=1).values - out.min(dim=1).values).amax(dim=(1, 2))
    grey = (channel_spread < 1e-5).float().mean().item()
    assert 0.35 < grey < 0.65, f"{grey:.0%} of the images are greyscale; expected about half"
    assert (world_images.max(dim=1).values - world_images.min(dim=1).values).amax(dim=(1, 2)).min() > 0.1


def test_style_permutes_channels_and_adds_texture():
    red = torch.zeros(64, 3, 32, 32)
    red[:, 0] = 1.0
    out = style(red, _gen())
    colour = out.mean(dim=(2, 3))
    coloured = colour.max(dim=1).values - colour.min(dim=1).values > 0.1
    assert set(colour[coloured].argmax(dim=1).tolist()) == {0, 1, 2}, "red should move to every channel"
    assert (_high_frequency_energy(out) > 0.01).any(), "stripes or checks should appear on a flat image"


@pytest.mark.parametrize("name", NAMES)
def test_wrong_inputs_are_explained(name):
    augment = TARGET_AUGMENTATIONS[name]
    with pytest.raises(TypeError, match=r"images.float\(\) / 255"):
        augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), _gen())
    with pytest.raises(ValueError, match="unsqueeze"):
        augment(torch.rand(3, 8, 8), _gen())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        augment(torch.rand(2, 1, 8, 8), _gen())
    with pytest.raises(TypeError, match="torch.Generator"):
        augment(torch.rand(2, 3, 8, 8), 0)


def test_empty_batch_passes_through():
    for augment in TARGET_AUGMENTATIONS.values():
        assert augment(torch.rand(0, 3, 8, 8), _gen()).shape == (0, 3, 8, 8)


# ---------------------------------------------------------------------------------------------
# AugmentedBatches


def _batches(images: torch.Tensor, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    labels = torch.arange(len(images))
    return [(images[i:i + size], labels[i:i + size]) for i in range(0, len(images), size)]


def test_augmented_batches_are_normalised_and_reproducible(world_images):
    raw = _batches(world_images)
    batches = AugmentedBatches(raw, "lighting", seed=5)
    assert len(batches) == 3
    out = list(batches)
    assert len(out) == 3
    for (images, labels), (raw_images, raw_labels) in zip(out, raw):
        assert images.shape == raw_images.shape and torch.equal(labels, raw_labels)
        assert images.min() < -0.1  # normalised: [0, 1] images leave that range
    expected = lighting(raw[0][0], torch.Generator().manual_seed(5))
    assert torch.allclose(out[0][0], normalize(expected))
    again = list(AugmentedBatches(raw, "lighting", seed=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(out, again))
    second_epoch = list(batches)
    assert not torch.allclose(second_epoch[0][0], out[0][0]), "each epoch draws new augmentations"


def test_augmented_batches_take_a_function_and_a_dataloader(world_images):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(world_images, torch.zeros(len(world_images), dtype=torch.long)), batch_size=20)
    batches = AugmentedBatches(loader, lambda images, generator: images)
    assert len(batches) == 3
    images, _ = next(iter(batches))
    assert torch.allclose(images, normalize(world_images[:20]))


def test_augmented_batches_refuse_normalised_images(world_images):
    batches = AugmentedBatches(_batches(normalize(world_images)), "camera")
    with pytest.raises(ValueError, match=r"transform=torch.nn.Identity\(\)"):
        next(iter(batches))


def test_augmented_batches_refuse_unknown_names_and_non_callables():
    with pytest.raises(ValueError, match="lighting, camera, background, style"):
        AugmentedBatches([], "fog")
    with pytest.raises(TypeError, match="TARGET_AUGMENTATIONS"):
        AugmentedBatches([], 3)
    with pytest.raises(ValueError, match="seed"):
        AugmentedBatches([], "style", seed=-1)


def test_augmented_batches_check_image_dtype():
    batches = AugmentedBatches([(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2))], "style")
    with pytest.raises(TypeError, match="AugmentedBatches"):
        next(iter(batches))


def test_augmented_batches_without_length_say_so(world_images):
    batches = AugmentedBatches(iter(_batches(world_images)), "style")
    with pytest.raises(TypeError, match="no length"):
        len(batches)
    assert len(list(batches)) == 3


def test_augmented_batches_use_the_normalisation_they_are_given(world_images):
    from course_lib.shift_data import Normalize

    images, labels = world_images, torch.arange(len(world_images))
    to_backbone = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    batches = [(images, labels)]
    (got, _), = list(AugmentedBatches(batches, "camera", seed=3, normalize=to_backbone))
    (world, _), = list(AugmentedBatches(batches, "camera", seed=3))
    # The same augmentation (same seed), standardised two ways: undo each to compare.
    torch.testing.assert_close(got * 0.25 + 0.5, camera(images, torch.Generator().manual_seed(3)))
    assert not torch.allclose(got, world)


def test_augmented_batches_refuse_a_normalisation_that_is_not_a_function(world_images):
    with pytest.raises(TypeError, match="normalize must be a function"):
        AugmentedBatches(_batches(world_images), "camera", normalize=(0.5, 0.25))
