"""Real ImageNet-pretrained weights, read from the caches torchvision and timm keep (the real world).

Nothing here downloads unless asked (``download=True``): a missing file raises an error that says
where to put it. torchvision's files are checked against the SHA-256 prefix in their names, as
torchvision itself does; a file that does not match is refused. Tests, which can only make
stand-in weights, set ``COURSE_UNVERIFIED_FILES=1`` to use them anyway, with a warning naming the
file each time (:func:`course_lib.config.allow_unverified`).

:func:`course_lib.models.load_backbone` is the one call lessons use; it comes here for
``"resnet18"`` and ``"timm:..."`` names.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from course_lib.config import allow_unverified
from course_lib.core import file_sha256

__all__ = ["load_timm_backbone", "load_torchvision_backbone", "timm_checkpoint_path", "torchvision_checkpoint_path", "torchvision_weights"]


def torchvision_weights(name: str):
    """torchvision's default ImageNet weights entry for model ``name`` (its ``url``, ``transforms``, ``meta``).

    Raises ValueError naming some valid models when torchvision has no model called ``name``.
    """
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"torchvision has no model called {name!r}; try 'resnet18', 'resnet50' or 'mobilenet_v3_small'."
        ) from error


def torchvision_checkpoint_path(name: str) -> Path:
    """Where torchvision keeps (or would download) the ImageNet weights of model ``name``."""
    url = torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_torchvision_backbone(name: str, *, download: bool = False, check_hash: bool = True) -> nn.Module:
    """An ImageNet-pretrained torchvision model, read from torch's hub cache (the real world).

    With ``download=False`` (the default) nothing is fetched: a missing file raises an error that
    says where to put it. ``check_hash`` verifies the file against the hash prefix in its name, as
    torchvision does; a mismatch is an error unless ``COURSE_UNVERIFIED_FILES=1`` (tests only).
    """
    import torchvision

    weights = torchvision_weights(name)
    path = torchvision_checkpoint_path(name)
    if not path.exists() and not download:
        raise FileNotFoundError(
            f"ImageNet weights for {name} are not in the torch cache: {path}. On a machine with "
            f"internet, run `course_lib.models.load_backbone({name!r}, download=True)` once, or copy "
            f"the file {path.name} there (TORCH_HOME moves the cache). Without them, use the offline "
            "profile (COURSE_PROFILE=standard) and the course's own model."
        )
    model = torchvision.models.get_model(name, weights=None)
    if not path.exists():
        state = torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=check_hash)
    else:
        if check_hash:
            prefix = path.stem.rsplit("-", 1)[-1]
            problem = f"its SHA-256 does not start with the {prefix} in its name"
            if not file_sha256(path).startswith(prefix) and not allow_unverified(path, problem):
                raise ValueError(
                    f"{path} does not match the hash in its name ({prefix}): it is corrupted or not "
                    "torchvision's official file. Delete it and download it again."
                )
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def timm_checkpoint_path(name: str) -> Path | None:
    """The cached file of timm model ``name``'s pretrained weights, or None when it is not cached.

    timm keeps its weights in the Hugging Face hub cache (``HF_HOME``); looking there needs no
    network.
    """
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        config = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        config = None
    if config is None or not config.hf_hub_id:
        raise ValueError(
            f"timm has no pretrained weights called {name!r}; list them with timm.list_pretrained('resnet*')."
        )
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(config.hf_hub_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    return None


def load_timm_backbone(name: str, *, download: bool = False) -> nn.Module:
    """An ImageNet-pretrained timm model (e.g. ``resnet18.a1_in1k``) from the Hugging Face cache."""
    import timm

    path = timm_checkpoint_path(name)
    if path is not None:
        # Point timm at the cached file, so that loading never touches the network.
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    if not download:
        raise FileNotFoundError(
            f"timm's pretrained weights for {name} are not in the Hugging Face cache "
            f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}). On a machine with "
            f"internet, run `course_lib.models.load_backbone('timm:{name}', download=True)` once. "
            "Without them, use the offline profile (COURSE_PROFILE=standard) and the course's own model."
        )
    return timm.create_model(name, pretrained=True)
