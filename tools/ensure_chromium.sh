#!/usr/bin/env bash
# Make sure the book's browser checks (tests/test_book.py) have a headless Chromium to run in.
#
#   tools/ensure_chromium.sh              find it, or install Debian's package when this is root
#                                         with apt-get (containers, CI); otherwise say how and go on
#   tools/ensure_chromium.sh --required   the same, but exit 1 when there is still no Chromium (.ci/run)
#
# Run by `make test` and `make chromium`. Without a browser the tests skip those checks, and the
# line `make test` prints at the end says so.
set -euo pipefail

required=0
if [[ "${1:-}" == "--required" ]]; then
  required=1
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--required]" >&2
  exit 2
fi

find_chromium() {
  # The same names, in the same order, as tests/test_book.py looks for.
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

if browser=$(find_chromium); then
  echo "browser checks: $browser"
  exit 0
fi

if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "browser checks: no Chromium found; installing Debian's chromium package with apt-get (you are root)"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; then
    browser=$(find_chromium) && { echo "browser checks: $browser"; exit 0; }
  fi
  reason="apt-get could not install the package 'chromium' (offline, or a distribution without it, such as Ubuntu, where it is a snap)"
elif command -v apt-get >/dev/null 2>&1; then
  reason="installing it needs root: run \`sudo apt-get install --no-install-recommends chromium\` (Debian), or install Chromium or Google Chrome another way"
else
  reason="install Chromium or Google Chrome with your system's package manager (the command must be called chromium, chromium-browser or google-chrome)"
fi

echo "browser checks: no Chromium found; $reason." >&2
if [[ $required == 1 ]]; then
  exit 1
fi
echo "browser checks: the tests will skip them, and the summary at the end says so." >&2
