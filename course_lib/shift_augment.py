"""Augmentation toward the target domain (19.4): train on source images changed the way the target differs.

When you know *what kind* of shift to expect but have no target images yet, you can still
prepare for it: augment the source images so that training already sees that kind of change.
One batch augmentation per kind of shift in the course's table, each aimed at a world domain:

- :func:`lighting`   lighting changes (night): brightness, low contrast, a colour cast, inversion;
- :func:`camera`     a different camera (phone): blur and sensor noise;
- :func:`background` backgrounds and clutter (phone): rectangles of colour or noise over the image;
- :func:`style`      a different style (sketch, texture): greyscale, swapped channels, stripes and checks.

Each one takes float images in [0, 1] shaped ``(B, 3, H, W)`` and a ``torch.Generator``, draws
every random number from that generator (the same seed gives the same images) and works on the
whole batch at once. :class:`AugmentedBatches` applies one to a loader's batches and then
:func:`course_lib.world.normalize`::

    train = ShapeWorld("source", "studio", 100, transform=torch.nn.Identity())  # keep [0, 1]
    batches = AugmentedBatches(DataLoader(train, batch_size=128, shuffle=True), "lighting", seed=0)

Sizes in pixels (blur, texture periods) are given for 64x64 images and scale with the image
size, as in :mod:`course_lib.world.domains`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from course_lib.validation import check_non_negative_int
from course_lib.world import normalize

__all__ = ["TARGET_AUGMENTATIONS", "AugmentedBatches", "background", "camera", "lighting", "style"]

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

_REFERENCE_SIDE = 64  # pixel sizes below are for 64x64 images, like a Domain's
_RANGE_SLACK = 0.01  # how far outside [0, 1] an image may stray (rounding) before it counts as normalised


# ---------------------------------------------------------------------------------------------
# Input checks and random draws shared by the augmentations


def _check_images(images: Any, function: str) -> torch.Tensor:
    """``images`` if it is a float ``(B, 3, H, W)`` tensor, else an error saying what to change."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        got = f"a {images.dtype} tensor" if isinstance(images, torch.Tensor) else f"a {type(images).__name__}"
        raise TypeError(
            f"{function} expects float images in [0, 1] shaped (B, 3, H, W), got {got}; "
            "convert uint8 images with images.float() / 255."
        )
    if images.ndim != 4 or images.shape[1] != 3:
        hint = " (one image: add the batch dimension with x.unsqueeze(0))" if images.ndim == 3 else ""
        raise ValueError(
            f"{function} expects a batch of RGB images shaped (B, 3, H, W), got shape {tuple(images.shape)}{hint}."
        )
    return images


def _check_generator(generator: Any, function: str) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{function} draws its random numbers from a torch.Generator, got {type(generator).__name__}; "
            "pass e.g. torch.Generator().manual_seed(0)."
        )
    return generator


