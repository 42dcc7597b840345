"""The one place that runs SQL.

Each method runs the query file of the same name (``sql/queries/<name>.sql``)
and converts what comes back into frozen dataclasses: ``asyncpg.Record`` does
not leave this module. Every method takes the executor to run on (a pool, a
pooled connection, or the application's own connection inside its
transaction), so callers decide about transactions and connections.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from skiplock import sql
from skiplock.queue.flow import (
    FairWeight,
    Limit,
    LimitSummary,
    LimitUsage,
    QueueFlow,
    QueueSettings,
)
from skiplock.queue.jsoncodec import loads
from skiplock.queue.models import Job, JobError, JobSpec, request_fingerprints
from skiplock.queue.schedules import Schedule, ScheduleDefinition
from skiplock.queue.states import JobState

__all__ = [
    "DEFAULT_STATEMENT_CACHE_SIZE",
    "PURGE_CANCELLED_AFTER",
    "PURGE_FAILED_AFTER",
    "PURGE_SUCCEEDED_AFTER",
    "ApiKey",
    "AppliedMigration",
    "Completion",
    "Executor",
    "JobCount",
    "ProgressWrite",
    "Rescued",
    "Store",
    "TaskWindowStats",
    "Unreadable",
    "next_fair_key",
    "open_pool",
]

Executor: TypeAlias = "asyncpg.Connection[Any] | asyncpg.Pool[Any] | PoolConnectionProxy[Any]"

PURGE_SUCCEEDED_AFTER = 86_400.0
"""Default age in seconds after which a succeeded job may be purged (1 day)."""
PURGE_FAILED_AFTER = 7 * 86_400.0
"""Default age in seconds after which a failed job may be purged (7 days)."""
PURGE_CANCELLED_AFTER = 7 * 86_400.0
"""Default age in seconds after which a cancelled job may be purged (7 days)."""

Outcome = Literal["succeeded", "failed", "cancelled", "retry", "release", "snooze"]


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one attempt, written by :meth:`Store.complete_jobs`.

    ``progress``/``message``/``eta_seconds`` carry the last progress report not
    yet written, so the final value always reaches the row.
    """

    job_id: uuid.UUID
    lease_token: uuid.UUID
    outcome: Outcome
    result_json: str | None = None
    error_json: str | None = None
    delay_seconds: float | None = None
    progress: float | None = None
    message: str | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ProgressWrite:
    """The latest progress of one running attempt."""

    job_id: uuid.UUID
    lease_token: uuid.UUID
    progress: float
    message: str | None
    eta_seconds: float | None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A claimed row that cannot be decoded into a :class:`Job` (see ``claim_jobs``)."""

    job_id: uuid.UUID
    lease_token: uuid.UUID
    attempt: int
    error: str


@dataclass(frozen=True, slots=True)
class Rescued:
    """A job whose expired lease was taken back by the rescuer."""

    job_id: uuid.UUID
    state: JobState
    attempt: int
    worker_id: str | None


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """A row of the migration ledger."""

    version: int
    name: str
    checksum: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored (its secret is never stored)."""

    id: uuid.UUID
    name: str
    tenant: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobCount:
    """How many jobs of one queue and task are in one state."""

    queue: str
    task: str
    state: JobState
    count: int


