#!/usr/bin/env bash
# Prepares, on a machine with a package index, what `examples/gpu_check.sh --wheels DIR` needs on a GPU
# machine that reaches none but has PyTorch/CUDA already (this workplace's H200 image: Python 3.12):
# the wheels of examples/gpu_offline_requirements.txt for that Python, plus a wheel of this package
# (its entry points register the async-nerf methods with nerfstudio), in DIR (default .whl, which it
# adds to .git/info/exclude so that it travels only when named, e.g. the device tool's `carry`).
#
# Usage: bash examples/gpu_bundle.sh [--out DIR] [--python-version 3.12] [--max-mib 56] [--check-numpy2|--check-only]
#   --max-mib   fail when the wheels exceed this many MiB (the device tool carries 64 MiB in all,
#               the repository included)
#   --check-numpy2  then, as on the GPU image (numpy 2): a throwaway venv of a Python of that version
#               (CHECK_PYTHON, else pythonX.Y on PATH or pyenv's; none: exit 3, nothing checked) with
#               numpy>=2 from the index and every compiled wheel of DIR (--no-deps): their top-level
#               and extension modules import after numpy 2, and fpsample samples a point cloud. The pure
#               Python wheels are not imported there (they need torch); gpu_check.sh --wheels runs them.
#   --check-only    only that check, of the wheels already in DIR (nothing downloaded or removed)
# Then, on the GPU machine, from the repository root: bash examples/gpu_check.sh --wheels DIR
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.whl
PYTHON_VERSION=3.12
MAX_MIB=56
CHECK_NUMPY2=0
CHECK_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --python-version) PYTHON_VERSION=$2; shift 2 ;;
    --max-mib) MAX_MIB=$2; shift 2 ;;
    --check-numpy2) CHECK_NUMPY2=1; shift ;;
    --check-only) CHECK_NUMPY2=1; CHECK_ONLY=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_bundle: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
say() { echo "[gpu_bundle] $*"; }

