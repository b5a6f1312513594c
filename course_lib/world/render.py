"""The batched NumPy renderer: shape functions on a pixel grid, then the domain's nuisances.

:func:`render_batch` is the recipe: pose, shape, style, fill, background, then the camera
(:mod:`course_lib.world.camera`) and the annotations.

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
import math
import time
import zlib
from typing import Sequence

import numpy as np

from course_lib.world.camera import photograph, ramp
from course_lib.world.domains import Domain, get_domain, lerp
from course_lib.world.keyed_random import Draws, keyed_uniform
from course_lib.world.shapes import CLASS_ATTRIBUTE_NAMES, shape_class

GENERATOR_VERSION = 1  # bump whenever a change alters pixels: it invalidates every cache
IMAGE_ATTRIBUTE_NAMES = ("filled", "textured", "relative_size", "hue", "saturation")
ATTRIBUTE_NAMES = CLASS_ATTRIBUTE_NAMES + IMAGE_ATTRIBUTE_NAMES
MIN_RADIUS, MAX_RADIUS = 0.18, 0.375  # shape's outer radius as a fraction of the image side
_GEOMETRY_STREAM = 1
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


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV to RGB: three ``(N,)`` arrays in [0, 1] to an ``(N, 3)`` float32 array."""
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    return (value[:, None] * (1 - saturation[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))).astype(np.float32)


