"""How jobs look over HTTP: JSON documents, ETags, and request bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from skiplock.queue.models import Job

__all__ = ["CreateJobBody", "etag", "job_document"]


class CreateJobBody(BaseModel):
    """The body of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=256)
    args: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-32768, le=32767)
    delay_seconds: float | None = Field(default=None, ge=0, le=366 * 24 * 3600)
    meta: dict[str, Any] = Field(default_factory=dict)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def etag(job: Job) -> str:
    """A strong validator that changes whenever the job changes."""
    return f'"{job.id.hex[:12]}-{int(job.updated_at.timestamp() * 1_000_000):x}"'


def event_id(job: Job) -> str:
    """The SSE event id of a snapshot: its change time in microseconds."""
    return str(int(job.updated_at.timestamp() * 1_000_000))


def job_document(job: Job, *, base: str = "", now: datetime | None = None) -> dict[str, Any]:
    """The public JSON of a job. Tracebacks and lease details stay inside."""
    error = job.error
    doc: dict[str, Any] = {
        "id": str(job.id),
        "task": job.task,
        "queue": job.queue,
        "state": job.state.value,
        "scheduled": job.state.value == "queued" and now is not None and job.run_at > now,
        "progress": job.progress,
        "message": job.progress_message,
        "eta": _ts(job.eta),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "cancel_requested": job.cancel_requested,
        "result": job.result if job.state.value == "succeeded" else None,
        "error": None
        if error is None
        else {
            "type": error.type,
            "message": error.message,
            "attempt": error.attempt,
            "at": error.at,
        },
        "meta": job.meta,
        "run_at": _ts(job.run_at),
        "created_at": _ts(job.created_at),
        "updated_at": _ts(job.updated_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
        "links": {
            "self": f"{base}/v1/jobs/{job.id}",
            "events": f"{base}/v1/jobs/{job.id}/events",
            "cancel": f"{base}/v1/jobs/{job.id}/cancel",
        },
    }
    return doc
