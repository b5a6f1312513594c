"""The batched NumPy renderer: shape functions on a pixel grid, then the domain's nuisances.

All work is done on arrays of shape ``(N, H, W)`` for a whole batch at once. Per image, two
independent sets of random numbers (see :mod:`course_lib.world.keyed_random`) decide

- the *geometry*, keyed on ``(seed, index)``: rotation, size and position of the shape;
- the *appearance*, keyed on ``(seed, index, domain name)``: colours, background, style, lighting,
  blur and noise.

So image ``i`` shows the same shape in the same pose in every domain, only photographed
differently: paired data for domain adaptation (19.4). Edges are anti-aliased by turning the
signed distance ``d`` (in pixels) into coverage ``clip(0.5 - d, 0, 1)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import zlib
from typing import Sequence

import numpy as np

from course_lib.world.domains import Domain, get_domain
from course_lib.world.keyed_random import keyed_uniform
from course_lib.world.shapes import CLASS_ATTRIBUTE_NAMES, shape_class

GENERATOR_VERSION = 1  # bump whenever a change alters pixels: it invalidates every cache
IMAGE_ATTRIBUTE_NAMES = ("filled", "textured", "relative_size", "hue", "saturation")
ATTRIBUTE_NAMES = CLASS_ATTRIBUTE_NAMES + IMAGE_ATTRIBUTE_NAMES
MIN_RADIUS, MAX_RADIUS = 0.18, 0.375  # shape's outer radius as a fraction of the image side
_GEOMETRY_STREAM = 1
_NOISE_BANK_SIDE = 512
_CLUTTER_STROKES = 5


@dataclasses.dataclass
class RenderedBatch:
    """Images and annotations of a batch: uint8 ``(N, 3, H, W)`` images, bool ``(N, H, W)`` masks,
    float32 ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` (pixel edges, ``x1``/``y1`` exclusive) and float32
    ``(N, len(ATTRIBUTE_NAMES))`` attributes."""

    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    attributes: np.ndarray


def _col(values: np.ndarray) -> np.ndarray:
    """Per-image numbers as float32 ``(N, 1, 1)``, ready to broadcast against ``(N, H, W)`` grids."""
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _lerp(low_high: tuple[float, float], u: np.ndarray) -> np.ndarray:
    return low_high[0] + (low_high[1] - low_high[0]) * u


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV to RGB: three ``(N,)`` arrays in [0, 1] to an ``(N, 3)`` float32 array."""
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    return (value[:, None] * (1 - saturation[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))).astype(np.float32)


def sample_poses(seed: int, indices: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
    """Geometry of each image from ``(seed, index)`` alone: angle, outer radius and centre in pixels."""
    u = keyed_uniform(seed, indices, _GEOMETRY_STREAM, 4)
    radius = image_size * _lerp((MIN_RADIUS, MAX_RADIUS), u[:, 1])
    margin = max(1.5, 0.05 * image_size)  # room for anti-aliasing and outline strokes
    free = image_size - 2 * (radius + margin)
    return {
        "angle": 2 * np.pi * u[:, 0],
        "radius": radius,
        "cx": radius + margin + free * u[:, 2],
        "cy": radius + margin + free * u[:, 3],
    }


def shape_distance(class_names: Sequence[str], labels: np.ndarray, poses: dict, image_size: int) -> np.ndarray:
    """Signed distance in pixels to each image's shape outline, ``(N, H, W)`` float32."""
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - _col(poses["cx"])
    dy = _col(poses["cy"]) - grid[None, :, None]  # y points up in the shape's frame
    cos, sin, radius = _col(np.cos(poses["angle"])), _col(np.sin(poses["angle"])), _col(poses["radius"])
    x = (dx * cos + dy * sin) / radius
    y = (dy * cos - dx * sin) / radius
    distance = np.empty(x.shape, dtype=np.float32)
    for label in np.unique(labels):  # each class's function runs once, on all its images
        rows = np.flatnonzero(labels == label)
        distance[rows] = shape_class(class_names[label]).sdf(x[rows], y[rows]) * radius[rows]
    return distance


def _pattern(kind: np.ndarray, u: np.ndarray, period_px: tuple[float, float], image_size: int) -> np.ndarray:
    """Stripes (kind 0), checker (1) or dots (2), values in [0, 1]; ``u`` holds 4 draws per image."""
    grid = np.arange(image_size, dtype=np.float32)
    angle, period = _col(np.pi * u[:, 0]), _col(_lerp(period_px, u[:, 1]))
    p = (grid[None, None, :] * np.cos(angle) + grid[None, :, None] * np.sin(angle)) / period + _col(u[:, 2])
    q = (grid[None, :, None] * np.cos(angle) - grid[None, None, :] * np.sin(angle)) / period + _col(u[:, 3])
    stripes = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * p), 0, 1)
    checker = np.clip(0.5 + 3.0 * np.sin(2 * np.pi * p) * np.sin(2 * np.pi * q), 0, 1)
    dots = np.clip(0.5 - (np.hypot(p - np.round(p), q - np.round(q)) - 0.28) * period, 0, 1)
    kind = kind[:, None, None]
    return np.where(kind == 0, stripes, np.where(kind == 1, checker, dots))


def _clutter(u: np.ndarray, image_size: int) -> np.ndarray:
    """Coverage of faint pen strokes: long straight lines and circles, ``(N, H, W)`` in [0, 1].

    Each line is ``|x cos(a) + y sin(a) - c| < width``; the x and y parts are computed on a row and
    a column and only added on the full grid, which keeps clutter cheap.
    """
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    px, py = grid[None, None, :], grid[None, :, None]
    width = 64.0 / image_size  # strokes about 1.5 pixels wide at any size
    coverage = np.zeros((len(u), image_size, image_size), dtype=np.float32)
    for stroke in range(_CLUTTER_STROKES):
        a, b, c, opacity = (_col(u[:, 4 * stroke + k]) for k in range(4))
        if stroke < 3:  # a straight line at angle a, offset c from the image centre
            angle = np.pi * a
            distance = np.abs((px - image_size / 2) * np.cos(angle) + (py - image_size / 2) * np.sin(angle) - (c - 0.5) * image_size)
        else:  # a circle centred at (a, b) with radius c
            distance = np.abs(np.hypot(px - a * image_size, py - b * image_size) - (0.1 + 0.3 * c) * image_size)
        coverage = np.maximum(coverage, np.clip(1.25 - distance * width, 0, 1) * (0.15 + 0.3 * opacity))
    return coverage


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed ``(3, 512, 512)`` block of standard normal noise (Box-Muller on keyed numbers).

    Drawing fresh noise for every pixel would cost more than the rest of the rendering; a random
    crop of this bank per image looks the same and stays deterministic.
    """
    u = keyed_uniform(0, np.arange(3 * _NOISE_BANK_SIDE * _NOISE_BANK_SIDE // 2), 0xBA4C, 2)
    radius = np.sqrt(-2 * np.log1p(-u[:, 0]))
    normal = np.concatenate([radius * np.cos(2 * np.pi * u[:, 1]), radius * np.sin(2 * np.pi * u[:, 1])])
    return normal.astype(np.float32).reshape(3, _NOISE_BANK_SIDE, _NOISE_BANK_SIDE)


def _blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur with a per-image ``sigma`` (pixels), as two matrix products per image.

    Row ``i`` of the matrix holds the Gaussian weights centred on pixel ``i``, renormalised so that
    edges do not darken. A matrix product is far faster than shifting the image once per tap.
    """
    size = images.shape[-1]
    offsets = np.arange(size, dtype=np.float32)
    offsets = offsets[None, :, None] - offsets[None, None, :]
    weights = np.exp(-0.5 * (offsets / np.maximum(sigma, 1e-3).astype(np.float32)[:, None, None]) ** 2)
    weights[weights < 1e-6] = 0  # tiny "denormal" floats would make the products 30x slower
    weights /= weights.sum(axis=2, keepdims=True)
    weights = weights[:, None]  # (N, 1, size, size), the same for all three channels
    return weights @ images @ weights.transpose(0, 1, 3, 2)


@functools.lru_cache(maxsize=8)
def _block_average_matrix(size: int) -> np.ndarray:
    block = max(2, round(size / 16))
    groups = np.minimum(np.arange(size) // block, size // block - 1)  # a short last block joins the one before
    same = (groups[:, None] == groups[None, :]).astype(np.float32)
    return same / same.sum(axis=1, keepdims=True)


def _blocky(images: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Blend towards block averages: the 8x8-block look of a heavily compressed JPEG (4 px at 64)."""
    average = _block_average_matrix(images.shape[-1])
    means = average @ images @ average.T
    s = strength[:, None, None, None].astype(np.float32)
    return images + (means - images) * s


def render_batch(
    class_names: Sequence[str], labels: np.ndarray, indices: np.ndarray, seed: int, domain: str | Domain, image_size: int
) -> RenderedBatch:
    """Render images ``indices`` (their classes are ``class_names[labels]``) of one seed and domain.

    Every output row depends only on its own ``(seed, index, class, domain, image_size)``, never
    on the rest of the batch.
    """
    domain = get_domain(domain)
    labels, indices = np.asarray(labels, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    n, size, scale = len(indices), image_size, image_size / 64.0
    stream = 2**32 + zlib.crc32(domain.name.encode())  # appearance depends on the domain's name

    def draws(purpose: int, count: int) -> np.ndarray:
        return keyed_uniform(seed, indices, stream + (purpose << 33), count)

    poses = sample_poses(seed, indices, size)
    distance = shape_distance(class_names, labels, poses, size)
    masks = distance < 0

    # Style and colours.
    u = draws(0, 12)
    outline = u[:, 0] < domain.p_outline
    textured = ~outline & (u[:, 0] < domain.p_outline + domain.p_textured)
    hue, saturation = _lerp(domain.shape_hue, u[:, 1]), _lerp(domain.shape_saturation, u[:, 2])
    shape_rgb = hsv_to_rgb(hue, saturation, _lerp(domain.shape_value, u[:, 3]))
    background_rgb = hsv_to_rgb(u[:, 4], _lerp(domain.background_saturation, u[:, 5]),
                                _lerp(domain.background_value, u[:, 6]))
    stroke = _col(_lerp(domain.stroke_width, u[:, 7]) * scale)
    alpha = np.where(outline[:, None, None], np.clip(0.5 - (np.abs(distance) - stroke / 2), 0, 1),
                     np.clip(0.5 - distance, 0, 1))[:, None]

    # Shape fill: a plain colour, or a pattern between the colour and a paler version of it.
    foreground = np.broadcast_to(shape_rgb[:, :, None, None], (n, 3, size, size))
    if domain.p_textured > 0:
        texture = _pattern((u[:, 8] * 3).astype(int), draws(1, 4), domain.texture_period, size)[:, None]
        pale = shape_rgb * 0.35 + 0.65
        textured_fill = shape_rgb[:, :, None, None] + (pale - shape_rgb)[:, :, None, None] * texture
        foreground = np.where(textured[:, None, None, None], textured_fill, foreground)

    # Background: plain colour, gradient, pattern or clutter.
    background = np.broadcast_to(background_rgb[:, :, None, None], (n, 3, size, size))
    kind = u[:, 9]
    gradient_images = kind < domain.p_gradient
    pattern_images = ~gradient_images & (kind < domain.p_gradient + domain.p_texture_background)
    clutter_images = ~gradient_images & ~pattern_images & (
        kind < domain.p_gradient + domain.p_texture_background + domain.p_clutter)
    v = draws(2, 6 + 4 * _CLUTTER_STROKES)
    if domain.p_gradient > 0:
        grid = np.arange(size, dtype=np.float32) / (size - 1)
        angle = _col(2 * np.pi * v[:, 0])
        ramp = np.clip(0.5 + (grid[None, None, :] - 0.5) * np.cos(angle) + (grid[None, :, None] - 0.5) * np.sin(angle), 0, 1)
        far_rgb = np.clip(background_rgb * (0.55 + 0.4 * v[:, 1:2]), 0, 1).astype(np.float32)
        ramp_rgb = background_rgb[:, :, None, None] + (far_rgb - background_rgb)[:, :, None, None] * ramp[:, None]
        background = np.where(gradient_images[:, None, None, None], ramp_rgb, background)
    if domain.p_texture_background > 0:
        pattern = _pattern((v[:, 2] * 3).astype(int), draws(3, 4), (4.0 * scale, 7.0 * scale), size)[:, None]
        patterned = background_rgb[:, :, None, None] * (1 - 0.22 * pattern)
        background = np.where(pattern_images[:, None, None, None], patterned, background)
    if domain.p_clutter > 0:
        ink = hsv_to_rgb(v[:, 3], v[:, 4] * 0.6, 0.15 + 0.4 * v[:, 5])
        rows = np.flatnonzero(clutter_images)
        strokes = _clutter(v[rows, 6:], size)[:, None]
        background = background.copy()
        background[rows] += (ink[rows, :, None, None] - background[rows]) * strokes

    images = background + (foreground - background) * alpha

    # Camera: lighting, colour cast, blur, noise, compression.
    w = draws(4, 10)
    contrast, brightness = _lerp(domain.contrast, w[:, 0]), _lerp(domain.brightness, w[:, 1])
    if domain.contrast != (1.0, 1.0) or domain.brightness != (0.0, 0.0):  # decided per domain, never per batch
        images = (images - 0.5) * contrast[:, None, None, None].astype(np.float32) + 0.5
        images = images + brightness[:, None, None, None].astype(np.float32)
    if domain.illumination_gradient[1] > 0:
        grid = np.arange(size, dtype=np.float32) / (size - 1)
        angle = _col(2 * np.pi * w[:, 2])
        side = np.clip(0.5 + (grid[None, None, :] - 0.5) * np.cos(angle) + (grid[None, :, None] - 0.5) * np.sin(angle), 0, 1)
        images = images * (1 - _col(_lerp(domain.illumination_gradient, w[:, 3])) * side)[:, None]
    if domain.tint != (1.0, 1.0, 1.0) or domain.tint_jitter[1] > 0:
        jitter = _lerp(domain.tint_jitter, w[:, 4])[:, None] * (2 * w[:, 5:8] - 1)
        images = images * (np.asarray(domain.tint) + jitter).astype(np.float32)[:, :, None, None]
    if domain.blur_sigma[1] > 0:
        sigma = _lerp(domain.blur_sigma, w[:, 8]) * scale
        images = _blur(images, sigma)
    if domain.noise_std[1] > 0:
        bank, offsets = _noise_bank(), draws(5, 2) * (_NOISE_BANK_SIDE - size)
        noise = np.stack([bank[:, oy:oy + size, ox:ox + size] for oy, ox in offsets.astype(int)])
        images = images + noise * _lerp(domain.noise_std, w[:, 9])[:, None, None, None].astype(np.float32)
    if domain.blockiness[1] > 0:
        images = _blocky(images, _lerp(domain.blockiness, draws(6, 1)[:, 0]))
    assert images.dtype == np.float32, images.dtype  # float64 would creep in and halve the speed
    images = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)

    class_attributes = np.stack([shape_class(class_names[label]).attribute_vector() for label in labels]) if n else \
        np.zeros((0, len(CLASS_ATTRIBUTE_NAMES)), np.float32)
    image_attributes = np.stack([~outline, textured, 2 * poses["radius"] / size, hue, saturation], axis=1)
    attributes = np.concatenate([class_attributes, image_attributes.astype(np.float32)], axis=1)
    return RenderedBatch(images, masks, boxes_from_masks(masks), attributes.astype(np.float32))


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``(x0, y0, x1, y1)`` around each ``(H, W)`` mask; ``x1``/``y1`` are exclusive."""
    if masks.ndim != 3 or masks.dtype != bool:
        raise ValueError(f"masks must be a bool array of shape (N, H, W), got {masks.dtype} {masks.shape}.")
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    if not rows.any(axis=1).all():
        raise ValueError("Every mask needs at least one pixel to have a bounding box.")
    height, width = masks.shape[1:]
    y0, y1 = rows.argmax(1), height - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), width - cols[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def world_generation_speed(n: int = 2000, image_size: int = 64, domain: str | Domain = "studio", repeats: int = 3) -> float:
    """Images per second of the renderer (best of ``repeats`` runs of ``n`` source-class images).

    Measure on one core with ``torch.set_num_threads(1)``; the renderer itself is plain NumPy.
    """
    from course_lib.world.splits import SOURCE_CLASSES

    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be at least 1, got n={n}, repeats={repeats}.")
    indices = np.arange(n)
    labels = indices % len(SOURCE_CLASSES)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, n, 256):
            render_batch(SOURCE_CLASSES, labels[start:start + 256], indices[start:start + 256], 0, domain, image_size)
        best = min(best, time.perf_counter() - started)
    return n / best
