"""The one job document (queue.document): public and operator forms."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from skiplock.queue import Job, JobError, JobState
from skiplock.queue.document import job_document

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
ERROR = JobError("Boom", "it broke", "Traceback…", 1, "w1", "2026-12-03T08:59:00+00:00")


def make_job(**changes: Any) -> Job:
    """A finished job with one failed attempt, changed by ``changes``."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "queue": "default",
        "task": "render",
        "args": {"video_id": "v1"},
        "state": JobState.FAILED,
        "priority": 0,
        "run_at": NOW,
        "attempt": 1,
        "max_attempts": 1,
        "lease_token": None,
        "lease_expires_at": None,
        "worker_id": "w1",
        "progress": 50.0,
        "progress_message": "half",
        "eta": None,
        "result": None,
        "errors": (ERROR,),
        "tenant": "acme",
        "idempotency_key": "k1",
        "meta": {"m": 1},
        "cancel_requested": False,
        "created_at": NOW,
        "updated_at": NOW,
        "started_at": NOW,
        "finished_at": NOW,
    }
    values.update(changes)
    return Job(**values)


def test_public_document_keeps_tenant_args_and_tracebacks_inside() -> None:
    """The public form has no tenant, args, idempotency key, worker or traceback."""
    doc = job_document(make_job(), now=NOW)
    assert not {"tenant", "args", "idempotency_key", "worker_id", "links"} & set(doc)
    assert doc["error"] == {"type": "Boom", "message": "it broke", "attempt": 1, "at": ERROR.at}
    assert doc["errors"] == [doc["error"]]


def test_error_is_set_only_on_a_failed_job() -> None:
    """A job that succeeded after a failed attempt has no error, but keeps the history."""
    doc = job_document(make_job(state=JobState.SUCCEEDED, result=1))
    assert doc["error"] is None
    assert [e["message"] for e in doc["errors"]] == ["it broke"]


def test_operator_document_adds_the_history_with_tracebacks() -> None:
    """operator=True adds tenant, args, key, worker and every error with its traceback."""
    doc = job_document(make_job(), operator=True)
    assert (doc["tenant"], doc["args"], doc["idempotency_key"]) == (
        "acme",
        {"video_id": "v1"},
        "k1",
    )
    assert doc["errors"] == [
        {
            "type": "Boom",
            "message": "it broke",
            "attempt": 1,
            "at": ERROR.at,
            "worker": "w1",
            "traceback": "Traceback…",
        }
    ]


def test_links_are_included_as_given() -> None:
    """links appear only when the caller passes them."""
    doc = job_document(make_job(), links={"self": "/x"})
    assert doc["links"] == {"self": "/x"}


def test_scheduled_needs_a_clock_and_a_future_run_at() -> None:
    """A queued job is scheduled when run_at is after now; without now it never is."""
    queued = make_job(state=JobState.QUEUED, run_at=NOW + timedelta(seconds=5), errors=())
    assert job_document(queued, now=NOW)["scheduled"] is True
    assert job_document(queued)["scheduled"] is False
