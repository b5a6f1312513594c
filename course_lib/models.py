"""The course's source model and the real ImageNet backbones, behind one loader.

``load_backbone("course-resnet")`` gives the small ResNet the course pretrained on its own shape
world (weights ship with the library, so no lesson waits for pretraining).
``load_backbone("efficientnet-lite0")`` gives a real ImageNet model that installs offline with pip
(timm's EfficientNet-Lite0). ``load_backbone("resnet18")`` gives torchvision's ImageNet ResNet-18 and ``load_backbone("timm:resnet18.a1_in1k")``
a timm model, both from the caches those libraries use (read by :mod:`course_lib.pretrained_weights`).
A lesson switches between them by world, not by rewriting code: every backbone answers to
:func:`stage_names`, :func:`get_head` and :func:`replace_head`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from course_lib.core import file_sha256
from course_lib.pretrained_weights import (
    load_efficientnet_lite0, load_timm_backbone, load_torchvision_backbone, torchvision_weights,
)
from course_lib.validation import check_module

__all__ = [
    "COURSE_RESNET_RECIPE", "COURSE_RESNET_WEIGHTS", "WEIGHTS_DIR", "BasicBlock", "CourseResNet",
    "feature_layer", "get_head", "layer_groups", "load_backbone", "load_course_resnet", "remove_head", "replace_head",
    "stage_names",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
COURSE_RESNET_WEIGHTS = WEIGHTS_DIR / "course_resnet.safetensors"
COURSE_RESNET_RECIPE = WEIGHTS_DIR / "course_resnet.json"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut: the residual block of ResNet-18 (He et al., 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # A 1x1 convolution matches the shape so that the input can be added to the output.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CourseResNet(nn.Module):
    """A small ResNet for 64x64 images: a stem, four residual stages, a pooled linear head.

    The stem halves the resolution (64 -> 32) and stages 2-4 halve it again (32 -> 16 -> 8 -> 4)
    while the channels double, as in ResNet-18, but with one block per stage and 16-128 channels
    so that it trains and runs quickly on a laptop CPU.

    The stages are attributes named ``stem``, ``stage1`` ... ``stage4`` so that lessons can probe
    (19.1), freeze (19.2) and unfreeze (19.3) them by name. ``forward_features`` returns the
    pooled feature vector that the ``head`` classifies.
    """

    def __init__(self, num_classes: int = 24, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        if len(widths) != 4 or any(w < 1 for w in widths):
            raise ValueError(f"widths must be four positive channel counts, got {widths!r}.")
        self.widths = tuple(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        self.stage1 = BasicBlock(widths[0], widths[0], stride=1)
        self.stage2 = BasicBlock(widths[0], widths[1], stride=2)
        self.stage3 = BasicBlock(widths[1], widths[2], stride=2)
        self.stage4 = BasicBlock(widths[2], widths[3], stride=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[3], num_classes)

    @property
    def feature_dim(self) -> int:
        """Length of the feature vector that the head receives."""
        return self.widths[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"CourseResNet expects a batch of RGB images shaped (N, 3, H, W), got {tuple(x.shape)}. "
                "Add a batch dimension with x.unsqueeze(0), or repeat a grayscale channel 3 times."
            )
        for stage in (self.stem, self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------
# One vocabulary for every backbone


def stage_names(model: nn.Module) -> list[str]:
    """Names (for ``model.get_submodule``) of the backbone's stages, from input to output.

    ``["stem", "stage1", ..., "stage4"]`` for the course model, ``["layer1", ..., "layer4"]``
    for torchvision and timm ResNets, and ``["blocks.0", ..., "blocks.6"]`` for timm's
    EfficientNets (their seven stages of blocks). Chapters 19.1 (probing) and 19.3 (unfreezing)
    use them.
    """
    if isinstance(model, CourseResNet):
        return ["stem", "stage1", "stage2", "stage3", "stage4"]
    names = [name for name in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, name)]
    if names:
        return names
    if isinstance(getattr(model, "blocks", None), nn.Sequential) and hasattr(model, "conv_stem"):
        return [f"blocks.{index}" for index in range(len(model.blocks))]
    raise TypeError(
        f"Don't know the stages of a {type(model).__name__}. Use a CourseResNet, a ResNet from "
        "torchvision/timm or a timm EfficientNet, or name the layers yourself (see course_lib.features.layer_names)."
    )


def feature_layer(model: nn.Module) -> str:
    """The layer whose output, average-pooled, is the feature vector the head reads (19.3's linear probe).

    The last stage for the course model and the ResNets; for an EfficientNet the BatchNorm after
    its 1x1 ``conv_head``, which widens the last stage's 320 channels to the head's 1280.
    """
    if isinstance(getattr(model, "bn2", None), nn.Module) and hasattr(model, "conv_head"):
        return "bn2"
    return stage_names(model)[-1]


def _head_attribute(model: nn.Module) -> str:
    for attribute in ("head", "fc", "classifier"):
        if isinstance(getattr(model, attribute, None), nn.Linear):
            return attribute
    raise TypeError(f"Found no linear head (.head, .fc or .classifier) on a {type(model).__name__}.")


def get_head(model: nn.Module) -> nn.Linear:
    """The final linear classifier of a backbone (``.head``, ``.fc`` or ``.classifier``)."""
    return getattr(model, _head_attribute(model))


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the classifier for a freshly initialised one with ``num_classes`` outputs (19.2, 19.3).

    Returns the same model, changed in place; the new head is trainable and on the model's device.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    attribute = _head_attribute(model)
    old = getattr(model, attribute)
    setattr(model, attribute, nn.Linear(old.in_features, num_classes).to(old.weight.device))
    return model


def remove_head(model: nn.Module) -> nn.Module:
    """Replace the classifier with ``nn.Identity()``, so that ``model(images)`` returns feature vectors (19.2).

    Returns the same model, changed in place (``copy.deepcopy`` it first to keep the original).
    """
    setattr(model, _head_attribute(model), nn.Identity())
    return model


def layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """The model's parameters in groups from input to output: ``[("stem", [...]), (stage, [...]), ..., ("head", [...])]``.

    The stages are those of :func:`stage_names`; the head is the final linear classifier;
    ``"stem"`` holds the layers before the first stage, and a layer between the last stage and the
    head (EfficientNet's 1x1 ``conv_head`` and its BatchNorm) joins the last stage. For the course
    model: stem, stage1 ... stage4, head (6 groups); for a torchvision ResNet-18: stem (conv1,
    bn1), layer1 ... layer4, head (6 groups); for EfficientNet-Lite0: stem, blocks.0 ... blocks.6,
    head (9 groups). Every parameter is in exactly one group. Chapter 19.3 unfreezes and sets
    learning rates by group; :func:`course_lib.metrics.weight_drift` measures them.
    """
    model = check_module(model, "layer_groups", what="the whole model (a torch.nn.Module)")
    stages = [name for name in stage_names(model) if name != "stem"]
    grouped = {name: [] for name in ["stem", *stages, "head"]}
    stage_of = {id(p): name for name in stages for p in model.get_submodule(name).parameters()}
    stage_of.update({id(p): "head" for p in get_head(model).parameters()})
    current = "stem"
    # model.parameters() runs in the order the layers were defined, input to output, so a layer
    # outside every stage belongs to the stem before the first stage and to the stage before it after.
    for p in model.parameters():
        name = stage_of.get(id(p))
        if name is None:
            grouped[current].append(p)
            continue
        grouped[name].append(p)
        current = name if name != "head" else current
    return list(grouped.items())


# ---------------------------------------------------------------------------------------------
# Loading


def load_course_resnet(weights_path: Path | str | None = None, *, pretrained: bool = True) -> CourseResNet:
    """The course's source model, with its shipped pretrained weights checked against the recipe.

    The recipe file beside the weights records the training command, settings, held-out accuracy
    and the SHA-256 of the weights; a file that does not match is refused.
    """
    recipe = json.loads(COURSE_RESNET_RECIPE.read_text()) if COURSE_RESNET_RECIPE.exists() else {}
    model = CourseResNet(num_classes=len(recipe.get("classes", ())) or 24, widths=tuple(recipe.get("widths", (16, 32, 64, 128))))
    if not pretrained:
        return model
    path = Path(weights_path) if weights_path is not None else COURSE_RESNET_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(
            f"The course model's weights are missing: {path}. Restore them with "
            f"`git checkout -- {COURSE_RESNET_WEIGHTS.name}` in course_lib/weights, or re-create them "
            "with `python -m course_lib.pretrain` (about 15 minutes on a laptop CPU)."
        )
    expected = recipe.get("sha256")
    if weights_path is None and expected and file_sha256(path) != expected:
        raise ValueError(
            f"The weights file {path} does not match its recorded checksum (it was changed or corrupted). "
            "Restore it with git, or re-create it with `python -m course_lib.pretrain`."
        )
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ValueError(f"Could not read the weights file {path} ({error}). Restore it with git.") from error
    model.load_state_dict(state)
    return model


def load_backbone(name: str = "course-resnet", *, pretrained: bool = True, download: bool = False) -> nn.Module:
    """Load a backbone by name, the same call in every world.

    - ``"course-resnet"``: the course's source model (the offline world);
    - ``"efficientnet-lite0"``: timm's EfficientNet-Lite0 with the ImageNet weights of a pip
      package (the lite world; see :func:`course_lib.pretrained_weights.load_efficientnet_lite0`);
    - a torchvision name such as ``"resnet18"`` (the real world);
    - ``"timm:<model name>"`` for a timm model.

    ``pretrained=False`` returns the same architecture with random weights (19.1 compares them).
    The model is returned in ``eval()`` mode on the CPU (EfficientNet's weights in channels-last
    memory order: see below).
    """

    if name == "course-resnet":
        model = load_course_resnet(pretrained=pretrained)
    elif name == "efficientnet-lite0":
        import timm

        model = load_efficientnet_lite0() if pretrained else timm.create_model("tf_efficientnet_lite0")
        # Its depthwise convolutions run about 1.5x faster on a CPU when the weights are stored
        # channels-last (measured on 2 cores: training 150 -> 221 images/s at 64 px); the
        # model computes the same function, up to floating-point rounding.
        model = model.to(memory_format=torch.channels_last)
    elif name.startswith("timm:"):
        import timm

        model = load_timm_backbone(name[5:], download=download) if pretrained else timm.create_model(name[5:])
    else:
        if pretrained:
            model = load_torchvision_backbone(name, download=download)
        else:
            import torchvision

            torchvision_weights(name)  # validates the name with a helpful message
            model = torchvision.models.get_model(name, weights=None)
    return model.eval()
