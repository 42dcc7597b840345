"""Frozen value objects: a job as stored, a job to enqueue, a page of jobs."""

from __future__ import annotations

import enum
import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
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
    "request_fingerprints",
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


_NO_MAPPING: Mapping[str, Any] = MappingProxyType({})  # "not given": a new empty dict
_EMPTY_OBJECT = "{}"


def _json_object(value: Mapping[str, Any], what: str) -> str:
    """``value`` as JSON text for a jsonb column (``dumps``), InvalidJob when it cannot be."""
    if not value:
        return _EMPTY_OBJECT
    try:
        return dumps(value if type(value) is dict else dict(value), what=what)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None


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
    _request_meta_json: str = field(init=False, repr=False, compare=False)
    """``meta`` as given, without the trace context: what the fingerprint covers."""
    _delay_seconds: float | None = field(init=False, repr=False, compare=False)
    _fingerprint: str | None = field(init=False, repr=False, compare=False)
    """:attr:`fingerprint`, computed on first use (a batch shares it between equal requests)."""

    # Written out rather than generated: the generated __init__ of a frozen dataclass
    # and a __post_init__ cost more than the checks themselves (a bulk enqueue builds
    # thousands of specs). Same parameters, defaults and order as the fields above.
    def __init__(
        self,
        task: str,
        args: Mapping[str, Any] = _NO_MAPPING,
        queue: str = "default",
        priority: int = 0,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        max_attempts: int = 3,
        tenant: str = "default",
        idempotency_key: str | None = None,
        meta: Mapping[str, Any] = _NO_MAPPING,
        expires_at: datetime | None = None,
        timeout: float | None = None,
        id: uuid.UUID | None = None,
    ) -> None:
        if not isinstance(task, str) or not 0 < len(task) <= 256 or "\x00" in task:
            _check_name(task, "task", 256)
        if queue != "default":
            _check_name(queue, "queue", 128)
        if tenant != "default":
            _check_name(tenant, "tenant", _TENANT_MAX)
        if idempotency_key is not None:
            _check_name(idempotency_key, "idempotency_key", 256)
        if args is _NO_MAPPING:
            args = {}
        elif type(args) is not dict and not isinstance(args, Mapping):
            raise InvalidJob("args must be a JSON object (a mapping of argument names)")
        if meta is not _NO_MAPPING and type(meta) is not dict and not isinstance(meta, Mapping):
            raise InvalidJob("meta must be a JSON object")
        if type(priority) is not int and (
            isinstance(priority, bool) or not isinstance(priority, int)
        ):
            raise InvalidJob("priority must be an integer")
        if not _SMALLINT[0] <= priority <= _SMALLINT[1]:
            raise InvalidJob(f"priority must be between {_SMALLINT[0]} and {_SMALLINT[1]}")
        if type(max_attempts) is not int and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
        ):
            raise InvalidJob("max_attempts must be an integer")
        if not 1 <= max_attempts <= 1000:
            raise InvalidJob("max_attempts must be between 1 and 1000")
        delay_seconds: float | None = None
        if run_at is not None:
            if delay is not None:
                raise InvalidJob("give run_at or delay, not both")
            if not isinstance(run_at, datetime) or run_at.tzinfo is None:
                raise InvalidJob("run_at must be a timezone-aware datetime")
        elif delay is not None:
            delay_seconds = _seconds(delay)
            if delay_seconds is None or not math.isfinite(delay_seconds) or delay_seconds < 0:
                raise InvalidJob("delay must be a non-negative number of seconds or timedelta")
        if timeout is not None or expires_at is not None:
            _check_expiry_and_timeout(run_at, delay_seconds, expires_at, timeout)
        if id is None:
            id = uuid7()
        elif not isinstance(id, uuid.UUID):
            raise InvalidJob("id must be a uuid.UUID")
        args_json = _json_object(args, "args")
        # meta is kept as a dict of its own, plus the current span's W3C context under
        # meta["_trace"] (a no-op without OpenTelemetry): the worker continues the trace.
        given = {} if meta is _NO_MAPPING else dict(meta)
        request_meta_json = _json_object(given, "meta")
        traced = inject_trace_context(given)
        _set_task(self, task)
        _set_args(self, args)
        _set_queue(self, queue)
        _set_priority(self, priority)
        _set_run_at(self, run_at)
        _set_delay(self, delay)
        _set_max_attempts(self, max_attempts)
        _set_tenant(self, tenant)
        _set_idempotency_key(self, idempotency_key)
        _set_meta(self, traced)
        _set_expires_at(self, expires_at)
        _set_timeout(self, timeout)
        _set_id(self, id)
        _set_args_json(self, args_json)
        _set_meta_json(self, request_meta_json if traced is given else _json_object(traced, "meta"))
        _set_request_meta_json(self, request_meta_json)
        _set_delay_seconds(self, delay_seconds)
        _set_fingerprint(self, None)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical request: every field but ``id`` (and the trace
        context added to ``meta``), with ``delay`` itself rather than the run_at it makes."""
        fingerprint = self._fingerprint
        if fingerprint is None:
            fingerprint = _request_fingerprint(self)
            _set_fingerprint(self, fingerprint)
        return fingerprint

    @property
    def timeout_seconds(self) -> float | None:
        """The per-attempt timeout in seconds, or None (the task's own timeout applies)."""
        return None if self.timeout is None else float(self.timeout)

    @property
    def delay_seconds(self) -> float | None:
        """The delay in seconds, or None."""
        return self._delay_seconds


# JobSpec is frozen: its __init__ sets each slot through the slot's own descriptor
# (cheaper than object.__setattr__, which looks the descriptor up every time).
(
    _set_task,
    _set_args,
    _set_queue,
    _set_priority,
    _set_run_at,
    _set_delay,
    _set_max_attempts,
    _set_tenant,
    _set_idempotency_key,
    _set_meta,
    _set_expires_at,
    _set_timeout,
    _set_id,
    _set_args_json,
    _set_meta_json,
    _set_request_meta_json,
    _set_delay_seconds,
    _set_fingerprint,
) = (JobSpec.__dict__[name].__set__ for name in JobSpec.__slots__)
assert JobSpec.__slots__ == (
    "task",
    "args",
    "queue",
    "priority",
    "run_at",
    "delay",
    "max_attempts",
    "tenant",
    "idempotency_key",
    "meta",
    "expires_at",
    "timeout",
    "id",
    "args_json",
    "meta_json",
    "_request_meta_json",
    "_delay_seconds",
    "_fingerprint",
), "the setters above follow JobSpec's fields"


def _seconds(delay: timedelta | float) -> float | None:
    """A delay in seconds; None when it is neither a number nor a timedelta."""
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        return None
    return float(delay)


def _check_expiry_and_timeout(
    run_at: datetime | None,
    delay: float | None,
    expires_at: datetime | None,
    timeout: float | None,
) -> None:
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf
    ):
        raise InvalidJob("timeout must be a positive, finite number of seconds")
    if expires_at is None:
        return
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        raise InvalidJob("expires_at must be a timezone-aware datetime")
    now = datetime.now(UTC)
    if expires_at <= now:
        raise InvalidJob("expires_at must be in the future")
    if run_at is not None and expires_at <= run_at:
        raise InvalidJob("expires_at must be after run_at: the job could never start")
    if delay is not None and (delay >= _MAX_DELAY or expires_at <= now + timedelta(seconds=delay)):
        raise InvalidJob("expires_at must be after the delay ends: the job could never start")


