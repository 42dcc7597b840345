# Sourced by scripts/*: create .venv with Python >= 3.11 and install the
# pinned dependencies of requirements/dev.lock (hash-checked; the core, every
# extra and the dev group) and the project itself (editable), again whenever
# the lock file or pyproject.toml changed.
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON="$candidate"; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "skiplock needs Python 3.11 or newer" >&2; exit 1; }
VENV="${SKIPLOCK_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.skiplock-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/dev.lock -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r requirements/dev.lock
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
