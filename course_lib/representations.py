"""What a network has learned, layer by layer: the tools of chapter 19.1.

Transfer learning works because a network trained on one task computes *representations*, such
as edges, corners, parts and whole shapes, that are useful for other tasks too. This module
measures that:

- :func:`capture_activations` keeps what chosen layers compute for a batch of images;
- :func:`linear_cka` and :func:`cka_matrix` compare two representations (how similar are two
  layers, or the same layer of two networks?) with linear CKA (Kornblith et al., 2019);
- :func:`linear_probe_accuracy` asks how much *linearly readable* class information a
  representation holds: train only a linear classifier on frozen features, report its accuracy;
- :func:`transferability_curve` does that for every stage of a backbone, on a new task;
- :func:`nearest_neighbours` finds the images whose features are closest to a query's.

A lesson cell::

    pretrained = load_backbone("course-resnet")
    random = load_backbone("course-resnet", pretrained=False)
    for model in (pretrained, random):
        print(transferability_curve(model, train, test, cache=FeatureCache()))
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from course_lib.features import FeatureCache, extract_features
from course_lib.models import stage_names
from course_lib.training import eval_mode, model_device

__all__ = [
    "METRICS",
    "capture_activations",
    "cka_matrix",
    "linear_cka",
    "linear_probe_accuracy",
    "nearest_neighbours",
    "transferability_curve",
]

METRICS = ("cosine", "euclidean")
_MATRIX_POOLS = ("flatten", "avg")
_CURVE_POOLS = ("avg", "flatten")


# ---------------------------------------------------------------------------------------------
# Capturing activations


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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
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
    modules = _named_layers(model, layers)

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

    activations = {}
    for name, outputs in captured.items():
        if len(outputs) != 1:
            raise RuntimeError(
                f"Layer {name!r} ran {len(outputs)} times in one forward pass; pick a layer that runs exactly "
                "once (a module that is skipped, or shared and called twice, has no single output)."
            )
        activations[name] = outputs[0]
    return activations


def _named_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for the requested layer names, with a helpful error for unknown ones."""
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


