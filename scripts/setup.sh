#!/usr/bin/env bash
# Create (or reuse) .venv with nerfstudio 1.1.5 on torch 2.14.1 and this package, and put an ffmpeg
# on the venv's PATH for ns-render videos. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c "import nerfstudio, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch 2.14.1, torchvision 0.29.1, nerfstudio 1.1.5 (several minutes)"
  pip install --quiet --upgrade pip
  # torch and torchvision first and together: a torchvision from another torch build fails to import.
  pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
pip install --quiet -e ".[test,ray]"

# ns-render writes videos through mediapy, which runs an `ffmpeg` binary. Use the system one if
# there is one, else the static binary shipped in the imageio-ffmpeg wheel.
if ! command -v ffmpeg >/dev/null 2>&1; then
  ln -sf "$(python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" "$VENV/bin/ffmpeg"
fi
ffmpeg -version >/dev/null && echo "[setup] ffmpeg: $(command -v ffmpeg)"

# ns-export imports open3d, whose wheel links against the system's libusb-1.0 (absent on a fresh
# Debian/Ubuntu machine). Install it when open3d cannot be imported and we may use apt.
if ! python -c "import open3d" >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing libusb-1.0-0 for open3d (ns-export)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0) >/dev/null
  else
    echo "[setup] WARNING: open3d does not import (missing libusb-1.0?): ns-export will not work; install libusb-1.0-0"
  fi
fi
python -c "import open3d" >/dev/null 2>&1 && echo "[setup] open3d imports (ns-export)"
python -c "import async_nerf_ns; from importlib.metadata import version; print('[setup] async_nerf_ns ready, nerfstudio', version('nerfstudio'))"
