"""Feature extraction: run a (frozen) network over a dataset and keep what a layer computes.

Chapter 19.1 probes what each stage of a network represents, 19.2 trains linear heads on frozen
features, later chapters compare features across domains and tasks. All of them call::

    features, labels = extract_features(backbone, dataset, layer="stage3", cache=FeatureCache())

``features`` is a float32 ``(N, D)`` tensor on the CPU (``pool="none"`` keeps ``(N, C, H, W)``),
``labels`` int64 ``(N,)``. Extraction never changes the model: no parameter, no BatchNorm
statistic, no ``requires_grad`` flag, and every layer ends in the train/eval mode it started in.

The cache (:class:`course_lib.feature_cache.FeatureCache`) stores each result in a file named after
a hash of *everything the features depend on*: the model's weights, the layer, the pooling, the
data (its ``fingerprint``) and its transform. Change any of them and the key changes, so a stale
result is never returned.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from course_lib.core import eval_mode, model_device
from course_lib.feature_cache import FeatureCache
from course_lib.validation import check_positive_int

__all__ = ["POOLS", "extract_features", "extract_layers", "feature_loader", "features_dataset", "layer_names"]

POOLS = ("avg", "flatten", "none")


# ---------------------------------------------------------------------------------------------
# Extraction


@torch.no_grad()
def extract_features(
    model: nn.Module,
    data: Dataset | DataLoader,
    layer: str | None = None,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    pool: str = "avg",
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)`` of every sample of ``data``, computed by ``model`` in eval mode.

    - ``data``: a Dataset yielding ``(image, label)`` (batched here with ``batch_size``) or a
      DataLoader (used as it is).
    - ``layer``: a name from :func:`layer_names` whose output is captured with a forward hook;
      None means the model's output.
    - ``pool``: ``"avg"`` averages a 4-D activation over its positions to ``(N, C)`` (a 3-D token
      sequence ``(N, T, D)`` over its tokens), ``"flatten"`` gives ``(N, C*H*W)``, ``"none"`` keeps
      the activation's shape.
    - ``device``: default the model's device. ``cache``: a :class:`FeatureCache` to reuse
      results across runs (``progress`` also prints whether it was a hit).

    Returns float32 features and int64 labels, both on the CPU.
    """
    return extract_layers(model, data, [layer], batch_size=batch_size, device=device, pool=pool, cache=cache,
                          progress=progress)[layer]


