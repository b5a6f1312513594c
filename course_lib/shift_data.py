"""The data of a domain shift (19.4): a target whose classes come in other proportions, and real digits.

- :func:`subset_with_proportions` and :func:`long_tail_proportions` make a **label shift**: the
  target's class balance moved away from the source's, where aligning the two domains' features
  can hurt (Zhao et al., 2019);
- :func:`stratified_split` halves a dataset class by class;
- :func:`digits_domain_shift` is the lite and real worlds' **MNIST -> USPS** shift, as a
  :class:`DomainShiftData` (labelled source, unlabelled target to adapt on, held-out target).

The offline world's shifts are its domains: ``ShapeWorld(domain="night")``, or one severity knob
with :func:`course_lib.world.interpolate_domains`. Balanced few-shot subsets are in :mod:`course_lib.data`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset, Subset

from course_lib.config import CourseConfig
from course_lib.data import backbone_statistics, dataset_targets, imagenet_transform, subset_per_class
from course_lib.real_datasets import load_real_dataset
from course_lib.validation import check_dataset_labels, check_non_negative_int, check_positive_int

__all__ = [
    "DomainShiftData", "Normalize", "SeverityShift", "digits_domain_shift", "long_tail_proportions",
    "stratified_split", "subset_with_proportions",
]


# ---------------------------------------------------------------------------------------------
# Label shift and class-by-class splits (19.4)


def subset_with_proportions(
    labels: torch.Tensor, proportions: Sequence[float] | torch.Tensor, total: int, seed: int = 0
) -> torch.Tensor:
    """Indices of ``total`` examples whose classes come in ``proportions``: a label shift (19.4).

    ``proportions[c]`` is class ``c``'s share. Any non-negative weights work: they are divided by
    their sum, so ``[2, 1, 1]`` means a half, a quarter and a quarter. Class ``c`` gets
    ``total * p[c]`` examples, rounded so that the counts add up to exactly ``total`` (the largest
    remainder rule: every class gets the whole part of its share, and the examples still missing go
    one each to the classes with the largest fractional parts, the lower class first on a tie).
    Examples are drawn without replacement, the same ones for the same ``seed``; the indices come
    back sorted (``Subset(dataset, indices.tolist())`` makes the dataset). Chapter 19.4 uses it to
    shift the target's class balance away from the source's (with :func:`long_tail_proportions`).
    """
    check_dataset_labels(labels)
    if labels.min() < 0:  # bincount, below, counts classes 0, 1, 2, ...
        raise ValueError(f"labels must be class indices 0, 1, 2, ..., got {int(labels.min())}.")
    total = check_positive_int(total, "total", "It is the number of examples in the subset.")
    seed = check_non_negative_int(seed, "seed")
    shares = _as_proportions(proportions, num_classes=int(labels.max()) + 1)
    counts = _largest_remainder_counts(shares, total)
    available = torch.bincount(labels, minlength=len(shares)).tolist()
    _check_enough_per_class(counts, available, shares, total)
    generator = torch.Generator().manual_seed(seed)
    chosen = [
        torch.nonzero(labels == c).flatten()[torch.randperm(available[c], generator=generator)[:n]]
        for c, n in enumerate(counts)
        if n > 0
    ]
    return torch.cat(chosen).sort().values  # sorted, as in sample_per_class: files are read in order


def _as_proportions(proportions: Sequence[float] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """``proportions`` as a float64 tensor summing to 1, with one entry for each of ``num_classes`` or more."""
    try:
        weights = torch.as_tensor(proportions, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        message = f"proportions must be a list or tensor of numbers, one per class, got {proportions!r}."
        raise TypeError(message) from error
    if weights.ndim != 1 or len(weights) < num_classes:
        raise ValueError(
            f"proportions must have one number per class: the labels have classes 0 to {num_classes - 1}, "
            f"so at least {num_classes} numbers, got shape {tuple(weights.shape)}."
        )
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"proportions must be finite and non-negative, got {weights.tolist()}.")
    if weights.sum() <= 0:
        raise ValueError("proportions are all zero: give at least one class a positive share.")
    return weights / weights.sum()


def _largest_remainder_counts(shares: torch.Tensor, total: int) -> list[int]:
    """Whole counts near ``total * shares`` that sum to exactly ``total`` (the largest remainder rule)."""
    exact = shares * total
    counts = exact.floor()
    missing = total - int(counts.sum())
    # A stable sort keeps the lower class first among equal remainders, so the rule is deterministic.
    order = torch.sort(exact - counts, descending=True, stable=True).indices
    counts[order[:missing]] += 1
    return [int(n) for n in counts]


def _check_enough_per_class(counts: list[int], available: list[int], shares: torch.Tensor, total: int) -> None:
    """Raise ValueError naming every class that has fewer examples than its share needs."""
    short = [(c, n, available[c]) for c, n in enumerate(counts) if n > available[c]]
    if not short:
        return
    listed = "; ".join(f"class {c} needs {n} but has {have}" for c, n, have in short[:5])
    raise ValueError(
        f"Cannot draw {total} examples in these proportions: {listed}{' ...' if len(short) > 5 else ''}. "
        f"Use total <= {_largest_total(shares, available)}, or give those classes smaller shares."
    )


def _largest_total(shares: torch.Tensor, available: list[int]) -> int:
    """The largest total that every class has enough examples for, in these shares (for the error message)."""
    # total <= available / share makes each count at most ceil(total * share) <= available; the
    # check below corrects the estimate where rounding in the division made it one too many.
    total = min(math.floor(available[c] / float(p) + 1e-9) for c, p in enumerate(shares) if p > 0)
    while total > 0 and any(n > have for n, have in zip(_largest_remainder_counts(shares, total), available)):
        total -= 1
    return total


def long_tail_proportions(num_classes: int, ratio: float) -> torch.Tensor:
    """Class proportions that fall geometrically from class 0 to the last, the first ``ratio`` times the last.

    ``p[c]`` is proportional to ``ratio ** (-c / (num_classes - 1))`` and the proportions sum to 1;
    ``ratio=1`` is balanced. Chapter 19.4 gives the target such a long tail while the source stays
    balanced: aligning the two feature distributions then pushes images of different classes
    together, and adaptation can hurt (Zhao et al., 2019, "On learning invariant representations
    for domain adaptation"). Reorder with ``p[torch.randperm(num_classes)]`` to make other classes rare.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    if not isinstance(ratio, numbers.Real) or isinstance(ratio, bool) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(
            f"ratio must be a number >= 1 (the largest class's share over the smallest's; 1 is balanced), "
            f"got {ratio!r}."
        )
    if num_classes == 1:
        return torch.ones(1)
    weights = float(ratio) ** (-torch.arange(num_classes, dtype=torch.float64) / (num_classes - 1))
    return (weights / weights.sum()).float()


