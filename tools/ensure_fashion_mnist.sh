#!/usr/bin/env bash
# Make sure the lite world's Fashion-MNIST (Debian's package dataset-fashion-mnist) is installed.
#
#   tools/ensure_fashion_mnist.sh              find it, or install the package when this is root with
#                                              apt-get (containers, CI); otherwise say how and go on
#   tools/ensure_fashion_mnist.sh --required   the same, but exit 1 when it is still missing (.ci/run)
#
# Run by `make test` and `make fashion-mnist`. Without it, the tests of the real Fashion-MNIST and
# the lite-profile notebook runs skip, and the line `make test` prints at the end says so.
set -euo pipefail

required=0
if [[ "${1:-}" == "--required" ]]; then
  required=1
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--required]" >&2
  exit 2
fi

# Where the package puts the files (course_lib.real_datasets.DEBIAN_FASHION_MNIST).
folder=/usr/share/datasets/fashion-mnist
if [[ -f $folder/t10k-labels-idx1-ubyte.gz ]]; then
  echo "Fashion-MNIST: $folder"
  exit 0
fi

if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST: not found; installing Debian's dataset-fashion-mnist package with apt-get (you are root)"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist \
     && [[ -f $folder/t10k-labels-idx1-ubyte.gz ]]; then
    echo "Fashion-MNIST: $folder"
    exit 0
  fi
  reason="apt-get could not install the package 'dataset-fashion-mnist' (offline, or a distribution without it)"
elif command -v apt-get >/dev/null 2>&1; then
  reason="installing it needs root: run \`sudo apt-get install dataset-fashion-mnist\`"
else
  reason="copy its four *-idx?-ubyte.gz files into \$COURSE_DATA_DIR/fashion-mnist (see README, 'Profiles')"
fi

echo "Fashion-MNIST: not found; $reason." >&2
if [[ $required == 1 ]]; then
  exit 1
fi
echo "Fashion-MNIST: the tests that need it will skip, and the summary at the end says so." >&2
