"""A lesson's data in every world: ImageNet preprocessing, labels, class-balanced subsets, target tasks.

:func:`lesson_data` is the one place where a lesson's data differs by world: the course's own
shape world offline, a torchvision dataset (:mod:`course_lib.real_datasets`) in the real world.
:func:`near_and_far_targets` gives 19.3 a target close to the source and one far from it.
:func:`imagenet_transform` prepares images for ImageNet backbones (19.2 feature extraction, 19.3
fine-tuning), :func:`dataset_targets` reads any dataset's labels without loading its images, and
:func:`sample_per_class` / :func:`subset_per_class` draw balanced few-shot subsets (19.2, 19.3, 19.5).
The data of a domain shift (19.4) is in :mod:`course_lib.shift_data`.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from course_lib.config import CourseConfig
from course_lib.pretrained_weights import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD
from course_lib.real_datasets import RealDataset, load_real_dataset
from course_lib.validation import check_dataset_labels

__all__ = [
    "FAR_DATASETS", "FAR_DOMAIN", "IMAGENET_MEAN", "IMAGENET_STD", "backbone_statistics", "dataset_targets",
    "imagenet_transform", "lesson_data", "LessonData", "near_and_far_targets", "sample_per_class",
    "subset_per_class", "ToRGB",
]

# The statistics the ImageNet-pretrained torchvision and timm backbones were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_statistics(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the pixels, in [0, 1], that the real backbone ``backbone`` was trained with.

    ImageNet's statistics for torchvision and timm models, except EfficientNet-Lite0, whose
    TensorFlow weights expect ``(x - 127) / 128`` (:data:`course_lib.pretrained_weights.EFFICIENTNET_LITE0_MEAN`).
    The course's own model uses its world's statistics (:data:`course_lib.world.WORLD_MEAN`).
    """
    if backbone == "efficientnet-lite0":
        return EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD
    return IMAGENET_MEAN, IMAGENET_STD


class ToRGB:
    """Convert a PIL image (grayscale, palette, RGBA...) to 3-channel RGB; RGB images pass unchanged.

    ImageNet backbones expect three channels, but MNIST, USPS and Omniglot are grayscale.
    (A class rather than a lambda so that DataLoader worker processes can pickle it.)
    """

    def __call__(self, image):
        if not hasattr(image, "convert"):
            raise TypeError(
                f"ToRGB expects a PIL image, got {type(image).__name__}: put it before ToTensor() in the transform."
            )
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def imagenet_transform(
    image_size: int = 224,
    *,
    train: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop: bool = True,
):
    """Preprocessing for ImageNet-pretrained backbones: 3 channels, ``image_size`` pixels, normalised.

    Evaluation (``train=False``): resize the short side to ``image_size * 256/224``, centre-crop;
    with ``crop=False``, resize the whole image to ``image_size`` (the lite world's 28-px images,
    whose objects fill the frame, keep their edges).
    Training (``train=True``): random resized crop and horizontal flip, the standard augmentation
    for fine-tuning (19.3). Both end with ToTensor and Normalize(mean, std); keep the defaults
    (ImageNet's statistics) unless you are showing what other statistics do (19.2).
    """
    from torchvision import transforms

    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"image_size must be an int of at least 8 pixels (e.g. 224), got {image_size!r}.")
    if train:
        resize = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    elif crop:
        resize = [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    else:
        resize = [transforms.Resize((image_size, image_size))]
    return transforms.Compose(
        [ToRGB(), *resize, transforms.ToTensor(), transforms.Normalize(tuple(mean), tuple(std))]
    )


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """The class labels of ``dataset`` as a 1-D ``torch.long`` tensor, without loading images where possible.

    Reads the label attribute torchvision datasets keep (``targets``, SVHN's ``labels``, Omniglot's
    character list) and follows :class:`~torch.utils.data.Subset`, ConcatDataset and
    :class:`~course_lib.real_datasets.RealDataset`. Other datasets are read item by item, which
    loads every image (slow, but correct).
    """
    if isinstance(dataset, RealDataset):
        return dataset_targets(dataset.dataset)
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, ConcatDataset):
        return torch.cat([dataset_targets(part) for part in dataset.datasets])
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return torch.as_tensor(dataset.tensors[1]).long()
    for attribute in ("targets", "labels"):
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            return torch.as_tensor(labels).long().flatten()
    if hasattr(dataset, "_flat_character_images"):  # torchvision's Omniglot: (file name, class) pairs
        return torch.tensor([label for _, label in dataset._flat_character_images], dtype=torch.long)
    if not hasattr(dataset, "__len__"):
        raise TypeError(f"dataset_targets needs a dataset with a length, got {type(dataset).__name__}.")
    labels = []
    for index in range(len(dataset)):
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(
                f"dataset_targets expects items of the form (image, label), but item {index} of "
                f"{type(dataset).__name__} is a {type(item).__name__}."
            )
        labels.append(int(item[1]))
    return torch.tensor(labels, dtype=torch.long)


