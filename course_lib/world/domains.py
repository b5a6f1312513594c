"""Nuisance factors and the named domains: how the same shapes are photographed differently.

A :class:`Domain` holds *ranges* (``(low, high)``, drawn uniformly per image) and
*probabilities* for everything that is not the shape itself: colours, backgrounds, drawing
style, lighting, colour cast, blur, noise and JPEG-like blockiness. A domain shift (19.4) is then
one argument: ``ShapeWorld(domain="night")``. Make your own with ``dataclasses.replace``::

    noisy = dataclasses.replace(DOMAINS["studio"], name="studio-noisy", noise_std=0.1)

:func:`interpolate_domains` blends two domains, so that a shift has one severity knob (19.4):
``interpolate_domains("studio", "night", 0.5)`` is halfway to night.

A single number for a range means "always this value". Sizes in pixels (stroke width, blur) are
given for 64x64 images and scale with the image size.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Union

import numpy as np

Range = tuple[float, float]
RangeLike = Union[float, int, tuple[float, float]]

# Fields that are ranges, with the interval their values must lie in.
_RANGE_LIMITS: dict[str, Range] = {
    "shape_saturation": (0.0, 1.0), "shape_value": (0.0, 1.0), "shape_hue": (0.0, 1.0),
    "background_saturation": (0.0, 1.0), "background_value": (0.0, 1.0), "stroke_width": (0.5, 8.0),
    "texture_period": (3.0, 32.0), "brightness": (-1.0, 1.0), "contrast": (0.0, 3.0),
    "illumination_gradient": (0.0, 1.0), "tint_jitter": (0.0, 0.5), "blur_sigma": (0.0, 3.0),
    "noise_std": (0.0, 0.5), "blockiness": (0.0, 1.0),
}
_PROBABILITIES = ("p_outline", "p_textured", "p_gradient", "p_texture_background", "p_clutter")


@dataclasses.dataclass(frozen=True)
class Domain:
    """The nuisance factors of one domain. Ranges are ``(low, high)``; ``p_*`` are probabilities.

    Style: an image is an outline with probability ``p_outline``, a textured fill with
    ``p_textured``, otherwise a plain fill. Background: gradient, texture or clutter (faint random
    strokes) with their probabilities, otherwise a plain colour. Lighting: ``brightness`` is
    added, ``contrast`` scales around mid-grey, ``illumination_gradient`` darkens one side.
    ``tint`` multiplies the red, green and blue channels (a colour cast) and ``tint_jitter``
    varies it per image.
    """

    name: str
    shape_hue: RangeLike = (0.0, 1.0)
    shape_saturation: RangeLike = (0.65, 1.0)
    shape_value: RangeLike = (0.35, 0.8)
    background_saturation: RangeLike = (0.0, 0.15)
    background_value: RangeLike = (0.85, 1.0)
    p_outline: float = 0.0
    p_textured: float = 0.0
    stroke_width: RangeLike = (2.0, 3.0)
    texture_period: RangeLike = (5.0, 9.0)
    p_gradient: float = 0.0
    p_texture_background: float = 0.0
    p_clutter: float = 0.0
    brightness: RangeLike = 0.0
    contrast: RangeLike = 1.0
    illumination_gradient: RangeLike = 0.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tint_jitter: RangeLike = 0.0
    blur_sigma: RangeLike = 0.0
    noise_std: RangeLike = 0.0
    blockiness: RangeLike = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A Domain needs a non-empty name, got {self.name!r}.")
        for field, (low_limit, high_limit) in _RANGE_LIMITS.items():
            value = _as_range(field, getattr(self, field))
            if not (low_limit <= value[0] <= value[1] <= high_limit):
                raise ValueError(
                    f"Domain {self.name!r}: {field}={value} must be (low, high) with "
                    f"{low_limit} <= low <= high <= {high_limit}."
                )
            object.__setattr__(self, field, value)  # frozen dataclass: normalise once, here
        for field in _PROBABILITIES:
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"Domain {self.name!r}: {field}={value!r} must be a probability in [0, 1].")
        if self.p_outline + self.p_textured > 1.0 + 1e-9:
            raise ValueError(f"Domain {self.name!r}: p_outline + p_textured must be at most 1.")
        if self.p_gradient + self.p_texture_background + self.p_clutter > 1.0 + 1e-9:
            raise ValueError(f"Domain {self.name!r}: p_gradient + p_texture_background + p_clutter must be at most 1.")
        tint = tuple(float(t) for t in self.tint)
        if len(tint) != 3 or not all(0.0 <= t <= 2.0 for t in tint):
            raise ValueError(f"Domain {self.name!r}: tint must be three channel factors in [0, 2], got {self.tint!r}.")
        object.__setattr__(self, "tint", tint)


def _as_range(field: str, value: RangeLike) -> Range:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value), float(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return (float(value[0]), float(value[1]))
    raise TypeError(f"Domain field {field} must be a number or a (low, high) pair, got {value!r}.")


DOMAINS: dict[str, Domain] = {
    # Clean product shots: saturated filled shapes on plain light backgrounds.
    "studio": Domain("studio"),
    # Phone snapshots: clutter, uneven light, a warm colour cast, blur, noise and JPEG blocks.
    "phone": Domain(
        "phone", shape_saturation=(0.45, 0.95), shape_value=(0.35, 0.85), background_saturation=(0.0, 0.3),
        background_value=(0.6, 0.95), p_gradient=0.35, p_clutter=0.5, brightness=(-0.1, 0.1),
        contrast=(0.75, 1.1), illumination_gradient=(0.1, 0.4), tint=(1.08, 1.0, 0.88), tint_jitter=(0.0, 0.08),
        blur_sigma=(0.4, 1.2), noise_std=(0.02, 0.06), blockiness=(0.0, 0.5),
    ),
    # Pencil sketches: dark outlines on paper-white, no colour.
    "sketch": Domain(
        "sketch", shape_saturation=0.0, shape_value=(0.05, 0.3), background_saturation=(0.0, 0.06),
        background_value=(0.88, 1.0), shape_hue=(0.08, 0.12), p_outline=1.0, stroke_width=(1.2, 2.5),
        p_gradient=0.3, blur_sigma=(0.0, 0.5), noise_std=(0.0, 0.02),
    ),
    # Night shots: dark, low contrast, strong noise, a blue cast.
    "night": Domain(
        "night", shape_saturation=(0.3, 0.7), shape_value=(0.45, 0.75), background_value=(0.05, 0.25),
        background_saturation=(0.0, 0.3), p_gradient=0.4, brightness=(-0.08, 0.02), contrast=(0.55, 0.8),
        illumination_gradient=(0.0, 0.3), tint=(0.7, 0.85, 1.25), tint_jitter=(0.0, 0.05),
        blur_sigma=(0.0, 0.6), noise_std=(0.06, 0.12),
    ),
    # Fabric swatches: striped, checked or dotted shapes on patterned backgrounds.
    "texture": Domain(
        "texture", shape_saturation=(0.7, 1.0), shape_value=(0.4, 0.8), background_saturation=(0.05, 0.3),
        background_value=(0.7, 0.95), p_textured=1.0, p_texture_background=1.0, texture_period=(5.0, 9.0),
    ),
}


def lerp(low_high: Range, u: np.ndarray) -> np.ndarray:
    """Values of a ``(low, high)`` range at uniform numbers ``u`` in [0, 1): how a domain's ranges are drawn."""
    return low_high[0] + (low_high[1] - low_high[0]) * u


