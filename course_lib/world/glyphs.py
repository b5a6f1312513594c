"""Novel classes for few-shot learning (19.5): ``"glyph-NNNNNN"`` outlines made from their number alone.

A glyph is a *star-shaped* outline: seen from its centre, every direction ``theta`` meets the
outline once, at radius ``r(theta)``. Half of the glyphs are smooth blobs (a few random Fourier
harmonics), the other half polygons with 3 to 8 jittered corners. The number seeds every
parameter, so ``"glyph-000123"`` is the same shape on every machine, and there are a million of
them. :func:`course_lib.world.shapes.shape_class` turns a glyph name into a full class.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np

from course_lib.world.keyed_random import keyed_uniform

GLYPH_PATTERN = re.compile(r"^glyph-(\d{6})$")
_GLYPH_STREAM = 0x61F  # keeps glyph parameters apart from the image random streams
_GLYPH_LIST_STREAM = 0x62A


def novel_classes(count: int, seed: int = 0) -> list[str]:
    """Names of ``count`` distinct generated classes, e.g. ``["glyph-482133", ...]`` (19.5 few-shot).

    The same ``(count, seed)`` always gives the same names, and a larger ``count`` extends the list.
    Use different seeds for episodes that must not share classes with each other.
    """
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100_000:
        raise ValueError(f"count must be an int between 1 and 100000, got {count!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    names: list[str] = []
    draw = 0
    while len(names) < count:
        batch = keyed_uniform(seed, np.arange(draw, draw + count), _GLYPH_LIST_STREAM, 1)[:, 0]
        for number in (batch * 1_000_000).astype(np.int64):
            name = f"glyph-{number:06d}"
            if name not in names and len(names) < count:
                names.append(name)
        draw += count
    return names


def glyph_outline(number: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Radius ``r(theta)``, its derivative on 720 angles and the corner count of glyph ``number``.

    A random Fourier curve (0 corners) or polygon, scaled so that it fits inside the unit circle.
    """
    u = keyed_uniform(number, np.arange(32), _GLYPH_STREAM, 1)[:, 0]
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    if u[0] < 0.5:  # smooth blob: r = 1 + sum_k a_k cos(k theta + phi_k), three harmonics from 2..6
        harmonics = 2 + np.argsort(u[1:6])[:3]
        amplitudes = 0.1 + 0.25 * u[6:9]
        amplitudes *= min(1.0, 0.65 / amplitudes.sum())  # keep the radius well above zero
        phases = 2 * np.pi * u[9:12]
        angle = harmonics[:, None] * theta + phases[:, None]
        radius = 1 + (amplitudes[:, None] * np.cos(angle)).sum(0)
        slope = -(amplitudes[:, None] * harmonics[:, None] * np.sin(angle)).sum(0)
        corners = 0
    else:  # polygon with 3..8 corners at jittered angles and random distances from the centre
        corners = 3 + int(u[1] * 6)
        corner_angles = (np.arange(corners) + 0.6 * (u[2:2 + corners] - 0.5)) * 2 * np.pi / corners
        corner_radii = 0.45 + 0.55 * u[10:10 + corners]
        px, py = corner_radii * np.cos(corner_angles), corner_radii * np.sin(corner_angles)
        nxt = np.roll(np.arange(corners), -1)
        # Edge j as the line a_j x + b_j y = 1, so along a ray r(theta) = 1 / (a_j cos + b_j sin).
        det = px * py[nxt] - py * px[nxt]
        a, b = (py[nxt] - py) / det, (px - px[nxt]) / det
        edge = (np.searchsorted(corner_angles, np.mod(theta - corner_angles[0], 2 * np.pi) + corner_angles[0]) - 1) % corners
        denominator = a[edge] * np.cos(theta) + b[edge] * np.sin(theta)
        radius = 1 / denominator
        slope = radius * (a[edge] * np.sin(theta) - b[edge] * np.cos(theta)) / denominator
    scale = 0.95 / radius.max()
    return radius * scale, slope * scale, corners


def polar_sdf(radius: np.ndarray, slope: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The signed distance function of the outline ``r(theta)`` sampled at equal angles (with ``dr/dtheta``)."""
    samples = len(radius)

    def sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        theta = np.mod(np.arctan2(y, x), 2 * np.pi)
        k = np.minimum((theta * (samples / (2 * np.pi))).astype(np.int32), samples - 1)
        r, dr = radius[k].astype(x.dtype), slope[k].astype(x.dtype)
        # (rho - r(theta)) divided by the gradient's length is close to the true distance.
        return (np.hypot(x, y) - r) / np.sqrt(1 + (dr / r) ** 2)

    return sdf


def outline_properties(radius: np.ndarray) -> tuple[bool, bool]:
    """Whether the outline ``r(theta)`` (equal angles) is convex, and whether it is elongated.

    Convex: the outline never turns right. Elongated: its points spread over 1.6 times further
    along their main axis than across it.
    """
    theta = np.linspace(0, 2 * np.pi, len(radius), endpoint=False)
    px, py = radius * np.cos(theta), radius * np.sin(theta)
    ex, ey = np.roll(px, -1) - px, np.roll(py, -1) - py
    turn = ex * np.roll(ey, -1) - ey * np.roll(ex, -1)
    eigen = np.linalg.eigvalsh(np.cov(np.stack([px, py])))
    return bool(np.all(turn > -1e-9)), bool(math.sqrt(eigen[1] / eigen[0]) > 1.6)
