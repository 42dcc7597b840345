"""Every log line is JSON off a terminal: structlog's own and the standard library's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import orjson

# A process as the worker or API runs: logging configured for JSON, then libraries
# (asyncpg's pool, uvicorn) logging through the standard library, with tracebacks.
CHILD = """
import logging, warnings
import structlog
from skiplock.logs import configure_logging

configure_logging("json", "info")
structlog.get_logger("skiplock.worker").info("claimed", jobs=3)
try:
    raise ConnectionResetError("connection was closed in the middle of operation")
except ConnectionResetError:
    logging.getLogger("asyncpg.pool").exception("error returning connection to pool")
logging.getLogger("uvicorn.error").warning("shutting down in %s s", 3)
logging.getLogger("asyncpg.pool").debug("below the level: not shown")
warnings.warn("an old API", DeprecationWarning, stacklevel=1)
configure_logging("json", "info")  # configuring again does not double the lines
logging.getLogger("again").info("once")
"""


def _lines() -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(CHILD)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines
    parsed: list[dict[str, Any]] = []
    for line in lines:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}\nall output:\n{done.stderr}") from None
    return parsed


def test_standard_library_logging_is_json_too() -> None:
    """asyncpg's traceback, uvicorn's warning and a Python warning come out as JSON lines."""
    records = _lines()
    events = [r["event"] for r in records]
    assert events[0] == "claimed"
    pool = next(r for r in records if r["event"] == "error returning connection to pool")
    assert pool["level"] == "error"
    assert pool["logger"] == "asyncpg.pool"
    assert "ConnectionResetError" in pool["exception"]
    assert "timestamp" in pool
    assert any(r["event"] == "shutting down in 3 s" and r["level"] == "warning" for r in records)
    assert any("an old API" in r["event"] for r in records)
    assert "below the level: not shown" not in events
    assert events.count("once") == 1


RECONFIGURED = """
import json
import structlog
from structlog.testing import capture_logs
from skiplock.logs import configure_logging

configure_logging("json", "info")
log = structlog.get_logger("skiplock.worker").bind(worker_id="w1")
log.info("cached")  # the logger is assembled and cached on first use
configure_logging("json", "info")
with capture_logs() as captured:
    log.info("seen", jobs=3)
print(json.dumps([e["event"] for e in captured]))
"""


def test_a_logger_cached_before_configuring_again_follows_the_new_setup() -> None:
    """A logger used before a second ``configure_logging`` call (a CLI command run twice in
    one process, tests) still goes through the configured processors, so it is seen by
    ``capture_logs`` rather than writing through the first setup."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RECONFIGURED)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert orjson.loads(done.stdout.strip().splitlines()[-1]) == ["seen"]
