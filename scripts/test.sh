#!/usr/bin/env bash
# README's test command. Sets up .venv (with the test, Blender and batch (Ray) extras) and runs the whole suite
# there (Python 3.11, numpy 1.26, Blender 5.0.1 as the bpy module), then
#   - the engine's fast tests under numpy 2 (scripts/test_numpy2.sh, build/venv-np2), and
#   - the add-on suite in Blender 5.2 (scripts/test_blender_52.sh, build/venv-b52, Python 3.13),
# each in a virtualenv the script creates. Exit status: non-zero if any part failed.
#   Usage: bash scripts/test.sh             # everything
#          bash scripts/test.sh ARGS...     # only .venv's pytest with these arguments
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "test,blender,batch" || exit 1
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q -rs "$@"
fi
failed=()
start=$SECONDS
.venv/bin/python -m pytest -q -rs || failed+=("suite in .venv (numpy 1.26, Blender 5.0.1)")
bash scripts/test_numpy2.sh || failed+=("engine under numpy 2 (scripts/test_numpy2.sh)")
bash scripts/test_blender_52.sh || failed+=("add-on in Blender 5.2 (scripts/test_blender_52.sh)")
echo "test.sh: finished in $((SECONDS - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'test.sh: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