def stratified_split(
    labels: torch.Tensor, fraction: float = 0.5, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into two disjoint parts, class by class: ``fraction`` of each class, then the rest.

    Each class's first part has ``round(n * fraction)`` of its ``n`` examples (halves round up),
    drawn at random with ``seed``; both index tensors come back sorted. With ``fraction=0.5`` every
    class's two halves differ by at most one example. Chapter 19.4 halves the USPS test split into
    images to adapt on and images to test on (:func:`digits_domain_shift`).
    """
    check_dataset_labels(labels)
    if not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise ValueError(f"fraction must be a number between 0 and 1 (e.g. 0.5 for halves), got {fraction!r}.")
    seed = check_non_negative_int(seed, "seed")
    generator = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = math.floor(len(members) * fraction + 0.5)  # round half up, not Python's round-half-to-even
        first.append(members[:cut])
        second.append(members[cut:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


# ---------------------------------------------------------------------------------------------
# Domain shift on real digits (19.4)


@dataclasses.dataclass(frozen=True)
class DomainShiftData:
    """A domain adaptation problem: a labelled source domain and a target domain, as four datasets.

    - ``source_train``: labelled source images to train on.
    - ``source_test``: source test images (how well the model does in its own domain).
    - ``target_adapt``: target images an adaptation method may look at, *without their labels*.
      Items still carry labels, only so that an oracle or a diagnostic (e.g. the accuracy a
      method reaches on the images it adapted on) can be computed: never train on them.
    - ``target_test``: held-out target images, with labels, for the score.

    Items are ``(image, label)``; ``mean`` and ``std`` are the normalisation every image had.
    Made by :func:`digits_domain_shift` (19.4).
    """

    source_train: Dataset
    source_test: Dataset
    target_adapt: Dataset
    target_test: Dataset
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str

    @property
    def num_classes(self) -> int:
        """How many classes source and target share (the size of the classifier's head)."""
        return len(self.class_names)


def digits_domain_shift(
    cfg: CourseConfig,
    *,
    source_per_class: int | None = None,
    source_test_per_class: int | None = None,
    seed: int = 0,
    split_seed: int = 0,
) -> DomainShiftData:
    """MNIST -> USPS, the real world's classic domain shift of handwritten digits (19.4).

    The source is MNIST from ``cfg.data_dir``: its training split (labelled; ``source_per_class``
    random images per class if given, drawn with ``seed``) and its test split
    (``source_test_per_class`` per class if given, drawn with ``seed + 1``). The target is the
    USPS *test* split, 2,007 images: the USPS training split is not used, so that the problem is
    the same where only the test file is available. It is halved class by class
    (:func:`stratified_split` with ``split_seed``): ``target_adapt`` (1,005 images) is for
    adaptation, and its labels must not be used for training (they are kept only for an oracle
    or a diagnostic), and ``target_test`` (1,002 images) is held out for the score.

    Every image goes through the same transform as the lite and real worlds' lessons
    (:func:`imagenet_transform`, normalised for ``cfg.backbone``): 3 channels, ``cfg.image_size``
    pixels. Missing files raise FileNotFoundError saying which folder needs which files.
    Only for the lite and real worlds: the offline world's shift is a ShapeWorld domain.
    """
    if cfg.offline:
        raise ValueError(
            "digits_domain_shift reads real MNIST and USPS files (the lite and real worlds); the offline world "
            "shifts the course's own images instead: ShapeWorld(domain=interpolate_domains('studio', 'night', t)). "
            "Use COURSE_PROFILE=lite or real for the digits."
        )
    seed = check_non_negative_int(seed, "seed")
    mean, std = backbone_statistics(cfg.backbone)
    # MNIST is 28 px and USPS 16 px: both are resized to cfg.image_size by this one transform, so
    # the backbone sees digits at the same scale. crop=False resizes the whole image: USPS digits
    # fill their frame, and the centre crop of imagenet_transform would cut off their edges.
    transform = imagenet_transform(cfg.image_size, mean=mean, std=std, crop=False)
    mnist_train = load_real_dataset("mnist", root=cfg.data_dir, train=True, transform=transform)
    mnist_test = load_real_dataset("mnist", root=cfg.data_dir, train=False, transform=transform)
    usps = load_real_dataset("usps", root=cfg.data_dir, train=False, transform=transform)

    source_train = _capped_per_class(mnist_train, source_per_class, "source_per_class", seed)
    source_test = _capped_per_class(mnist_test, source_test_per_class, "source_test_per_class", seed + 1)
    adapt_indices, test_indices = stratified_split(dataset_targets(usps), 0.5, seed=split_seed)
    target_adapt, target_test = Subset(usps, adapt_indices.tolist()), Subset(usps, test_indices.tolist())
    description = (
        f"MNIST -> USPS: source MNIST from {mnist_train.folder} ({len(source_train)} train, {len(source_test)} "
        f"test images); target USPS test split from {usps.folder}, halved per class into {len(target_adapt)} "
        f"images to adapt on (labels unused) and {len(target_test)} to test on"
    )
    class_names = [str(name) for name in mnist_train.classes]
    return DomainShiftData(source_train, source_test, target_adapt, target_test, class_names, mean, std, description)


def _capped_per_class(dataset: Dataset, n_per_class: int | None, name: str, seed: int) -> Dataset:
    """``dataset`` itself (``n_per_class=None``) or a class-balanced subset of ``n_per_class`` per class."""
    if n_per_class is None:
        return dataset
    n_per_class = check_positive_int(n_per_class, name, "Pass None to use every image.")
    return subset_per_class(dataset, n_per_class, seed=seed)


# ---------------------------------------------------------------------------------------------
# One severity knob on any images (19.4)


class Normalize:
    """``(images - mean) / std`` per channel, for one image ``(3, H, W)`` or a batch ``(N, 3, H, W)``.

    The batched counterpart of torchvision's ``Normalize``, for images augmented after loading
    (:class:`course_lib.shift_augment.AugmentedBatches`) or shifted by :class:`SeverityShift`.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        # NaN fails every comparison, so "std > 0" alone would let a NaN std through (images of NaNs).
        if (len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in self.mean + self.std)
                or min(self.std) <= 0):
            raise ValueError(f"mean and std need 3 finite numbers each, std > 0; got {mean!r} and {std!r}.")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4) or images.shape[-3] != 3:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"Normalize needs images shaped (3, H, W) or (N, 3, H, W), got {got}.")
        if not images.is_floating_point():  # an integer dtype would round mean and std to whole numbers
            raise TypeError(f"Normalize needs float images in [0, 1], got {images.dtype}; "
                            "convert uint8 images with images.float() / 255 first.")
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)[:, None, None]
        return (images - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class SeverityShift(Dataset):
    """``dataset``'s images moved a fraction ``t`` of the way to a dark, inverted, noisy look (19.4).

    The real-data counterpart of ``interpolate_domains("studio", "night", t)``: the same three
    changes as the world's night (light and dark swapped, everything dimmer, sensor noise), on any images. ``dataset`` yields ``(image, label)`` with
    float images in [0, 1] shaped ``(3, H, W)``; each comes back as
    ``normalize((1 - t) x + t night(x))`` with ``night(x) = 0.15 + 0.35 (1 - x) + noise``, the noise
    (standard deviation 0.08) drawn from ``seed`` and the image's index, so that image ``i`` is the
    same photograph at every ``t`` and the severity curve is smooth.
    """

    NOISE = 0.08

    def __init__(self, dataset: Dataset, t: float, normalize: Callable[[torch.Tensor], torch.Tensor], seed: int = 0):
        if not isinstance(t, numbers.Real) or isinstance(t, bool) or not 0.0 <= t <= 1.0:
            raise ValueError(f"t must be a number from 0 (the images as they are) to 1 (fully shifted), got {t!r}.")
        if not callable(normalize):
            raise TypeError(f"normalize must be a function images -> images, got {type(normalize).__name__}.")
        self.dataset, self.t, self.normalize = dataset, float(t), normalize
        self.seed = check_non_negative_int(seed, "seed")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # The noise is keyed on the index: a negative one (-1) must key the same image (len - 1) the same way.
        index = range(len(self))[operator.index(index)]
        image, label = self.dataset[index]
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.min() < -0.01 or image.max() > 1.01:
            raise ValueError("SeverityShift needs float images in [0, 1] shaped (3, H, W): build the dataset with an "
                             "un-normalised transform (imagenet_transform(..., mean=(0, 0, 0), std=(1, 1, 1))).")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        noise = torch.randn(image.shape, generator=generator) * self.NOISE
        night = (0.15 + 0.35 * (1.0 - image) + noise).clamp(0.0, 1.0)
        return self.normalize((1.0 - self.t) * image + self.t * night), label
