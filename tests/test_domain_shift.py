"""Tests for course_lib.domain_shift: MMD, the proxy A-distance, divergences per stage, BatchNorm mismatch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.domain_shift import (
    batchnorm_mismatch, domain_classifier_error, mmd2, proxy_a_distance, stage_divergences,
)
from course_lib.feature_cache import FeatureCache
from course_lib.freezing import batchnorm_statistics
from fine_tuning_toys import one_thread, tiny_resnet  # noqa: F401 (one_thread is an autouse fixture)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def shifted(n: int, shift: float, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Standard Gaussian features with the first coordinate moved by ``shift``."""
    features = randn(n, dim, seed=seed)
    features[:, 0] += shift
    return features


# ---------------------------------------------------------------------------------------------
# mmd2


def test_mmd2_is_about_zero_for_one_distribution_and_grows_with_the_shift():
    same = [mmd2(randn(150, 8, seed=seed), randn(150, 8, seed=seed + 100)) for seed in range(6)]
    assert all(abs(value) < 0.01 for value in same), same
    assert min(same) < 0 < max(same), same  # the unbiased estimate scatters around 0: it can be negative
    growing = [mmd2(randn(150, 8, seed=1), shifted(150, shift, seed=2)) for shift in (1.0, 2.0, 4.0, 8.0)]
    assert growing == sorted(growing) and growing[0] > 0.02, growing
    assert growing[-1] <= 2.0  # the averaged kernel has k(x, x) = 1, so MMD^2 is at most 2


def test_mmd2_is_symmetric_and_the_biased_estimate_is_never_negative():
    x, y = randn(40, 5, seed=1), shifted(30, 1.0, dim=5, seed=2)
    assert mmd2(x, y) == pytest.approx(mmd2(y, x), abs=1e-12)
    for seed in range(5):
        a, b = randn(20, 5, seed=seed), randn(20, 5, seed=seed + 50)
        assert mmd2(a, b, unbiased=False) >= 0.0
        assert mmd2(a, b, unbiased=False) > mmd2(a, b)  # the V-statistic adds each point's similarity to itself


def numpy_mmd2(x: np.ndarray, y: np.ndarray, widths: list[float], unbiased: bool) -> float:
    """The textbook formula written out, for comparison."""
    def kernel(a, b):
        squared = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        return np.mean([np.exp(-squared / (2 * w**2)) for w in widths], axis=0)

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)
    if unbiased:
        within = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        return within - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd2_matches_a_direct_numpy_computation(unbiased):
    x, y = randn(7, 3, seed=1), shifted(5, 0.7, dim=3, seed=2)
    widths = [0.5, 1.5]
    expected = numpy_mmd2(x.double().numpy(), y.double().numpy(), widths, unbiased)
    assert mmd2(x, y, bandwidths=widths, unbiased=unbiased) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mmd2_default_bandwidths_follow_the_data_so_a_common_scale_does_not_matter():
    x, y = randn(30, 4, seed=1), shifted(30, 1.0, dim=4, seed=2)
    assert mmd2(1000 * x, 1000 * y) == pytest.approx(mmd2(x, y), rel=1e-6)  # up to float32 rounding of the inputs
    assert mmd2(1000 * x, 1000 * y, bandwidths=[1.0]) == pytest.approx(0.0, abs=1e-9)  # a fixed width does not


def test_mmd2_subsamples_each_side_reproducibly():
    x, y = randn(60, 4, seed=1), shifted(60, 1.0, dim=4, seed=2)
    assert mmd2(x, y) == pytest.approx(mmd2(x, y, max_examples=None), rel=1e-9)  # fewer rows than the cap: all kept
    assert mmd2(x, y, max_examples=10, seed=3) == mmd2(x, y, max_examples=10, seed=3)
    assert mmd2(x, y, max_examples=10, seed=3) != mmd2(x, y, max_examples=10, seed=4)


