"""The shape catalogue: every class of the world as an implicit function, with attributes and text.

A shape is a *signed distance function* (SDF): ``sdf(x, y)`` is negative inside the shape, zero on
its outline and positive outside, and roughly equals the distance to the outline. Coordinates are
in the shape's own frame (y points up) where every shape fits inside the unit circle, so the
renderer can rotate, scale and move all of them the same way. Building shapes from a few
primitives is cheap and exact: a union is ``min(a, b)``, an intersection ``max(a, b)`` and a
difference ``max(a, -b)``.

There are 34 *named* classes (see :mod:`course_lib.world.splits` for the source/target split) and
an unlimited family of generated *novel* classes, ``"glyph-000123"``, for few-shot learning
(19.5), whose outlines :mod:`course_lib.world.glyphs` derives from their number alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np

from course_lib.world.glyphs import GLYPH_PATTERN, glyph_outline, outline_properties, polar_sdf

Array = np.ndarray
SDF = Callable[[Array, Array], Array]

CLASS_ATTRIBUTE_NAMES = (
    "n_corners", "has_curved_edges", "rotational_symmetry_order", "mirror_symmetric", "convex", "has_hole",
    "elongated",
)


# ---------------------------------------------------------------------------------------------
# Primitives. Each takes coordinate arrays of any (matching) shape and returns distances.


def circle(x: Array, y: Array, radius: float, cx: float = 0.0, cy: float = 0.0) -> Array:
    """Disc of ``radius`` centred at ``(cx, cy)``."""
    return np.hypot(x - cx, y - cy) - radius


def box(x: Array, y: Array, half_width: float, half_height: float, cx: float = 0.0, cy: float = 0.0) -> Array:
    """Axis-aligned rectangle (the cheap ``max`` form: exact inside and along the edges)."""
    return np.maximum(np.abs(x - cx) - half_width, np.abs(y - cy) - half_height)


def convex_polygon(x: Array, y: Array, vertices: list[tuple[float, float]]) -> Array:
    """Convex polygon with counter-clockwise ``vertices``: the largest distance to any edge line."""
    distance = None
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
        length = math.hypot(x1 - x0, y1 - y0)
        normal_x, normal_y = (y1 - y0) / length, -(x1 - x0) / length  # outward for counter-clockwise order
        edge = (x - x0) * normal_x + (y - y0) * normal_y
        distance = edge if distance is None else np.maximum(distance, edge)
    return distance


def fold(x: Array, y: Array, n: int) -> tuple[Array, Array]:
    """Fold the plane into one wedge of an ``n``-fold symmetric shape, mirrored about the x axis.

    Returns ``(rho * cos(phi), rho * sin(phi))`` with ``phi`` in ``[0, pi / n]``: drawing a shape
    in that thin wedge draws all ``n`` copies at once (polygons, stars, flowers, gears).
    """
    sector = 2 * np.pi / n
    angle = np.abs(np.mod(np.arctan2(y, x) + sector / 2, sector) - sector / 2)
    rho = np.hypot(x, y)
    return rho * np.cos(angle), rho * np.sin(angle)


def star(x: Array, y: Array, points: int, outer: float, inner: float) -> Array:
    """Star with ``points`` tips at radius ``outer`` and notches at radius ``inner``.

    A regular polygon is the star whose notches lie on its edges: ``inner = outer * cos(pi / n)``.
    """
    fx, fy = fold(x, y, points)
    half = np.pi / points
    tip_x, tip_y = outer, 0.0
    notch_x, notch_y = inner * math.cos(half), inner * math.sin(half)
    length = math.hypot(notch_x - tip_x, notch_y - tip_y)
    normal_x, normal_y = (notch_y - tip_y) / length, -(notch_x - tip_x) / length
    if normal_x < 0:  # make the normal point away from the centre
        normal_x, normal_y = -normal_x, -normal_y
    return (fx - tip_x) * normal_x + (fy - tip_y) * normal_y


def regular_polygon(x: Array, y: Array, sides: int, radius: float) -> Array:
    """Regular polygon with ``sides`` corners on a circle of ``radius``."""
    return star(x, y, sides, radius, radius * math.cos(math.pi / sides))


def _heart(x: Array, y: Array) -> Array:
    lobes = np.minimum(circle(x, y, 0.45, -0.38, 0.28), circle(x, y, 0.45, 0.38, 0.28))
    point = convex_polygon(x, y, [(0.0, -0.95), (0.76, 0.12), (0.0, 0.55), (-0.76, 0.12)])
    return np.minimum(lobes, point)


def _teardrop(x: Array, y: Array) -> Array:
    # A disc plus the cone of its two tangent lines through the tip at (0, 0.95).
    centre_y, radius, tip_y = -0.35, 0.6, 0.95
    half_angle = math.asin(radius / (tip_y - centre_y))
    cone = np.abs(x) * math.cos(half_angle) + (y - tip_y) * math.sin(half_angle)
    tangent_y = centre_y + radius * math.sin(half_angle)
    return np.minimum(circle(x, y, radius, 0.0, centre_y), np.maximum(cone, tangent_y - y))


def _flower(x: Array, y: Array, petals: int, distance: float, petal_radius: float) -> Array:
    fx, fy = fold(x, y, petals)
    return np.minimum(circle(fx, fy, petal_radius, distance, 0.0), circle(x, y, distance * 0.75))


def _gear(x: Array, y: Array) -> Array:
    fx, fy = fold(x, y, 8)
    wheel = np.minimum(circle(x, y, 0.7), box(fx, fy, 0.16, 0.13, 0.78, 0.0))
    return np.maximum(wheel, -circle(x, y, 0.25))


def _pacman(x: Array, y: Array) -> Array:
    mouth = np.abs(y) * math.cos(math.pi / 6) - x * math.sin(math.pi / 6)  # a 60-degree wedge
    return np.maximum(circle(x, y, 0.95), -mouth)


def _arrow(x: Array, y: Array) -> Array:
    shaft = box(x, y, 0.5, 0.2, -0.4, 0.0)
    return np.minimum(shaft, convex_polygon(x, y, [(0.05, -0.6), (0.95, 0.0), (0.05, 0.6)]))


def _double_arrow(x: Array, y: Array) -> Array:
    ax = np.abs(x)  # mirror so one head draws both
    head = convex_polygon(ax, y, [(0.35, -0.5), (0.97, 0.0), (0.35, 0.5)])
    return np.minimum(box(x, y, 0.4, 0.17), head)


def _chevron(x: Array, y: Array) -> Array:
    outer = convex_polygon(x, y, [(-0.55, -0.8), (0.75, 0.0), (-0.55, 0.8)])
    inner = convex_polygon(x, y, [(-1.1, -0.8), (0.2, 0.0), (-1.1, 0.8)])
    return np.maximum(outer, -inner)


@dataclasses.dataclass(frozen=True)
class ShapeClass:
    """One class of the world: its implicit function, attributes and a one-sentence description."""

    name: str
    sdf: SDF
    description: str
    n_corners: int
    has_curved_edges: bool
    rotational_symmetry_order: int  # 0 means every rotation (circle, ring)
    mirror_symmetric: bool
    convex: bool
    has_hole: bool = False
    elongated: bool = False

    def attribute_vector(self) -> np.ndarray:
        """The class attributes as float32, in the order of ``CLASS_ATTRIBUTE_NAMES``."""
        return np.array([float(getattr(self, name)) for name in CLASS_ATTRIBUTE_NAMES], dtype=np.float32)


def _named(name, sdf, description, corners, curved, symmetry, mirror=True, convex=False, hole=False, long=False):
    return ShapeClass(name, sdf, description, corners, curved, symmetry, mirror, convex, hole, long)


# fmt: off
NAMED_SHAPES: dict[str, ShapeClass] = {s.name: s for s in [
    _named("circle", lambda x, y: circle(x, y, 0.95), "a round circle with no corners", 0, True, 0, convex=True),
    _named("ellipse", lambda x, y: (np.hypot(x / 0.95, y / 0.5) - 1) * 0.5,
           "a stretched oval, twice as long as it is wide", 0, True, 2, convex=True, long=True),
    _named("semicircle", lambda x, y: np.maximum(circle(x, y, 0.88, 0, -0.44), -0.44 - y),
           "a half disc with one straight edge and one round edge", 2, True, 1, convex=True),
    _named("crescent", lambda x, y: np.maximum(circle(x, y, 0.95), -circle(x, y, 0.8, 0.4, 0.0)),
           "a thin crescent moon with two pointed horns", 2, True, 1),
    _named("ring", lambda x, y: np.abs(np.hypot(x, y) - 0.7) - 0.25,
           "a round ring with a round hole in the middle", 0, True, 0, hole=True),
    _named("heart", _heart, "a heart with two round lobes and a pointed bottom", 2, True, 1),
    _named("teardrop", _teardrop, "a teardrop, round at one end and pointed at the other", 1, True, 1, convex=True),
    _named("flower4", lambda x, y: _flower(x, y, 4, 0.5, 0.45), "a flower with four round petals", 4, True, 4),
    _named("pacman", _pacman, "a round disc with a wedge-shaped mouth cut out", 3, True, 1),
    _named("triangle", lambda x, y: regular_polygon(x, y, 3, 0.97),
           "a triangle with three equal straight sides", 3, False, 3, convex=True),
    _named("square", lambda x, y: regular_polygon(x, y, 4, 0.95),
           "a square with four equal sides and right angles", 4, False, 4, convex=True),
    _named("rectangle", lambda x, y: box(x, y, 0.9, 0.38),
           "a long thin rectangle with four right angles", 4, False, 2, convex=True, long=True),
    _named("rhombus", lambda x, y: convex_polygon(x, y, [(0.95, 0), (0, 0.55), (-0.95, 0), (0, -0.55)]),
           "a rhombus, a diamond with two sharp and two wide corners", 4, False, 2, convex=True),
    _named("trapezoid", lambda x, y: convex_polygon(x, y, [(-0.88, -0.42), (0.88, -0.42), (0.42, 0.42), (-0.42, 0.42)]),
           "a trapezoid with a long base and a short parallel top", 4, False, 1, convex=True),
    _named("pentagon", lambda x, y: regular_polygon(x, y, 5, 0.95),
           "a pentagon with five equal straight sides", 5, False, 5, convex=True),
    _named("hexagon", lambda x, y: regular_polygon(x, y, 6, 0.95),
           "a hexagon with six equal straight sides", 6, False, 6, convex=True),
    _named("star4", lambda x, y: star(x, y, 4, 0.97, 0.38), "a four-pointed star with sharp points", 8, False, 4),
    _named("star5", lambda x, y: star(x, y, 5, 0.97, 0.42), "a five-pointed star with sharp points", 10, False, 5),
    _named("star6", lambda x, y: star(x, y, 6, 0.97, 0.5), "a six-pointed star with sharp points", 12, False, 6),
    _named("cross", lambda x, y: np.minimum(box(x, y, 0.92, 0.28), box(x, y, 0.28, 0.92)),
           "a plus-shaped cross with four equal arms", 12, False, 4),
    _named("arrow", _arrow, "an arrow with a straight shaft and a triangular head", 7, False, 1),
    _named("l_shape", lambda x, y: np.minimum(box(x, y, 0.2, 0.8, -0.4, 0.0), box(x, y, 0.55, 0.2, -0.05, -0.6)),
           "an L-shaped corner with a long arm and a short arm", 6, False, 1, mirror=False),
    _named("t_shape", lambda x, y: np.minimum(box(x, y, 0.68, 0.2, 0, 0.5), box(x, y, 0.2, 0.7, 0, 0)),
           "a T shape with a bar on top of a stem", 8, False, 1),
    _named("square_ring", lambda x, y: np.maximum(box(x, y, 0.68, 0.68), -box(x, y, 0.38, 0.38)),
           "a square frame with a square hole in the middle", 8, False, 4, hole=True),
    # Target classes: new to the source model, but built from the same ideas.
    _named("heptagon", lambda x, y: regular_polygon(x, y, 7, 0.95),
           "a heptagon with seven equal straight sides", 7, False, 7, convex=True),
    _named("star3", lambda x, y: star(x, y, 3, 0.97, 0.3), "a three-pointed star with long sharp points", 6, False, 3),
    _named("star7", lambda x, y: star(x, y, 7, 0.97, 0.55), "a seven-pointed star with short sharp points", 14, False, 7),
    _named("flower6", lambda x, y: _flower(x, y, 6, 0.62, 0.33), "a flower with six round petals", 6, True, 6),
    _named("gear", _gear, "a gear wheel with eight square teeth and a hole in the middle", 32, True, 8, hole=True),
    _named("kite", lambda x, y: convex_polygon(x, y, [(0, -0.95), (0.55, 0.3), (0, 0.95), (-0.55, 0.3)]),
           "a kite with a long lower half and a short upper half", 4, False, 1, convex=True),
    _named("double_arrow", _double_arrow, "a double-headed arrow pointing both ways", 10, False, 2, long=True),
    _named("chevron", _chevron, "a chevron, a thick V-shaped arrowhead", 6, False, 1),
    _named("u_shape", lambda x, y: np.minimum(np.minimum(box(x, y, 0.2, 0.7, -0.5, 0.0), box(x, y, 0.2, 0.7, 0.5, 0.0)),
                                              box(x, y, 0.7, 0.2, 0.0, -0.5)),
           "a U shape with two parallel arms joined at the bottom", 8, False, 1),
    _named("triangle_ring", lambda x, y: np.maximum(regular_polygon(x, y, 3, 0.97), -regular_polygon(x, y, 3, 0.45)),
           "a triangular frame with a triangular hole in the middle", 6, False, 3, hole=True),
]}
# fmt: on


# ---------------------------------------------------------------------------------------------
# Novel classes: "glyph-NNNNNN", their outlines generated in course_lib.world.glyphs.


@functools.lru_cache(maxsize=4096)
def _glyph_class(name: str) -> ShapeClass:
    radius, slope, corners = glyph_outline(int(GLYPH_PATTERN.match(name).group(1)))
    convex, elongated = outline_properties(radius)
    is_polygon = corners > 0
    return ShapeClass(
        name=name,
        sdf=polar_sdf(radius, slope),
        description=f"a made-up {'polygon' if is_polygon else 'blob'} shape called {name}",
        n_corners=corners,
        has_curved_edges=not is_polygon,
        rotational_symmetry_order=1,
        mirror_symmetric=False,
        convex=convex,
        has_hole=False,
        elongated=elongated,
    )


def shape_class(name: str) -> ShapeClass:
    """The :class:`ShapeClass` for a named class (``"star5"``) or a novel one (``"glyph-000123"``)."""
    if not isinstance(name, str):
        raise TypeError(f"A class name must be a str, got {type(name).__name__}: {name!r}.")
    if name in NAMED_SHAPES:
        return NAMED_SHAPES[name]
    if GLYPH_PATTERN.match(name):
        return _glyph_class(name)
    raise ValueError(
        f"Unknown shape class {name!r}. Use one of {', '.join(NAMED_SHAPES)}, "
        "or a novel class named 'glyph-' plus six digits (see novel_classes())."
    )


def describe_class(name: str) -> str:
    """One-sentence text description of a class, e.g. ``"a five-pointed star with sharp points"`` (19.5)."""
    return shape_class(name).description


def class_attributes(name: str) -> dict[str, float]:
    """The class-level attributes of a class as a dict (19.5 zero-shot, 19.6 multi-task)."""
    spec = shape_class(name)
    return {attribute: float(getattr(spec, attribute)) for attribute in CLASS_ATTRIBUTE_NAMES}
