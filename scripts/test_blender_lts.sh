#!/usr/bin/env bash
# Run the Blender add-on test suite against Blender 4.5 LTS (the bpy==4.5.* module).
#
# The LTS module lives in its own virtualenv (bpy wheels pin one Python and one Blender), by
# default build/venv-lts (inside the git-ignored build/ folder). The engine itself still runs
# from the project's .venv (it has torch): the tests point the add-on's "Engine Python"
# preference at it, the way a user points Blender at an existing environment.
#   Usage: bash scripts/test_blender_lts.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
LTS_VENV="${INVE_LTS_VENV:-build/venv-lts}"
PY="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  bash scripts/setup_env.sh "test,blender"
fi
if [ ! -x "$LTS_VENV/bin/python" ]; then
  mkdir -p "$(dirname "$LTS_VENV")"
  "$PY" -m venv "$LTS_VENV"
  "$LTS_VENV/bin/python" -m pip install -q --upgrade pip
fi
"$LTS_VENV/bin/python" -m pip install -q "bpy==4.5.*" "numpy>=1.26,<2" "imageio>=2.31" "imageio-ffmpeg>=0.6" \
  "opencv-python-headless>=4.8,<4.12" "pytest>=8"
export INVE_TEST_ENGINE_PYTHON="$PWD/.venv/bin/python"
exec "$LTS_VENV/bin/python" -m pytest -q -rs -p no:cacheprovider tests/test_blender_*.py "$@"
