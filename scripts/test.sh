#!/usr/bin/env bash
# Set up .venv (with the test and Blender extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "test,blender"
exec .venv/bin/python -m pytest -q -rs "$@"
