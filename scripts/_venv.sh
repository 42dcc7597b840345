# Sourced by scripts/*: create .venv with Python >= 3.11 and install the
# pinned dependencies of requirements/dev.lock (hash-checked; the core, every
# extra and the dev group) and the project itself (editable), again whenever
# the lock file or pyproject.toml changed. Says what it is doing on stderr
# (a first install takes a while); silent when there is nothing to do.
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
_venv_say() { echo "skiplock: $*" >&2; }
if [ ! -x "$VENV/bin/python" ]; then
  _venv_say "first run: creating the virtualenv $VENV with $("$PYTHON" --version 2>&1)" \
    "and installing into it (a minute or so)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.skiplock-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/dev.lock -nt "$stamp" ]; then
  if [ -f "$stamp" ]; then
    _venv_say "pyproject.toml or requirements/dev.lock changed: updating $VENV"
  fi
  _venv_say "installing the pinned dependencies of requirements/dev.lock" \
    "($(grep -c '^[a-zA-Z]' requirements/dev.lock) packages) into $VENV…"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r requirements/dev.lock
  _venv_say "installing skiplock itself (editable)…"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
  touch "$stamp"
  _venv_say "$VENV is ready"
fi
