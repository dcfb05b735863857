#!/usr/bin/env bash
# The engine under numpy 2: a second Python 3.11 virtualenv (build/venv-np2, git-ignored) with
# torch==2.13.0 and numpy 2.x, running the engine's fast tests (the slow training tests and the
# Blender suites run under numpy 1.26 in .venv; bpy==5.0.1 needs numpy<2).
#   Usage: bash scripts/test_numpy2.sh [pytest args]      (default: the fast engine tests)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${INVE_NP2_VENV:-build/venv-np2}"
PY="${PYTHON:-$(bash scripts/find_python.sh 3.11)}"
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
# The project's own pins (pyproject.toml) must resolve with numpy 2: install the project, not a copy of them.
"$VENV/bin/python" -m pip install -q -e ".[test]" "numpy>=2.0,<3"
np="$("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
case "$np" in 2.*) ;; *) echo "test_numpy2: expected numpy 2.x in $VENV, got $np" >&2; exit 1;; esac
echo "test_numpy2: engine tests with numpy $np ($VENV)"
if [ "$#" -eq 0 ]; then
  set -- -m "not slow and not blender" tests/test_hashgrid.py tests/test_encoding_backends.py tests/test_video.py \
    tests/test_identity.py tests/test_lock.py tests/test_preprocess.py tests/test_edits.py tests/test_track.py \
    tests/test_edits_cli.py tests/test_train_cli.py tests/test_blender_units.py tests/test_device.py \
    tests/test_coords.py tests/test_refine.py tests/test_serve.py tests/test_long.py tests/test_batch.py
fi
exec "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider "$@"