@dataclass(frozen=True, slots=True)
class TaskWindowStats:
    """Outcomes and timings of one task's jobs finished within a time window."""

    task: str
    succeeded: int
    failed: int
    cancelled: int
    wait_p50: float | None
    wait_p95: float | None
    run_p50: float | None
    run_p95: float | None


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        tenant=row["tenant"],
        scopes=tuple(row["scopes"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


_STATES = {state.value: state for state in JobState}
_EMPTY_ARRAY = "[]"


# Job's fields in order: _job passes them by position (31 keyword arguments
# cost twice as much to parse as the rest of building a Job); checked at import.
_JOB_FIELDS = (
    "id", "queue", "task", "args", "state", "priority", "run_at", "attempt",
    "max_attempts", "lease_token", "lease_expires_at", "worker_id", "progress",
    "progress_message", "eta", "result", "errors", "tenant", "idempotency_key",
    "meta", "cancel_requested", "created_at", "updated_at", "started_at",
    "finished_at", "stalled", "expires_at", "timeout_seconds",
    "request_fingerprint", "result_omitted", "limit_keys", "fair_key", "unique_key",
    "duplicate",
)  # fmt: skip
if tuple(f.name for f in fields(Job)) != _JOB_FIELDS:  # pragma: no cover - a developer's slip
    raise RuntimeError("store._JOB_FIELDS no longer follows Job's fields")


def _job(row: asyncpg.Record) -> Job:
    result = row["result"]
    errors = row["errors"]
    limit_keys = row.get("limit_keys")
    return Job(
        row["id"],
        row["queue"],
        row["task"],
        loads(row["args"]),
        _STATES[row["state"]],
        row["priority"],
        row["run_at"],
        row["attempt"],
        row["max_attempts"],
        row["lease_token"],
        row["lease_expires_at"],
        row["worker_id"],
        row["progress"],
        row["progress_message"],
        row["eta"],
        None if result is None else loads(result),
        () if errors == _EMPTY_ARRAY else tuple(JobError.from_json(e) for e in loads(errors)),
        row["tenant"],
        row["idempotency_key"],
        loads(row["meta"]),
        row["cancel_requested"],
        row["created_at"],
        row["updated_at"],
        row["started_at"],
        row["finished_at"],
        # stalled: only the reads compute it (claim and retry return rows that cannot be).
        bool(row.get("stalled", False)),
        row["expires_at"],
        row["timeout_seconds"],
        row["request_fingerprint"],
        bool(row.get("result_omitted", False)),
        None if limit_keys is None else tuple(limit_keys),
        row.get("fair_key"),
        row.get("unique_key"),
        # duplicate: only resolve_unique returns it (what an enqueue found, not made).
        bool(row.get("duplicate", False)),
    )


def next_fair_key(after: str | None, jobs: Sequence[Job]) -> str | None:
    """Where a worker's next claim goes on in its fair queues, from the jobs its last
    claim got: the last fair key served in the claim's walk (keys after ``after`` in
    code point order, then, wrapping around, keys up to it)."""
    served = [j.fair_key for j in jobs if j.fair_key is not None]
    if not served:
        return after
    if after is None:
        return max(served)
    wrapped = [k for k in served if k <= after]
    return max(wrapped) if wrapped else max(served)


def _limit(row: asyncpg.Record) -> Limit:
    return Limit(
        row["pattern"], row["max_running"], row["max_starts"], row["per_seconds"], row["updated_at"]
    )


StoredKeys: TypeAlias = "tuple[tuple[str, ...] | None, str | None]"
"""(limit_keys, fair_key) as the database stored them for a new job."""


class _QueuedJob(Protocol):
    def __call__(
        self,
        spec: JobSpec,
        fingerprint: str,
        run_at: datetime,
        created_at: datetime,
        stored: StoredKeys | None = None,
    ) -> Job: ...


def _queued_job_builder() -> _QueuedJob:
    """``queued_job(spec, fingerprint, run_at, created_at, stored)``: the row
    ``enqueue_many`` just inserted for ``spec``, as a :class:`Job`, without reading it
    back; ``stored``: its (limit_keys, fair_key) when the database gave it other ones
    than the spec's (implicit keys, a fair queue's default), else None.

    A bulk enqueue makes thousands of these: each slot is set through its own
    descriptor (as ``Job.__init__`` would, in half the time). Every field of
    ``Job`` is set (a unit test compares the result with ``Job(...)``).
    """
    new = object.__new__
    slot = {name: Job.__dict__[name].__set__ for name in Job.__slots__}
    id_ = slot["id"]
    queue = slot["queue"]
    task = slot["task"]
    args = slot["args"]
    state = slot["state"]
    priority = slot["priority"]
    run_at_ = slot["run_at"]
    attempt = slot["attempt"]
    max_attempts = slot["max_attempts"]
    lease_token = slot["lease_token"]
    lease_expires_at = slot["lease_expires_at"]
    worker_id = slot["worker_id"]
    progress = slot["progress"]
    progress_message = slot["progress_message"]
    eta = slot["eta"]
    result = slot["result"]
    errors = slot["errors"]
    tenant = slot["tenant"]
    idempotency_key = slot["idempotency_key"]
    meta = slot["meta"]
    cancel_requested = slot["cancel_requested"]
    created_at_ = slot["created_at"]
    updated_at = slot["updated_at"]
    started_at = slot["started_at"]
    finished_at = slot["finished_at"]
    stalled = slot["stalled"]
    expires_at = slot["expires_at"]
    timeout_seconds = slot["timeout_seconds"]
    request_fingerprint = slot["request_fingerprint"]
    result_omitted = slot["result_omitted"]
    limit_keys = slot["limit_keys"]
    fair_key = slot["fair_key"]
    unique_key = slot["unique_key"]
    duplicate = slot["duplicate"]
    queued = JobState.QUEUED

    def queued_job(
        spec: JobSpec,
        fingerprint: str,
        run_at: datetime,
        created_at: datetime,
        stored: StoredKeys | None = None,
    ) -> Job:
        job: Job = new(Job)
        id_(job, spec.id)
        queue(job, spec.queue)
        task(job, spec.task)
        # as stored: JSON types, not the caller's objects
        text = spec.args_json
        args(job, {} if text == _EMPTY_OBJECT else loads(text))
        state(job, queued)
        priority(job, spec.priority)
        run_at_(job, run_at)
        attempt(job, 0)
        max_attempts(job, spec.max_attempts)
        lease_token(job, None)
        lease_expires_at(job, None)
        worker_id(job, None)
        progress(job, None)
        progress_message(job, None)
        eta(job, None)
        result(job, None)
        errors(job, ())
        tenant(job, spec.tenant)
        idempotency_key(job, spec.idempotency_key)
        text = spec.meta_json
        meta(job, {} if text == _EMPTY_OBJECT else loads(text))
        cancel_requested(job, False)
        created_at_(job, created_at)
        updated_at(job, created_at)
        started_at(job, None)
        finished_at(job, None)
        stalled(job, False)
        expiry = spec.expires_at
        expires_at(job, None if expiry is None else expiry.astimezone(UTC))
        timeout = spec.timeout
        timeout_seconds(job, None if timeout is None else float(timeout))
        request_fingerprint(job, fingerprint)
        result_omitted(job, False)
        if stored is None:
            limit_keys(job, spec.limit_keys)
            fair_key(job, spec.fairness_key)
        else:
            limit_keys(job, stored[0])
            fair_key(job, stored[1])
        unique_key(job, spec.stored_unique_key)
        duplicate(job, False)
        return job

    return queued_job


_queued_job = _queued_job_builder()


_EMPTY_OBJECT = "{}"
_NONE: list[Any] = []  # an empty array parameter: unnest reads NULL for every job


def _shared_or_each(values: list[Any]) -> tuple[list[Any], Any]:
    """(empty array, the value) when every job has the same one, else (the values, NULL)."""
    if values.count(values[0]) == len(values):
        return _NONE, values[0]
    return values, None


def _each_or_none(values: list[Any]) -> list[Any]:
    """An empty array when every value is None (NULL for every job), else the values."""
    return _NONE if values.count(None) == len(values) else values


_SKIP_CONFLICTS = re.compile(r"^[ \t]*ON CONFLICT DO NOTHING[ \t]*\n", re.MULTILINE)


def _without_conflict_clause(query: str) -> str:
    """An enqueue query without its ``ON CONFLICT DO NOTHING`` line."""
    strict, found = _SKIP_CONFLICTS.subn("", query)
    if found != 1:
        raise ValueError("an enqueue query must hold one line 'ON CONFLICT DO NOTHING'")
    return strict


def _enqueue_arguments(specs: Sequence[JobSpec], fingerprints: list[str]) -> list[Any]:
    """The parameters of ``enqueue_many.sql``: one value for a column the batch shares."""
    arguments: list[Any] = [[s.id for s in specs]]
    for column in (
        [s.queue for s in specs],
        [s.task for s in specs],
        [s.args_json for s in specs],
        [s.priority for s in specs],
        [s.max_attempts for s in specs],
        [s.tenant for s in specs],
        [s.meta_json for s in specs],
        fingerprints,
    ):
        arguments += _shared_or_each(column)
    arguments += (
        _each_or_none([s.run_at for s in specs]),
        _each_or_none([s.delay_seconds for s in specs]),
        _each_or_none([s.idempotency_key for s in specs]),
        _each_or_none([s.expires_at for s in specs]),
        _each_or_none([s.timeout_seconds for s in specs]),
        _each_or_none([None if s.limit_keys is None else _keys_json(s.limit_keys) for s in specs]),
        _each_or_none([s.fairness_key for s in specs]),
        _each_or_none([s.stored_unique_key for s in specs]),
    )
    return arguments


def _unique_key_order(specs: Sequence[JobSpec]) -> list[int] | None:
    """The order to insert a batch holding unique keys in: by (tenant, key), stable (so
    two specs of one key keep theirs), every batch taking the keys' index entries in
    the same order, which keeps concurrent batches of the same keys from deadlocking.
    None when no spec is unique (the batch goes as given)."""
    if all(s.stored_unique_key is None for s in specs):
        return None
    return sorted(
        range(len(specs)),
        key=lambda i: (specs[i].tenant, specs[i].stored_unique_key or ""),
    )


def _keys_json(keys: tuple[str, ...]) -> str:
    return orjson.dumps(keys).decode()


def _stored_keys(keys: str | None) -> dict[uuid.UUID, StoredKeys]:
    """``enqueue_many``'s ``keys`` column: {id: (limit_keys, fair_key)}."""
    if keys is None:
        return {}
    return {
        uuid.UUID(job_id): (None if limits is None else tuple(limits), fair)
        for job_id, limits, fair in loads(keys)
    }


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Pool reset that sends nothing (asyncpg still rolls back an open transaction)."""


DEFAULT_STATEMENT_CACHE_SIZE = 100
"""asyncpg's prepared-statement cache per connection (its default); 0 for PgBouncer."""


async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    settings: dict[str, str] | None = None,
    statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
) -> asyncpg.Pool[Any]:
    """An asyncpg pool for skiplock's own use; ``settings``: server settings per session.

    asyncpg's default reset on release (``RESET ALL; UNLISTEN *; CLOSE ALL;``
    and unlocking advisory locks) is a round trip per query run on the pool;
    skiplock's pooled sessions change none of those (LISTEN has its own
    connection, migrations theirs), so it is skipped.

    ``statement_cache_size``: how many named prepared statements asyncpg keeps
    per connection. A pooler in transaction mode (PgBouncer) hands each
    transaction to any server connection, where a statement prepared on
    another does not exist: set 0 there, and asyncpg uses unnamed statements,
    parsed and run within one exchange.
    """
    if statement_cache_size < 0:
        raise ValueError("statement_cache_size must be 0 (no cache) or more")
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        reset=_keep_session,
        server_settings=settings,
        statement_cache_size=statement_cache_size,
    )
    assert pool is not None
    return pool


