"""Tests for the set-up's torchvision import fix (tools/course_torchvision_fix.py).

It must make `import torchvision` and `import timm` work where torchvision's compiled ops cannot
load, do nothing where they can, and never hide that the ops are missing.
"""

import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_torchvision_and_timm_import():
    result = subprocess.run([sys.executable, "-c", "import torchvision, timm"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fix_is_applied_only_when_the_compiled_ops_are_missing():
    import torchvision

    has_ops = torchvision.extension._has_ops()
    fix = sys.modules.get("course_torchvision_fix")
    if has_ops:
        assert fix is None or not fix.applied, "the fix must do nothing where torchvision's ops load"
    else:
        assert fix is not None and fix.applied, "torchvision imported without its ops, so the fix must have run"


def test_missing_kernels_still_fail_loudly():
    import torchvision

    if torchvision.extension._has_ops():
        pytest.skip("torchvision's compiled ops load on this machine: nothing is missing")
    with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops"):
        torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)


def test_models_and_transforms_work_without_the_compiled_ops():
    import timm
    import torchvision
    from torchvision import transforms

    image = transforms.ToTensor()(transforms.ToPILImage()(torch.rand(3, 40, 40)))
    assert transforms.Resize(32)(image).shape == (3, 32, 32)
    assert torchvision.models.resnet18(num_classes=3).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    assert timm.create_model("resnet18", num_classes=2).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 2)
