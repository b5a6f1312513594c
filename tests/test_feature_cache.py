"""Tests for course_lib.feature_cache: fingerprints of weights and data, and the on-disk cache."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from course_lib.feature_cache import FeatureCache, data_fingerprint, weights_fingerprint
from course_lib.features import extract_features

from feature_toys import CountingCNN, FingerprintedImages, Scale, extract


# ---------------------------------------------------------------------------------------------
# the cache


def test_second_call_is_a_cache_hit_that_does_not_run_the_model(tmp_path, capsys):
    model, data, cache = CountingCNN(), FingerprintedImages(), FeatureCache(tmp_path)
    first = extract_features(model, data, "body.0", batch_size=8, cache=cache)
    calls = model.forward_calls
    assert calls == 3 and "cached in" in capsys.readouterr().out
    second = extract_features(model, data, "body.0", batch_size=8, cache=cache)
    assert model.forward_calls == calls
    assert "loaded from the cache" in capsys.readouterr().out
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert len(list(tmp_path.iterdir())) == 1  # one file, no temporary leftovers


def test_the_cache_misses_when_weights_layer_pool_data_or_transform_change(tmp_path):
    model, cache = CountingCNN(), FeatureCache(tmp_path)
    extract(model, FingerprintedImages(), "body.0", cache=cache)
    runs = [model.forward_calls]

    extract(model, FingerprintedImages(), "body.1", cache=cache)  # another layer
    runs.append(model.forward_calls)
    extract(model, FingerprintedImages(), "body.1", cache=cache, pool="flatten")  # another pooling
    runs.append(model.forward_calls)
    extract(model, FingerprintedImages(seed=1), "body.1", cache=cache)  # other data
    runs.append(model.forward_calls)
    extract(model, FingerprintedImages(transform=Scale(2.0)), "body.1", cache=cache)  # other transform
    runs.append(model.forward_calls)
    with torch.no_grad():
        model.body[0].weight.add_(0.1)  # fine-tuned weights
    extract(model, FingerprintedImages(), "body.0", cache=cache)
    runs.append(model.forward_calls)
    assert runs == [3, 6, 9, 12, 15, 18]
    assert len(list(tmp_path.iterdir())) == 6


def test_a_corrupted_cache_file_warns_then_is_recomputed_and_overwritten(tmp_path):
    model, data, cache = CountingCNN(), FingerprintedImages(), FeatureCache(tmp_path)
    expected, _ = extract(model, data, cache=cache)
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:50])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match=f"{path.name}.*recomputing"):
        features, _ = extract(model, data, cache=cache)
    assert torch.equal(features, expected) and model.forward_calls == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract(model, data, cache=cache)  # repaired: a clean hit
    assert model.forward_calls == 6


def test_the_default_cache_folder_follows_course_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    cache = FeatureCache()
    assert cache.folder == tmp_path / "features"
    extract(CountingCNN(), FingerprintedImages(), cache=cache)
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1


def test_data_that_cannot_be_fingerprinted_is_refused_not_cached_wrongly(tmp_path):
    cache, model = FeatureCache(tmp_path), CountingCNN()

    class Anonymous(FingerprintedImages):
        fingerprint = None

        def __init__(self):
            super().__init__()
            del self.fingerprint

    with pytest.raises(ValueError, match="fingerprint.*cache=None"):
        extract(model, Anonymous(), cache=cache)
    with pytest.raises(ValueError, match="stable description"):
        extract(model, FingerprintedImages(transform=lambda x: x * 2), cache=cache)
    with pytest.raises(ValueError, match="shuffle"):
        extract(model, DataLoader(FingerprintedImages(), shuffle=True), cache=cache)
    assert model.forward_calls == 0 and list(tmp_path.iterdir()) == []


def test_data_fingerprints():
    data = FingerprintedImages()
    assert data_fingerprint(data) == data_fingerprint(FingerprintedImages())
    assert data_fingerprint(data) != data_fingerprint(FingerprintedImages(transform=Scale(0.5)))
    assert data_fingerprint(data, transform_desc="my lambda v1") != data_fingerprint(data)
    assert data_fingerprint(Subset(data, [0, 1])) != data_fingerprint(Subset(data, [1, 0]))
    assert data_fingerprint(DataLoader(data)) != data_fingerprint(DataLoader(data, drop_last=True))
    tensors = TensorDataset(data.images.clone(), data.labels)
    before = data_fingerprint(tensors)
    tensors.tensors[0][0, 0, 0, 0] += 1
    assert data_fingerprint(tensors) != before


def test_weights_fingerprint_sees_weights_and_buffers_of_any_dtype():
    model = CountingCNN()
    fingerprint = weights_fingerprint(model)
    assert fingerprint == weights_fingerprint(CountingCNN()) and len(fingerprint) == 16
    model.body[1].running_mean += 1  # BatchNorm statistics are part of what features depend on
    assert weights_fingerprint(model) != fingerprint
    assert weights_fingerprint(CountingCNN().to(torch.bfloat16)) != fingerprint
    with pytest.raises(TypeError, match="nn.Module"):
        weights_fingerprint({"weight": torch.zeros(1)})
