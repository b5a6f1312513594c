"""Tests for course_lib.features: extract_features, its on-disk cache, fingerprints, helpers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from course_lib.feature_cache import FeatureCache, data_fingerprint, weights_fingerprint
from course_lib.features import extract_features, feature_loader, features_dataset, layer_names
from course_lib.training import fit


class FingerprintedImages(Dataset):
    """A stand-in for the course's ShapeWorld: tensors, a `fingerprint` string and a `transform`."""

    def __init__(self, n: int = 20, seed: int = 0, transform=None):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 16, 16, generator=generator)
        self.labels = torch.arange(n) % 3
        self.fingerprint = f"toy-images-n{n}-seed{seed}"
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])


class Scale:
    """A transform with a stable repr, as torchvision's transforms have."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, image):
        return image * self.factor

    def __repr__(self) -> str:
        return f"Scale({self.factor})"


class CountingCNN(nn.Module):
    """A tiny CNN with BatchNorm and an in-place ReLU that counts its forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)
        self.forward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        return self.head(self.pool(self.body(x)))


def extract(model, data, layer=None, **kwargs):
    return extract_features(model, data, layer, batch_size=8, progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# extraction


@pytest.mark.parametrize(
    "layer, pool, shape",
    [
        (None, "avg", (20, 3)),
        ("head", "avg", (20, 3)),
        ("body.0", "avg", (20, 4)),
        ("body.0", "flatten", (20, 4 * 16 * 16)),
        ("body.0", "none", (20, 4, 16, 16)),
        ("pool", "none", (20, 4)),
    ],
)
def test_shapes_for_each_layer_and_pool(layer, pool, shape):
    data = FingerprintedImages()
    features, labels = extract(CountingCNN(), data, layer, pool=pool)
    assert features.shape == shape and features.dtype == torch.float32 and features.device.type == "cpu"
    assert torch.equal(labels, data.labels) and labels.dtype == torch.int64


def test_features_are_what_the_layer_computes():
    model, data = CountingCNN(), FingerprintedImages()
    model.eval()
    features, _ = extract(model, data, "body.0", pool="avg")
    assert torch.allclose(features, model.body[0](data.images).mean(dim=(2, 3)), atol=1e-6)
    logits, _ = extract(model, data)
    assert torch.allclose(logits, model(data.images), atol=1e-6)


def test_an_in_place_relu_after_the_layer_does_not_change_the_captured_activation():
    model, data = CountingCNN(), FingerprintedImages()
    features, _ = extract(model, data, "body.1", pool="none")  # BatchNorm output, before ReLU(inplace)
    assert (features < 0).any()


def test_extraction_leaves_parameters_buffers_requires_grad_and_modes_untouched():
    model, data = CountingCNN(), FingerprintedImages()
    model.train()
    model.head.eval()  # a layer deliberately in eval mode must stay so
    model.body[0].requires_grad_(False)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}

    extract(model, data, "body.1")

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), f"{name} changed"  # incl. BN running stats
    assert {name: p.requires_grad for name, p in model.named_parameters()} == requires_grad
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert not model.body[1]._forward_hooks  # the hook is removed


def test_extraction_from_a_dataloader_and_from_a_tensor_dataset():
    data = FingerprintedImages()
    from_dataset, _ = extract(CountingCNN(), data, "body.0")
    from_loader, labels = extract(CountingCNN(), DataLoader(data, batch_size=7), "body.0")
    assert torch.allclose(from_dataset, from_loader, atol=1e-6)
    features, labels = extract(CountingCNN(), TensorDataset(data.images, data.labels.int()))
    assert labels.dtype == torch.int64 and features.shape == (20, 3)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"no layer 'body.7'.*Did you mean.*body\.0") as info:
        extract(CountingCNN(), FingerprintedImages(), "body.7")
    assert "layer_names(model)" in str(info.value)
    assert layer_names(CountingCNN()) == ["body", "body.0", "body.1", "body.2", "pool", "pool.0", "pool.1", "head"]


@pytest.mark.parametrize(
    "data, kwargs, error, message",
    [
        (FingerprintedImages(), dict(pool="max"), ValueError, "Unknown pool"),
        (torch.rand(4, 3, 16, 16), {}, TypeError, "TensorDataset"),
        (TensorDataset(torch.rand(4, 3, 16, 16), torch.zeros(4)), {}, TypeError, "integer class indices"),
        (TensorDataset(torch.rand(4, 3, 16, 16)), {}, TypeError, r"\(image, label\)"),
        (TensorDataset(torch.rand(0, 3, 16, 16), torch.zeros(0, dtype=torch.long)), {}, ValueError, "empty"),
        (FingerprintedImages(), dict(device="meta"), ValueError, "model is on cpu"),
    ],
)
def test_bad_inputs_are_explained(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        extract(CountingCNN(), data, **kwargs)


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


# ---------------------------------------------------------------------------------------------
# training on features


def test_a_linear_head_trains_on_extracted_features():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = torch.rand(60, 3, 16, 16, generator=generator) * 0.5
    images[torch.arange(60), labels] += 0.5  # class k: bright channel k
    features, labels = extract(nn.Identity(), TensorDataset(images, labels), pool="avg")
    loader = feature_loader(features, labels, batch_size=16, seed=0)
    head = nn.Linear(3, 3)
    history = fit(head, loader, epochs=30, lr=0.1, val_loader=feature_loader(features, labels, shuffle=False), progress=False)
    assert history.last["val_accuracy"] > 0.9


def test_feature_loader_shuffles_reproducibly():
    features, labels = torch.randn(10, 4), torch.arange(10)
    order = lambda loader: torch.cat([y for _, y in loader]).tolist()
    assert order(feature_loader(features, labels, 4, seed=1)) == order(feature_loader(features, labels, 4, seed=1))
    assert order(feature_loader(features, labels, 4, shuffle=False)) == list(range(10))


@pytest.mark.parametrize(
    "features, labels, error, message",
    [
        (torch.randn(4, 2), torch.zeros(3, dtype=torch.long), ValueError, "must match"),
        (torch.randn(4, 2), torch.zeros(4), TypeError, r"labels.long\(\)"),
        (torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError, "float tensor"),
        (torch.randn(4), torch.zeros(4, dtype=torch.long), TypeError, r"\(N, D\)"),
    ],
)
def test_features_dataset_checks_its_inputs(features, labels, error, message):
    with pytest.raises(error, match=message):
        features_dataset(features, labels)
