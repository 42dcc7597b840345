"""Frozen value objects: a job as stored, a job to enqueue, a page of jobs."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from skiplock.queue.errors import InvalidJob
from skiplock.queue.jsoncodec import dumps
from skiplock.queue.states import JobState
from skiplock.tracing import inject_trace_context

__all__ = ["Job", "JobError", "JobSpec", "Page"]

_SMALLINT = (-32768, 32767)


@dataclass(frozen=True, slots=True)
class JobError:
    """One failed attempt, as kept in a job's error history.

    ``counted`` is False for an attempt given back without counting (an
    ``UnknownTask`` release by a worker that lacks the task, a ``ClaimLost``
    claim whose reply never arrived): ``attempt`` then names the attempt it
    would have been.
    """

    type: str
    message: str
    traceback: str | None
    attempt: int
    worker: str | None
    at: str
    counted: bool = True

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobError:
        """Build from one element of the ``errors`` column."""
        return cls(
            type=str(data.get("type", "Error")),
            message=str(data.get("message", "")),
            traceback=data.get("traceback"),
            attempt=int(data.get("attempt", 0)),
            worker=data.get("worker"),
            at=str(data.get("at", "")),
            counted=data.get("counted") is not False,
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A job as stored in PostgreSQL."""

    id: uuid.UUID
    queue: str
    task: str
    args: dict[str, Any]
    state: JobState
    priority: int
    run_at: datetime
    attempt: int
    max_attempts: int
    lease_token: uuid.UUID | None
    lease_expires_at: datetime | None
    worker_id: str | None
    progress: float | None
    progress_message: str | None
    eta: datetime | None
    result: Any
    errors: tuple[JobError, ...]
    tenant: str
    idempotency_key: str | None
    meta: dict[str, Any]
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def error(self) -> JobError | None:
        """The most recent failed attempt, if any."""
        return self.errors[-1] if self.errors else None

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended."""
        return self.state.is_terminal


def _check_name(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise InvalidJob(f"{what} must be a non-empty string of at most {limit} characters")
    return value


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job to enqueue. Everything is validated here, before anything is written.

    ``args`` is a JSON object passed to the handler as keyword arguments. A job
    runs at ``run_at`` (timezone-aware) or ``delay`` after the database's now,
    or at once. ``priority``: smaller runs first. ``meta``: JSON labels (model,
    provider, external ids…) kept with the job.
    """

    task: str
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    run_at: datetime | None = None
    delay: timedelta | float | None = None
    max_attempts: int = 3
    tenant: str = "default"
    idempotency_key: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    args_json: str = field(init=False, repr=False, compare=False)
    meta_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name(self.task, "task", 256)
        _check_name(self.queue, "queue", 128)
        _check_name(self.tenant, "tenant", 256)
        if self.idempotency_key is not None:
            _check_name(self.idempotency_key, "idempotency_key", 256)
        if not isinstance(self.args, Mapping):
            raise InvalidJob("args must be a JSON object (a mapping of argument names)")
        if not isinstance(self.meta, Mapping):
            raise InvalidJob("meta must be a JSON object")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise InvalidJob("priority must be an integer")
        if not _SMALLINT[0] <= self.priority <= _SMALLINT[1]:
            raise InvalidJob(f"priority must be between {_SMALLINT[0]} and {_SMALLINT[1]}")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise InvalidJob("max_attempts must be an integer")
        if not 1 <= self.max_attempts <= 1000:
            raise InvalidJob("max_attempts must be between 1 and 1000")
        if self.run_at is not None and self.delay is not None:
            raise InvalidJob("give run_at or delay, not both")
        if self.run_at is not None and (
            not isinstance(self.run_at, datetime) or self.run_at.tzinfo is None
        ):
            raise InvalidJob("run_at must be a timezone-aware datetime")
        if self.delay is not None:
            seconds = self.delay_seconds
            if seconds is None or not math.isfinite(seconds) or seconds < 0:
                raise InvalidJob("delay must be a non-negative number of seconds or timedelta")
        try:
            object.__setattr__(self, "args_json", dumps(dict(self.args), what="args"))
            # The current span's W3C context under meta["_trace"] (a no-op without
            # OpenTelemetry): the worker continues the enqueuer's trace.
            meta = inject_trace_context(dict(self.meta))
            object.__setattr__(self, "meta", meta)
            object.__setattr__(self, "meta_json", dumps(meta, what="meta"))
        except ValueError as exc:
            raise InvalidJob(str(exc)) from None

    @property
    def delay_seconds(self) -> float | None:
        """The delay in seconds, or None."""
        if self.delay is None:
            return None
        if isinstance(self.delay, timedelta):
            return self.delay.total_seconds()
        if isinstance(self.delay, bool) or not isinstance(self.delay, int | float):
            return None
        return float(self.delay)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing; pass ``next_cursor`` to get the next one."""

    jobs: tuple[Job, ...]
    next_cursor: str | None