def _rand(generator: torch.Generator, like: torch.Tensor, *shape: int) -> torch.Tensor:
    """Uniform numbers in [0, 1) from ``generator``, on ``like``'s device and dtype.

    They are drawn on the generator's own device and then moved: a CPU generator can then serve
    images on a GPU (torch refuses to mix the two devices in one call).
    """
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _randn(generator: torch.Generator, like: torch.Tensor, *shape: int) -> torch.Tensor:
    """Standard normal numbers from ``generator``, on ``like``'s device and dtype (see :func:`_rand`)."""
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _uniform(b: int, low: float, high: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """One number per image, uniform in [low, high), shaped ``(b, 1, 1, 1)`` to broadcast over an image."""
    return low + (high - low) * _rand(generator, like, b, 1, 1, 1)


def _chance(b: int, p: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """One coin per image, True with probability ``p``, shaped ``(b, 1, 1, 1)``."""
    return _rand(generator, like, b, 1, 1, 1) < p


def _scale(images: torch.Tensor) -> float:
    return min(images.shape[-2:]) / _REFERENCE_SIDE


def _grid(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres as fractions of the image, ``(1, H, 1)`` for rows and ``(1, 1, W)`` for columns."""
    h, w = images.shape[-2:]
    ys = (torch.arange(h, device=images.device, dtype=images.dtype) + 0.5) / h
    xs = (torch.arange(w, device=images.device, dtype=images.dtype) + 0.5) / w
    return ys[None, :, None], xs[None, None, :]


def _blur_matrices(n: int, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur as an ``(B, 1, n, n)`` matrix (the world camera's method).

    Row ``i`` holds the weights centred on pixel ``i``, renormalised so that edges do not darken.
    """
    pos = torch.arange(n, device=sigma.device, dtype=sigma.dtype)
    weights = torch.exp(-0.5 * ((pos[:, None] - pos[None, :]) / sigma.clamp_min(1e-3)[:, None, None]) ** 2)
    weights = torch.where(weights < 1e-6, torch.zeros_like(weights), weights)  # denormals slow the products
    return (weights / weights.sum(dim=-1, keepdim=True))[:, None]


def _stripes_or_checks(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A stripe or checker pattern per image, values in [0, 1], ``(B, 1, H, W)``: the texture domain's kinds."""
    b, (h, w) = images.shape[0], images.shape[-2:]
    ys, xs = _grid(images)
    u = _rand(generator, images, b, 5)[:, :, None, None]
    angle = torch.pi * u[:, 0]
    period = (4.0 + 6.0 * u[:, 1]) * _scale(images)  # 4 to 10 px at 64x64
    p = (xs * w * torch.cos(angle) + ys * h * torch.sin(angle)) / period + u[:, 2]
    q = (ys * h * torch.cos(angle) - xs * w * torch.sin(angle)) / period + u[:, 3]
    stripes = (0.5 + 1.5 * torch.sin(2 * torch.pi * p)).clamp(0, 1)
    checks = (0.5 + 3.0 * torch.sin(2 * torch.pi * p) * torch.sin(2 * torch.pi * q)).clamp(0, 1)
    return torch.where(u[:, 4] < 0.5, stripes, checks)[:, None]


# ---------------------------------------------------------------------------------------------
# The four augmentations, one per kind of shift


def lighting(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Lighting changes (19.4): inversion, contrast, brightness and a colour cast, drawn per image.

    Half the images are inverted (``1 - x``): night shots have a dark background with lighter
    shapes, the opposite of studio's light background with darker shapes, and no change of
    brightness or contrast turns one into the other. Contrast goes down to 0.5 (night is dull),
    and each of red, green and blue is scaled by 0.7 to 1.3 (night has a blue cast).
    """
    x = _check_images(images, "lighting")
    generator = _check_generator(generator, "lighting")
    b = x.shape[0]
    x = torch.where(_chance(b, 0.5, generator, x), 1 - x, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast around each image's mean leaves brightness to the next line
    x = (x - mean) * _uniform(b, 0.5, 1.2, generator, x) + mean
    x = x + _uniform(b, -0.2, 0.15, generator, x)
    x = x * (0.7 + 0.6 * _rand(generator, x, b, 3, 1, 1))
    return x.clamp(0, 1)


def camera(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A different camera (19.4): Gaussian blur (sigma 0 to 1.5 px at 64x64) and sensor noise (std 0 to 0.1).

    Blur and noise strengths are drawn per image, so training sees every mix from sharp and
    clean to soft and grainy; the phone domain lies inside that range.
    """
    x = _check_images(images, "camera")
    generator = _check_generator(generator, "camera")
    b, (h, w) = x.shape[0], x.shape[-2:]
    sigma = 1.5 * _scale(x) * _rand(generator, x, b)
    x = _blur_matrices(h, sigma) @ x @ _blur_matrices(w, sigma).transpose(-1, -2)
    x = x + _uniform(b, 0.0, 0.1, generator, x) * _randn(generator, x, *x.shape)
    return x.clamp(0, 1)


def background(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Backgrounds and clutter (19.4): 1 to 3 rectangles of random colour or noise pasted over each image.

    Each rectangle spans 10% to 35% of the image's width and height, anywhere in it, so it may
    hide part of the shape as clutter does. The masks come from comparing a coordinate grid with
    each rectangle's bounds, for the whole batch at once; only the three rectangles are a loop.
    """
    x = _check_images(images, "background")
    generator = _check_generator(generator, "background")
    b, rects = x.shape[0], 3
    ys, xs = _grid(x)
    u = _rand(generator, x, b, rects, 6)[..., None, None]  # centre y, x; half height, width; fill kind; count
    count = 1 + (3 * u[:, 0, 5]).long()  # 1, 2 or 3 rectangles for each image
    colours = _rand(generator, x, b, rects, 3, 1, 1)
    noise = _rand(generator, x, *x.shape)
    for r in range(rects):
        half_h, half_w = 0.05 + 0.125 * u[:, r, 2], 0.05 + 0.125 * u[:, r, 3]
        inside = ((ys - u[:, r, 0]).abs() < half_h) & ((xs - u[:, r, 1]).abs() < half_w) & (r < count)
        fill = torch.where(u[:, r, 4, None] < 0.5, colours[:, r], noise)
        x = torch.where(inside[:, None], fill, x)
    return x


def style(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A different style (19.4): greyscale (half the images), swapped colour channels and a texture.

    A stripe or checker pattern (period 4 to 10 px at 64x64, any angle) is multiplied into each
    image with a strength of 0 to 0.6, so shapes and background look printed on fabric as in the
    texture domain; greyscale and swapped channels teach that colour is not the class (sketch).
    """
    x = _check_images(images, "style")
    generator = _check_generator(generator, "style")
    b = x.shape[0]
    luma = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)[:, None, None]
    grey = (x * luma).sum(dim=1, keepdim=True).expand_as(x)
    x = torch.where(_chance(b, 0.5, generator, x), grey, x)
    order = torch.argsort(_rand(generator, x, b, 3), dim=1)
    x = x[torch.arange(b, device=x.device)[:, None], order]
    strength = _uniform(b, 0.0, 0.6, generator, x)
    x = x * (1 - strength * (1 - _stripes_or_checks(x, generator)))
    return x.clamp(0, 1)


TARGET_AUGMENTATIONS: dict[str, Augmentation] = {
    "lighting": lighting,
    "camera": camera,
    "background": background,
    "style": style,
}


# ---------------------------------------------------------------------------------------------
# Applying one to a loader


def _get_augmentation(augmentation: str | Augmentation) -> Augmentation:
    if isinstance(augmentation, str):
        if augmentation not in TARGET_AUGMENTATIONS:
            raise ValueError(
                f"Unknown augmentation {augmentation!r}. Use one of {', '.join(TARGET_AUGMENTATIONS)}, "
                "or pass a function f(images, generator) -> images."
            )
        return TARGET_AUGMENTATIONS[augmentation]
    if not callable(augmentation):
        raise TypeError(
            f"augmentation must be a name in TARGET_AUGMENTATIONS or a function f(images, generator) -> images, "
            f"got {type(augmentation).__name__}."
        )
    return augmentation


def _check_unit_range(images: torch.Tensor) -> None:
    """Images must still be in [0, 1]: normalised ones (about -2 to 2) would be clamped to nonsense."""
    smallest, largest = images.min().item(), images.max().item()
    if smallest < -_RANGE_SLACK or largest > 1 + _RANGE_SLACK:
        raise ValueError(
            f"AugmentedBatches needs images in [0, 1], got values from {smallest:.3g} to {largest:.3g}: they look "
            "normalised already. Build the dataset with transform=torch.nn.Identity() so images stay in [0, 1]; "
            "AugmentedBatches normalises them after augmenting."
        )


class AugmentedBatches:
    """Batches of ``(images, labels)`` whose images are augmented toward a target and then normalised (19.4).

    ``batches`` is any iterable of ``(images, labels)`` with float images in [0, 1] shaped
    ``(B, 3, H, W)``, e.g. a DataLoader over ``ShapeWorld(..., transform=torch.nn.Identity())``.
    ``augmentation`` is a name in :data:`TARGET_AUGMENTATIONS` or a function ``f(images, generator)``.
    The generator is seeded once, from ``seed``: each epoch draws new augmentations, and a new
    ``AugmentedBatches`` with the same seed (and the same batches) repeats them exactly.
    ``normalize`` standardises the augmented images: the world's :func:`~course_lib.world.normalize`
    by default; real images need their backbone's statistics (``ShiftProblem.normalize``).
    """

    def __init__(self, batches: Iterable, augmentation: str | Augmentation, seed: int = 0,
                 normalize: Callable[[torch.Tensor], torch.Tensor] = normalize):
        if not callable(normalize):
            raise TypeError(f"normalize must be a function images -> images, got {type(normalize).__name__}.")
        self.normalize = normalize
        self.batches = batches
        self.augmentation = _get_augmentation(augmentation)
        self.seed = check_non_negative_int(seed, "seed")
        self.generator = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        if not hasattr(self.batches, "__len__"):
            raise TypeError(
                f"AugmentedBatches has no length: its batches ({type(self.batches).__name__}) have none; "
                "wrap a DataLoader or a list of batches."
            )
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.batches:
            _check_unit_range(_check_images(images, "AugmentedBatches"))
            yield self.normalize(self.augmentation(images, self.generator)), labels