def get_domain(domain: str | Domain) -> Domain:
    """Return a :class:`Domain`: a name from ``DOMAINS`` or a ``Domain`` object as it is."""
    if isinstance(domain, Domain):
        return domain
    if isinstance(domain, str):
        if domain in DOMAINS:
            return DOMAINS[domain]
        raise ValueError(
            f"Unknown domain {domain!r}. Use one of {', '.join(DOMAINS)}, or pass a Domain object "
            "(e.g. dataclasses.replace(DOMAINS['studio'], noise_std=0.1))."
        )
    raise TypeError(f"domain must be a domain name (str) or a Domain, got {type(domain).__name__}.")


def interpolate_domains(start: str | Domain, end: str | Domain, t: float, name: str | None = None) -> Domain:
    """The domain a fraction ``t`` (0 to 1) of the way from ``start`` to ``end`` (names or Domain objects).

    Every field moves in a straight line: both ends of each range, each probability and each
    channel of the tint. ``t=0`` gives ``start``'s values and ``t=1`` ``end``'s. Chapter 19.4 uses it
    for a shift with one severity knob, e.g. ``[interpolate_domains("studio", "night", t) for t in
    (0, 0.25, 0.5, 0.75, 1)]``.

    The name defaults to ``"studio→night"`` for every ``t``, on purpose: the renderer keys an
    image's random draws (its colours, background, noise) on the domain's name, so along one path
    image ``i`` is the same photograph at every ``t``, only moved towards ``end`` (paired images,
    a smooth severity curve). ShapeWorld still caches each ``t`` apart: its fingerprint holds every
    field. A ``name`` of your own gives new draws (``name=start.name`` at ``t=0`` gives ``start``'s
    very images).
    """
    start, end = get_domain(start), get_domain(end)
    if not isinstance(t, numbers.Real) or isinstance(t, bool) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
        raise ValueError(
            f"t must be a number from 0 (all {start.name}) to 1 (all {end.name}), got {t!r}; "
            "e.g. t=0.5 for halfway."
        )
    t = float(t)
    if name is None:
        name = f"{start.name}→{end.name}"  # no t in it: the same draws all along the path (see above)
    values: dict[str, object] = {"name": name}
    for field in dataclasses.fields(Domain):
        if field.name == "name":
            continue
        a, b = getattr(start, field.name), getattr(end, field.name)
        if field.name in _RANGE_LIMITS:
            low_limit, high_limit = _RANGE_LIMITS[field.name]
            values[field.name] = tuple(_mix(x, y, t, low_limit, high_limit) for x, y in zip(a, b))
        elif field.name in _PROBABILITIES:
            # Sums stay valid: (1 - t) * (a1 + a2) + t * (b1 + b2) <= (1 - t) + t = 1 when both
            # domains have a1 + a2 <= 1 and b1 + b2 <= 1 (e.g. p_outline + p_textured).
            values[field.name] = _mix(a, b, t, 0.0, 1.0)
        elif field.name == "tint":
            values[field.name] = tuple(_mix(x, y, t, 0.0, 2.0) for x, y in zip(a, b))
        else:  # a new Domain field must say here how it blends, rather than be silently copied from start
            raise NotImplementedError(f"interpolate_domains does not know how to blend Domain.{field.name}.")
    return Domain(**values)


def _mix(a: float, b: float, t: float, low_limit: float, high_limit: float) -> float:
    """``(1 - t) * a + t * b``, kept inside ``[low_limit, high_limit]``.

    This form gives exactly ``a`` at t=0 and exactly ``b`` at t=1 (``a + t * (b - a)`` can miss ``b``
    by a rounding error), and it keeps ``low <= high`` for ranges because it grows with both ``a``
    and ``b``. The clamp only undoes rounding: a blend of two values inside the limits is inside.
    """
    return min(max((1.0 - t) * a + t * b, low_limit), high_limit)
