"""course_lib: the shared library of *Transfer Learning, Hands-On*.

Every notebook starts with ``cfg = course_lib.setup()``. The modules, one idea each:

- :mod:`course_lib.config`   profiles, seeding, device choice, folders (``setup``)
- :mod:`course_lib.world`    the course's procedural image world (offline datasets)
- :mod:`course_lib.data`     loaders for real torchvision datasets (``real`` profile)
- :mod:`course_lib.models`   the course's source model and real backbones (``load_backbone``)
- :mod:`course_lib.training` ``fit`` / ``evaluate`` / ``predict``: the training loop
- :mod:`course_lib.callbacks` training history and small callbacks (early stopping, tracking)
- :mod:`course_lib.checkpoints` checkpoint-or-train: train once, then load
- :mod:`course_lib.features` batched feature extraction with an on-disk cache
- :mod:`course_lib.representations` probing what a network learned: activations, CKA, linear probes (19.1)
- :mod:`course_lib.freezing` freezing a backbone for good: ``FrozenBackbone``, BatchNorm drift (19.2)
- :mod:`course_lib.heads`    classifiers on frozen features: k-nearest neighbours, logistic regression (19.2)
- :mod:`course_lib.experiments` data-efficiency curves over sizes and seeds, the from-scratch baseline (19.2)
- :mod:`course_lib.finetuning` fine-tuning strategies: layer groups and rates, gradual unfreezing, LP-FT, drift (19.3)
- :mod:`course_lib.plots`    image grids, curves, confusion matrices, embeddings
- :mod:`course_lib.checks`   assertions with helpful messages for exercises
- :mod:`course_lib.pretrain` the command that pretrains the source model (``python -m course_lib.pretrain``)
- :mod:`course_lib.bench`    the benchmark command (``make bench``)
"""

from course_lib.config import CourseConfig, setup

__all__ = ["CourseConfig", "setup"]
__version__ = "0.1.0"
