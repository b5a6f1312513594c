"""Install (or remove) the torchvision import fix in the current Python environment.

Run by ``make venv`` with the virtual environment's interpreter. See
``tools/course_torchvision_fix.py`` for why the fix exists and what it does. It is installed only
where it is needed: if ``import torchvision`` already works, this script does nothing.

    python tools/install_torchvision_fix.py            # install where needed, then verify
    python tools/install_torchvision_fix.py --remove   # take it out again
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import sysconfig

HERE = pathlib.Path(__file__).resolve().parent
MODULE = "course_torchvision_fix"
PTH_NAME = "course_torchvision_fix.pth"


def _imports_cleanly() -> tuple[bool, str]:
    result = subprocess.run(
        [sys.executable, "-c", "import torchvision, timm"], capture_output=True, text=True
    )
    last_line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    return result.returncode == 0, last_line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remove", action="store_true", help="remove the fix from this environment")
    args = parser.parse_args()

    site_packages = pathlib.Path(sysconfig.get_paths()["purelib"])
    pth_file = site_packages / PTH_NAME
    module_file = site_packages / f"{MODULE}.py"

    if args.remove:
        for file in (pth_file, module_file):
            file.unlink(missing_ok=True)
        print(f"removed the torchvision import fix from {site_packages}")
        return 0

    pth_file.unlink(missing_ok=True)
    ok, error = _imports_cleanly()
    if ok:
        module_file.unlink(missing_ok=True)
        print("torchvision and timm import cleanly: no fix needed")
        return 0
    if "torchvision::nms does not exist" not in error:
        print(f"import torchvision failed for a reason this fix does not address:\n  {error}", file=sys.stderr)
        return 1

    shutil.copyfile(HERE / f"{MODULE}.py", module_file)
    pth_file.write_text(f"import {MODULE}; {MODULE}.install()\n")
    ok, error = _imports_cleanly()
    if not ok:
        print(f"the torchvision import fix did not help:\n  {error}", file=sys.stderr)
        return 1
    print(
        "installed the torchvision import fix (CUDA torchvision next to a CPU torch): models, "
        "transforms, datasets and timm import; torchvision.ops kernels and torchvision.io stay unavailable"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