@pytest.mark.parametrize(
    "source, target, kwargs, error, message",
    [
        (randn(5, 3).long(), randn(5, 3), {}, TypeError, "float tensor"),
        (randn(5), randn(5, 3), {}, ValueError, "2-D"),
        (randn(5, 3), randn(5, 4), {}, ValueError, "same layer"),
        (randn(1, 3), randn(5, 3), {}, ValueError, "at least 2"),
        (randn(5, 3), randn(5, 3) * float("nan"), {}, ValueError, "NaN"),
        (randn(5, 3), randn(5, 3), {"bandwidths": [1.0, -1.0]}, ValueError, "bandwidth"),
        (randn(5, 3), randn(5, 3), {"bandwidths": []}, ValueError, "non-empty"),
        (randn(5, 3), randn(5, 3), {"bandwidths": 1.0}, ValueError, "list"),
        (randn(5, 3), randn(5, 3), {"max_examples": 1}, ValueError, "max_examples"),
        (randn(5, 3), randn(5, 3), {"seed": -1}, ValueError, "seed"),
    ],
)
def test_mmd2_explains_bad_input(source, target, kwargs, error, message):
    with pytest.raises(error, match=message):
        mmd2(source, target, **kwargs)


# ---------------------------------------------------------------------------------------------
# proxy_a_distance


def test_proxy_a_distance_is_near_zero_for_one_distribution_and_two_for_separated_ones():
    same = [proxy_a_distance(randn(200, 8, seed=seed), randn(200, 8, seed=seed + 100)) for seed in range(3)]
    assert all(0.0 <= value < 0.4 for value in same), same
    assert proxy_a_distance(randn(100, 8, seed=1), shifted(80, 10.0, seed=2)) == pytest.approx(2.0)
    assert domain_classifier_error(randn(100, 8, seed=1), shifted(80, 10.0, seed=2)) == pytest.approx(0.0)
    middle = proxy_a_distance(randn(200, 8, seed=1), shifted(200, 1.0, seed=2))
    assert 0.4 < middle < 2.0, middle


