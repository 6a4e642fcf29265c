#!/usr/bin/env bash
# Install mtrl and everything it needs on a fresh Debian/Ubuntu machine with Python >= 3.10:
#   - libosmesa6 for headless MuJoCo rendering on CPU (videos); GPU machines use EGL from the driver
#   - torch 2.13.0 first (pinned: a looser requirement could pull a multi-GB CUDA build on CPU machines)
#   - the package in editable mode with the test extra (pytest, hypothesis, torchjd oracle, ruff, mypy)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null
  else
    echo "install.sh: libosmesa6 is missing (needed for videos on CPU); install it with your package manager" >&2
  fi
fi
python3 -m pip install -q --upgrade pip
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[test]"
echo "mtrl installed: try 'mtrl train' (the embedded default, about 1.5 minutes on 2 CPU cores) or 'mtrl --help'"
