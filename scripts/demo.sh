#!/usr/bin/env bash
# Set up .venv and run the main job: the bundled clip, end to end (train, edit, render).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/inve demo -o "${1:-demo_out}"
