#!/usr/bin/env bash
# Prepares, on a machine with a package index, what `examples/gpu_check.sh --wheels DIR` needs on a GPU
# machine that reaches none but has PyTorch/CUDA already (this workplace's H200 image: Python 3.12):
# the wheels of examples/gpu_offline_requirements.txt for that Python, plus a wheel of this package
# (its entry points register the async-nerf methods with nerfstudio), in DIR (default .whl, which it
# adds to .git/info/exclude so that it travels only when named, e.g. the device tool's `carry`).
#
# Usage: bash examples/gpu_bundle.sh [--out DIR] [--python-version 3.12] [--max-mib 56]
#   --max-mib   fail when the wheels exceed this many MiB (the device tool carries 64 MiB in all,
#               the repository included)
# Then, on the GPU machine, from the repository root: bash examples/gpu_check.sh --wheels DIR
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.whl
PYTHON_VERSION=3.12
MAX_MIB=56
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --python-version) PYTHON_VERSION=$2; shift 2 ;;
    --max-mib) MAX_MIB=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_bundle: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
say() { echo "[gpu_bundle] $*"; }

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
