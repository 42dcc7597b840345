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
    "OnDuplicate",
    "Page",
    "TenantScope",
    "request_fingerprints",
    "tenant_filter",
]

OnDuplicate: TypeAlias = Literal["keep", "replace", "extend"]
"""What enqueueing a unique job does when a queued or running job holds its key."""

_ON_DUPLICATE: Final = ("keep", "replace", "extend")
_RESERVED_KEY_PREFIXES: Final = ("queue:", "task:", "tenant:")
_MAX_LIMIT_KEYS = 16
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

    limit_keys: tuple[str, ...] | None = None
    """The keys whose limits apply to the job: the ones given, then the implicit
    ``queue:``/``task:``/``tenant:`` keys a limit matched at enqueue (None: none)."""
    fair_key: str | None = None
    """The group a fair queue claims round-robin (None: claimed in plain order)."""
    unique_key: str | None = None
    """At most one queued or running job of the tenant holds it (None: not unique)."""
    duplicate: bool = False
    """Set only on what an enqueue returns: True when the job was not made by that
    enqueue but already held its unique key (kept, replaced or extended)."""

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

    Flow control (docs/flow-control.md): ``limit_keys`` (up to 16 distinct keys,
    e.g. ``user:42``) are the keys whose limits (``skiplock.limits``) apply to
    the job; the prefixes ``queue:``, ``task:`` and ``tenant:`` are reserved for
    the implicit keys the database adds. ``fairness_key``: the group a fair
    queue claims round-robin (default: the tenant, when the queue is fair).

    Unique jobs: with ``unique=True`` (key: a hash of task and arguments) or a
    ``unique_key``, at most one queued or running job of the tenant holds the
    key. Enqueueing a duplicate returns the job holding it (``Job.duplicate``
    is then True, and its id is not this spec's), after ``on_duplicate``:
    ``"keep"`` (the default) leaves it as it is; ``"replace"`` gives a queued
    one this spec's args, meta, priority, run time and max_attempts;
    ``"extend"`` moves a queued one's run time to this spec's. A running
    holder is never changed. ``debounce`` (seconds or timedelta) makes the job
    unique, delays it by that much, and makes ``on_duplicate`` ``"extend"``
    (or ``"replace"`` when asked): the job runs ``debounce`` after the last
    enqueue of a burst.
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
    limit_keys: tuple[str, ...] | None = None
    fairness_key: str | None = None
    unique: bool = False
    unique_key: str | None = None
    """The key as given (:attr:`stored_unique_key`: the one the job gets)."""
    on_duplicate: OnDuplicate = "keep"
    """As applied: ``"extend"`` for a debounced job unless ``"replace"`` was asked."""
    debounce: timedelta | float | None = None
    args_json: str = field(init=False, repr=False, compare=False)
    meta_json: str = field(init=False, repr=False, compare=False)
    _request_meta_json: str = field(init=False, repr=False, compare=False)
    """``meta`` as given, without the trace context: what the fingerprint covers."""
    _delay_seconds: float | None = field(init=False, repr=False, compare=False)
    _fingerprint: str | None = field(init=False, repr=False, compare=False)
    """:attr:`fingerprint`, computed on first use (a batch shares it between equal requests)."""
    _unique_key: str | None = field(init=False, repr=False, compare=False)

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
        limit_keys: Sequence[str] | None = None,
        fairness_key: str | None = None,
        unique: bool = False,
        unique_key: str | None = None,
        on_duplicate: OnDuplicate | None = None,
        debounce: timedelta | float | None = None,
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
        keys: tuple[str, ...] | None = None
        mode: OnDuplicate = "keep"
        if (
            limit_keys is not None
            or fairness_key is not None
            or unique
            or unique_key is not None
            or on_duplicate is not None
            or debounce is not None
        ):
            keys, mode, debounce_seconds = _check_flow(
                limit_keys, fairness_key, unique, unique_key, on_duplicate, debounce
            )
            if debounce_seconds is not None:
                if run_at is not None or delay is not None:
                    raise InvalidJob("give debounce or run_at/delay, not both")
                delay_seconds = debounce_seconds
        if timeout is not None or expires_at is not None:
            _check_expiry_and_timeout(run_at, delay_seconds, expires_at, timeout)
        if id is None:
            id = uuid7()
        elif not isinstance(id, uuid.UUID):
            raise InvalidJob("id must be a uuid.UUID")
        args_json = _json_object(args, "args")
        stored_key = unique_key
        if stored_key is None and (unique or debounce is not None):
            stored_key = _derived_unique_key(task, args_json)
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
        _set_limit_keys(self, keys)
        _set_fairness_key(self, fairness_key)
        _set_unique(self, unique)
        _set_unique_key(self, unique_key)
        _set_on_duplicate(self, mode)
        _set_debounce(self, debounce)
        _set_args_json(self, args_json)
        _set_meta_json(self, request_meta_json if traced is given else _json_object(traced, "meta"))
        _set_request_meta_json(self, request_meta_json)
        _set_delay_seconds(self, delay_seconds)
        _set_fingerprint(self, None)
        _set_unique_key_stored(self, stored_key)

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
    def stored_unique_key(self) -> str | None:
        """The job's unique key: ``unique_key``, or with ``unique`` (or ``debounce``)
        and no key given, SHA-256 (hex) of the task and its canonical arguments."""
        return self._unique_key

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
    _set_limit_keys,
    _set_fairness_key,
    _set_unique,
    _set_unique_key,
    _set_on_duplicate,
    _set_debounce,
    _set_args_json,
    _set_meta_json,
    _set_request_meta_json,
    _set_delay_seconds,
    _set_fingerprint,
    _set_unique_key_stored,
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
    "limit_keys",
    "fairness_key",
    "unique",
    "unique_key",
    "on_duplicate",
    "debounce",
    "args_json",
    "meta_json",
    "_request_meta_json",
    "_delay_seconds",
    "_fingerprint",
    "_unique_key",
), "the setters above follow JobSpec's fields"


