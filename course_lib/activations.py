"""Activations: what chosen layers of a network compute for a batch of images (chapter 19.1).

Transfer learning works because a network trained on one task computes *representations*, such
as edges, corners, parts and whole shapes, that are useful for other tasks too. The first step
in looking at them is to keep what a layer outputs::

    acts = capture_activations(model, images, layers=stage_names(model))
    cka_matrix(acts, acts)              # course_lib.metrics: how similar are the layers?

For a whole dataset, batched and cached, use :func:`course_lib.features.extract_features`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from course_lib.core import eval_mode, model_device
from course_lib.validation import check_module

__all__ = ["capture_activations", "named_layers"]


@torch.no_grad()
def capture_activations(model: nn.Module, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """What each named layer of ``model`` outputs for one batch of ``images`` (19.1).

    ``layers`` are names from ``model.named_modules()`` (e.g. ``stage_names(model)``). The model
    runs once, in eval mode and without gradients; forward hooks copy each layer's output.
    Afterwards every layer is back in the train/eval mode it was in, and the hooks are removed,
    even when the forward pass fails.

    Returns ``{layer: activation}`` in the order of ``layers``: float32 CPU tensors with the
    layer's own shape, e.g. ``(N, C, H, W)`` for a convolutional stage. For a whole dataset, use
    :func:`course_lib.features.extract_features` instead (batched and cached).
    """
    _check_images(check_module(model, "capture_activations"), images)
    modules = named_layers(model, layers)

    captured: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def make_hook(name: str):
        def keep_output(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"Layer {name!r} returned a {type(output).__name__}, not a tensor; choose a layer whose "
                    "output is a single tensor."
                )
            # Copy now: a later in-place operation (ReLU(inplace=True)) would otherwise overwrite it.
            captured[name].append(output.detach().to("cpu", torch.float32, copy=True))
        return keep_output

    hooks = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        with eval_mode(model):
            model(images)
    finally:
        for hook in hooks:
            hook.remove()  # a forgotten hook would keep copying in every later forward pass

    for name, outputs in captured.items():
        if len(outputs) != 1:
            raise RuntimeError(
                f"Layer {name!r} ran {len(outputs)} times in one forward pass; pick a layer that runs exactly "
                "once (a module that is skipped, or shared and called twice, has no single output)."
            )
    return {name: outputs[0] for name, outputs in captured.items()}


def _check_images(model: nn.Module, images: object) -> None:
    """A batch of images on the model's device, or an error that says how to make one."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a tensor batch, got {type(images).__name__}; stack dataset images with "
            "torch.stack([dataset[i][0] for i in range(n)])."
        )
    if images.ndim < 2:
        raise ValueError(
            f"images must be a batch with a leading batch dimension, got shape {tuple(images.shape)}; "
            "add one with images.unsqueeze(0)."
        )
    device = model_device(model)
    if images.device != device and not (images.device.type == device.type == "cuda"):
        raise ValueError(f"images are on {images.device} but the model is on {device}: move them with images.to({str(device)!r}).")


def named_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for the requested layer names, checked: a list, no repeats, every name known (with suggestions)."""
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a list of layer names, got {layers!r}; e.g. layers=['stage1', 'stage4'].")
    if len(layers) == 0:
        raise ValueError("layers is empty: name at least one layer, e.g. layers=stage_names(model).")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers has repeated names: {list(layers)!r}; name each layer once.")
    modules = {name: module for name, module in model.named_modules() if name}
    for name in layers:
        if name not in modules:
            close = difflib.get_close_matches(str(name), list(modules), n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(
                f"The model has no layer {name!r}.{hint} Valid names: {list(modules)[:12]}"
                f"{' ...' if len(modules) > 12 else ''} (all of them: course_lib.features.layer_names(model))."
            )
    return {name: modules[name] for name in layers}