class Store:
    """Runs skiplock's named queries against one schema."""

    def __init__(self, schema: str = "skiplock") -> None:
        self.schema = sql.validate_schema(schema)
        self._enqueue_strict = _without_conflict_clause(self._q("enqueue_many"))
        self._enqueue_one_strict = _without_conflict_clause(self._q("enqueue_one"))

    def _q(self, name: str) -> str:
        return sql.query(name, self.schema)

    # -- migrations -------------------------------------------------------

    async def create_schema(self, ex: Executor) -> None:
        await ex.execute(self._q("create_schema"))

    async def create_migrations_table(self, ex: Executor) -> None:
        await ex.execute(self._q("create_migrations_table"))

    async def lock_migrations(self, ex: Executor) -> None:
        """Wait for other migrators of this schema; held until the transaction ends."""
        await ex.execute(self._q("lock_migrations"), self.schema)

    async def migrations_table_exists(self, ex: Executor) -> bool:
        return bool(await ex.fetchval(self._q("migrations_table_exists"), self.schema))

    async def applied_migrations(self, ex: Executor) -> list[AppliedMigration]:
        rows = await ex.fetch(self._q("applied_migrations"))
        return [AppliedMigration(r["version"], r["name"], r["checksum"]) for r in rows]

    async def record_migration(self, ex: Executor, version: int, name: str, checksum: str) -> None:
        await ex.execute(self._q("record_migration"), version, name, checksum)

    # -- the client -------------------------------------------------------

    async def enqueue_many(
        self, ex: Executor, specs: Sequence[JobSpec], *, strict: bool = False
    ) -> list[Job | None]:
        """Insert ``specs``; the job made for each, in input order, None for a spec
        skipped because its id, (tenant, idempotency key) or (tenant, unique key) is
        already taken (see :meth:`resolve_unique`). A batch holding unique keys is
        inserted in (tenant, key) order.

        ``strict``: without ``ON CONFLICT DO NOTHING``, so a taken id or key raises
        ``asyncpg.UniqueViolationError`` and nothing is written (PostgreSQL writes
        less for a plain insert: no speculative insertion).
        """
        if len(specs) == 1:
            return [await self.enqueue_one(ex, specs[0], strict=strict)]
        order = _unique_key_order(specs)
        if order is None:
            return await self._insert_batch(ex, specs, strict)
        made = await self._insert_batch(ex, [specs[i] for i in order], strict)
        jobs: list[Job | None] = [None] * len(specs)
        for position, index in enumerate(order):
            jobs[index] = made[position]
        return jobs

    async def _insert_batch(
        self, ex: Executor, specs: Sequence[JobSpec], strict: bool
    ) -> list[Job | None]:
        fingerprints = request_fingerprints(specs)
        query = self._enqueue_strict if strict else self._q("enqueue_many")
        row = await ex.fetchrow(query, *_enqueue_arguments(specs, fingerprints))
        assert row is not None  # one row, an aggregate
        created_at, ids, run_ats, keys = row
        stored = _stored_keys(keys)
        if ids is None:  # every job inserted, each due at its creation
            if stored:
                return [
                    _queued_job(spec, fingerprint, created_at, created_at, stored.get(spec.id))
                    for spec, fingerprint in zip(specs, fingerprints, strict=True)
                ]
            return [
                _queued_job(spec, fingerprint, created_at, created_at)
                for spec, fingerprint in zip(specs, fingerprints, strict=True)
            ]
        jobs: list[Job | None] = [None] * len(specs)
        # The rows come in input order, the skipped ones left out; matched by id, so
        # any other order would only cost a lookup.
        at = 0
        index: dict[uuid.UUID, int] | None = None
        for job_id, run_at in zip(ids, run_ats, strict=True):
            while at < len(specs) and job_id != specs[at].id:
                at += 1
            if at == len(specs):
                if index is None:
                    index = {s.id: i for i, s in enumerate(specs)}
                found = index[job_id]
            else:
                found = at
            jobs[found] = _queued_job(
                specs[found], fingerprints[found], run_at, created_at, stored.get(job_id)
            )
        return jobs

    async def enqueue_one(self, ex: Executor, spec: JobSpec, *, strict: bool = False) -> Job | None:
        """Insert one job (as :meth:`enqueue_many`, with plain parameters: cheaper for
        one row); None when its id or key is taken (``strict``: raise)."""
        fingerprint = spec.fingerprint
        row = await ex.fetchrow(
            self._enqueue_one_strict if strict else self._q("enqueue_one"),
            spec.id,
            spec.queue,
            spec.task,
            spec.args_json,
            spec.priority,
            spec.run_at,
            spec.delay_seconds,
            spec.max_attempts,
            spec.tenant,
            spec.idempotency_key,
            spec.meta_json,
            spec.expires_at,
            spec.timeout_seconds,
            fingerprint,
            None if spec.limit_keys is None else list(spec.limit_keys),
            spec.fairness_key,
            spec.stored_unique_key,
        )
        if row is None:
            return None
        limit_keys = row[3]
        if limit_keys is None and row[4] is None:
            return _queued_job(spec, fingerprint, row[1], row[2])
        stored = (None if limit_keys is None else tuple(limit_keys), row[4])
        return _queued_job(spec, fingerprint, row[1], row[2], stored)

    async def resolve_unique(self, ex: Executor, spec: JobSpec) -> Job | None:
        """Apply ``spec.on_duplicate`` to the queued or running job holding the spec's
        (tenant, unique key), and return it (``duplicate`` True); None when no job holds
        it any more (insert again)."""
        row = await ex.fetchrow(
            self._q("resolve_unique"),
            spec.tenant,
            spec.stored_unique_key,
            spec.on_duplicate,
            spec.args_json,
            spec.meta_json,
            spec.priority,
            spec.run_at,
            spec.delay_seconds,
            spec.max_attempts,
        )
        return None if row is None else _job(row)

    async def get_by_idempotency_keys(
        self, ex: Executor, keys: Iterable[tuple[str, str]]
    ) -> list[Job]:
        pairs = list(keys)
        rows = await ex.fetch(
            self._q("get_by_idempotency_keys"), [t for t, _ in pairs], [k for _, k in pairs]
        )
        return [_job(r) for r in rows]

    async def get_job(self, ex: Executor, job_id: uuid.UUID, tenant: str | None) -> Job | None:
        row = await ex.fetchrow(self._q("get_job"), job_id, tenant)
        return None if row is None else _job(row)

    async def get_jobs(
        self, ex: Executor, job_ids: Sequence[uuid.UUID], tenant: str | None
    ) -> list[Job]:
        rows = await ex.fetch(self._q("get_jobs"), list(job_ids), tenant)
        return [_job(r) for r in rows]

    async def get_watched_jobs(
        self, ex: Executor, watched: Iterable[tuple[uuid.UUID, str]]
    ) -> list[Job]:
        """The jobs of the (id, tenant) pairs in ``watched``, each only for its tenant."""
        pairs = sorted(set(watched))
        rows = await ex.fetch(
            self._q("get_watched_jobs"), [i for i, _ in pairs], [t for _, t in pairs]
        )
        return [_job(r) for r in rows]

    async def list_jobs(
        self,
        ex: Executor,
        *,
        tenant: str | None,
        states: Sequence[str] | None,
        task: str | None,
        queue: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        meta_json: str | None,
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
        max_result_bytes: int | None = None,
    ) -> list[Job]:
        rows = await ex.fetch(
            self._q("list_jobs"),
            tenant,
            None if states is None else list(states),
            task,
            queue,
            created_after,
            created_before,
            meta_json,
            None if cursor is None else cursor[0],
            None if cursor is None else cursor[1],
            limit,
            max_result_bytes,
        )
        return [_job(r) for r in rows]

    async def cancel_job(self, ex: Executor, job_id: uuid.UUID, tenant: str | None) -> Job | None:
        row = await ex.fetchrow(self._q("cancel_job"), job_id, tenant)
        return None if row is None else _job(row)

    async def retry_job(self, ex: Executor, job_id: uuid.UUID, tenant: str | None) -> Job | None:
        row = await ex.fetchrow(self._q("retry_job"), job_id, tenant)
        return None if row is None else _job(row)

    # -- the worker -------------------------------------------------------

    async def claim_jobs(
        self,
        ex: Executor,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        worker_id: str,
        *,
        fair_after: str | None = None,
        on_unreadable: Callable[[Unreadable], None] | None = None,
    ) -> list[Job]:
        """Claim up to ``limit`` jobs. A claimed row whose JSON cannot be decoded (only
        SQL written by hand can store one, e.g. a number beyond a double) goes to
        ``on_unreadable`` instead, still leased; without it the error is raised.
        ``fair_after``: the last fair key this worker was served (see :func:`next_fair_key`)."""
        rows = await ex.fetch(
            self._q("claim_jobs"), list(queues), limit, lease_seconds, worker_id, fair_after
        )
        if on_unreadable is None:
            return [_job(r) for r in rows]
        jobs: list[Job] = []
        for row in rows:
            try:
                jobs.append(_job(row))
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                on_unreadable(Unreadable(row["id"], row["lease_token"], row["attempt"], str(exc)))
        return jobs

    async def heartbeat_jobs(
        self, ex: Executor, leases: Sequence[tuple[uuid.UUID, uuid.UUID]], lease_seconds: float
    ) -> dict[uuid.UUID, bool]:
        """Extend leases; returns {job id: cancel requested} for the leases still held."""
        rows = await ex.fetch(
            self._q("heartbeat_jobs"),
            [i for i, _ in leases],
            [t for _, t in leases],
            lease_seconds,
        )
        return {r["id"]: r["cancel_requested"] for r in rows}

    async def update_progress(
        self, ex: Executor, writes: Sequence[ProgressWrite]
    ) -> set[uuid.UUID]:
        rows = await ex.fetch(
            self._q("update_progress"),
            [w.job_id for w in writes],
            [w.lease_token for w in writes],
            [w.progress for w in writes],
            [w.message for w in writes],
            [w.eta_seconds for w in writes],
        )
        return {r["id"] for r in rows}

    async def complete_jobs(
        self, ex: Executor, completions: Sequence[Completion]
    ) -> set[uuid.UUID]:
        rows = await ex.fetch(
            self._q("complete_jobs"),
            [c.job_id for c in completions],
            [c.lease_token for c in completions],
            [c.outcome for c in completions],
            [c.result_json for c in completions],
            [c.error_json for c in completions],
            [c.delay_seconds for c in completions],
            [c.progress for c in completions],
            [c.message for c in completions],
            [c.eta_seconds for c in completions],
        )
        return {r["id"] for r in rows}

    async def rescue_expired(
        self, ex: Executor, limit: int, skip: Sequence[uuid.UUID] = ()
    ) -> list[Rescued]:
        """Take back up to ``limit`` expired leases, leaving out the jobs in ``skip``."""
        rows = await ex.fetch(self._q("rescue_expired"), limit, list(skip))
        return [Rescued(r["id"], JobState(r["state"]), r["attempt"], r["worker_id"]) for r in rows]

    async def expired_jobs(
        self, ex: Executor, limit: int, skip: Sequence[uuid.UUID] = ()
    ) -> list[uuid.UUID]:
        """Ids of up to ``limit`` jobs whose lease expired, in rescue order, but ``skip``."""
        rows = await ex.fetch(self._q("expired_jobs"), limit, list(skip))
        return [r["id"] for r in rows]

    async def release_orphans(
        self, ex: Executor, worker_id: str, held: Sequence[uuid.UUID]
    ) -> list[tuple[uuid.UUID, JobState]]:
        """Give back (uncounted) the jobs running under ``worker_id`` with a token not in
        ``held``: claims whose reply it never received. Returns (id, new state)."""
        rows = await ex.fetch(self._q("release_orphans"), worker_id, list(held))
        return [(r["id"], JobState(r["state"])) for r in rows]

    # -- worker presence (migration 0007) ---------------------------------

    async def worker_id_in_use(self, ex: Executor, worker_id: str) -> bool | None:
        """Whether a live process holds ``worker_id`` (None: not registered). Locks the
        registration row until the end of the caller's transaction."""
        row = await ex.fetchrow(self._q("worker_id_in_use"), worker_id)
        return None if row is None else bool(row["in_use"])

    async def register_worker(
        self, ex: Executor, worker_id: str, host: str, pid: int
    ) -> tuple[int, bool]:
        """Register ``worker_id`` under a fresh lock key and take its session-level
        presence lock on ``ex`` (a dedicated connection). Returns (lock key, locked)."""
        row = await ex.fetchrow(self._q("register_worker"), worker_id, host, pid)
        assert row is not None
        return row["lock_key"], row["locked"]

    async def unregister_worker(self, ex: Executor, worker_id: str, lock_key: int) -> None:
        """Delete this registration of ``worker_id`` (a graceful exit)."""
        await ex.execute(self._q("unregister_worker"), worker_id, lock_key)

    async def dead_workers(self, ex: Executor) -> list[str]:
        """Ids of registered workers whose presence lock is not held."""
        return [r["id"] for r in await ex.fetch(self._q("dead_workers"))]

    async def rescue_dead_workers(
        self, ex: Executor, worker_ids: Sequence[str], keep: Sequence[uuid.UUID], limit: int
    ) -> list[Rescued]:
        """Re-queue (or fail, or cancel) up to ``limit`` running jobs of the dead workers
        among ``worker_ids``, except those whose lease token is in ``keep``."""
        rows = await ex.fetch(self._q("rescue_dead_workers"), list(worker_ids), list(keep), limit)
        return [Rescued(r["id"], JobState(r["state"]), r["attempt"], r["worker_id"]) for r in rows]

    async def forget_dead_workers(self, ex: Executor, worker_ids: Sequence[str]) -> list[str]:
        """Delete the registrations of dead workers among ``worker_ids`` that no running
        job names any more; returns the ids deleted."""
        return [r["id"] for r in await ex.fetch(self._q("forget_dead_workers"), list(worker_ids))]

    # -- operations -------------------------------------------------------

    async def expire_jobs(self, ex: Executor, limit: int) -> int:
        """End at most ``limit`` queued jobs past their ``expires_at`` as cancelled (Expired)."""
        return int(await ex.fetchval(self._q("expire_jobs"), limit))

    async def purge_finished(
        self,
        ex: Executor,
        limit: int,
        *,
        succeeded_after: float | None = PURGE_SUCCEEDED_AFTER,
        failed_after: float | None = PURGE_FAILED_AFTER,
        cancelled_after: float | None = PURGE_CANCELLED_AFTER,
    ) -> int:
        """Delete at most ``limit`` finished jobs past their state's age (seconds) or expiry."""
        deleted = await ex.fetchval(
            self._q("purge_finished"), limit, succeeded_after, failed_after, cancelled_after
        )
        return int(deleted)

    # -- flow control (migration 0010) -------------------------------------

    async def set_limit(
        self,
        ex: Executor,
        pattern: str,
        max_running: int | None,
        max_starts: int | None,
        per_seconds: float | None,
    ) -> tuple[Limit, str]:
        """Store a limit; returns it and the writing transaction's id."""
        row = await ex.fetchrow(self._q("set_limit"), pattern, max_running, max_starts, per_seconds)
        assert row is not None
        return _limit(row), row["xid"]

    async def declare_limit(
        self,
        ex: Executor,
        pattern: str,
        max_running: int | None,
        max_starts: int | None,
        per_seconds: float | None,
    ) -> tuple[Limit, str] | None:
        """Store a limit unless the pattern has one; returns it and the writing
        transaction's id, or None when one was there."""
        row = await ex.fetchrow(
            self._q("declare_limit"), pattern, max_running, max_starts, per_seconds
        )
        return None if row is None else (_limit(row), row["xid"])

    async def remove_limit(self, ex: Executor, pattern: str) -> bool:
        return await ex.fetchrow(self._q("remove_limit"), pattern) is not None

    async def list_limits(self, ex: Executor) -> list[Limit]:
        return [_limit(r) for r in await ex.fetch(self._q("list_limits"))]

    async def apply_limit_keys(self, ex: Executor, pattern: str) -> int:
        """Give queued and running jobs the implicit keys the limit of ``pattern`` matches."""
        return int(await ex.fetchval(self._q("apply_limit_keys"), pattern))

    # -- schedules (migration 0013) ---------------------------------------------

    async def declare_schedule(self, ex: Executor, d: ScheduleDefinition) -> None:
        await ex.execute(
            self._q("declare_schedule"),
            d.name,
            d.cron,
            d.every_seconds,
            d.timezone,
            d.task,
            d.args_json,
            d.queue,
            d.tenant,
            d.priority,
            d.max_attempts,
            d.catch_up,
        )

    async def due_schedules(
        self, ex: Executor, limit: int
    ) -> tuple[list[Schedule], datetime | None]:
        """The due schedules, locked for the caller's transaction, and the database's now
        (None when none is due: nothing needs it)."""
        rows = await ex.fetch(self._q("due_schedules"), limit)
        return [Schedule.from_row(r) for r in rows], rows[0]["now"] if rows else None

    async def advance_schedule(
        self,
        ex: Executor,
        name: str,
        last_tick: datetime | None,
        next_tick: datetime | None,
        last_job_id: uuid.UUID | None,
    ) -> None:
        await ex.execute(self._q("advance_schedule"), name, last_tick, next_tick, last_job_id)

    async def list_schedules(self, ex: Executor) -> list[Schedule]:
        return [Schedule.from_row(r) for r in await ex.fetch(self._q("list_schedules"))]

    async def get_schedule(self, ex: Executor, name: str) -> Schedule | None:
        row = await ex.fetchrow(self._q("get_schedule"), name)
        return None if row is None else Schedule.from_row(row)

    async def set_schedule_paused(self, ex: Executor, name: str, paused: bool) -> Schedule | None:
        row = await ex.fetchrow(self._q("set_schedule_paused"), name, paused)
        return None if row is None else Schedule.from_row(row)

    async def remove_schedule(self, ex: Executor, name: str) -> bool:
        return await ex.fetchrow(self._q("remove_schedule"), name) is not None

    async def set_queue(
        self, ex: Executor, name: str, *, paused: bool | None, fair: bool | None
    ) -> tuple[QueueSettings, str]:
        """Store a queue's switches (None keeps one); returns them and the writing
        transaction's id."""
        row = await ex.fetchrow(self._q("set_queue"), name, paused, fair)
        assert row is not None
        return QueueSettings(row["name"], row["paused"], row["fair"], row["updated_at"]), row["xid"]

    async def list_queues(self, ex: Executor) -> list[QueueSettings]:
        rows = await ex.fetch(self._q("list_queues"))
        return [QueueSettings(r["name"], r["paused"], r["fair"], r["updated_at"]) for r in rows]

    async def paused_queues(self, ex: Executor, queues: Sequence[str]) -> set[str]:
        return {r["name"] for r in await ex.fetch(self._q("paused_queues"), list(queues))}

    async def apply_fair_keys(self, ex: Executor, queue: str | None, limit: int) -> int:
        """Give queued jobs of fair queues (or of ``queue``) without a fair key their tenant."""
        return int(await ex.fetchval(self._q("apply_fair_keys"), queue, limit))

    async def set_fair_weight(
        self, ex: Executor, queue: str, fair_key: str, weight: int | None
    ) -> FairWeight | None:
        row = await ex.fetchrow(self._q("set_fair_weight"), queue, fair_key, weight)
        return None if row is None else FairWeight(row["queue"], row["fair_key"], row["weight"])

    async def list_fair_weights(self, ex: Executor) -> list[FairWeight]:
        rows = await ex.fetch(self._q("list_fair_weights"))
        return [FairWeight(r["queue"], r["fair_key"], r["weight"]) for r in rows]

    async def limit_usage(
        self,
        ex: Executor,
        pattern: str | None = None,
        *,
        at_limit: bool = False,
        limit: int | None = None,
    ) -> list[LimitUsage]:
        """The keys in use under each limit (of ``pattern``; ``at_limit``: only those with
        no room left), by pattern then key, at most ``limit`` (view ``limit_usage``,
        migration 0011)."""
        rows = await ex.fetch(self._q("limit_usage"), pattern, at_limit, limit)
        return [
            LimitUsage(
                pattern=r["pattern"],
                key=r["key"],
                max_running=r["max_running"],
                running=r["running"],
                max_starts=r["max_starts"],
                per_seconds=r["per_seconds"],
                starts=r["starts"],
                queued=r["queued"],
                at_limit=r["at_limit"],
            )
            for r in rows
        ]

    async def limit_usage_summary(self, ex: Executor) -> list[LimitSummary]:
        """Every limit's usage summed over its keys, by pattern."""
        rows = await ex.fetch(self._q("limit_usage_summary"))
        return [
            LimitSummary(
                r["pattern"],
                r["keys"],
                r["keys_at_limit"],
                r["running"],
                r["queued"],
                r["throttled"],
            )
            for r in rows
        ]

    async def queue_flow(self, ex: Executor) -> list[QueueFlow]:
        """Each queue with jobs or switches: paused, fair, queued, running, throttled."""
        rows = await ex.fetch(self._q("queue_flow"))
        return [
            QueueFlow(r["queue"], r["paused"], r["fair"], r["queued"], r["running"], r["throttled"])
            for r in rows
        ]

    async def prune_limit_starts(self, ex: Executor, limit: int) -> int:
        """Delete at most ``limit`` logged starts older than every rate window."""
        return int(await ex.fetchval(self._q("prune_limit_starts"), limit))

    async def older_transactions(self, ex: Executor, xid: str) -> int:
        """Other sessions' transactions or snapshots older than transaction ``xid``."""
        return int(await ex.fetchval(self._q("older_transactions"), xid))

    # -- the status API ---------------------------------------------------

    async def ping(self, ex: Executor) -> bool:
        return bool(await ex.fetchval(self._q("ping")))

    async def create_api_key(
        self,
        ex: Executor,
        *,
        key_id: uuid.UUID,
        name: str,
        tenant: str,
        scopes: Sequence[str],
        key_hash: bytes,
        expires_at: datetime | None,
    ) -> ApiKey:
        row = await ex.fetchrow(
            self._q("create_api_key"), key_id, name, tenant, list(scopes), key_hash, expires_at
        )
        assert row is not None
        return _api_key(row)

    async def get_api_key(self, ex: Executor, key_hash: bytes) -> ApiKey | None:
        row = await ex.fetchrow(self._q("get_api_key"), key_hash)
        return None if row is None else _api_key(row)

    async def list_api_keys(self, ex: Executor, tenant: str | None) -> list[ApiKey]:
        return [_api_key(r) for r in await ex.fetch(self._q("list_api_keys"), tenant)]

    async def revoke_api_key(self, ex: Executor, key_id: uuid.UUID) -> ApiKey | None:
        row = await ex.fetchrow(self._q("revoke_api_key"), key_id)
        return None if row is None else _api_key(row)

    async def job_counts(self, ex: Executor, tenant: str | None) -> list[JobCount]:
        rows = await ex.fetch(self._q("job_counts"), tenant)
        return [JobCount(r["queue"], r["task"], JobState(r["state"]), r["count"]) for r in rows]

    async def job_window_stats(
        self, ex: Executor, tenant: str | None, window_seconds: float
    ) -> list[TaskWindowStats]:
        rows = await ex.fetch(self._q("job_window_stats"), tenant, window_seconds)
        return [
            TaskWindowStats(
                task=r["task"],
                succeeded=r["succeeded"],
                failed=r["failed"],
                cancelled=r["cancelled"],
                wait_p50=r["wait_p50"],
                wait_p95=r["wait_p95"],
                run_p50=r["run_p50"],
                run_p95=r["run_p95"],
            )
            for r in rows
        ]