@torch.no_grad()
def extract_layers(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: Sequence[str | None],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    pool: str = "avg",
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> dict[str | None, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`extract_features` for several layers at once: ``{layer: (features, labels)}`` (19.1).

    The layers not in ``cache`` are all captured in one pass over ``data``, so that probing every
    stage of a network costs one pass, not one per stage; each result is cached on its own, under
    the same key that :func:`extract_features` uses for that layer.
    """
    if pool not in POOLS:
        raise ValueError(f"Unknown pool {pool!r}: use one of {POOLS}.")
    device = model_device(model, device)
    modules = {layer: _find_layer(model, layer) for layer in layers}  # every name checked first
    results, keys = {}, {}
    for layer in modules:
        if cache is not None:
            keys[layer] = cache.key(model, layer, data, pool)
            cached = cache.load(keys[layer])
            if cached is not None:
                if progress:
                    print(f"Features loaded from the cache: {cache.path(keys[layer])}")
                results[layer] = cached
    missing = {layer: module for layer, module in modules.items() if layer not in results}
    if missing:
        computed = _run_extraction(model, missing, _as_loader(data, batch_size, device), pool, device, progress)
        for layer, (features, labels) in computed.items():
            results[layer] = features, labels
            if cache is not None:
                path = cache.save(keys[layer], features, labels)
                if progress:
                    print(f"Features computed and cached in {path}")
    return {layer: results[layer] for layer in modules}


def _run_extraction(
    model: nn.Module, modules: dict[str | None, nn.Module | None], loader: DataLoader, pool: str, device: torch.device,
    progress: bool,
) -> dict[str | None, tuple[torch.Tensor, torch.Tensor]]:
    """The loop: one forward pass per batch, each hooked layer's (or, for None, the model's) output pooled."""
    captured: dict[str | None, list[torch.Tensor]] = {layer: [] for layer in modules}

    def keeper(layer: str | None):
        def keep_output(_module: nn.Module, _inputs: Any, output: Any) -> None:
            # Copy now: a later in-place layer (ReLU(inplace=True)) would otherwise overwrite it.
            captured[layer].append(_pool(output, pool).to("cpu", torch.float32, copy=True))
        return keep_output

    hooks = [module.register_forward_hook(keeper(layer)) for layer, module in modules.items() if module is not None]
    all_features: dict[str | None, list[torch.Tensor]] = {layer: [] for layer in modules}
    all_labels = []
    try:
        with eval_mode(model):
            for batch in tqdm(loader, desc="extracting features", leave=False, disable=not progress):
                images, labels = _split_batch(batch)
                for values in captured.values():
                    values.clear()
                output = model(images.to(device, non_blocking=device.type == "cuda"))
                for layer, module in modules.items():
                    if module is None:
                        all_features[layer].append(_pool(output, pool).to("cpu", torch.float32, copy=True))
                    elif len(captured[layer]) != 1:
                        raise RuntimeError(
                            f"The layer {layer!r} ran {len(captured[layer])} times in one forward pass; pick a layer "
                            "that runs exactly once (a shared module called twice has no single output)."
                        )
                    else:
                        all_features[layer].append(captured[layer][0])
                all_labels.append(labels)
    finally:
        for hook in hooks:
            hook.remove()  # a forgotten hook would keep capturing in every later forward pass
    if not all_labels:
        raise ValueError("The data is empty: there is nothing to extract features from.")
    labels = torch.cat(all_labels)
    return {layer: (torch.cat(parts), labels) for layer, parts in all_features.items()}


def _pool(activation: Any, pool: str) -> torch.Tensor:
    if not isinstance(activation, torch.Tensor):
        raise TypeError(
            f"The layer returned a {type(activation).__name__}, not a tensor; choose a layer whose "
            "output is a single tensor (see layer_names(model))."
        )
    activation = activation.detach()
    if pool == "none":
        return activation
    if pool == "flatten":
        return activation.flatten(start_dim=1)
    if activation.ndim == 4:  # (N, C, H, W): average over positions
        return activation.mean(dim=(2, 3))
    if activation.ndim == 3:  # (N, tokens, D), as in vision transformers: average over tokens
        return activation.mean(dim=1)
    if activation.ndim == 2:  # already one vector per sample
        return activation
    raise ValueError(f"pool='avg' needs a 2-, 3- or 4-D activation, got shape {tuple(activation.shape)}.")


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not isinstance(batch[0], torch.Tensor):
        raise TypeError(
            f"Each item of the data must be (image, label) with an image tensor, got a {type(batch).__name__}. "
            "Use a dataset whose __getitem__ returns (image_tensor, label)."
        )
    images, labels = batch
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.ndim != 1:
        raise TypeError(
            f"Labels must be integer class indices, one per image, got {labels.dtype} shaped {tuple(labels.shape)}. "
            "Return int labels from the dataset (e.g. int(label))."
        )
    if len(labels) != len(images):
        raise ValueError(f"A batch has {len(images)} images but {len(labels)} labels.")
    return images, labels.to("cpu", torch.int64)


def _find_layer(model: nn.Module, layer: str | None) -> nn.Module | None:
    if layer is None:
        return None
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or layer not in modules or layer == "":
        names = layer_names(model)
        close = difflib.get_close_matches(str(layer), names, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"The model has no layer {layer!r}.{hint} Valid names include {names[:8]}"
            f"{' ...' if len(names) > 8 else ''} (all of them: layer_names(model)); layer=None means the output."
        )
    return modules[layer]


def _as_loader(data: Dataset | DataLoader, batch_size: int, device: torch.device) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset) or not hasattr(data, "__len__"):
        raise TypeError(
            f"data must be a torch Dataset (with __len__) or a DataLoader, got {type(data).__name__}. "
            "Wrap tensors with torch.utils.data.TensorDataset(images, labels)."
        )
    check_positive_int(batch_size, "batch_size")
    return DataLoader(data, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")


def layer_names(model: nn.Module) -> list[str]:
    """Names of all the model's layers (submodules), usable as ``layer`` in :func:`extract_features`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return [name for name, _ in model.named_modules() if name]


# ---------------------------------------------------------------------------------------------
# Training on features (19.2: a linear head on frozen features)


def features_dataset(features: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
    """A TensorDataset of ``(feature, label)`` pairs, checked: float features, int64 labels, same length."""
    if not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.ndim < 2:
        raise TypeError(
            "features must be a float tensor shaped (N, D) (or (N, C, H, W)), got "
            f"{type(features).__name__ if not isinstance(features, torch.Tensor) else (features.dtype, tuple(features.shape))}."
        )
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        raise TypeError(
            "labels must be an int64 tensor shaped (N,), got "
            f"{type(labels).__name__ if not isinstance(labels, torch.Tensor) else (labels.dtype, tuple(labels.shape))}. "
            "Convert with labels.long()."
        )
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels: they must match one to one.")
    return TensorDataset(features, labels)


def feature_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int = 256, shuffle: bool = True,
                   seed: int = 0) -> DataLoader:
    """A DataLoader over features and labels for :func:`course_lib.training.fit`; shuffling is seeded."""
    check_positive_int(batch_size, "batch_size")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(features_dataset(features, labels), batch_size=batch_size, shuffle=shuffle, generator=generator)
