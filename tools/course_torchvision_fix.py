"""Make the pure-Python parts of torchvision importable when its compiled ops cannot load.

Why this exists
---------------
The torchvision 0.28.0 wheel on PyPI is a CUDA build. Next to the CPU build of torch 2.13.0
(the only torch on some machines, including the course's CI) its compiled extension
``torchvision/_C.so`` fails to load. torchvision then still registers "fake" implementations for
its operators, and the first of them, ``torchvision::nms``, fails with
``RuntimeError: operator torchvision::nms does not exist``: ``import torchvision`` (and so
``import timm``) breaks, although models, transforms and datasets need no compiled code.

What it does
------------
``make venv`` copies this file into the virtual environment together with a ``.pth`` line that
calls :func:`install`. That puts a tiny import finder in front of the others. When
``torchvision`` is first imported, the finder removes itself and tries to load ``_C.so``:

* if it loads (a matching torchvision, a CUDA machine): nothing else happens;
* if it fails: the finder declares the two missing operator *schemas*
  (``torchvision::nms`` and ``torchvision::qnms``) so that torchvision's own import can go on.
  No kernel is registered: calling ``torchvision.ops.nms`` still fails, loudly, as it should, and
  ``torchvision.extension._has_ops()`` still reports ``False``.

Nothing here changes torchvision's files or any behaviour other than the import.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import pathlib
import sys

_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library registration alive for the life of the process
applied = False  # True once the schemas had to be declared (for diagnostics)


def _extension_loads(package_dir: pathlib.Path) -> bool:
    import torch

    libraries = sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
        return True
    except OSError:
        return False


def _declare_missing_schemas() -> None:
    global _library, applied
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _MISSING_SCHEMAS.items():
        if not _op_exists(name):
            _library.define(schema)
    applied = True


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


class _TorchvisionImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec("torchvision", path)
        if spec is not None and spec.origin is not None:
            package_dir = pathlib.Path(spec.origin).parent
            if not _extension_loads(package_dir):
                _declare_missing_schemas()
        return None  # let the normal finders import torchvision


def install() -> None:
    """Put the finder in front of the import system (called from the ``.pth`` file)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(finder, _TorchvisionImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionImportFinder())