def test_proxy_a_distance_is_deterministic_for_a_seed_and_leaves_the_global_random_state_alone():
    x, y = randn(60, 6, seed=1), shifted(90, 0.5, dim=6, seed=2)
    state = torch.random.get_rng_state()
    assert proxy_a_distance(x, y, seed=5) == proxy_a_distance(x, y, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_domain_classifier_is_balanced_so_a_larger_side_cannot_win_by_majority():
    # A classifier that always says "target" would score 0.9 on 900 target and 100 source rows.
    error = domain_classifier_error(randn(100, 4, seed=1), randn(900, 4, seed=2))
    assert 0.35 < error < 0.65, error


@pytest.mark.parametrize(
    "source, target, message",
    [(randn(3, 4), randn(10, 4), "at least 4"), (randn(10, 4), randn(10, 5), "same layer")],
)
def test_proxy_a_distance_explains_bad_input(source, target, message):
    with pytest.raises(ValueError, match=message):
        proxy_a_distance(source, target)


# ---------------------------------------------------------------------------------------------
# stage_divergences and batchnorm_mismatch on a small CourseResNet


def images(n: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def darkened(x: torch.Tensor, seed: int = 9) -> torch.Tensor:
    """The same images in a 'new domain': five times darker, with sensor noise."""
    return 0.2 * x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def dataset(x: torch.Tensor) -> TensorDataset:
    return TensorDataset(x, torch.zeros(len(x), dtype=torch.int64))  # labels are never used


def test_stage_divergences_cover_every_stage_and_see_a_shift_but_not_a_fresh_sample():
    model, source = tiny_resnet(), images(seed=0)
    fresh = stage_divergences(model, dataset(source), dataset(images(seed=1)))
    shift = stage_divergences(model, dataset(source), dataset(darkened(source)))
    assert list(fresh) == list(shift) == ["stem", "stage1", "stage2", "stage3", "stage4"]
    for stage in fresh:
        assert set(fresh[stage]) == {"mmd2", "proxy_a_distance"}
        assert all(math.isfinite(value) for value in [*fresh[stage].values(), *shift[stage].values()])
        seen = (stage, fresh[stage], shift[stage])
        assert shift[stage]["mmd2"] > fresh[stage]["mmd2"] + 0.1, seen
        assert shift[stage]["proxy_a_distance"] > fresh[stage]["proxy_a_distance"] + 1.0, seen


def test_stage_divergences_take_chosen_stages_and_a_cache(tmp_path):
    model, cache = tiny_resnet(), FeatureCache(tmp_path / "features")
    source, target = dataset(images(16, seed=0)), dataset(images(16, seed=1))
    first = stage_divergences(model, source, target, stages=["stage2", "stage4"], cache=cache)
    assert list(first) == ["stage2", "stage4"]
    assert len(list(cache.folder.glob("*.pt"))) == 4  # two stages of two datasets
    assert stage_divergences(model, source, target, stages=["stage2", "stage4"], cache=cache) == first
    with pytest.raises(ValueError, match="no layer 'stage9'"):
        stage_divergences(model, source, target, stages=["stage9"])


def estimate_running_statistics(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm layer's running statistics from ``x`` (a cumulative average: momentum=None)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for (batch,) in DataLoader(TensorDataset(x), batch_size=16):
            model(batch)
    model.eval()


def test_batchnorm_mismatch_is_near_zero_on_the_statistics_own_data_and_large_after_a_shift():
    model, source = tiny_resnet(), images(seed=0)
    estimate_running_statistics(model, source)
    same = batchnorm_mismatch(model, dataset(source))
    shift = batchnorm_mismatch(model, dataset(darkened(source)))
    assert list(same) == list(batchnorm_statistics(model))  # every BatchNorm layer, in the model's order
    assert max(same.values()) < 0.01, same
    assert min(shift.values()) > 0.2 and all(shift[name] > 100 * same[name] for name in same), shift


def test_batchnorm_mismatch_leaves_running_statistics_and_modes_alone():
    model = tiny_resnet().train()
    model.stage1.bn1.eval()  # a layer deliberately kept in eval mode must stay so
    before = batchnorm_statistics(model)
    batchnorm_mismatch(model, DataLoader(dataset(images(16)), batch_size=8), max_batches=1)
    after = batchnorm_statistics(model)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert model.training and model.stage2.bn1.training and not model.stage1.bn1.training


def test_batchnorm_mismatch_matches_the_symmetric_kl_formula_on_unlabelled_batches():
    layer = nn.BatchNorm1d(2, eps=0.0).eval()
    layer.running_mean.copy_(torch.tensor([0.0, 1.0]))
    layer.running_var.copy_(torch.tensor([1.0, 4.0]))
    x = randn(40, 2, seed=3) * torch.tensor([1.0, 3.0]) + torch.tensor([2.0, 1.0])
    mean, var = x.double().mean(dim=0), x.double().var(dim=0)  # exact, unbiased, as BatchNorm's running_var
    source_mean, source_var = layer.running_mean.double(), layer.running_var.double()
    expected = (0.5 * (var / source_var + source_var / var - 2)
                + 0.5 * (mean - source_mean) ** 2 * (1 / var + 1 / source_var)).mean()
    result = batchnorm_mismatch(layer, DataLoader(x, batch_size=7))  # images only, no labels
    assert list(result) == [""] and result[""] == pytest.approx(float(expected), rel=1e-9)


def test_batchnorm_mismatch_uses_the_exact_variance_not_the_mean_of_batch_variances():
    # Two batches with different means: the data's variance (about 1 + 2^2 = 5) is far larger than
    # the variance within each batch (about 1), which an average of batch variances would report.
    first, second = randn(8, 1, 4, 4, seed=1), randn(8, 1, 4, 4, seed=2) + 4.0
    x = torch.cat([first, second])
    model = nn.Sequential(nn.BatchNorm2d(1)).eval()
    model[0].running_mean.copy_(x.mean().reshape(1))
    model[0].running_var.copy_(x.var().reshape(1))
    assert batchnorm_mismatch(model, DataLoader(dataset(x), batch_size=8))["0"] < 1e-6


def test_batchnorm_mismatch_explains_bad_input():
    with pytest.raises(ValueError, match="no BatchNorm"):
        batchnorm_mismatch(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), dataset(images(4)))
    with pytest.raises(ValueError, match="empty"):
        batchnorm_mismatch(tiny_resnet(), dataset(images(0)))
    with pytest.raises(ValueError, match="max_batches"):
        batchnorm_mismatch(tiny_resnet(), dataset(images(4)), max_batches=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        batchnorm_mismatch(images(4), dataset(images(4)))
