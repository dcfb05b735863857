#!/usr/bin/env bash
# Print the path of a Python interpreter of version MAJOR.MINOR (e.g. 3.13), or fail with one line.
#
# Looked for, in order: $INVE_PYTHON_<MAJOR><MINOR> (e.g. INVE_PYTHON_313), `pythonX.Y` on PATH
# that really runs (a pyenv shim for a version that is not selected fails, so it is tested),
# pyenv's own install folder ($PYENV_ROOT or `pyenv root`, then ~/.pyenv), and /usr/bin,
# /usr/local/bin. Usage: PY313="$(bash scripts/find_python.sh 3.13)"
set -euo pipefail
want="${1:?usage: find_python.sh MAJOR.MINOR}"
var="INVE_PYTHON_${want//./}"
works() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c "import sys, venv; assert '%d.%d' % sys.version_info[:2] == '$want'" >/dev/null 2>&1; }
cands=()
[ -n "${!var:-}" ] && cands+=("${!var}")
cmd="$(command -v "python$want" 2>/dev/null || true)"
[ -n "$cmd" ] && cands+=("$cmd")
roots=()
[ -n "${PYENV_ROOT:-}" ] && roots+=("$PYENV_ROOT")
if command -v pyenv >/dev/null 2>&1; then roots+=("$(pyenv root 2>/dev/null || true)"); fi
roots+=("$HOME/.pyenv")
for r in "${roots[@]}"; do
  [ -n "$r" ] || continue
  # newest patch release first
  for d in $(ls -d "$r/versions/$want".* "$r/versions/$want" 2>/dev/null | sort -V -r); do
    cands+=("$d/bin/python$want")
  done
done
cands+=("/usr/local/bin/python$want" "/usr/bin/python$want")
for c in "${cands[@]}"; do
  if works "$c"; then echo "$c"; exit 0; fi
  # a pyenv shim runs the version only when it is selected
  if [ "$c" = "$cmd" ] && PYENV_VERSION="$want" works "$c"; then
    v="$(PYENV_VERSION="$want" "$c" -c 'import sys; print(sys.executable)' 2>/dev/null || true)"
    if works "$v"; then echo "$v"; exit 0; fi
  fi
done
echo "find_python: no Python $want found (looked at \$$var, python$want on PATH, pyenv versions/$want.*, /usr/bin); install it, e.g. 'pyenv install $want', or set $var=/path/to/python$want" >&2
exit 1
