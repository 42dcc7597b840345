"""scripts/_venv.sh says what it is doing while it makes .venv, and installs from the lock file.

A stand-in for Python records what the script asks of it, so nothing is
downloaded: the test checks the script's messages and commands, not pip.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/bin/sh
# A stand-in for python: records its arguments; `-m venv DIR` makes DIR/bin/python (itself).
echo "$*" >> "{log}"
if [ "$1" = "--version" ]; then echo "Python 3.12.0"; exit 0; fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && chmod +x "$3/bin/python"
fi
exit 0
"""


def _source(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Source scripts/_venv.sh from the repository root with the stand-in Python."""
    env = {
        **os.environ,
        "PYTHON": str(tmp_path / "python"),
        "SKIPLOCK_VENV": str(tmp_path / "venv"),
    }
    return subprocess.run(
        ["bash", "-c", ". scripts/_venv.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_first_run_says_what_it_is_doing(tmp_path: Path) -> None:
    """A first run announces the virtualenv, the install from the lock file and the end."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(log=log))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)

    first = _source(tmp_path)
    assert first.stdout == ""  # messages go to stderr: scripts' output stays clean
    said = first.stderr
    assert "creating the virtualenv" in said
    assert "Python 3.12.0" in said
    assert "installing the pinned dependencies of requirements/dev.lock" in said
    assert "installing skiplock itself" in said
    assert "is ready" in said
    calls = log.read_text()
    assert "--require-hashes -r requirements/dev.lock" in calls
    assert "--no-deps -e ." in calls

    again = _source(tmp_path)
    assert again.stderr == ""  # nothing to do, nothing said