def sample_poses(seed: int, indices: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
    """Geometry of each image from ``(seed, index)`` alone: angle, outer radius and centre in pixels."""
    u = keyed_uniform(seed, indices, _GEOMETRY_STREAM, 4)
    radius = image_size * lerp((MIN_RADIUS, MAX_RADIUS), u[:, 1])
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
    angle, period = _col(np.pi * u[:, 0]), _col(lerp(period_px, u[:, 1]))
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


@dataclasses.dataclass
class _Style:
    """How each image draws its shape: outline or fill, texture, colours and stroke width."""

    outline: np.ndarray  # (N,) bool
    textured: np.ndarray  # (N,) bool
    hue: np.ndarray  # (N,) of the shape
    saturation: np.ndarray  # (N,) of the shape
    shape_rgb: np.ndarray  # (N, 3) float32
    background_rgb: np.ndarray  # (N, 3) float32
    stroke: np.ndarray  # (N, 1, 1) outline width in pixels


def _style(domain: Domain, u: np.ndarray, scale: float) -> _Style:
    """Style and colours from the first 8 style draws ``u`` of each image."""
    outline = u[:, 0] < domain.p_outline
    textured = ~outline & (u[:, 0] < domain.p_outline + domain.p_textured)
    hue, saturation = lerp(domain.shape_hue, u[:, 1]), lerp(domain.shape_saturation, u[:, 2])
    return _Style(
        outline, textured, hue, saturation,
        shape_rgb=hsv_to_rgb(hue, saturation, lerp(domain.shape_value, u[:, 3])),
        background_rgb=hsv_to_rgb(u[:, 4], lerp(domain.background_saturation, u[:, 5]),
                                  lerp(domain.background_value, u[:, 6])),
        stroke=_col(lerp(domain.stroke_width, u[:, 7]) * scale),
    )


def _coverage(distance: np.ndarray, style: _Style) -> np.ndarray:
    """How much of each pixel the shape covers, ``(N, 1, H, W)``: its inside, or a band along its outline."""
    band = np.clip(0.5 - (np.abs(distance) - style.stroke / 2), 0, 1)
    return np.where(style.outline[:, None, None], band, np.clip(0.5 - distance, 0, 1))[:, None]


def _shape_fill(domain: Domain, style: _Style, pattern_u: np.ndarray, draws: Draws, size: int) -> np.ndarray:
    """The shape's colour, ``(N, 3, H, W)``: plain, or a pattern between the colour and a paler version of it."""
    shape_rgb = style.shape_rgb
    foreground = np.broadcast_to(shape_rgb[:, :, None, None], (len(shape_rgb), 3, size, size))
    if domain.p_textured > 0:
        texture = _pattern((pattern_u * 3).astype(int), draws(1, 4), domain.texture_period, size)[:, None]
        pale = shape_rgb * 0.35 + 0.65
        textured_fill = shape_rgb[:, :, None, None] + (pale - shape_rgb)[:, :, None, None] * texture
        foreground = np.where(style.textured[:, None, None, None], textured_fill, foreground)
    return foreground


def _background(domain: Domain, rgb: np.ndarray, kind: np.ndarray, draws: Draws, size: int, scale: float) -> np.ndarray:
    """The background, ``(N, 3, H, W)``: a plain colour, or (chosen by ``kind``) a gradient, a pattern or clutter."""
    background = np.broadcast_to(rgb[:, :, None, None], (len(rgb), 3, size, size))
    gradient_images = kind < domain.p_gradient
    pattern_images = ~gradient_images & (kind < domain.p_gradient + domain.p_texture_background)
    clutter_images = ~gradient_images & ~pattern_images & (
        kind < domain.p_gradient + domain.p_texture_background + domain.p_clutter)
    v = draws(2, 6 + 4 * _CLUTTER_STROKES)
    if domain.p_gradient > 0:
        far_rgb = np.clip(rgb * (0.55 + 0.4 * v[:, 1:2]), 0, 1).astype(np.float32)
        ramp_rgb = rgb[:, :, None, None] + (far_rgb - rgb)[:, :, None, None] * ramp(v[:, 0], size)[:, None]
        background = np.where(gradient_images[:, None, None, None], ramp_rgb, background)
    if domain.p_texture_background > 0:
        pattern = _pattern((v[:, 2] * 3).astype(int), draws(3, 4), (4.0 * scale, 7.0 * scale), size)[:, None]
        patterned = rgb[:, :, None, None] * (1 - 0.22 * pattern)
        background = np.where(pattern_images[:, None, None, None], patterned, background)
    if domain.p_clutter > 0:
        ink = hsv_to_rgb(v[:, 3], v[:, 4] * 0.6, 0.15 + 0.4 * v[:, 5])
        rows = np.flatnonzero(clutter_images)
        strokes = _clutter(v[rows, 6:], size)[:, None]
        background = background.copy()
        background[rows] += (ink[rows, :, None, None] - background[rows]) * strokes
    return background


def _attributes(class_names: Sequence[str], labels: np.ndarray, style: _Style, radius: np.ndarray, size: int) -> np.ndarray:
    """The class attributes of each image's class, then its own (``IMAGE_ATTRIBUTE_NAMES``), float32."""
    class_attributes = np.stack([shape_class(class_names[label]).attribute_vector() for label in labels]) if len(labels) \
        else np.zeros((0, len(CLASS_ATTRIBUTE_NAMES)), np.float32)
    image_attributes = np.stack([~style.outline, style.textured, 2 * radius / size, style.hue, style.saturation], axis=1)
    return np.concatenate([class_attributes, image_attributes.astype(np.float32)], axis=1).astype(np.float32)


def render_batch(
    class_names: Sequence[str], labels: np.ndarray, indices: np.ndarray, seed: int, domain: str | Domain, image_size: int
) -> RenderedBatch:
    """Render images ``indices`` (their classes are ``class_names[labels]``) of one seed and domain.

    Every output row depends only on its own ``(seed, index, class, domain, image_size)``, never
    on the rest of the batch. Used by :class:`~course_lib.world.dataset.ShapeWorld` in every chapter.
    """
    domain = get_domain(domain)
    labels, indices = np.asarray(labels, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    scale = image_size / 64.0  # sizes in a Domain are given for 64x64 images
    stream = 2**32 + zlib.crc32(domain.name.encode())  # appearance depends on the domain's name

    def draws(purpose: int, count: int) -> np.ndarray:
        # Purposes: 0 style, 1 fill pattern, 2 background, 3 background pattern, 4 camera, 5 noise crop,
        # 6 blockiness. Each has its own numbers, so a domain without a nuisance skips its draws.
        return keyed_uniform(seed, indices, stream + (purpose << 33), count)

    poses = sample_poses(seed, indices, image_size)
    distance = shape_distance(class_names, labels, poses, image_size)
    u = draws(0, 12)  # 0-7 style and colours, 8 the fill pattern, 9 the background kind
    style = _style(domain, u, scale)
    foreground = _shape_fill(domain, style, u[:, 8], draws, image_size)
    background = _background(domain, style.background_rgb, u[:, 9], draws, image_size, scale)
    images = photograph(background + (foreground - background) * _coverage(distance, style), domain, draws, scale)
    images = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
    masks = distance < 0
    attributes = _attributes(class_names, labels, style, poses["radius"], image_size)
    return RenderedBatch(images, masks, boxes_from_masks(masks), attributes)


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
