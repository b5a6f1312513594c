"""Named class splits and the task sequences of continual learning (19.7).

The course's source model is pretrained on the 24 ``SOURCE_CLASSES`` (studio domain). The 10
``TARGET_CLASSES`` are never shown to it: they are the transfer targets of chapters 19.2-19.7,
new shapes built from familiar parts (a heptagon after the hexagon, a seven-pointed star after
the five- and six-pointed ones, a double arrow after the arrow).
"""

from __future__ import annotations

import dataclasses

SOURCE_CLASSES: tuple[str, ...] = (
    "circle", "ellipse", "semicircle", "crescent", "ring", "heart", "teardrop", "flower4",
    "pacman", "triangle", "square", "rectangle", "rhombus", "trapezoid", "pentagon", "hexagon",
    "star4", "star5", "star6", "cross", "arrow", "l_shape", "t_shape", "square_ring",
)
TARGET_CLASSES: tuple[str, ...] = (
    "heptagon", "star3", "star7", "flower6", "gear", "kite", "double_arrow", "chevron", "u_shape", "triangle_ring",
)
SPLITS: dict[str, tuple[str, ...]] = {
    "source": SOURCE_CLASSES,
    "target": TARGET_CLASSES,
    "all_named": SOURCE_CLASSES + TARGET_CLASSES,
    # A 5-way subset for quick demonstrations and smoke tests.
    "target5": TARGET_CLASSES[:5],
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One step of a continual-learning sequence: which classes, in which domain."""

    name: str
    classes: tuple[str, ...]
    domain: str


def _class_incremental() -> list[Task]:
    pairs = [TARGET_CLASSES[i:i + 2] for i in range(0, len(TARGET_CLASSES), 2)]
    return [Task(f"task{k + 1}: {' + '.join(pair)}", pair, "studio") for k, pair in enumerate(pairs)]


def _domain_incremental() -> list[Task]:
    return [Task(f"task{k + 1}: {domain}", TARGET_CLASSES, domain) for k, domain in enumerate(("studio", "phone", "sketch", "night"))]


TASK_SEQUENCES = {"class-incremental": _class_incremental, "domain-incremental": _domain_incremental}


def task_sequence(name: str) -> list[Task]:
    """The tasks of a continual-learning benchmark (19.7), in training order.

    ``"class-incremental"``: the 10 target classes as 5 tasks of 2 new classes each (studio).
    ``"domain-incremental"``: all 10 target classes, through studio, phone, sketch, then night.
    """
    if name not in TASK_SEQUENCES:
        raise ValueError(f"Unknown task sequence {name!r}. Use one of {', '.join(TASK_SEQUENCES)}.")
    return TASK_SEQUENCES[name]()