def _load_object(text: str) -> Any:
    return {} if text == _EMPTY_OBJECT else orjson.loads(text)


def _request_fingerprint(spec: JobSpec) -> str:
    """:attr:`JobSpec.fingerprint`: the canonical JSON (sorted keys) of the request, hashed.

    Stored with every job and compared by idempotent resends, so its bytes must not
    change from one version to the next.
    """
    request = {
        "task": spec.task,
        "args": _load_object(spec.args_json),
        "queue": spec.queue,
        "priority": spec.priority,
        "run_at": _utc_iso(spec.run_at),
        "delay": spec._delay_seconds,
        "max_attempts": spec.max_attempts,
        "tenant": spec.tenant,
        "idempotency_key": spec.idempotency_key,
        "meta": _load_object(spec._request_meta_json),
        "expires_at": _utc_iso(spec.expires_at),
        "timeout": spec.timeout_seconds,
    }
    canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def request_fingerprints(specs: Sequence[JobSpec]) -> list[str]:
    """The :attr:`JobSpec.fingerprint` of each spec, hashing each distinct request once.

    A batch of jobs alike but for their ids (the common bulk enqueue) costs one
    hash instead of one per job. Two requests share a fingerprint exactly when
    every field it covers is equal, which is what the key below compares (the
    delay by its bits: -0.0 and 0.0 are equal numbers but write different JSON).
    """
    known: dict[tuple[Any, ...], str] = {}
    fingerprints: list[str] = []
    for spec in specs:
        fingerprint = spec._fingerprint
        if fingerprint is None:
            delay = spec._delay_seconds
            key = (
                spec.task,
                spec.args_json,
                spec.queue,
                spec.priority,
                spec.run_at,
                None if delay is None else delay.hex(),
                spec.max_attempts,
                spec.tenant,
                spec.idempotency_key,
                spec._request_meta_json,
                spec.expires_at,
                spec.timeout_seconds,
            )
            fingerprint = known.get(key)
            if fingerprint is None:
                fingerprint = known[key] = _request_fingerprint(spec)
            _set_fingerprint(spec, fingerprint)
        fingerprints.append(fingerprint)
    return fingerprints


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing; pass ``next_cursor`` to get the next one."""

    jobs: tuple[Job, ...]
    next_cursor: str | None
