"""The one JSON document of a job (and of a schedule), for every interface that shows them.

The status API serves the public form (:func:`job_document`): no tenant,
arguments, tracebacks or lease details. The CLI, which is for operators, asks
for ``operator=True`` and gets those too, the error history with tracebacks
included. Both come from here so a field means the same everywhere.

This module needs nothing beyond the queue layer: the CLI may be installed
without the API's dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from skiplock.queue.models import Job, JobError
from skiplock.queue.schedules import Schedule

__all__ = ["error_document", "job_document", "schedule_document"]


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def error_document(error: JobError, *, operator: bool = False) -> dict[str, Any]:
    """One failed attempt as JSON; ``operator`` adds the worker and the traceback."""
    doc: dict[str, Any] = {
        "type": error.type,
        "message": error.message,
        "attempt": error.attempt,
        "at": error.at,
    }
    if operator:
        doc["worker"] = error.worker
        doc["traceback"] = error.traceback
    return doc


def job_document(
    job: Job,
    *,
    now: datetime | None = None,
    links: Mapping[str, str] | None = None,
    operator: bool = False,
) -> dict[str, Any]:
    """The JSON-ready document of ``job``.

    ``now`` (the caller's clock, timezone-aware) decides ``scheduled`` (queued
    with ``run_at`` in the future; always false without it). ``links`` is
    included as ``links`` when given (the API passes the routes its caller
    may use). ``operator=True`` adds ``tenant``, ``args``,
    ``idempotency_key``, ``worker_id``, and each entry of the error history
    gets its worker and traceback, for operators' tools.

    ``stalled`` says a running job's lease was not renewed on time (its worker
    died, froze or was cut off): its progress and ETA are stale until a rescuer
    takes it back. ``result`` is set only when the job succeeded; ``error`` (the error the job
    failed with) only when it failed; ``errors`` is every failed attempt,
    oldest first, whatever the state. ``limit_keys``, ``fair_key`` and
    ``unique_key`` are the job's flow-control keys (docs/flow-control.md).
    """
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
        "stalled": job.stalled,
        "result": job.result if job.state.value == "succeeded" else None,
        "result_omitted": job.result_omitted,
        "error": None if error is None else error_document(error),
        "errors": [error_document(e, operator=operator) for e in job.errors],
        "meta": job.meta,
        "run_at": _ts(job.run_at),
        "created_at": _ts(job.created_at),
        "updated_at": _ts(job.updated_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
        "expires_at": _ts(job.expires_at),
        "timeout_seconds": job.timeout_seconds,
        "limit_keys": None if job.limit_keys is None else list(job.limit_keys),
        "fair_key": job.fair_key,
        "unique_key": job.unique_key,
    }
    if operator:
        doc["tenant"] = job.tenant
        doc["args"] = job.args
        doc["idempotency_key"] = job.idempotency_key
        doc["worker_id"] = job.worker_id
    if links is not None:
        doc["links"] = dict(links)
    return doc


def schedule_document(s: Schedule) -> dict[str, Any]:
    """A schedule as JSON (the CLI's ``--json`` and the status API's admin routes)."""
    return {
        "name": s.name,
        "task": s.task,
        "cron": s.cron,
        "every_seconds": s.every_seconds,
        "timezone": s.timezone,
        "args": s.args,
        "queue": s.queue,
        "tenant": s.tenant,
        "priority": s.priority,
        "max_attempts": s.max_attempts,
        "catch_up": s.catch_up,
        "paused": s.paused,
        "last_tick": _ts(s.last_tick),
        "next_tick": _ts(s.next_tick),
        "last_job_id": None if s.last_job_id is None else str(s.last_job_id),
        "declared_at": _ts(s.declared_at),
        "updated_at": _ts(s.updated_at),
    }
