"""course_lib: the shared library of *Transfer Learning, Hands-On*.

Every notebook starts with ``cfg = course_lib.setup()``. One idea per module, in layers listed
from the bottom up: a module may import from its own layer and the layers listed before it,
never from one listed after it, and no two modules import each other, even indirectly
(``tests/test_layers.py`` checks both).

**Foundations** (import nothing else from the library)

- :mod:`course_lib.core`        eval_mode, model_device, to_device, count_parameters, atomic_write, file_sha256
- :mod:`course_lib.validation`  input checks with helpful errors: counts, rates, models, features, labels
- :mod:`course_lib.config`      profiles (a world and a size), seeding, device choice, folders (``setup``)

**Vocabulary**: the data, models and numbers everything else talks about

- :mod:`course_lib.world`       the course's procedural image world (offline datasets)
- :mod:`course_lib.pretrained_weights` ImageNet weights from torchvision's and timm's caches (real world)
- :mod:`course_lib.models`      the course's source model, every backbone (``load_backbone``), heads, stages, layer groups
- :mod:`course_lib.metrics`     accuracy, box and mask IoU, confidence intervals, linear CKA
- :mod:`course_lib.history`     the per-epoch record of a training run (``History``)
- :mod:`course_lib.figures`     figure plumbing shared by the plotting modules
- :mod:`course_lib.checks`      assertions on values with helpful messages, for exercises

**Building blocks**

- :mod:`course_lib.real_datasets` torchvision datasets from the data folder, fingerprinted (real world)
- :mod:`course_lib.data`        a lesson's data in every world: ImageNet preprocessing, balanced subsets, ``lesson_data``
- :mod:`course_lib.shift_data`  the data of a domain shift: label-shifted subsets, MNIST -> USPS (19.4)
- :mod:`course_lib.shift_augment` augmentation toward the target: lighting, camera, background, style (19.4)
- :mod:`course_lib.continual_data` task sequences as tensors: Split MNIST, the world's sequences, fast batches (19.7)
- :mod:`course_lib.feature_cache` extracted features on disk, keyed by weights, layer, data and transform
- :mod:`course_lib.features`    batched feature extraction (cached)
- :mod:`course_lib.callbacks`   hooks into fit: early stopping, tracking, scheduled changes
- :mod:`course_lib.checkpoints` checkpoint-or-train: train once, then load
- :mod:`course_lib.steps`       what one batch computes: ``ClassificationStep``, ``PairedLoader``
- :mod:`course_lib.plots`       charts: training curves, curves, heatmaps, confusion matrices, embeddings
- :mod:`course_lib.image_grids` pictures: image batches, first-layer filters, feature maps
- :mod:`course_lib.model_checks` assertions on models and optimizers, for exercises

**The training loop**

- :mod:`course_lib.training`    ``fit`` / ``evaluate`` / ``predict``

**Chapter tools**

- :mod:`course_lib.activations` what chosen layers compute for a batch (19.1)
- :mod:`course_lib.probes`      linear probes, nearest neighbours, the transferability curve (19.1, 19.2)
- :mod:`course_lib.freezing`    freezing for good: ``FrozenBackbone``, BatchNorm statistics (19.2, 19.3)
- :mod:`course_lib.heads`       classifiers on frozen features: k-nearest neighbours, logistic regression (19.2)
- :mod:`course_lib.forgetting`  what training changed: weight drift, old-task accuracy, the accuracy matrix (19.3, 19.7)
- :mod:`course_lib.finetuning`  fine-tuning strategies: layer-wise rates, gradual unfreezing, LP-FT (19.3)
- :mod:`course_lib.experiments` data-efficiency curves, the from-scratch baseline, one budget per run (19.2, 19.3)
- :mod:`course_lib.domain_shift` seeing a domain shift without labels: MMD, proxy A-distance, BatchNorm mismatch (19.4)
- :mod:`course_lib.adaptation`  closing a domain gap: gradient reversal, CORAL, DANN, AdaBN, self-training (19.4)
- :mod:`course_lib.adaptation_runs` one budget for every way of closing a domain gap: source-only, CORAL, DANN, self-training, the oracle (19.4)
- :mod:`course_lib.shift_problems` 19.4's problem in every world: the source model, the source data, the targets
- :mod:`course_lib.continual`   continual learning: the scenarios, EWC, LwF, replay, nearest class means (19.7)
- :mod:`course_lib.continual_runs` task after task with fit: the accuracy matrix, methods over seeds, Split MNIST (19.7)
- :mod:`course_lib.continual_problems` 19.7's problem in every world: the task sequences, the MLP, the frozen backbone

**Commands**

- :mod:`course_lib.pretrain`    pretrains the source model (``python -m course_lib.pretrain``)
- :mod:`course_lib.bench`       the benchmark (``make bench``)
"""

from course_lib.config import CourseConfig, setup

__all__ = ["LAYERS", "CourseConfig", "setup"]
__version__ = "0.1.0"

# The layers of the docstring, bottom first; tests/test_layers.py holds every module to them.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("core", "validation", "config")),
    ("vocabulary", ("world", "pretrained_weights", "models", "metrics", "history", "figures", "checks")),
    ("building blocks", ("real_datasets", "data", "shift_data", "shift_augment", "continual_data", "feature_cache", "features", "callbacks", "checkpoints", "steps", "plots", "image_grids", "model_checks")),
    ("the training loop", ("training",)),
    ("chapter tools", ("activations", "probes", "freezing", "heads", "forgetting", "finetuning", "experiments", "domain_shift", "adaptation", "adaptation_runs", "shift_problems", "continual", "continual_runs", "continual_problems")),
    ("commands", ("pretrain", "bench")),
)
