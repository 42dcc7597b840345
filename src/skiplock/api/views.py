"""How jobs look over HTTP: links, ETags, and request bodies (documents: queue.document)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from skiplock.queue.models import Job

__all__ = ["CreateJobBody", "etag", "event_id", "job_links"]


class CreateJobBody(BaseModel):
    """The body of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=256)
    args: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-32768, le=32767)
    delay_seconds: float | None = Field(default=None, ge=0, le=366 * 24 * 3600)
    meta: dict[str, Any] = Field(default_factory=dict)


def etag(job: Job) -> str:
    """A strong validator that changes whenever the job changes."""
    return f'"{job.id.hex[:12]}-{int(job.updated_at.timestamp() * 1_000_000):x}"'


def event_id(job: Job) -> str:
    """The SSE event id of a snapshot: its change time in microseconds."""
    return str(int(job.updated_at.timestamp() * 1_000_000))


def job_links(job_id: uuid.UUID, base: str = "") -> dict[str, str]:
    """The routes an API-key holder uses for a job (``base``: the public URL prefix)."""
    return {
        "self": f"{base}/v1/jobs/{job_id}",
        "events": f"{base}/v1/jobs/{job_id}/events",
        "cancel": f"{base}/v1/jobs/{job_id}/cancel",
    }
