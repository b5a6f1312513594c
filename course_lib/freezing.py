"""Freezing a pretrained backbone: which weights may move, and which statistics (19.2, 19.3).

A backbone is *frozen* for feature extraction when two things hold:

1. none of its parameters receives gradient updates (``requires_grad=False``), and
2. it runs in **eval mode**, so that its BatchNorm layers normalise with the running statistics
   stored at pretraining time instead of the current batch's, and do not update them.

The first is easy to remember; the second is easy to forget, because ``model.train()`` (which
every training loop calls, :func:`course_lib.training.fit` included) switches *all* submodules
back to train mode. :class:`FrozenBackbone` makes both hold for good, and
:func:`batchnorm_statistics` / :func:`batchnorm_drift` measure what happens when they do not.
During fine-tuning (19.3), :class:`FreezeBatchNorm` keeps the statistics while weights train.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from course_lib.callbacks import Callback, TrainerState
from course_lib.models import get_head, remove_head
from course_lib.validation import check_module

__all__ = ["FreezeBatchNorm", "FrozenBackbone", "batchnorm_drift", "batchnorm_statistics", "freeze", "unfreeze"]


def _check_module(module: object, function: str) -> nn.Module:
    return check_module(module, function, "Pass the model or one of its submodules, e.g. model.stage4 (not model.parameters()).")


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradient updates to every parameter of ``module`` (``requires_grad=False``); returns it.

    Freezing says nothing about BatchNorm statistics: see :class:`FrozenBackbone` for that.
    """
    return _check_module(module, "freeze").requires_grad_(False)


def unfreeze(module: nn.Module) -> nn.Module:
    """Let every parameter of ``module`` train again (``requires_grad=True``); returns it (19.3)."""
    return _check_module(module, "unfreeze").requires_grad_(True)


class FrozenBackbone(nn.Module):
    """Images in, feature vectors out, from a backbone that never changes (19.2).

    Wraps a *copy* of ``backbone`` (the model you pass is left untouched) with its classifier
    replaced by the identity, so the output is the pooled feature vector that the classifier used
    to receive. The copy is frozen, and it stays in eval mode even when ``.train()`` is called on
    a model that contains it, so its BatchNorm statistics never drift. Put a new head on top::

        model = nn.Sequential(FrozenBackbone(pretrained), nn.Linear(feature_dim, num_classes))
        fit(model, loader, epochs=5)   # trains the head only; the backbone stays exactly as it was

    The forward pass runs without building a graph: nothing below the head needs gradients.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        backbone = copy.deepcopy(_check_module(backbone, "FrozenBackbone"))
        try:
            head = get_head(backbone)
        except TypeError as error:
            # The usual cause: the head was already removed (remove_head) or a headless stage was passed.
            raise TypeError(
                f"{error} FrozenBackbone removes the classifier itself and reads feature_dim from it: pass the "
                "whole pretrained model with its linear .head, .fc or .classifier still in place."
            ) from None
        self.feature_dim = head.in_features
        self.backbone = freeze(remove_head(backbone)).eval()

    def train(self, mode: bool = True) -> FrozenBackbone:
        # nn.Module.train() recurses into children; we undo that for the backbone on purpose.
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(images)


def batchnorm_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm layer's running mean and variance: ``{layer name: (2, C) tensor}``.

    Take one before and one after training and compare them with :func:`batchnorm_drift`.
    """
    _check_module(model, "batchnorm_statistics")
    statistics = {
        name: torch.stack([module.running_mean, module.running_var]).detach().clone().cpu()
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None
    }
    if not statistics:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layers with running statistics, so there is nothing to track. "
            "Pass the backbone (e.g. the pretrained model, or model[0].backbone for a FrozenBackbone), not its head."
        )
    return statistics


def batchnorm_drift(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """How far each BatchNorm layer's running statistics moved: ``{layer: |after - before| / |before|}``.

    Both arguments come from :func:`batchnorm_statistics`. 0 means untouched; 0.1 means the
    statistics moved by a tenth of their size. A frozen backbone in eval mode shows 0 everywhere.
    """
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        # Passing the models themselves is the natural mistake: one model cannot be in two states at once.
        raise TypeError(
            f"batchnorm_drift compares two snapshots, got {type(before).__name__} and {type(after).__name__}. "
            "Take them with batchnorm_statistics(model) before and after training."
        )
    if set(before) != set(after):
        raise ValueError(
            "before and after describe different BatchNorm layers "
            f"({sorted(set(before) ^ set(after))[:3]} ...): take both snapshots from the same model."
        )
    return {
        name: float((after[name] - before[name]).norm() / before[name].norm().clamp_min(1e-12))
        for name in before
    }


class FreezeBatchNorm(Callback):
    """Keep BatchNorm layers in eval mode during training, so their running statistics stay as pretrained.

    ``fit`` calls ``model.train()`` at the start of every epoch; this callback then puts the
    BatchNorm layers back into eval mode. Their weight and bias still train if unfrozen; only the
    normalisation statistics are kept. With ``frozen_only=True`` it keeps only the statistics of
    BatchNorm layers whose parameters are all frozen, so that a frozen stage is frozen for real
    (its weights *and* its statistics) while the stages that train adapt both. Chapter 19.2 shows
    why a frozen backbone needs this; 19.3 asks whether a fine-tuned one does.
    """

    def __init__(self, frozen_only: bool = False):
        self.frozen_only = bool(frozen_only)

    def on_epoch_start(self, state: TrainerState) -> None:
        for module in state.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                frozen = not any(p.requires_grad for p in module.parameters())
                if frozen or not self.frozen_only:
                    module.eval()