def _check_flow(
    limit_keys: Sequence[str] | None,
    fairness_key: str | None,
    unique: bool,
    unique_key: str | None,
    on_duplicate: OnDuplicate | None,
    debounce: timedelta | float | None,
) -> tuple[tuple[str, ...] | None, OnDuplicate, float | None]:
    """Check the flow-control options: (limit keys, on_duplicate, debounce seconds)."""
    keys: tuple[str, ...] | None = None
    if limit_keys is not None:
        if isinstance(limit_keys, str) or not isinstance(limit_keys, Sequence):
            raise InvalidJob("limit_keys must be a list of strings")
        keys = tuple(limit_keys)
        if not 1 <= len(keys) <= _MAX_LIMIT_KEYS:
            raise InvalidJob(f"limit_keys must hold 1 to {_MAX_LIMIT_KEYS} keys")
        for key in keys:
            _check_name(key, "a limit key", 256)
            if key.startswith(_RESERVED_KEY_PREFIXES):
                raise InvalidJob(
                    f"limit key {key!r} uses a reserved prefix (queue:, task:, tenant:): "
                    "those keys are added by the database when a limit matches them"
                )
        if len(set(keys)) != len(keys):
            raise InvalidJob("limit_keys must not repeat a key")
    if fairness_key is not None:
        _check_name(fairness_key, "fairness_key", 256)
    if not isinstance(unique, bool):
        raise InvalidJob("unique must be true or false")
    if unique_key is not None:
        _check_name(unique_key, "unique_key", 256)
    debounce_seconds: float | None = None
    if debounce is not None:
        debounce_seconds = _seconds(debounce)
        if (
            debounce_seconds is None
            or not math.isfinite(debounce_seconds)
            or not 0 <= debounce_seconds < _MAX_DELAY
        ):
            raise InvalidJob("debounce must be a non-negative number of seconds or timedelta")
    if on_duplicate is not None and on_duplicate not in _ON_DUPLICATE:
        raise InvalidJob("on_duplicate must be 'keep', 'replace' or 'extend'")
    if debounce_seconds is not None:
        if on_duplicate == "keep":
            raise InvalidJob("a debounced job extends (or replaces) its duplicate: not 'keep'")
        mode: OnDuplicate = on_duplicate or "extend"
    else:
        if on_duplicate not in (None, "keep") and not unique and unique_key is None:
            raise InvalidJob("on_duplicate is for unique jobs: give unique, unique_key or debounce")
        mode = on_duplicate or "keep"
    return keys, mode, debounce_seconds


def _derived_unique_key(task: str, args_json: str) -> str:
    """The key of ``unique=True``: SHA-256 (hex) of the task and its canonical arguments."""
    canonical = orjson.dumps(_load_object(args_json), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(task.encode() + b"\x00" + canonical).hexdigest()


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
    # Flow-control fields enter only when set: the fingerprint of a request without
    # them is what it was before they existed.
    if spec.limit_keys is not None:
        request["limit_keys"] = list(spec.limit_keys)
    if spec.fairness_key is not None:
        request["fairness_key"] = spec.fairness_key
    if spec._unique_key is not None:
        request["unique_key"] = spec._unique_key
        request["on_duplicate"] = spec.on_duplicate
    if spec.debounce is not None:
        request["debounce"] = _seconds(spec.debounce)
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
                spec.limit_keys,
                spec.fairness_key,
                spec._unique_key,
                spec.on_duplicate,
                spec.debounce,
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