def sample_per_class(labels: torch.Tensor, n_per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n_per_class`` random examples of every class in ``labels``, sorted (19.2, 19.3, 19.5).

    The same ``seed`` always draws the same examples, so that every method in a comparison sees
    the same labelled images. Raises ValueError if a class has fewer than ``n_per_class``.
    """
    check_dataset_labels(labels)
    # numbers.Integral accepts numpy ints; bool is excluded because True is an int to Python, not a count.
    if not isinstance(n_per_class, numbers.Integral) or isinstance(n_per_class, bool) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}.")
    n_per_class = int(n_per_class)
    classes, counts = torch.unique(labels, return_counts=True)
    too_small = [(c, n) for c, n in zip(classes.tolist(), counts.tolist()) if n < n_per_class]
    if too_small:
        listed = ", ".join(f"class {c} has {n}" for c, n in too_small[:5])
        raise ValueError(
            f"Cannot draw {n_per_class} examples per class: {listed}{' ...' if len(too_small) > 5 else ''}. "
            f"Use n_per_class <= {int(counts.min())} (the size of the smallest class)."
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = [
        torch.nonzero(labels == c).flatten()[torch.randperm(n, generator=generator)[:n_per_class]]
        for c, n in zip(classes.tolist(), counts.tolist())
    ]
    # Sorted so that a subset reads the underlying files in order (faster on disk).
    return torch.cat(chosen).sort().values


def subset_per_class(dataset: Dataset, n_per_class: int, *, seed: int = 0) -> Subset:
    """A class-balanced :class:`~torch.utils.data.Subset`: ``n_per_class`` random examples of every class.

    The dataset form of :func:`sample_per_class` (same draw for the same seed). Used for the
    real world's training and test sets, 19.3's test subsets and the few-shot tasks of 19.5.
    """
    return Subset(dataset, sample_per_class(dataset_targets(dataset), n_per_class, seed=seed).tolist())


# ---------------------------------------------------------------------------------------------
# The target task of a lesson, in every world


@dataclasses.dataclass(frozen=True)
class LessonData:
    """A lesson's target task: training and test images, class names, and how images were normalised.

    ``name`` is a short label for plots and printed results (the domain offline, e.g. ``"night"``;
    the dataset otherwise, e.g. ``"mnist"``); ``description`` says in a sentence where it comes from.
    """

    train: Dataset
    test: Dataset
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    name: str

    @property
    def num_classes(self) -> int:
        """How many classes the task has (the size of a new head for it)."""
        return len(self.class_names)


def lesson_data(
    cfg: CourseConfig,
    *,
    domain: str = "studio",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LessonData:
    """The target task for ``cfg``'s world: the one place where a lesson's data differs by world.

    - ``offline``: the 10 *target* shapes of the course's world (classes the source
      model never saw) in ``domain``, ``cfg.train_per_class`` training images per class (seed 0)
      and ``cfg.test_per_class`` test images per class (seed 1: never the same images).
    - ``real``: ``cfg.dataset`` from ``cfg.data_dir``, resized to ``cfg.image_size`` for ImageNet
      backbones, with class-balanced subsets of the same sizes (missing files raise an error
      saying where they go).
    - ``lite``: the same with Fashion-MNIST (from Debian's package), whole 28-px images
      upsampled to ``cfg.image_size``.

    Images are normalised with the statistics the backbone was trained with
    (:func:`backbone_statistics`), unless ``mean`` and
    ``std`` say otherwise: chapter 19.2 uses that to measure what the wrong statistics cost.
    Used by chapters 19.1, 19.2 and 19.3 (see also :func:`near_and_far_targets`).
    """
    from torchvision.transforms import Normalize

    from course_lib.world import TARGET_CLASSES, WORLD_MEAN, WORLD_STD, ShapeWorld

    if (mean is None) != (std is None):
        raise ValueError("Pass both mean and std (three numbers each, one per colour channel), or neither.")
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and (len(values) != 3 or not all(isinstance(v, (int, float)) for v in values)):
            raise ValueError(f"{name} must be three numbers, one per colour channel (R, G, B), got {values!r}.")
    if std is not None and min(std) <= 0:
        raise ValueError(f"std must be positive (it divides the pixels), got {std!r}.")

    if not cfg.offline:
        trained_with = backbone_statistics(cfg.backbone)
        mean, std = tuple(mean or trained_with[0]), tuple(std or trained_with[1])
        transform = imagenet_transform(cfg.image_size, mean=mean, std=std, crop=cfg.world != "lite")
        full_train = load_real_dataset(cfg.dataset, root=cfg.data_dir, train=True, transform=transform)
        full_test = load_real_dataset(cfg.dataset, root=cfg.data_dir, train=False, transform=transform)
        train = subset_per_class(full_train, cfg.train_per_class, seed=0)
        test = subset_per_class(full_test, cfg.test_per_class, seed=1)
        class_names = [str(name) for name in full_train.classes]
        if not class_names:
            class_names = [str(c) for c in range(int(dataset_targets(full_train).max()) + 1)]
        description = f"{cfg.dataset} from {full_train.folder}"
    else:
        # ShapeWorld normalises with the world's statistics unless a transform replaces that.
        transform = None if mean is None else Normalize(tuple(mean), tuple(std))
        mean, std = tuple(mean or WORLD_MEAN), tuple(std or WORLD_STD)
        world = dict(split="target", domain=domain, image_size=cfg.image_size, transform=transform, progress=False)
        train = ShapeWorld(n_per_class=cfg.train_per_class, seed=0, **world)
        test = ShapeWorld(n_per_class=cfg.test_per_class, seed=1, **world)
        class_names = list(TARGET_CLASSES)
        description = f"the {len(class_names)} target shapes of the course's world ({domain} domain)"
    name = cfg.dataset if not cfg.offline else domain
    return LessonData(train, test, class_names, mean, std, description, name)


# Chapter 19.3 fine-tunes on a target close to the source and on one far from it.
FAR_DOMAIN = "night"
FAR_DATASETS = {"real": "svhn", "lite": "mnist"}


def near_and_far_targets(cfg: CourseConfig) -> dict[str, LessonData]:
    """Two target tasks for ``cfg``'s world, ``{"near": ..., "far": ...}`` (19.3).

    - ``offline``: both are the 10 target shapes; *near* is drawn in the clean
      ``studio`` domain the source model was trained in, *far* in the dark, noisy ``night`` domain.
    - ``real``: *near* is ``cfg.dataset`` (CIFAR-10: natural photos, like ImageNet), *far* is SVHN
      (house numbers: digits, a different kind of image), both with the same subset sizes.
    - ``lite``: *near* is Fashion-MNIST (objects: clothes, shoes, bags), *far* is MNIST
      (handwritten digits), as :data:`FAR_DATASETS` says.
    """
    if not cfg.offline:
        far = lesson_data(dataclasses.replace(cfg, dataset=FAR_DATASETS[cfg.world]))
    else:
        far = lesson_data(cfg, domain=FAR_DOMAIN)
    return {"near": lesson_data(cfg), "far": far}
