"""Frozen value objects: a job as stored, a job to enqueue, a page of jobs."""

from __future__ import annotations

import enum
import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

import orjson

from skiplock.queue.errors import InvalidJob
from skiplock.queue.ids import uuid7
from skiplock.queue.jsoncodec import dumps
from skiplock.queue.states import JobState
from skiplock.tracing import inject_trace_context

__all__ = [
    "ALL_TENANTS",
    "AllTenants",
    "Job",
    "JobError",
    "JobSpec",
    "Page",
    "TenantScope",
    "tenant_filter",
]

_SMALLINT = (-32768, 32767)
_TENANT_MAX = 256
_MAX_DELAY = timedelta.max.total_seconds() / 2  # beyond it no expiry could follow the delay


class AllTenants(enum.Enum):
    """The type of :data:`ALL_TENANTS`."""

    ALL_TENANTS = "all tenants"

    def __repr__(self) -> str:
        return "ALL_TENANTS"


ALL_TENANTS: Final = AllTenants.ALL_TENANTS
"""Pass as ``tenant=`` to read or change the jobs of every tenant (operators' tools).

Without it every read and change is scoped to one tenant: a tenant name, or
``"default"`` when none is given. ``None`` is refused, never read as "all".
"""

TenantScope: TypeAlias = "str | Literal[AllTenants.ALL_TENANTS]"
"""A tenant name, or :data:`ALL_TENANTS`."""


def tenant_filter(tenant: TenantScope) -> str | None:
    """The tenant to filter by in SQL (None: every tenant, only for :data:`ALL_TENANTS`).

    Raises ValueError for anything but a valid tenant name or :data:`ALL_TENANTS`
    (``None`` in particular, a missing user id must not mean every tenant).
    """
    if tenant is ALL_TENANTS:
        return None
    if not isinstance(tenant, str) or not 1 <= len(tenant) <= _TENANT_MAX or "\x00" in tenant:
        raise ValueError(
            f"tenant must be a tenant name (1 to {_TENANT_MAX} characters) or ALL_TENANTS, "
            f"not {tenant!r}"
        )
    return tenant


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
    stalled: bool = False
    """Running, but its lease expired by the database clock: the worker stopped renewing it
    (crashed, frozen or cut off) and the job is not being worked on. ``progress`` and ``eta``
    are stale until a rescuer takes the job back (queued again, failed or cancelled)."""

    expires_at: datetime | None = None
    """A job not started by then never starts (see :class:`JobSpec`)."""
    timeout_seconds: float | None = None
    """Seconds one attempt may run, overriding the task's timeout; None: the task's."""
    request_fingerprint: str | None = None
    """:attr:`JobSpec.fingerprint` of the request that made the job (None: made before
    schema 0006); the same idempotency key with another fingerprint is a conflict."""

    result_omitted: bool = False
    """True when a listing left the result out for its size (``result`` is None then)."""

    @property
    def error(self) -> JobError | None:
        """The error the job failed with: set only when the job failed.

        A job that failed an attempt and then was retried, succeeded or was
        cancelled has no error; its failed attempts stay in :attr:`errors`.
        """
        return self.errors[-1] if self.errors and self.state is JobState.FAILED else None

    @property
    def last_error(self) -> JobError | None:
        """The most recent failed attempt, whatever the state (the end of :attr:`errors`)."""
        return self.errors[-1] if self.errors else None

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended."""
        return self.state.is_terminal


def _check_name(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise InvalidJob(f"{what} must be a non-empty string of at most {limit} characters")
    return value


def _utc_iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job to enqueue. Everything is validated here, before anything is written.

    ``args`` is a JSON object passed to the handler as keyword arguments. A job
    runs at ``run_at`` (timezone-aware) or ``delay`` after the database's now,
    or at once. ``priority``: smaller runs first. ``meta``: JSON labels (model,
    provider, external ids…) kept with the job.

    ``expires_at`` (timezone-aware, in the future, after ``run_at``/``delay``):
    a job not started by then never starts; it ends ``cancelled`` with an
    ``Expired`` entry in its history, and a job that finished before it is
    deleted by retention once it passes. ``timeout``: seconds one attempt may
    run, instead of the task's timeout (positive and finite).

    ``id`` defaults to a new time-ordered UUIDv7 (:func:`skiplock.queue.ids.uuid7`),
    made here rather than by the database so a batch matches its input.
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
    expires_at: datetime | None = None
    timeout: float | None = None
    id: uuid.UUID = field(default_factory=uuid7)
    args_json: str = field(init=False, repr=False, compare=False)
    meta_json: str = field(init=False, repr=False, compare=False)
    fingerprint: str = field(init=False, repr=False, compare=False)
    """SHA-256 (hex) of the canonical request: every field but ``id`` (and the trace
    context added to ``meta``), with ``delay`` itself rather than the run_at it makes."""

    def __post_init__(self) -> None:
        _check_name(self.task, "task", 256)
        _check_name(self.queue, "queue", 128)
        _check_name(self.tenant, "tenant", _TENANT_MAX)
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
        self._check_expiry_and_timeout()
        try:
            object.__setattr__(self, "args_json", dumps(dict(self.args), what="args"))
            # The current span's W3C context under meta["_trace"] (a no-op without
            # OpenTelemetry): the worker continues the enqueuer's trace.
            given_meta_json = dumps(dict(self.meta), what="meta")
            meta = inject_trace_context(dict(self.meta))
            object.__setattr__(self, "meta", meta)
            object.__setattr__(self, "meta_json", dumps(meta, what="meta"))
        except ValueError as exc:
            raise InvalidJob(str(exc)) from None
        object.__setattr__(self, "fingerprint", self._fingerprint(given_meta_json))

    def _check_expiry_and_timeout(self) -> None:
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not 0 < self.timeout < math.inf
        ):
            raise InvalidJob("timeout must be a positive, finite number of seconds")
        if self.expires_at is None:
            return
        if not isinstance(self.expires_at, datetime) or self.expires_at.tzinfo is None:
            raise InvalidJob("expires_at must be a timezone-aware datetime")
        now = datetime.now(UTC)
        if self.expires_at <= now:
            raise InvalidJob("expires_at must be in the future")
        if self.run_at is not None and self.expires_at <= self.run_at:
            raise InvalidJob("expires_at must be after run_at: the job could never start")
        delay = self.delay_seconds
        if delay is not None and (
            delay >= _MAX_DELAY or self.expires_at <= now + timedelta(seconds=delay)
        ):
            raise InvalidJob("expires_at must be after the delay ends: the job could never start")

    def _fingerprint(self, meta_json: str) -> str:
        request = {
            "task": self.task,
            "args": orjson.loads(self.args_json),
            "queue": self.queue,
            "priority": self.priority,
            "run_at": _utc_iso(self.run_at),
            "delay": self.delay_seconds,
            "max_attempts": self.max_attempts,
            "tenant": self.tenant,
            "idempotency_key": self.idempotency_key,
            "meta": orjson.loads(meta_json),
            "expires_at": _utc_iso(self.expires_at),
            "timeout": self.timeout_seconds,
        }
        canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()

    @property
    def timeout_seconds(self) -> float | None:
        """The per-attempt timeout in seconds, or None (the task's own timeout applies)."""
        return None if self.timeout is None else float(self.timeout)

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
