"""The demo's terminal table: what a frame shows, and how frames reach the screen."""

from __future__ import annotations

import dataclasses
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from skiplock.demo import LiveTable, demo_log_level, live_display, render_table
from skiplock.queue import Job, JobError, JobState

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _job(**overrides: Any) -> Job:
    """A job with plausible values; fields not named here (added later) are None."""
    base: dict[str, Any] = {
        "id": uuid.uuid4(),
        "queue": "default",
        "task": "render_video",
        "args": {},
        "state": JobState.RUNNING,
        "priority": 0,
        "run_at": NOW,
        "attempt": 1,
        "max_attempts": 3,
        "progress": 40.0,
        "progress_message": "frame 16/40",
        "eta": NOW + timedelta(seconds=75),
        "result": None,
        "errors": (),
        "tenant": "demo",
        "meta": {},
        "cancel_requested": False,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values: dict[str, Any] = {f.name: base.get(f.name) for f in dataclasses.fields(Job)}
    values.update(overrides)
    return Job(**values)


def test_the_table_shows_the_eta_of_running_jobs() -> None:
    """A running job's line holds the time left by its ETA; other jobs show '-'."""
    lines = render_table(
        [
            _job(),
            _job(task="long_report", eta=NOW + timedelta(seconds=9.2)),
            _job(task="soon", eta=NOW - timedelta(seconds=3)),
            _job(task="big", eta=NOW + timedelta(hours=2, minutes=3)),
            _job(
                task="flaky_upload",
                state=JobState.QUEUED,
                progress=None,
                progress_message=None,
                eta=None,
            ),
            _job(task="done", state=JobState.SUCCEEDED, progress=100.0, result="ok"),
        ],
        NOW,
    )
    header, render, report, soon, big, queued, done = lines
    assert header.split()[:6] == ["task", "state", "try", "progress", "eta", "detail"]
    assert "1m15s" in render
    assert "[########            ]  40.0%" in render
    assert "frame 16/40" in render
    assert " 10s " in report
    assert " due " in soon
    assert " 2h03m " in big
    assert queued.rstrip().endswith("0.0%       -")
    assert "result='ok'" in done
    assert " - " in done


def test_a_failed_attempt_is_shown_beside_the_progress() -> None:
    """A job that failed before and runs again says which attempt failed, and how."""
    error = JobError(
        type="ConnectionError", message="reset", attempt=1, worker="w", at="", traceback=""
    )
    (_, line) = render_table([_job(attempt=2, errors=(error,))], NOW)
    assert "(attempt 1 failed: ConnectionError)" in line


def test_in_place_frames_redraw_over_the_previous_one() -> None:
    """On a terminal the second frame moves up over the first and erases it; same frame: nothing."""
    out: list[str] = []
    table = LiveTable(out.append, in_place=True, width=30)
    table.frame(["header", "a" * 50])
    assert out == ["header\n" + "a" * 30]  # cut to the width so no line wraps
    table.frame(["header", "a" * 50])
    assert len(out) == 1
    table.frame(["header", "b", "c"])
    assert out[1] == "\x1b[2A\x1b[Jheader\nb\nc"
    table.note("cancel requested")
    assert out[2] == "\x1b[3A\x1b[Jcancel requested\nheader\nb\nc"


def test_appended_frames_when_not_a_terminal() -> None:
    """In a pipe or a log file each changed frame is appended, with no escape codes."""
    out: list[str] = []
    table = LiveTable(out.append, in_place=False, width=30)
    table.frame(["header", "a" * 50])
    table.frame(["header", "a" * 50])
    table.note("cancel requested")
    table.frame(["header", "b"])
    assert out == ["header\n" + "a" * 50 + "\n", "cancel requested", "header\nb\n"]
    assert not any("\x1b" in chunk for chunk in out)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "environ", "expected"),
    [
        (_Terminal(), {"TERM": "xterm-256color"}, True),
        (io.StringIO(), {"TERM": "xterm-256color"}, False),
        (_Terminal(), {"TERM": "dumb"}, False),
        (_Terminal(), {"TERM": "xterm", "NO_COLOR": "1"}, False),
    ],
)
def test_redraw_in_place_only_on_a_capable_terminal(
    stream: io.StringIO, environ: dict[str, str], expected: bool
) -> None:
    """A TTY redraws in place; a pipe, TERM=dumb or NO_COLOR get appended lines."""
    assert live_display(stream, environ) is expected


def test_a_closed_stream_is_not_a_terminal() -> None:
    """A stream that cannot answer isatty() gets appended lines."""
    stream = io.StringIO()
    stream.close()
    assert live_display(stream, {}) is False


def test_warnings_are_not_logged_while_the_table_is_redrawn_in_place() -> None:
    """A log line printed between two frames lands inside the table drawn in place (seen as
    a stale frame left above the live one): only errors are logged then; warnings in a pipe."""
    assert demo_log_level(live=True) == "error"
    assert demo_log_level(live=False) == "warning"