if [ "$CHECK_ONLY" = 0 ]; then
  # Only earlier wheels are removed: DIR may be a folder with other things in it.
  mkdir -p "$OUT"
  rm -f "$OUT"/*.whl
  # pip matches manylinux tags exactly: name every glibc level a wheel may be tagged with.
  PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  for n in 17 24 27 28 31 34 35 39; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
  ABI=cp${PYTHON_VERSION/./}
  FAILED=()
  while read -r requirement; do
    case "$requirement" in ''|'#'*) continue ;; esac
    case "$requirement" in
      *==*) ;;
      *)  # the version this venv has (the one the CPU suite tested)
        installed=$("$PY" -c "import sys; from importlib.metadata import version; print(version(sys.argv[1]))" "$requirement" 2>/dev/null) || {
          FAILED+=("$requirement: not installed in $PY's environment (run scripts/setup.sh first)"); continue; }
        requirement="$requirement==$installed" ;;
    esac
    if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
        --implementation cp --abi "$ABI" --abi abi3 --abi none "${PLATFORMS[@]}" -d "$OUT" "$requirement" >/dev/null 2>"$OUT/.error"; then
      FAILED+=("$requirement: $(grep -m1 ERROR "$OUT/.error" || tail -n 1 "$OUT/.error")")
    fi
  done < examples/gpu_offline_requirements.txt
  rm -f "$OUT/.error"
  if [ ${#FAILED[@]} -gt 0 ]; then
    printf '[gpu_bundle] FAILED: no wheel for Python %s:\n' "$PYTHON_VERSION" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
  fi
  # This package (pure Python): built from a copy of the working tree (setuptools writes build/ beside
  # the sources), dependencies left out (they are the image's or the list's).
  SOURCE=$(mktemp -d)
  trap 'rm -rf "$SOURCE"' EXIT
  cp -r pyproject.toml README.md async_nerf_ns "$SOURCE"/
  find "$SOURCE" -name __pycache__ -prune -exec rm -rf {} +
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$(cd "$OUT" && pwd)" "$SOURCE" >/dev/null
  COUNT=$(find "$OUT" -type f -name '*.whl' | wc -l)
  BYTES=$(du -cb "$OUT"/*.whl | tail -n 1 | cut -f1)
  MIB=$(( (BYTES + 1048575) / 1048576 ))
  say "$COUNT wheels for Python $PYTHON_VERSION, $MIB MiB, in $OUT"
  if [ "$MIB" -gt "$MAX_MIB" ]; then
    echo "[gpu_bundle] FAILED: $MIB MiB is more than --max-mib $MAX_MIB" >&2
    exit 1
  fi
  case "$(cd "$OUT" && pwd)" in
    "$(pwd)"/*)
      ENTRY="/$(realpath --relative-to=. "$OUT")/"
      EXCLUDE=$(git rev-parse --git-path info/exclude 2>/dev/null || true)  # also in a git worktree
      if [ -n "$EXCLUDE" ] && ! grep -qxF "$ENTRY" "$EXCLUDE" 2>/dev/null; then
        mkdir -p "$(dirname "$EXCLUDE")" && echo "$ENTRY" >> "$EXCLUDE"
        say "added $ENTRY to $EXCLUDE"
      fi
      ;;
  esac
  say "on the GPU machine: bash examples/gpu_check.sh --wheels $OUT"
fi
[ "$CHECK_NUMPY2" = 1 ] || exit 0

# The compiled wheels under numpy 2, with a Python of the bundle's version.
find_python() {
  local candidate
  if [ -n "${CHECK_PYTHON:-}" ]; then echo "$CHECK_PYTHON"; return; fi
  for candidate in "python$PYTHON_VERSION" "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$PYTHON_VERSION"*/bin/"python$PYTHON_VERSION"; do
    if "$candidate" -c "import sys, venv; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYTHON_VERSION'.split('.'))))" >/dev/null 2>&1; then
      command -v "$candidate"; return
    fi
  done
  return 1
}
CHECK_PY=$(find_python) || {
  echo "[gpu_bundle] NOT CHECKED: no Python $PYTHON_VERSION here to import the cp${PYTHON_VERSION/./} wheels with numpy 2" >&2
  echo "             (set CHECK_PYTHON, or bundle for a Python you have: --python-version X.Y checks its builds of the same versions)" >&2
  exit 3
}
COMPILED=()
for wheel in "$OUT"/*.whl; do
  case "$(basename "$wheel" .whl)" in *-none-any) ;; *) COMPILED+=("$wheel") ;; esac  # abi tag 'none': pure Python
done
CHECK_DIR=$(mktemp -d)
trap 'rm -rf "${SOURCE:-}" "$CHECK_DIR"' EXIT
say "numpy 2 check: $("$CHECK_PY" --version) in a throwaway venv, numpy>=2 and ${#COMPILED[@]} compiled wheels: $(for w in "${COMPILED[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
"$CHECK_PY" -m venv "$CHECK_DIR/venv"
"$CHECK_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check "numpy>=2" 2>"$CHECK_DIR/pip.log" || {
  echo "[gpu_bundle] FAILED: pip could not install numpy>=2 for Python $PYTHON_VERSION: $(grep -m1 ERROR "$CHECK_DIR/pip.log")" >&2; exit 1; }
"$CHECK_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index "${COMPILED[@]}" 2>"$CHECK_DIR/pip.log" || {
  echo "[gpu_bundle] FAILED: the compiled wheels do not install for Python $PYTHON_VERSION: $(grep -m1 ERROR "$CHECK_DIR/pip.log")" >&2; exit 1; }
"$CHECK_DIR/venv/bin/python" - "${COMPILED[@]}" <<'PY'
"""Imports every top-level module of each wheel after numpy 2 (a compiled module built against numpy 1's
ABI fails here), and runs fpsample as nerfstudio does."""
import importlib
import sys
import zipfile
from pathlib import PurePosixPath

import numpy

assert int(numpy.__version__.split(".")[0]) >= 2, numpy.__version__


def modules_to_import(wheel):
    """The wheel's top-level packages and modules, and every compiled extension module in it (a package's
    __init__ need not import its extensions), as dotted names."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    modules = set()
    for name in names:
        parts = PurePosixPath(name).parts
        if parts[0].endswith((".dist-info", ".data", ".libs")):
            continue
        if len(parts) > 1:
            modules.add(parts[0])
        elif name.endswith(".py"):
            modules.add(name[: -len(".py")])
        if name.endswith(".so") or ".so." in parts[-1] or name.endswith(".pyd"):
            if parts[-1].startswith("lib"):  # a bundled shared library, not a module
                continue
            modules.add(".".join([*parts[:-1], parts[-1].split(".")[0]]))
    if "backports" in modules:  # a namespace package with no __init__: its modules are one level down
        modules.discard("backports")
        modules |= {".".join(PurePosixPath(n).parts[:2]).split(".py")[0] for n in names
                    if n.startswith("backports/") and len(PurePosixPath(n).parts) > 2}
    return sorted(modules)


failed = []
for wheel in sys.argv[1:]:
    label = PurePosixPath(wheel).name.split("-")
    label = f"{label[0]} {label[1]}"
    modules = modules_to_import(wheel)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or numpy's "compiled using NumPy 1.x" errors
            failed.append(f"{label}: import {module}: {type(error).__name__}: {error}")
    print(f"[gpu_bundle]   {label}: import {', '.join(modules) or '(no module)'}: {'ok' if not any(f.startswith(label + ':') for f in failed) else 'FAILED'}")
try:
    import fpsample

    points = numpy.random.default_rng(0).random((2000, 3), dtype=numpy.float32)
    for name, sample in (("fps_sampling", lambda: fpsample.fps_sampling(points, 64)),
                         ("bucket_fps_kdline_sampling", lambda: fpsample.bucket_fps_kdline_sampling(points, 64, h=3))):
        indices = numpy.asarray(sample())
        assert indices.shape == (64,) and len(numpy.unique(indices)) == 64 and indices.max() < len(points), indices
        print(f"[gpu_bundle]   fpsample.{name}: 64 distinct indices of 2000 points: ok")
except Exception as error:
    failed.append(f"fpsample: sampling: {type(error).__name__}: {error}")
print(f"[gpu_bundle] numpy {numpy.__version__}, Python {sys.version.split()[0]}: "
      + ("every compiled wheel imports" if not failed else "FAILED:\n  " + "\n  ".join(failed)))
sys.exit(1 if failed else 0)
PY