# ---------------------------------------------------------------------------------------------
# Comparing representations: linear CKA


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear centred kernel alignment between two representations of the same N examples (19.1).

    ``x`` is ``(N, D1)`` and ``y`` is ``(N, D2)``: row ``i`` of both describes example ``i``; the
    widths may differ. With the columns centred,

        CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

    (Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited"). It lies in
    [0, 1], is 1 for identical representations, and does not change when either representation is
    rotated (an orthogonal transform) or scaled by a number, but it *does* change under a general
    invertible linear map: stretching some directions more than others changes what is similar.
    Independent random features give a value near 0 (about ``sqrt(D1 * D2) / N``).

    Computed in float64. Returns a Python float.
    """
    x, y = _as_feature_matrix(x, "x"), _as_feature_matrix(y, "y")
    _check_same_examples(x, y)
    x, y = _centre_columns(x, "x"), _centre_columns(y, "y")
    n = x.shape[0]
    if x.shape[1] + y.shape[1] <= 2 * n:
        # Narrow features: work with the (D, D) matrices of the formula.
        cross = (y.T @ x).square().sum()
        norm_x, norm_y = torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)
    else:
        # Wide features (flattened feature maps): the same numbers from (N, N) Gram matrices, since
        # ||Y^T X||_F^2 = trace(X X^T Y Y^T) and ||X^T X||_F = ||X X^T||_F. Much cheaper when D >> N.
        gram_x, gram_y = x @ x.T, y @ y.T
        cross = (gram_x * gram_y).sum()
        norm_x, norm_y = torch.linalg.matrix_norm(gram_x), torch.linalg.matrix_norm(gram_y)
    return _clip_unit(float(cross / (norm_x * norm_y)))


def cka_matrix(
    acts_a: Mapping[str, torch.Tensor],
    acts_b: Mapping[str, torch.Tensor],
    *,
    pool: str = "flatten",
) -> torch.Tensor:
    """Linear CKA between every layer of ``acts_a`` and every layer of ``acts_b`` (19.1).

    ``acts_a`` and ``acts_b`` map layer names to activations of the *same* N examples, as
    :func:`capture_activations` returns them (pass the same dict twice to compare a network's
    layers with each other, or two networks' dicts to compare the networks). Activations with more
    than two dimensions are made 2-D first: ``pool="flatten"`` keeps every position as its own
    feature, ``(N, C*H*W)``, as Kornblith et al. do; ``pool="avg"`` averages over positions, ``(N, C)``.

    Returns a float64 tensor shaped ``(len(acts_a), len(acts_b))``; entry ``[i, j]`` compares the
    i-th layer of ``acts_a`` with the j-th of ``acts_b`` (in the dicts' order), ready for
    ``plot_heatmap(matrix, list(acts_a), list(acts_b), title=...)``.
    """
    if pool not in _MATRIX_POOLS:
        raise ValueError(f"Unknown pool {pool!r}: use one of {_MATRIX_POOLS}.")
    grams_a = _centred_grams(acts_a, "acts_a", pool)
    grams_b = grams_a if acts_b is acts_a else _centred_grams(acts_b, "acts_b", pool)
    sizes = {len(gram) for gram in [*grams_a.values(), *grams_b.values()]}
    if len(sizes) != 1:
        raise ValueError(
            f"The activations describe different numbers of examples ({sorted(sizes)}); CKA compares "
            "representations of the same examples, so capture every layer from the same images."
        )
    matrix = torch.empty(len(grams_a), len(grams_b), dtype=torch.float64)
    for i, gram_a in enumerate(grams_a.values()):
        for j, gram_b in enumerate(grams_b.values()):
            similarity = (gram_a * gram_b).sum() / (torch.linalg.matrix_norm(gram_a) * torch.linalg.matrix_norm(gram_b))
            matrix[i, j] = _clip_unit(float(similarity))
    return matrix


def _centred_grams(activations: Mapping[str, torch.Tensor], name: str, pool: str) -> dict[str, torch.Tensor]:
    """Each layer's (N, N) Gram matrix of centred features, computed once and reused for every pair."""
    if not isinstance(activations, Mapping) or len(activations) == 0:
        raise TypeError(
            f"{name} must be a non-empty dict {{layer name: activation}}, got {type(activations).__name__}; "
            "use the result of capture_activations(model, images, layers)."
        )
    grams = {}
    for layer, activation in activations.items():
        if not isinstance(activation, (torch.Tensor, np.ndarray)) or activation.ndim < 2:
            raise ValueError(
                f"{name}[{layer!r}] must be a tensor with a batch dimension, (N, D) or (N, C, H, W), got "
                f"{type(activation).__name__} of shape {tuple(getattr(activation, 'shape', ()))}."
            )
        activation = torch.as_tensor(activation)
        if activation.ndim > 2:
            activation = activation.flatten(start_dim=1) if pool == "flatten" else activation.flatten(start_dim=2).mean(dim=2)
        features = _centre_columns(_as_feature_matrix(activation, f"{name}[{layer!r}]"), f"{name}[{layer!r}]")
        grams[layer] = features @ features.T
    return grams


def _as_feature_matrix(features: Any, name: str) -> torch.Tensor:
    """Check that ``features`` is a real-valued, finite (N, D) matrix with N >= 2; return it in float64."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or NumPy array shaped (N, D), got {type(features).__name__}.")
    if features.dtype == torch.bool or features.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {features.dtype}; convert it with .float().")
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (examples, features), got shape {tuple(features.shape)}. Flatten feature maps "
            "with x.flatten(start_dim=1) or average them with x.mean(dim=(2, 3)) first (cka_matrix does this for you)."
        )
    if features.shape[0] < 2:
        raise ValueError(f"{name} has {features.shape[0]} example(s); comparing representations needs at least 2 (use many more).")
    if features.shape[1] < 1:
        raise ValueError(f"{name} has no feature columns (shape {tuple(features.shape)}).")
    features = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values; find where they come from (e.g. a diverged model) first.")
    return features


def _check_same_examples(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} rows but y has {y.shape[0]}: CKA compares two representations of the same "
            "examples, so row i of both must describe example i."
        )


def _centre_columns(features: torch.Tensor, name: str) -> torch.Tensor:
    centred = features - features.mean(dim=0, keepdim=True)
    # A representation that is the same for every example carries no information to compare.
    if not centred.abs().amax() > 0:
        raise ValueError(f"{name} is the same for every example (zero variance), so its CKA is undefined.")
    return centred


def _clip_unit(value: float) -> float:
    # Rounding can push a true 1.0 a hair above 1; the exact value always lies in [0, 1].
    return min(max(value, 0.0), 1.0)


# ---------------------------------------------------------------------------------------------
# Linear probes: how much class information can a linear classifier read out?


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
) -> float:
    """Test accuracy of a linear classifier trained on frozen features (19.1, 19.2).

    The probe: features are standardised with the *training* set's mean and standard deviation
    (the test set must not leak into training), then a linear softmax classifier (logistic
    regression) is trained with Adam on the cross-entropy plus an L2 penalty on its weights
    (``weight_decay``) for ``epochs`` passes over the training set, in full batches
    (``batch_size=None``) or seeded, shuffled mini-batches.

    Logistic regression is convex, so the probe starts from zero weights: the result then depends
    on the features, not on a random initialisation, and is the same on every call for a given
    ``seed``. Features are ``(N, D)`` float tensors, labels int64 class indices ``(N,)``.
    Returns the fraction of test examples classified correctly, a Python float.
    """
    train_features = _check_probe_features(train_features, "train_features")
    test_features = _check_probe_features(test_features, "test_features")
    train_labels = _check_probe_labels(train_labels, train_features, "train_labels", "train_features")
    test_labels = _check_probe_labels(test_labels, test_features, "test_labels", "test_features")
    _check_same_feature_space(train_features, test_features, "train_features", "test_features")
    unseen = sorted(set(test_labels.tolist()) - set(train_labels.tolist()))
    if unseen:
        raise ValueError(
            f"test_labels contain classes {unseen} that never occur in train_labels, so the probe cannot learn them; "
            "give the training set examples of every class."
        )
    _check_training_settings(epochs, lr, weight_decay, batch_size, seed)

    train_x, test_x = _standardise(train_features, test_features)
    weight, bias = _train_linear_classifier(train_x, train_labels, epochs, lr, weight_decay, batch_size, seed)
    with torch.no_grad():
        predictions = nn.functional.linear(test_x, weight, bias).argmax(dim=1)
    return float((predictions == test_labels).double().mean())


def _standardise(train_features: torch.Tensor, test_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets centred and scaled with the training set's per-feature mean and standard deviation."""
    mean = train_features.mean(dim=0)
    std = train_features.std(dim=0, correction=0)
    # A constant feature has zero spread: dividing it by 1 instead leaves it at 0 after centring.
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train_features - mean) / std, (test_features - mean) / std


def _train_linear_classifier(
    features: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float, weight_decay: float, batch_size: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of a softmax classifier ``logits = features @ weight.T + bias``, trained with Adam."""
    num_classes, dim, device = int(labels.max()) + 1, features.shape[1], features.device
    # Plain zero tensors rather than nn.Linear, whose random initialisation would draw from (and so
    # change) the global random state of the notebook that calls the probe.
    weight = torch.zeros(num_classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    # Adam's weight_decay adds weight_decay * w to the gradient: an L2 penalty on the weights, not the bias.
    optimizer = torch.optim.Adam([{"params": [weight], "weight_decay": weight_decay}, {"params": [bias]}], lr=lr)
    batch_size = batch_size or len(features)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # the probe trains even when the caller is inside torch.no_grad()
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator).to(device)
            for start in range(0, len(features), batch_size):
                rows = order[start:start + batch_size]
                loss = nn.functional.cross_entropy(nn.functional.linear(features[rows], weight, bias), labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return weight.detach(), bias.detach()


def _check_same_feature_space(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Two feature matrices must come from the same layer (same width) and sit on one device."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} have {a.shape[1]} columns but {name_b} have {b.shape[1]}: "
            "extract both from the same layer with the same pooling."
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} are on {a.device} but {name_b} on {b.device}; move both to one device.")


def _check_probe_features(features: Any, name: str) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        got = f"{features.dtype} tensor" if isinstance(features, torch.Tensor) else type(features).__name__
        raise TypeError(f"{name} must be a float tensor shaped (N, D), got a {got}; convert with .float().")
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (examples, features), got shape {tuple(features.shape)}; extract them with "
            "pool='avg' or 'flatten', or flatten with x.flatten(start_dim=1)."
        )
    if len(features) == 0:
        raise ValueError(f"{name} is empty: there is nothing to train or test on.")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the model and data that produced them.")
    return features.detach().float()


def _check_probe_labels(labels: Any, features: torch.Tensor, name: str, features_name: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        got = f"{labels.dtype} tensor of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"{name} must be an int64 tensor of class indices shaped (N,), got a {got}; convert with .long().")
    if len(labels) != len(features):
        raise ValueError(f"{features_name} has {len(features)} rows but {name} has {len(labels)} labels; they must match one to one.")
    if labels.min() < 0:
        raise ValueError(f"{name} must be class indices 0, 1, 2, ..., got {int(labels.min())}.")
    return labels.to(features.device)


def _check_training_settings(epochs: Any, lr: Any, weight_decay: Any, batch_size: Any, seed: Any) -> None:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}; e.g. lr=0.05.")
    if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}; 0 switches the L2 penalty off.")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, or None for full batches, got {batch_size!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")


# ---------------------------------------------------------------------------------------------
# Nearest neighbours in feature space


@torch.no_grad()
def nearest_neighbours(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    k: int = 5,
    metric: str = "cosine",
) -> torch.Tensor:
    """Indices of the ``k`` gallery examples closest to each query, nearest first: ``(Q, k)`` int64 (19.1).

    ``metric="cosine"`` ranks by the angle between feature vectors (their direction, not their
    length), ``"euclidean"`` by straight-line distance. Show the images at these indices to see
    what a layer considers similar. If the queries are part of the gallery, each query's nearest
    neighbour is itself.
    """
    query = _check_probe_features(query_features, "query_features")
    gallery = _check_probe_features(gallery_features, "gallery_features")
    _check_same_feature_space(query, gallery, "query_features", "gallery_features")
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}: use one of {METRICS}.")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(gallery):
        raise ValueError(f"k must be an int between 1 and the gallery size {len(gallery)}, got {k!r}.")
    if metric == "cosine":
        similarity = nn.functional.normalize(query, dim=1) @ nn.functional.normalize(gallery, dim=1).T
        return similarity.topk(k, dim=1).indices
    distances = torch.cdist(query, gallery)
    return distances.topk(k, dim=1, largest=False).indices


# ---------------------------------------------------------------------------------------------
# Transferability, stage by stage


def transferability_curve(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    test_data: Dataset | DataLoader,
    layers: Sequence[str] | None = None,
    *,
    cache: FeatureCache | None = None,
    pool: str = "avg",
    epochs: int = 100,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Linear-probe test accuracy of each layer's features on a new task: ``{layer: accuracy}`` (19.1).

    For each layer (default: ``stage_names(model)``, input to output) the frozen ``model``'s
    features of ``train_data`` and ``test_data`` are extracted with
    :func:`course_lib.features.extract_features` (reused from ``cache`` when given) and scored
    with :func:`linear_probe_accuracy` (``epochs``, ``lr``, ``weight_decay``, ``seed``). Plotting
    the curve of a pretrained and a randomly initialised model shows where in the network the
    transferable knowledge lives.
    """
    if pool not in _CURVE_POOLS:
        raise ValueError(f"Unknown pool {pool!r}: a linear probe needs 2-D features, so use one of {_CURVE_POOLS}.")
    if layers is None:
        layers = stage_names(model)
    _named_layers(model, layers)  # every name checked before any slow extraction starts
    curve = {}
    for layer in layers:
        train_features, train_labels = extract_features(model, train_data, layer, pool=pool, cache=cache, progress=progress)
        test_features, test_labels = extract_features(model, test_data, layer, pool=pool, cache=cache, progress=progress)
        curve[layer] = linear_probe_accuracy(
            train_features, train_labels, test_features, test_labels,
            epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed,
        )
    return curve
