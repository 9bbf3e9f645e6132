#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, end-to-end commands included (450 tests, 15-30 min on 2 CPU cores, plus a first set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
