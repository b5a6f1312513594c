"""Run profiles, seeding, device choice and folders: what ``setup()`` decides for a notebook.

Every notebook's first cell is::

    import course_lib
    cfg = course_lib.setup()

and then reads its sizes and epochs from ``cfg`` instead of hard-coding them, so one notebook runs
as a 20-second smoke test, a few-minute CPU lesson, or a real GPU experiment.

Profiles (choose with the ``COURSE_PROFILE`` environment variable or ``setup(profile=...)``):

``smoke``     tiny sizes for CI, nbval and autograding; chosen automatically under nbgrader.
``standard``  the default: full lesson sizes on the course's offline image world, CPU-friendly.
``real``      torchvision datasets and ImageNet-pretrained backbones; a GPU is recommended.

A profile never changes behind the notebook's back: if the ``real`` profile's data or weights are
missing, loading them raises an error that says what to do; it does not fall back to the offline
world.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

PROFILE_NAMES = ("smoke", "standard", "real")


@dataclasses.dataclass(frozen=True)
class CourseConfig:
    """Everything a notebook needs to know about the run it is in (returned by :func:`setup`)."""

    profile: str
    profile_reason: str
    device: torch.device
    seed: int
    data_dir: Path
    cache_dir: Path
    image_size: int
    train_per_class: int
    test_per_class: int
    epochs: int
    batch_size: int
    num_seeds: int
    dataset: str
    backbone: str

    @property
    def offline(self) -> bool:
        """True when the run uses only the course's own world and model (no downloads needed)."""
        return self.profile != "real"


# Sizes per profile. `real` uses torchvision datasets and an ImageNet ResNet-18 at 224 pixels.
_PROFILE_SETTINGS: dict[str, dict] = {
    "smoke": dict(
        image_size=64, train_per_class=8, test_per_class=8, epochs=1, batch_size=64, num_seeds=1,
        dataset="shapeworld", backbone="course-resnet",
    ),
    "standard": dict(
        image_size=64, train_per_class=100, test_per_class=50, epochs=5, batch_size=128, num_seeds=3,
        dataset="shapeworld", backbone="course-resnet",
    ),
    "real": dict(
        image_size=224, train_per_class=500, test_per_class=100, epochs=5, batch_size=64, num_seeds=3,
        dataset="cifar10", backbone="resnet18",
    ),
}


def choose_profile(requested: str | None = None) -> tuple[str, str]:
    """Return ``(profile, reason)``.

    Precedence: the ``COURSE_PROFILE`` environment variable (what the person running the course
    asked for), then ``smoke`` when nbgrader is executing the notebook (``NBGRADER_EXECUTION`` is
    set: grading must be fast), then the notebook's own ``requested`` profile, then ``standard``.
    """
    env_profile = os.environ.get("COURSE_PROFILE", "").strip()
    if env_profile:
        choice, reason = env_profile, "COURSE_PROFILE environment variable"
    elif os.environ.get("NBGRADER_EXECUTION"):
        choice, reason = "smoke", "running under nbgrader (NBGRADER_EXECUTION is set)"
    elif requested:
        choice, reason = requested, "requested by the notebook"
    else:
        choice, reason = "standard", "default"
    if choice not in PROFILE_NAMES:
        raise ValueError(
            f"Unknown course profile {choice!r} (from {reason}). "
            f"Use one of {', '.join(PROFILE_NAMES)}, e.g. COURSE_PROFILE=smoke."
        )
    return choice, reason


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
    """Folder for real torchvision datasets (``COURSE_DATA_DIR``), used by the ``real`` profile."""
    return Path(os.environ.get("COURSE_DATA_DIR") or default_cache_dir() / "data").expanduser()


def setup(profile: str | None = None, seed: int = 0, device: str | None = None, quiet: bool = False) -> CourseConfig:
    """Prepare a notebook run: choose the profile, seed everything, pick the device, print a summary.

    Used as the first cell of every lesson. Returns a :class:`CourseConfig` whose fields
    (``image_size``, ``train_per_class``, ``epochs``, ...) the notebook uses for its sizes.
    The ``smoke`` profile also limits PyTorch to one CPU thread (see the comment below).
    """
    name, reason = choose_profile(profile)
    seed_everything(seed)
    if name == "smoke":
        # Smoke runs do tiny operations, often several processes at once (CI, grading a class):
        # one thread each avoids the threads fighting over the cores, which can slow them 20x.
        torch.set_num_threads(1)
    cfg = CourseConfig(
        profile=name,
        profile_reason=reason,
        device=pick_device(device),
        seed=seed,
        data_dir=default_data_dir(),
        cache_dir=default_cache_dir(),
        **_PROFILE_SETTINGS[name],
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
            f"profile   {cfg.profile} ({cfg.profile_reason}); seed {cfg.seed}",
            f"device    {cfg.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            f"data      {data}; {cfg.train_per_class} train / {cfg.test_per_class} test images per class, {cfg.image_size}px",
            f"backbone  {backbone}",
            f"folders   cache {cfg.cache_dir}; data {cfg.data_dir}",
            f"versions  python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}",
        ]
    )
