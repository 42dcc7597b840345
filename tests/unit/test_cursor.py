"""Listing cursors: opaque, URL-safe, round-tripping, and strict on input."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from skiplock import Job, JobState
from skiplock.queue.client import decode_cursor, encode_cursor


def _job(created_at: datetime, job_id: uuid.UUID) -> Job:
    return Job(
        id=job_id,
        queue="default",
        task="t",
        args={},
        state=JobState.QUEUED,
        priority=0,
        run_at=created_at,
        attempt=0,
        max_attempts=3,
        lease_token=None,
        lease_expires_at=None,
        worker_id=None,
        progress=None,
        progress_message=None,
        eta=None,
        result=None,
        errors=(),
        tenant="default",
        idempotency_key=None,
        meta={},
        cancel_requested=False,
        created_at=created_at,
        updated_at=created_at,
        started_at=None,
        finished_at=None,
    )


def _raw_cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 30, 45, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
    ids=["utc-microseconds", "offset"],
)
def test_round_trip(created_at: datetime) -> None:
    """decode_cursor(encode_cursor(job)) gives the job's (created_at, id)."""
    job = _job(created_at, uuid.uuid4())
    assert decode_cursor(encode_cursor(job)) == (created_at, job.id)


def test_cursor_is_url_safe_without_padding() -> None:
    """A cursor uses only URL-safe base64 characters and no padding."""
    cursor = encode_cursor(_job(datetime(2026, 1, 1, tzinfo=UTC), uuid.uuid4()))
    assert cursor
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize("cursor", ["", "!!!", "a", "é", "not a cursor", "YQ"], ids=repr)
def test_garbage_text_rejected(cursor: str) -> None:
    """Text that is not a cursor raises ValueError."""
    with pytest.raises(ValueError, match=r"^invalid cursor: "):
        decode_cursor(cursor)


_WHEN = "2026-01-01T00:00:00+00:00"
_ID = "6f1c1a8e-1f7e-4a39-9d51-3a4f0c7c9b10"


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "ab",
        [1, 2],
        {"a": 1, "b": 2},
        [_WHEN],
        [_WHEN, _ID, 3],
        ["yesterday", _ID],
        ["2026-01-01T00:00:00", _ID],
        [_WHEN, "zz"],
        [_WHEN, None],
        [_WHEN, 5],
        [_WHEN, [1]],
        [_WHEN, {"id": _ID}],
    ],
    ids=repr,
)
def test_well_encoded_wrong_payload_rejected(payload: Any) -> None:
    """Valid base64 JSON that is not a (aware timestamp, uuid) pair raises ValueError."""
    with pytest.raises(ValueError, match=r"^invalid cursor: "):
        decode_cursor(_raw_cursor(payload))


def test_cursor_outside_the_calendar_rejected() -> None:
    """A cursor whose timestamp overflows when converted to UTC is a ValueError, not a 500."""
    import base64

    raw = b'["0001-01-01T00:00:00+14:00","00000000-0000-0000-0000-000000000000"]'
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(ValueError, match="invalid cursor"):
        decode_cursor(cursor)
