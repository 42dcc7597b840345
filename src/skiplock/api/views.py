"""How jobs look over HTTP: links and ETags (documents: queue.document; shapes: schemas)."""

from __future__ import annotations

import uuid

from skiplock.queue.models import Job

__all__ = ["etag", "event_id", "job_links", "share_links"]


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


def share_links(token: str, base: str = "") -> dict[str, str]:
    """The routes a share-link holder uses: the shared read and its stream (no cancel)."""
    return {"self": f"{base}/v1/shared/{token}", "events": f"{base}/v1/shared/{token}/events"}
