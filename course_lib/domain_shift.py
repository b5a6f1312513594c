"""Seeing a domain shift without target labels: how far apart are the source's and the target's data? (19.4)

Before adapting a model to a new domain, chapter 19.4 measures the shift with unlabelled target images:

- :func:`mmd2`: the squared maximum mean discrepancy between two feature samples (Gretton et al., 2012);
- :func:`proxy_a_distance`: how well a linear classifier tells the two domains apart (Ben-David et al., 2007);
- :func:`stage_divergences`: both, at every stage of a backbone, in one pass over each dataset;
- :func:`batchnorm_mismatch`: how far the target's statistics at each BatchNorm layer are from the
  running statistics stored at pretraining time, the mismatch AdaBN (Li et al., 2016) removes.

A lesson cell::

    divergences = stage_divergences(model, source_test, target_test, cache=FeatureCache())
    mismatch = batchnorm_mismatch(model, target_test)

To ask whether a diagnostic predicts the accuracy drop across several target domains, NumPy's
``np.corrcoef`` (Pearson) or ``scipy.stats.spearmanr`` (rank) on the two lists is all it takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from course_lib.core import eval_mode, model_device
from course_lib.feature_cache import FeatureCache
from course_lib.features import extract_layers
from course_lib.models import stage_names
from course_lib.probes import linear_probe_accuracy
from course_lib.validation import (
    check_feature_matrix, check_module, check_non_negative_int, check_positive_int, check_positive_number,
    check_same_feature_space, is_int,
)

__all__ = ["BANDWIDTH_FACTORS", "batchnorm_mismatch", "domain_classifier_error", "mmd2", "proxy_a_distance",
           "stage_divergences"]

BANDWIDTH_FACTORS = (0.5, 1.0, 2.0)


# ---------------------------------------------------------------------------------------------
# Distances between two feature samples


def _check_pair(source: torch.Tensor, target: torch.Tensor, at_least: int) -> tuple[torch.Tensor, torch.Tensor]:
    source, target = check_feature_matrix(source, "source"), check_feature_matrix(target, "target")
    check_same_feature_space(source, target, "source", "target")
    for name, features in (("source", source), ("target", target)):
        if len(features) < at_least:
            raise ValueError(f"{name} has {len(features)} example(s); this measure needs at least {at_least} per "
                             "domain (use hundreds for a number you can trust).")
    return source, target


def _subsample(features: torch.Tensor, at_most: int, generator: torch.Generator) -> torch.Tensor:
    """At most ``at_most`` rows, drawn without replacement (all of them, shuffled, when there are fewer)."""
    order = torch.randperm(len(features), generator=generator)[:at_most]
    return features[order.to(features.device)]


def mmd2(
    source: torch.Tensor,
    target: torch.Tensor,
    bandwidths: Sequence[float] | None = None,
    unbiased: bool = True,
    *,
    max_examples: int | None = 1000,
    seed: int = 0,
) -> float:
    """Squared maximum mean discrepancy between two feature samples (Gretton et al., 2012) (19.4).

    ``MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)`` for source features ``x`` ``(n, D)`` and target
    features ``y`` ``(m, D)``: 0 when the two distributions are the same, larger the further apart.
    ``k`` is the average of Gaussian kernels ``exp(-|x - y|^2 / (2 sigma^2))``, one per bandwidth
    ``sigma``: several widths catch differences at several scales, and averaging keeps ``k(x, x) = 1``,
    so the value lies in [0, 2]. ``bandwidths=None`` (the median heuristic) takes the median distance
    between two points of the pooled sample times each of :data:`BANDWIDTH_FACTORS`; as the widths
    scale with the data, scaling every feature leaves the value unchanged, so stages whose features
    have very different scales can be compared.

    ``unbiased=True`` leaves out each point's similarity to itself: right on average, so for two
    samples of one distribution it can come out slightly *negative*. ``unbiased=False`` is the biased
    V-statistic: never negative, but above 0 even for one distribution. The cost grows with the square
    of the sample sizes, so each side is first cut to at most ``max_examples`` rows drawn with ``seed``
    (None keeps every row).
    """
    source, target = _check_pair(source, target, at_least=2)
    if max_examples is not None:
        if not is_int(max_examples) or max_examples < 2:
            raise ValueError(f"max_examples must be an int >= 2, or None to keep every row, got {max_examples!r}.")
        generator = torch.Generator().manual_seed(check_non_negative_int(seed, "seed"))
        source, target = _subsample(source, max_examples, generator), _subsample(target, max_examples, generator)
    # float64: the three averages nearly cancel, and float32 rounding would swamp a small MMD.
    pooled = torch.cat([source, target]).double()
    squared = torch.cdist(pooled, pooled).square()
    widths = _median_bandwidths(squared) if bandwidths is None else _check_bandwidths(bandwidths)
    kernel = sum(torch.exp(-squared / (2 * width**2)) for width in widths) / len(widths)
    n, m = len(source), len(target)
    within_source, within_target, across = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    if unbiased:
        # Each point's similarity to itself (always 1) says nothing about the distribution.
        value = ((within_source.sum() - within_source.trace()) / (n * (n - 1))
                 + (within_target.sum() - within_target.trace()) / (m * (m - 1)) - 2 * across.mean())
        return float(value)
    value = within_source.mean() + within_target.mean() - 2 * across.mean()
    return max(float(value), 0.0)  # the exact V-statistic is >= 0; rounding may leave it at -1e-17


def _median_bandwidths(squared: torch.Tensor) -> list[float]:
    rows, columns = torch.triu_indices(len(squared), len(squared), offset=1)
    distances = squared[rows, columns].sqrt()
    median = float(distances.median())
    # More than half the pairs identical: fall back to the largest distance (all identical: any width gives 0).
    median = median if median > 0 else max(float(distances.max()), 1e-12)
    return [factor * median for factor in BANDWIDTH_FACTORS]


def _check_bandwidths(bandwidths: Sequence[float]) -> list[float]:
    if isinstance(bandwidths, (int, float)) or not isinstance(bandwidths, Sequence) or not bandwidths:
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers (e.g. [0.5, 1.0]), or None for "
                         f"the median heuristic, got {bandwidths!r}.")
    return [check_positive_number(width, "each bandwidth") for width in bandwidths]


def domain_classifier_error(source: torch.Tensor, target: torch.Tensor, *, seed: int = 0) -> float:
    """Held-out error of a linear classifier trained to tell source (0) from target (1) features (19.4).

    The same number ``k = min(n, m)`` of rows is drawn (with ``seed``) from each side, so that
    guessing scores 0.5; the first half of each trains :func:`course_lib.probes.linear_probe_accuracy`'s
    logistic regression, the rest measures its error. 0.5: the domains look alike to a linear
    classifier; 0: it separates them perfectly.
    """
    source, target = _check_pair(source, target, at_least=4)
    generator = torch.Generator().manual_seed(check_non_negative_int(seed, "seed"))
    count = min(len(source), len(target))
    source, target = _subsample(source, count, generator), _subsample(target, count, generator)
    half = count // 2
    train = torch.cat([source[:half], target[:half]])
    test = torch.cat([source[half:], target[half:]])
    train_labels = torch.arange(2).repeat_interleave(half)
    test_labels = torch.arange(2).repeat_interleave(count - half)
    return 1.0 - linear_probe_accuracy(train, train_labels, test, test_labels, seed=seed)


def proxy_a_distance(source: torch.Tensor, target: torch.Tensor, *, seed: int = 0) -> float:
    """The proxy A-distance ``2 (1 - 2 error)`` between two feature samples (Ben-David et al., 2007, 2010) (19.4).

    ``error`` is :func:`domain_classifier_error`: the held-out error of a linear classifier that
    tells the domains apart. 0 means it cannot do better than guessing (no visible shift), 2 that it
    never errs. A classifier worse than guessing (chance, on small samples) is clipped to 0.
    """
    error = domain_classifier_error(source, target, seed=seed)
    return min(max(2.0 * (1.0 - 2.0 * error), 0.0), 2.0)


def stage_divergences(
    model: nn.Module,
    source: Dataset | DataLoader,
    target: Dataset | DataLoader,
    *,
    stages: Sequence[str] | None = None,
    max_examples: int | None = 1000,
    seed: int = 0,
    cache: FeatureCache | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """``{stage: {"mmd2": ..., "proxy_a_distance": ...}}`` between source and target images (19.4).

    For each stage (default :func:`course_lib.models.stage_names`, input to output) the frozen
    ``model``'s average-pooled features of both datasets are extracted with
    :func:`course_lib.features.extract_layers`, one pass per dataset (reused from ``cache`` when
    given), and compared with :func:`mmd2` (on at most ``max_examples`` per side) and
    :func:`proxy_a_distance`. The data yields ``(image, label)`` pairs; the labels are not used.
    Where the divergence jumps shows which stages see the new domain as different.
    """
    stages = list(stage_names(model) if stages is None else stages)
    source_features = extract_layers(model, source, stages, cache=cache, progress=progress)
    target_features = extract_layers(model, target, stages, cache=cache, progress=progress)
    return {
        stage: {
            "mmd2": mmd2(source_features[stage][0], target_features[stage][0], max_examples=max_examples, seed=seed),
            "proxy_a_distance": proxy_a_distance(source_features[stage][0], target_features[stage][0], seed=seed),
        }
        for stage in stages
    }


# ---------------------------------------------------------------------------------------------
# BatchNorm statistics on the target (what AdaBN re-estimates)


class _ChannelMoments:
    """Exact per-channel mean and variance of every value seen, merged batch by batch (Chan et al., 1979)."""

    def __init__(self) -> None:
        self.count, self.mean, self.squares = 0, None, None  # squares: sum of squared deviations from the mean

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().transpose(0, 1).reshape(values.shape[1], -1).double()  # (channels, values)
        count, mean = values.shape[1], values.mean(dim=1)
        squares = (values - mean[:, None]).square().sum(dim=1)
        if self.mean is None:
            self.count, self.mean, self.squares = count, mean, squares
            return
        # Merging means and squared deviations keeps the *exact* variance of all the values; averaging
        # batch variances would miss how far the batch means differ from each other.
        total, delta = self.count + count, mean - self.mean
        self.mean = self.mean + delta * count / total
        self.squares = self.squares + squares + delta.square() * self.count * count / total
        self.count = total

    def variance(self) -> torch.Tensor:
        return self.squares / max(self.count - 1, 1)  # unbiased, as BatchNorm's running_var


def _symmetric_kl(layer: nn.modules.batchnorm._BatchNorm, moments: _ChannelMoments) -> float:
    if moments.count == 0:
        return float("nan")  # the forward pass never reached this layer
    # Both variances get the layer's eps, as in its normalisation, so a constant channel stays finite.
    source_mean, source_var = layer.running_mean.double(), layer.running_var.double() + layer.eps
    target_mean, target_var = moments.mean.to(source_mean.device), moments.variance().to(source_mean.device) + layer.eps
    ratio, shift = target_var / source_var, (target_mean - source_mean).square()
    divergence = 0.5 * (ratio + 1 / ratio - 2) + 0.5 * shift * (1 / source_var + 1 / target_var)
    return float(divergence.mean())


@torch.no_grad()
def batchnorm_mismatch(model: nn.Module, data: Dataset | DataLoader, *, max_batches: int | None = None,
                       batch_size: int = 256) -> dict[str, float]:
    """How far ``data``'s statistics at each BatchNorm layer are from its running ones: ``{layer: divergence}`` (19.4).

    The running mean and variance were estimated on the source at pretraining time. Forward hooks
    collect the exact per-channel mean ``m_t`` and (unbiased) variance ``v_t`` of each layer's *input*
    on ``data``, the target, over all batches (or the first ``max_batches``), in eval mode so that the
    running statistics do not move. Per channel, the symmetric KL divergence between ``N(m_t, v_t)``
    and the running ``N(m_s, v_s)`` (both variances plus the layer's ``eps``) is::

        D = (v_t / v_s + v_s / v_t - 2) / 2 + (m_t - m_s)^2 (1 / v_s + 1 / v_t) / 2

    0 when the statistics agree, growing with the mean's shift and the variances' ratio. Each layer
    gets its mean over channels, in the order the model defines the layers (nan for one the forward
    pass never reaches). AdaBN (Li et al., 2016) swaps in the target's statistics, setting every value
    to 0. ``data`` yields images or ``(image, label)`` pairs; labels are not used.
    """
    model = check_module(model, "batchnorm_mismatch")
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layers with running statistics, so there is no "
                         "mismatch to measure. Pass a backbone with BatchNorm (e.g. course-resnet or a ResNet).")
    if max_batches is not None:
        check_positive_int(max_batches, "max_batches", "Or None for every batch.")
    if not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=check_positive_int(batch_size, "batch_size"), shuffle=False)
    device = model_device(model)
    moments = {name: _ChannelMoments() for name in layers}
    hooks = [layer.register_forward_pre_hook(lambda _module, inputs, name=name: moments[name].add(inputs[0]))
             for name, layer in layers.items()]
    batches = 0
    try:
        with eval_mode(model):
            for batch in data:
                if max_batches is not None and batches == max_batches:
                    break
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(images, torch.Tensor):
                    raise TypeError(f"Each batch must be images or (images, labels), got {type(images).__name__}.")
                model(images.to(device))
                batches += 1
    finally:
        for hook in hooks:
            hook.remove()  # a forgotten hook would keep collecting in every later forward pass
    if batches == 0:
        raise ValueError("The data is empty: there are no target images to measure statistics on.")
    return {name: _symmetric_kl(layer, moments[name]) for name, layer in layers.items()}
