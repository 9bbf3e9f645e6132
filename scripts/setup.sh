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

# Which torch build: PyPI's torch 2.14.1 is a CUDA 13.0 build (it also runs on a CPU). A GPU whose
# driver supports an older CUDA needs a build from PyTorch's own index; TORCH_INDEX_URL overrides.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
torch_index() {
  if [ -n "${TORCH_INDEX_URL:-}" ]; then echo "$TORCH_INDEX_URL"; return; fi
  command -v nvidia-smi >/dev/null 2>&1 || return 0   # no NVIDIA driver: PyPI's build, on the CPU
  local cuda
  cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)
  if [ -z "$cuda" ]; then
    echo "[setup] WARNING: nvidia-smi does not say which CUDA the driver supports; using PyPI's torch (CUDA 13.0)" >&2
  elif version_ge "$cuda" 13.0; then
    :  # PyPI's build
  elif version_ge "$cuda" 12.8; then
    echo "https://download.pytorch.org/whl/cu128"
  elif version_ge "$cuda" 12.6; then
    echo "https://download.pytorch.org/whl/cu126"
  else
    echo "[setup] FAILED: the NVIDIA driver supports CUDA $cuda; torch 2.14.1 needs 12.6 or newer. Update the" >&2
    echo "        driver, or set TORCH_INDEX_URL to a PyTorch index with a torch 2.14.1 build for your CUDA." >&2
    exit 1
  fi
}

if ! python -c "import nerfstudio, torchvision" >/dev/null 2>&1; then
  INDEX=$(torch_index)
  echo "[setup] installing torch 2.14.1, torchvision 0.29.1 (${INDEX:-PyPI}), nerfstudio 1.1.5 (several minutes)"
  pip install --quiet --upgrade pip
  # torch and torchvision first and together: a torchvision from another torch build fails to import.
  if [ -n "$INDEX" ]; then
    pip install --quiet torch==2.14.1 torchvision==0.29.1 --index-url "$INDEX" || {
      echo "[setup] FAILED: no torch 2.14.1 / torchvision 0.29.1 at $INDEX; set TORCH_INDEX_URL to an index that has" >&2
      echo "        them for your driver's CUDA (https://pytorch.org/get-started/locally/), or update the driver." >&2
      exit 1
    }
  else
    pip install --quiet torch==2.14.1 torchvision==0.29.1
  fi
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || \
    echo "[setup] WARNING: this machine has an NVIDIA driver but torch $(python -c 'import torch; print(torch.__version__, torch.version.cuda)') sees no GPU: its CUDA is newer than the driver's. Reinstall with TORCH_INDEX_URL (see scripts/setup.sh), or update the driver."
fi
pip install --quiet -e ".[test,ray,capture]"
# jsonschema (imported by every Ray process) loads its optional IRI format checker when rfc3987-syntax is
# installed, which builds a grammar: 4 s of CPU per process measured here (`python -X importtime -c
# "import ray"`: 15.5 s with it, 3.4 s without, on a loaded machine), and Ray gives a new node's agents 15 s
# to start (on a busy machine they missed it). Nothing here needs the checker (`pip show`: required by none).
if python -c "import rfc3987_syntax" >/dev/null 2>&1; then
  pip uninstall --quiet -y rfc3987-syntax
fi

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
