#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine and run the whole test suite:
#   system packages for Qt under a virtual X server, a virtual environment in .venv,
#   pinned PyTorch, napari-sam2 with its test extras, and the reference sam2 package
#   (the oracle of the parity tests). Safe to run again; steps already done are quick.
#   Before pytest: ruff (lint) and import-linter (the package's layers, pyproject.toml).
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

apt_packages=(xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libdbus-1-3
  libfontconfig1 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "Installing system packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip setuptools wheel
"${pip[@]}" install -q torch==2.14.1 torchvision==0.29.1
"${pip[@]}" install -q -e ".[testing]"
# The reference implementation, a test-only dependency; built without its CUDA extension.
SAM2_BUILD_CUDA=0 "${pip[@]}" install -q --no-build-isolation sam2==1.1.0

echo "ruff check"
"$VENV/bin/ruff" check .
echo "lint-imports"
"$VENV/bin/lint-imports" --no-cache

exec xvfb-run -a -s "-screen 0 1280x1024x24" "$VENV/bin/python" -m pytest "$@"
