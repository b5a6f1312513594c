"""The course's offline image world: procedural shapes, photographed in several domains.

No dataset can be downloaded in the offline profiles, so the course draws its own: 34 named
shape classes (24 *source* classes for pretraining, 10 *target* classes for transfer), an
unlimited family of novel "glyph" classes for few-shot learning, and five domains (studio,
phone, sketch, night, texture) for domain shift. Every image comes with its label, attributes,
bounding box and segmentation mask. Modules, one idea each:

- :mod:`~course_lib.world.shapes`   the shape catalogue (implicit functions, attributes, text)
- :mod:`~course_lib.world.glyphs`   the generated novel classes, outlines from a number alone
- :mod:`~course_lib.world.domains`  nuisance factors, the named domains and blends of two
- :mod:`~course_lib.world.render`   the batched NumPy renderer: shapes, fills and backgrounds
- :mod:`~course_lib.world.camera`   the domain's photograph: lighting, colour cast, blur, noise
- :mod:`~course_lib.world.dataset`  the ``ShapeWorld`` dataset, its cache and normalisation
- :mod:`~course_lib.world.splits`   class splits and continual-learning task sequences
"""

from course_lib.world.dataset import WORLD_MEAN, WORLD_STD, ShapeWorld, normalize
from course_lib.world.domains import DOMAINS, Domain, get_domain, interpolate_domains
from course_lib.world.glyphs import novel_classes
from course_lib.world.render import ATTRIBUTE_NAMES, GENERATOR_VERSION, RenderedBatch, render_batch, world_generation_speed
from course_lib.world.shapes import (
    CLASS_ATTRIBUTE_NAMES, NAMED_SHAPES, ShapeClass, class_attributes, describe_class, shape_class,
)
from course_lib.world.splits import SOURCE_CLASSES, SPLITS, TARGET_CLASSES, Task, task_sequence

__all__ = [
    "ATTRIBUTE_NAMES", "CLASS_ATTRIBUTE_NAMES", "DOMAINS", "Domain", "GENERATOR_VERSION", "NAMED_SHAPES",
    "RenderedBatch", "SOURCE_CLASSES", "SPLITS", "ShapeClass", "ShapeWorld", "TARGET_CLASSES", "Task",
    "WORLD_MEAN", "WORLD_STD", "class_attributes", "describe_class", "get_domain", "interpolate_domains", "normalize",
    "novel_classes", "render_batch", "shape_class", "task_sequence", "world_generation_speed",
]
