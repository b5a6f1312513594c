"""19.7's problem in every world: the task sequences, the model every method trains, a frozen backbone.

:func:`continual_problem` returns a :class:`ContinualProblem`, the same fields in every world, so
that the chapter's notebook never asks which world it is in:

- the **offline world**: the 10 target shapes as 5 tasks of 2 (studio), and all 10 through
  studio, phone, sketch and night (:func:`course_lib.continual_data.world_tasks`, 64 px), each
  image given as the 128 features of the course's frozen source model (pretrained on the 24
  source shapes, none of the 10): every method trains an MLP 128-400-400 on those features, and
  the nearest-class-mean head reads them as they are. Continual learning on a pretrained
  backbone is how it is mostly done today; it also keeps every run to seconds on a CPU, where a
  network trained from pixels would need minutes per run to learn the shapes at all (an MLP on
  the pixels reached 65% task-incremental and 19% joint domain-incremental);
- the **lite and real worlds**: Split MNIST from ``cfg.data_dir`` (5 tasks of 2 digits) and the
  MLP 784-400-400 of the published comparisons; the domain-incremental sequence is Split MNIST
  read domain-incrementally (odd or even digit?); the frozen backbone is the world's ImageNet
  backbone, which sees each digit upsampled to ``cfg.image_size``, in three channels, normalised
  its way (:class:`BackboneInputs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.config import CourseConfig
from course_lib.continual_data import MNIST_MEAN, MNIST_STD, ContinualTask, split_mnist, world_tasks
from course_lib.continual_runs import PUBLISHED_CLASS_INCREMENTAL, split_mnist_mlp
from course_lib.data import backbone_statistics
from course_lib.freezing import FrozenBackbone
from course_lib.models import load_backbone
from course_lib.validation import check_positive_int
from course_lib.world import TARGET_CLASSES

__all__ = ["BackboneInputs", "ContinualProblem", "continual_problem"]

_WORLD_IMAGE_SIZE = 64  # the course's source model's own resolution


class BackboneInputs(nn.Module):
    """Images normalised with ``(mean_in, std_in)`` -> images as a pretrained backbone wants them (19.7).

    Undoes the input normalisation, repeats a single channel three times, resizes to
    ``image_size`` (bilinear) and normalises with the backbone's ``(mean_out, std_out)``: Split
    MNIST's tensors, made for an MLP, can then go through an ImageNet backbone unchanged.
    """

    def __init__(self, mean_in: Sequence[float], std_in: Sequence[float], image_size: int,
                 mean_out: Sequence[float], std_out: Sequence[float]):
        super().__init__()
        self.image_size = check_positive_int(image_size, "image_size")
        for name, values in (("mean_in", mean_in), ("std_in", std_in), ("mean_out", mean_out), ("std_out", std_out)):
            values = torch.tensor([float(v) for v in values])
            if values.ndim != 1 or len(values) not in (1, 3) or not bool(torch.isfinite(values).all()):
                raise ValueError(f"{name} must be 1 or 3 finite numbers (one per channel), got {values.tolist()}.")
            self.register_buffer(name, values[None, :, None, None], persistent=False)
        if bool((self.std_in <= 0).any()) or bool((self.std_out <= 0).any()):
            raise ValueError("std_in and std_out must be positive.")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"BackboneInputs needs images shaped (N, 1 or 3, H, W), got {got}: keep Split MNIST's "
                             "images unflattened (split_mnist(flatten=False)).")
        pixels = images * self.std_in + self.mean_in
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        return (pixels - self.mean_out) / self.std_out


@dataclasses.dataclass(frozen=True)
class ContinualProblem:
    """What 19.7 trains on, in every world (:func:`continual_problem`).

    ``class_split``: 5 tasks of 2 new classes, read in all three scenarios; ``domain_sequence``:
    the same classes in every task, new images (world: new domains); ``model_factory(num_outputs)``:
    a fresh MLP for the gradient-trained methods; ``backbone_factory(num_outputs)``: the frozen
    pretrained feature extractor the nearest-class-mean head reads the tasks' inputs through (in
    the world the inputs are already its features, so it is the identity); ``inputs``: what a
    task's inputs are; ``published``: the published class-incremental accuracies of this
    benchmark, or None.
    """

    class_split: list[ContinualTask]
    domain_sequence: list[ContinualTask]
    model_factory: Callable[[int], nn.Module]
    backbone_factory: Callable[[int], nn.Module]
    class_names: list[str]
    description: str
    domain_description: str
    backbone_description: str
    inputs: str
    published: dict[str, float] | None = None


def continual_problem(cfg: CourseConfig) -> ContinualProblem:
    """19.7's task sequences, model and frozen backbone for ``cfg``'s world, at its ``continual_*`` sizes."""
    return _world_problem(cfg) if cfg.offline else _digits_problem(cfg)


def _world_problem(cfg: CourseConfig) -> ContinualProblem:
    sizes = dict(train_per_class=cfg.continual_per_class, test_per_class=cfg.continual_test_per_class,
                 image_size=_WORLD_IMAGE_SIZE)
    source_model = FrozenBackbone(load_backbone(cfg.backbone))
    class_split = _as_features(source_model, world_tasks("class-incremental", **sizes))
    domain_sequence = _as_features(source_model, world_tasks("domain-incremental", **sizes))
    width = class_split[0].train_inputs.shape[1]
    return ContinualProblem(
        class_split=class_split, domain_sequence=domain_sequence,
        model_factory=lambda num_outputs: split_mnist_mlp(num_outputs, inputs=width),
        backbone_factory=lambda _num_outputs: nn.Identity(),
        class_names=list(TARGET_CLASSES),
        description=(f"the course's world: the 10 target shapes as 5 tasks of 2 (studio), {cfg.continual_per_class} "
                     f"training and {cfg.continual_test_per_class} test images per class at {_WORLD_IMAGE_SIZE} px; "
                     f"an MLP {width}-400-400 on the frozen source model's features"),
        domain_description="the 10 target shapes through studio, phone, sketch, then night",
        backbone_description=f"the course's source model ({cfg.backbone}), pretrained on the 24 source shapes",
        inputs=f"the {width} features of the frozen source model",
    )


@torch.no_grad()
def _as_features(backbone: nn.Module, tasks: list[ContinualTask], batch_size: int = 500) -> list[ContinualTask]:
    """The tasks with each image replaced by the frozen ``backbone``'s features (computed once, here)."""
    def features(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([backbone(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    backbone.eval()
    return [dataclasses.replace(task, train_inputs=features(task.train_inputs), test_inputs=features(task.test_inputs))
            for task in tasks]


def _digits_problem(cfg: CourseConfig) -> ContinualProblem:
    per_task = [None if n is None else 2 * n for n in (cfg.continual_per_class, cfg.continual_test_per_class)]
    class_split = split_mnist(cfg.data_dir, flatten=False, train_per_task=per_task[0], test_per_task=per_task[1])
    backbone = load_backbone(cfg.backbone)
    adapter = BackboneInputs((MNIST_MEAN,), (MNIST_STD,), cfg.image_size, *backbone_statistics(cfg.backbone))
    return ContinualProblem(
        class_split=class_split, domain_sequence=class_split,
        model_factory=lambda num_outputs: split_mnist_mlp(num_outputs, inputs=784),
        backbone_factory=lambda _num_outputs: nn.Sequential(adapter, FrozenBackbone(backbone)),
        class_names=[str(digit) for digit in range(10)],
        description=(f"Split MNIST from {cfg.data_dir}: 5 tasks of 2 digits, "
                     f"{'all' if per_task[0] is None else cfg.continual_per_class} training and "
                     f"{'all' if per_task[1] is None else cfg.continual_test_per_class} test images per digit; "
                     "the MLP 784-400-400"),
        domain_description="Split MNIST read domain-incrementally: odd or even digit, whatever the task",
        backbone_description=f"ImageNet {cfg.backbone}, digits upsampled to {cfg.image_size} px",
        inputs="the 28 x 28 pixels of each digit",
        published=dict(PUBLISHED_CLASS_INCREMENTAL),
    )
