#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and install the project into it.
# Usage: bash scripts/setup_env.sh [extras]    e.g. "test,blender"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
# torch==2.13.0 is pinned in pyproject.toml: its CPU wheel is what this machine has on disk.
.venv/bin/python -m pip install -q -e "$spec"
