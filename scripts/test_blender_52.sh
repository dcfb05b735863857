#!/usr/bin/env bash
# Run the Blender add-on test suite in Blender 5.2 LTS (the bpy==5.2.3 module: Python 3.13, numpy 2).
#
# The 5.2 module lives in its own virtualenv (build/venv-b52, git-ignored), made from a Python 3.13
# that scripts/find_python.sh finds (pyenv on these machines). The engine still runs from the
# project's .venv (torch, Python 3.11): the tests point the add-on's "Engine Python" preference at
# it, the way a user points Blender at an existing environment — Blender's Python and the
# engine's may differ.
#   Usage: bash scripts/test_blender_52.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${INVE_B52_VENV:-build/venv-b52}"
if [ ! -x .venv/bin/python ]; then
  bash scripts/setup_env.sh "test,blender"
fi
if [ ! -x "$VENV/bin/python" ]; then
  PY="$(bash scripts/find_python.sh 3.13)" || {
    echo "test_blender_52: Blender 5.2's bpy module needs Python 3.13, and none was found (see above)" >&2; exit 1; }
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "bpy==5.2.3" "numpy>=2.2,<3" "imageio>=2.31" "imageio-ffmpeg>=0.6" \
  "opencv-python-headless>=4.8,<4.12" "pytest>=8"
export INVE_TEST_ENGINE_PYTHON="$PWD/.venv/bin/python"
exec "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider tests/test_blender_*.py "$@"
