"""Tests for course_lib.features: extract_features and the helpers for training on features."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.features import feature_loader, features_dataset, layer_names
from course_lib.training import fit

from feature_toys import CountingCNN, FingerprintedImages, extract


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


def test_extract_layers_runs_the_data_once_for_every_layer_and_caches_each(tmp_path):
    from course_lib.feature_cache import FeatureCache
    from course_lib.features import extract_features, extract_layers

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    data = TensorDataset(torch.randn(10, 3, 8, 8), torch.arange(10) % 2)
    calls = []
    model.register_forward_pre_hook(lambda module, inputs: calls.append(len(inputs[0])))
    cache = FeatureCache(tmp_path)
    both = extract_layers(model, data, ["0", "2", None], batch_size=4, cache=cache, progress=False)
    assert calls == [4, 4, 2]  # one pass over the data for all three layers
    for layer in ("0", "2", None):
        alone = extract_features(model, data, layer, batch_size=4, progress=False)
        assert torch.equal(both[layer][0], alone[0]) and torch.equal(both[layer][1], alone[1])
    calls.clear()
    again = extract_layers(model, data, ["2", "0"], cache=cache, progress=False)
    assert calls == [] and list(again) == ["2", "0"]  # every layer came from the cache
    assert torch.equal(again["0"][0], both["0"][0])
    with pytest.raises(ValueError, match="no layer .nope."):
        extract_layers(model, data, ["0", "nope"], progress=False)
