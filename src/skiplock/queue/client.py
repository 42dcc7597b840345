"""The client applications use: enqueue, get, list, cancel, retry."""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self, cast

import anyio
import asyncpg
import orjson
import structlog

from skiplock.queue.errors import (
    UNAVAILABLE_DB_ERRORS,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJob,
    InvalidSetting,
    JobNotFound,
    JobStateConflict,
    ScheduleNotFound,
    SkiplockError,
)
from skiplock.queue.flow import (
    FairWeight,
    Limit,
    LimitSummary,
    LimitUsage,
    QueueFlow,
    QueueSettings,
    check_limit,
    check_queue_name,
    may_match_implicit_key,
)
from skiplock.queue.hub import EventHub, JobGone
from skiplock.queue.jsoncodec import dumps
from skiplock.queue.models import Job, JobSpec, OnDuplicate, Page, TenantScope, tenant_filter
from skiplock.queue.schedules import Schedule
from skiplock.queue.states import JobState
from skiplock.queue.store import DEFAULT_STATEMENT_CACHE_SIZE, Executor, Store, open_pool

__all__ = [
    "ENQUEUE_ATTEMPTS",
    "Client",
    "await_older_transactions",
    "decode_cursor",
    "encode_cursor",
]

log = structlog.get_logger("skiplock.client")

_IDEMPOTENCY_ROUNDS = 3
ENQUEUE_ATTEMPTS = 3
"""How many times an enqueue on the client's pool is sent when its connection fails."""
_BACKFILL_BATCH = 10_000  # fair keys given per statement when a queue is made fair
_OLDER_TRANSACTIONS_WAIT = 5.0  # seconds a setting waits for older writers before a backfill
_RESEND_PAUSE = 0.1  # seconds before the second send; x4 before each later one


def encode_cursor(job: Job) -> str:
    """An opaque cursor pointing after ``job`` in a newest-first listing."""
    raw = orjson.dumps([job.created_at.isoformat(), str(job.id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Decode :func:`encode_cursor`'s output; ValueError on anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(created, str) or not isinstance(job_id, str):
            raise ValueError("not a (timestamp, id) pair")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        when.astimezone(UTC)  # OverflowError near the ends of the calendar
        return when, uuid.UUID(job_id)
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"invalid cursor: {cursor!r}") from exc


def _same_request(spec: JobSpec, job: Job) -> bool:
    """Whether ``job`` was made by the same request as ``spec`` (every field but the id).

    A job enqueued before schema 0006 has no fingerprint: task and args decide.
    """
    if job.request_fingerprint is not None:
        return spec.fingerprint == job.request_fingerprint
    return spec.task == job.task and orjson.loads(spec.args_json) == job.args


class Client:
    """Puts jobs into PostgreSQL and reads them back.

    Create one with :meth:`connect` (it owns a small pool) or hand it an
    existing ``asyncpg`` pool. Every method also accepts ``connection=``: the
    application's own connection, so a job can be enqueued inside the
    application's transaction and exists exactly when that transaction commits.

    Every read and change is scoped to one tenant, in SQL: ``tenant=`` names it
    (``"default"`` when omitted, as for :meth:`enqueue`). Only
    ``tenant=ALL_TENANTS`` reaches every tenant (operators' tools); ``None`` is
    refused with ValueError, so a missing user id never means "everyone".

    :meth:`updates` and :meth:`wait` LISTEN on ``listen_dsn`` (:meth:`connect`
    sets it to its DSN); a client made from a pool without one polls every
    ``watch_poll_seconds``. Leaving ``async for job in client.updates(...)``
    early ends the watch when the iterator is closed: wrap it in
    :func:`contextlib.aclosing` to end it at once.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        schema: str = "skiplock",
        owns_pool: bool = False,
        listen_dsn: str | None = None,
        watch_poll_seconds: float = 1.0,
    ) -> None:
        if not watch_poll_seconds > 0:
            raise ValueError("watch_poll_seconds must be more than 0")
        self.pool = pool
        self.store = Store(schema)
        self._owns_pool = owns_pool
        self._listen_dsn = listen_dsn
        self._watch_poll_seconds = watch_poll_seconds
        self._hub: EventHub | None = None
        self._hub_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        schema: str = "skiplock",
        min_size: int = 1,
        max_size: int = 10,
        statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
        listen_dsn: str | Literal[False] | None = None,
        watch_poll_seconds: float = 1.0,
    ) -> Self:
        """Open a pool on ``dsn`` and return a client that closes it on :meth:`close`.

        The pool does not reset sessions on release (skiplock's queries change no
        session state, and asyncpg's reset is a round trip per query): if you run
        your own statements on ``client.pool``, don't leave ``SET``, ``LISTEN`` or
        advisory locks behind. An open transaction is still rolled back.

        ``statement_cache_size=0`` when ``dsn`` goes through PgBouncer (or
        another pooler) in transaction mode: asyncpg's named prepared
        statements do not survive the pooler handing the next transaction to
        another server connection; then give ``listen_dsn``, a direct one, for
        :meth:`updates` and :meth:`wait` (LISTEN needs a session of its own).

        ``listen_dsn``: where :meth:`updates` and :meth:`wait` LISTEN for changes
        (one connection, opened on first use; default ``dsn``; ``False``: never,
        they poll only). ``watch_poll_seconds``: how often they re-read the
        watched jobs whatever the notifications say (the floor when
        notifications are lost).
        """
        pool = await open_pool(
            dsn, min_size=min_size, max_size=max_size, statement_cache_size=statement_cache_size
        )
        return cls(
            pool,
            schema=schema,
            owns_pool=True,
            listen_dsn=None if listen_dsn is False else (listen_dsn or dsn),
            watch_poll_seconds=watch_poll_seconds,
        )

    async def close(self) -> None:
        """Stop watching jobs, and close the pool if this client opened it."""
        if self._hub_task is not None:
            self._hub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hub_task
            self._hub_task = None
            self._hub = None
        if self._owns_pool:
            await self.pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def schema(self) -> str:
        """The PostgreSQL schema this client works in."""
        return self.store.schema

    def _ex(self, connection: Executor | None) -> Executor:
        return self.pool if connection is None else connection

    async def enqueue(
        self,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        queue: str = "default",
        priority: int = 0,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        max_attempts: int = 3,
        tenant: str = "default",
        idempotency_key: str | None = None,
        meta: Mapping[str, Any] | None = None,
        expires_at: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the job's timeout, not this call's
        limit_keys: Sequence[str] | None = None,
        fairness_key: str | None = None,
        unique: bool = False,
        unique_key: str | None = None,
        on_duplicate: OnDuplicate | None = None,
        debounce: timedelta | float | None = None,
        connection: Executor | None = None,
    ) -> Job:
        """Enqueue one job and return it (the fields are those of :class:`JobSpec`).

        With ``idempotency_key``, the same (tenant, key) with the same request
        returns the job that already holds it; the same key with any other field
        (task, args, queue, priority, ``run_at`` or ``delay``, max_attempts, meta,
        expiry, timeout) raises :class:`IdempotencyConflict`. A ``delay`` is
        compared as given, not as the ``run_at`` it makes. Bad input raises :class:`InvalidJob` and
        writes nothing.

        A unique job (``unique``, ``unique_key`` or ``debounce``; see :class:`JobSpec`)
        whose key a queued or running job of the tenant holds returns that job, after
        ``on_duplicate``, with ``duplicate`` True: nothing new is written. An
        idempotency key is resolved first.
        """
        spec = JobSpec(
            task=task,
            args={} if args is None else args,
            queue=queue,
            priority=priority,
            run_at=run_at,
            delay=delay,
            max_attempts=max_attempts,
            tenant=tenant,
            idempotency_key=idempotency_key,
            meta={} if meta is None else meta,
            expires_at=expires_at,
            timeout=timeout,
            limit_keys=limit_keys,
            fairness_key=fairness_key,
            unique=unique,
            unique_key=unique_key,
            on_duplicate=on_duplicate,
            debounce=debounce,
        )
        (job,) = await self._send(
            [spec], connection, "enqueue", resend_safe=idempotency_key is not None
        )
        return job

    async def enqueue_many(
        self, specs: Iterable[JobSpec], *, connection: Executor | None = None
    ) -> list[Job]:
        """Enqueue many jobs in one round trip; returns them in the order given.

        Specs carrying an idempotency key that already exists resolve to the
        existing job (or raise :class:`IdempotencyConflict`), as in :meth:`enqueue`.
        A unique spec whose key is held returns the holder (``duplicate`` True, an id
        other than the spec's); two specs of the batch with the same key act as if
        enqueued one after the other.

        On the client's pool, a send whose connection fails is sent again by itself
        (up to :data:`ENQUEUE_ATTEMPTS` times): the specs' client-made ids make that
        safe. Then :class:`DatabaseUnavailable` (``retry_safe``: sending the same
        specs again is). On the application's own connection nothing is sent
        again: its transaction is gone (``retry_safe`` False).
        """
        batch = list(specs)
        if not batch:
            return []
        for spec in batch:
            if not isinstance(spec, JobSpec):
                raise InvalidJob(f"enqueue_many takes JobSpec objects, not {type(spec).__name__}")
        return await self._send(batch, connection, "enqueue_many", resend_safe=True)

    async def _send(
        self,
        batch: builtins.list[JobSpec],
        connection: Executor | None,
        operation: str,
        *,
        resend_safe: bool,
    ) -> builtins.list[Job]:
        """Insert ``batch``, sending it again on a lost connection when it is on a pool."""
        if not _pooled(connection):
            with _unavailable(operation, connection):
                return await self._insert(batch, connection)
        for attempt in range(1, ENQUEUE_ATTEMPTS + 1):
            try:
                return await self._insert(batch, connection)
            except UNAVAILABLE_DB_ERRORS as exc:
                if _not_unavailable(exc):
                    raise
                if attempt == ENQUEUE_ATTEMPTS:
                    raise DatabaseUnavailable(operation, exc, retry_safe=resend_safe) from exc
                log.warning("enqueue_resent", operation=operation, attempt=attempt, error=repr(exc))
                await anyio.sleep(_RESEND_PAUSE * 4 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _insert(
        self, batch: builtins.list[JobSpec], connection: Executor | None
    ) -> builtins.list[Job]:
        if _pooled(connection) and all(
            s.idempotency_key is None and s.stored_unique_key is None for s in batch
        ):
            # Without keys only an id can conflict: a batch sent again. One statement that
            # inserts every job or fails whole (nothing written) needs no transaction and
            # no conflict handling; a duplicate id goes the way below, which resolves it.
            try:
                jobs = await self.store.enqueue_many(self._ex(connection), batch, strict=True)
            except asyncpg.UniqueViolationError:
                pass
            else:
                return cast("builtins.list[Job]", jobs)
        if len(batch) == 1:  # one statement: atomic on its own
            return await self._enqueue(self._ex(connection), batch)
        # Several jobs: all or none, even when a conflict is found after the insert.
        if connection is None:
            async with self.pool.acquire() as conn, conn.transaction():
                return await self._enqueue(conn, batch)
        if isinstance(connection, asyncpg.Pool):
            async with connection.acquire() as conn, conn.transaction():
                return await self._enqueue(conn, batch)
        async with connection.transaction():  # a savepoint inside the caller's transaction
            return await self._enqueue(connection, batch)

    async def _enqueue(self, ex: Executor, batch: list[JobSpec]) -> builtins.list[Job]:
        inserted = await self.store.enqueue_many(ex, batch)
        if not any(job is None for job in inserted):  # every job is new: nothing to resolve
            return cast("builtins.list[Job]", inserted)
        found: dict[uuid.UUID, Job] = {}
        pending = batch
        for round_ in range(_IDEMPOTENCY_ROUNDS):
            if round_:
                inserted = await self.store.enqueue_many(ex, pending)
            for job in inserted:
                if job is not None:
                    found[job.id] = job
            pending = [s for s in pending if s.id not in found]
            if not pending:
                break
            pending = await self._resolve_conflicts(ex, pending, found)
            if not pending:
                break
        if pending:
            raise SkiplockError(
                "could not resolve idempotency or unique keys held by a concurrent "
                "transaction; retry"
            )
        return [found[s.id] for s in batch]

    async def _resolve_conflicts(
        self, ex: Executor, pending: builtins.list[JobSpec], found: dict[uuid.UUID, Job]
    ) -> builtins.list[JobSpec]:
        """Match skipped specs to the rows that hold their id or key; return the unmatched."""
        # By id across tenants (None): ids are unique over the table, and a row of another
        # tenant holding the id is refused below, never returned.
        by_id = {j.id: j for j in await self.store.get_jobs(ex, [s.id for s in pending], None)}
        keyed = [(s.tenant, s.idempotency_key) for s in pending if s.idempotency_key]
        by_key = {
            (j.tenant, j.idempotency_key): j
            for j in (await self.store.get_by_idempotency_keys(ex, keyed) if keyed else [])
        }
        still: builtins.list[JobSpec] = []
        unique: builtins.list[JobSpec] = []
        for spec in pending:
            same_id = by_id.get(spec.id)
            if same_id is not None:  # the same spec sent again (e.g. after a network error)
                if same_id.tenant != spec.tenant or not _same_request(spec, same_id):
                    raise InvalidJob(f"job id {spec.id} is already used by another job")
                found[spec.id] = same_id
                continue
            holder = by_key.get((spec.tenant, spec.idempotency_key))
            if holder is None and spec.stored_unique_key is not None:
                unique.append(spec)
                continue
            if holder is None:
                still.append(spec)  # the holder vanished meanwhile: insert again
                continue
            if not _same_request(spec, holder):
                raise IdempotencyConflict(spec.tenant, spec.idempotency_key or "", holder.id)
            found[spec.id] = holder
        # Duplicates of unique keys, by (tenant, key) as the insert takes them (no deadlock
        # between batches), each key's in input order: applied one after the other.
        unique.sort(key=lambda s: (s.tenant, s.stored_unique_key or ""))
        for spec in unique:
            holder = await self.store.resolve_unique(ex, spec)
            if holder is None:
                still.append(spec)  # the holder ended meanwhile: insert again
            else:
                found[spec.id] = holder
        return still

    async def get(
        self,
        job_id: uuid.UUID | str,
        *,
        tenant: TenantScope = "default",
        connection: Executor | None = None,
    ) -> Job | None:
        """The job, or None when it does not exist (or belongs to another tenant)."""
        scope = tenant_filter(tenant)
        parsed = _parse_id(job_id)
        if parsed is None:
            return None
        with _unavailable("get", connection):
            return await self.store.get_job(self._ex(connection), parsed, scope)

    async def updates(
        self, job_id: uuid.UUID | str, *, tenant: TenantScope = "default"
    ) -> AsyncIterator[Job]:
        """The job as it is now, then each change to it, until it ends.

        The last job yielded is in a terminal state (succeeded, failed or
        cancelled); a job that has already ended yields once. Changes come from
        LISTEN (one connection per client, opened on first use; see
        :meth:`connect`) with a re-read every ``watch_poll_seconds`` as the
        floor, so a lost notification delays a change, never loses it. Changes
        close together may arrive as one (each job yielded is newer than the
        last). Raises :class:`JobNotFound` when there is no such job for this
        tenant, or when it is deleted (by retention) while watched.

        >>> async for job in client.updates(job_id, tenant="acme"):  # doctest: +SKIP
        ...     print(job.state, job.progress, job.progress_message)
        """
        tenant_filter(tenant)  # refuses a bad tenant before anything is read
        parsed = _parse_id(job_id)
        if parsed is None:
            raise JobNotFound(job_id)
        hub = self._watcher()
        last: Job | None = None
        while True:  # once, and again after falling behind the hub's buffer
            current = await self.get(parsed, tenant=tenant)
            if current is None:
                raise JobNotFound(job_id)
            # Watched under the job's own tenant (ALL_TENANTS reads any job, then one).
            with hub.subscribe(parsed, current.tenant) as sub:
                # Read again once subscribed: no change can fall in between.
                job = await self.get(parsed, tenant=current.tenant)
                if job is None:
                    raise JobNotFound(job_id)
                while True:
                    if last is None or job.updated_at > last.updated_at:
                        last = job
                        yield job
                    if job.is_terminal:
                        return
                    try:
                        fresh = await sub.next(3600.0)
                    except EOFError:
                        break  # fell behind: read the current state again
                    except JobGone:
                        raise JobNotFound(job_id) from None
                    if fresh is not None:
                        job = fresh

    async def wait(
        self,
        job_id: uuid.UUID | str,
        timeout: float | None = None,  # noqa: ASYNC109 - wait(job, timeout), as sync code reads
        *,
        tenant: TenantScope = "default",
    ) -> Job:
        """Wait until the job ends and return it (succeeded, failed or cancelled).

        Raises :class:`TimeoutError` after ``timeout`` seconds (None: no limit)
        and :class:`JobNotFound` as :meth:`updates` does. The job is not
        changed by a timeout: it goes on.
        """
        if timeout is not None and not timeout >= 0:
            raise ValueError("timeout must be 0 or more, or None")
        last: Job | None = None
        with anyio.fail_after(timeout):
            async for job in self.updates(job_id, tenant=tenant):
                last = job
        assert last is not None  # updates() yields at least once, the last one terminal
        return last

    def _watcher(self) -> EventHub:
        """The client's event hub, started on first use (stopped by :meth:`close`)."""
        if self._hub is None or self._hub_task is None or self._hub_task.done():
            self._hub = EventHub(
                self._listen_dsn,
                self.store,
                self.pool,
                poll_seconds=self._watch_poll_seconds,
            )
            self._hub_task = asyncio.create_task(self._hub.run(), name="skiplock-client-watch")
        return self._hub

    async def list(
        self,
        *,
        tenant: TenantScope = "default",
        states: Sequence[JobState | str] | None = None,
        task: str | None = None,
        queue: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        meta: Mapping[str, Any] | None = None,
        cursor: str | None = None,
        limit: int = 50,
        max_result_bytes: int | None = None,
        connection: Executor | None = None,
    ) -> Page:
        """Jobs newest first. ``meta`` keeps jobs whose meta contains those labels.

        Pass the returned ``next_cursor`` back as ``cursor`` for the next page.
        ``max_result_bytes``: a result longer than this as JSON text is not even
        fetched (``result`` is None and ``result_omitted`` True); read the job.
        """
        scope = tenant_filter(tenant)
        if max_result_bytes is not None and max_result_bytes < 0:
            raise ValueError("max_result_bytes must be 0 or more")
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        state_values = None if states is None else [JobState(s).value for s in states]
        meta_json = None if meta is None else dumps(dict(meta), what="meta filter")
        with _unavailable("list", connection):
            jobs = await self.store.list_jobs(
                self._ex(connection),
                tenant=scope,
                states=state_values,
                task=task,
                queue=queue,
                created_after=created_after,
                created_before=created_before,
                meta_json=meta_json,
                cursor=None if cursor is None else decode_cursor(cursor),
                limit=limit + 1,
                max_result_bytes=max_result_bytes,
            )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return Page(tuple(jobs), encode_cursor(jobs[-1]) if more else None)

    async def cancel(
        self,
        job_id: uuid.UUID | str,
        *,
        tenant: TenantScope = "default",
        connection: Executor | None = None,
    ) -> Job:
        """Cancel a job: a queued one ends ``cancelled`` at once; a running one
        gets a cancel request that its worker acts on (it ends ``cancelled``).

        Cancelling a job that already ended returns it unchanged. Raises
        :class:`JobNotFound` when there is no such job for this tenant.
        """
        scope = tenant_filter(tenant)
        parsed = _parse_id(job_id)
        ex = self._ex(connection)
        if parsed is not None:
            with _unavailable("cancel", connection):
                job = await self.store.cancel_job(ex, parsed, scope)
                if job is None:
                    job = await self.store.get_job(ex, parsed, scope)
            if job is not None:
                return job
        raise JobNotFound(job_id)

    async def retry(
        self,
        job_id: uuid.UUID | str,
        *,
        tenant: TenantScope = "default",
        connection: Executor | None = None,
    ) -> Job:
        """Put a failed or cancelled job back in the queue, due now.

        Raises :class:`JobNotFound`, or :class:`JobStateConflict` when the job is
        queued, running or succeeded, has used all 1000 attempts a job may have, or
        is a unique job whose key another queued or running job holds.
        """
        scope = tenant_filter(tenant)
        parsed = _parse_id(job_id)
        ex = self._ex(connection)
        if parsed is not None:
            # Not safe to repeat: the job may be back in the queue, or running again.
            with _unavailable("retry", connection, safe=False):
                try:
                    job = await self.store.retry_job(ex, parsed, scope)
                except asyncpg.UniqueViolationError:
                    # a unique job whose key another queued or running job holds now
                    raise JobStateConflict(
                        parsed,
                        "failed or cancelled",
                        "retry",
                        ": another queued or running job holds its unique key",
                    ) from None
                if job is not None:
                    return job
                current = await self.store.get_job(ex, parsed, scope)
            if current is not None:
                why = ""
                if current.state in (JobState.FAILED, JobState.CANCELLED):
                    why = f" and has used all {current.attempt} attempts a job may have"
                raise JobStateConflict(current.id, current.state.value, "retry", why)
        raise JobNotFound(job_id)

    # -- flow control (docs/flow-control.md) ------------------------------

    async def set_limit(
        self,
        pattern: str,
        *,
        max_running: int | None = None,
        max_starts: int | None = None,
        per: timedelta | float | None = None,
    ) -> Limit:
        """Create or change the limit of the keys ``pattern`` matches (see
        :mod:`skiplock.queue.flow`): at most ``max_running`` of their jobs running at
        once, and/or at most ``max_starts`` starting in any window of ``per`` seconds,
        each distinct key on its own budget. Fleet-wide from the next claim, no restart.

        A pattern that can match an implicit key (``queue:``, ``task:``, ``tenant:``)
        also gives that key to the jobs already queued or running, in the limit's own
        transaction, and again once every transaction older than the change has ended
        (a job enqueued meanwhile: at most 5 s of waiting, then logged). Raises
        :class:`InvalidSetting`.
        """
        pattern, running, starts, seconds = check_limit(pattern, max_running, max_starts, per)
        with _unavailable("set_limit", None):
            async with self.pool.acquire() as conn:
                implicit = may_match_implicit_key(pattern)
                async with conn.transaction():
                    # The jobs queued or running now get the key in the limit's own
                    # transaction: no claim sees the limit without them.
                    limit, xid = await self.store.set_limit(conn, pattern, running, starts, seconds)
                    if implicit:
                        await self.store.apply_limit_keys(conn, pattern)
                if implicit:  # and the jobs of transactions that had not seen it
                    await await_older_transactions(self.store, conn, xid, "set_limit")
                    await self.store.apply_limit_keys(conn, pattern)
        return limit

    async def remove_limit(self, pattern: str) -> bool:
        """Delete the limit of ``pattern``; whether there was one. Jobs waiting on it
        may start at once."""
        with _unavailable("remove_limit", None):
            return await self.store.remove_limit(self.pool, pattern)

    async def limits(self) -> builtins.list[Limit]:
        """Every limit, by pattern."""
        with _unavailable("limits", None):
            return await self.store.list_limits(self.pool)

    async def limit_usage(
        self, pattern: str | None = None, *, at_limit: bool = False, limit: int | None = None
    ) -> builtins.list[LimitUsage]:
        """What the limits are doing: one :class:`LimitUsage` per (limit pattern, key in
        use), by pattern then key; ``pattern``: that limit's only; ``at_limit``: only the
        keys with no room left (their queued jobs wait); ``limit``: at most that many rows.
        Reads the view ``skiplock.limit_usage``: the active jobs and the rate windows, not
        the whole table."""
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        with _unavailable("limit_usage", None):
            return await self.store.limit_usage(self.pool, pattern, at_limit=at_limit, limit=limit)

    async def limit_summary(self) -> builtins.list[LimitSummary]:
        """Each limit's usage summed over its keys (every limit, in use or not)."""
        with _unavailable("limit_summary", None):
            return await self.store.limit_usage_summary(self.pool)

    async def queue_flow(self) -> builtins.list[QueueFlow]:
        """Each queue with jobs queued or running, or with a switch set: paused, fair,
        due queued jobs, running jobs, and queued jobs throttled by a limit."""
        with _unavailable("queue_flow", None):
            return await self.store.queue_flow(self.pool)

    async def pause(self, queue: str) -> QueueSettings:
        """Pause ``queue`` fleet-wide: no job of it starts from the next claim on;
        workers give back the jobs of it they hold but have not started (at once when
        they are listening, else at their next poll). Running jobs finish."""
        with _unavailable("pause", None):
            settings, _ = await self.store.set_queue(
                self.pool, check_queue_name(queue), paused=True, fair=None
            )
        return settings

    async def resume(self, queue: str) -> QueueSettings:
        """Resume a paused queue; its workers claim at once."""
        with _unavailable("resume", None):
            settings, _ = await self.store.set_queue(
                self.pool, check_queue_name(queue), paused=False, fair=None
            )
        return settings

    async def set_fair(self, queue: str, fair: bool = True) -> QueueSettings:
        """Make ``queue`` fair: its jobs are claimed in weighted round-robin across
        fair keys (a job's ``fairness_key``, else its tenant), so one key's backlog
        does not hold back another's jobs. ``fair=False``: claim order again. Jobs
        already queued get their tenant as fair key (after every older transaction
        has ended, as :meth:`set_limit` does)."""
        with _unavailable("set_fair", None):
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    settings, xid = await self.store.set_queue(
                        conn, check_queue_name(queue), paused=None, fair=bool(fair)
                    )
                    # The queued jobs get their fair key in the switch's own
                    # transaction: no claim sees the queue fair without them.
                    while fair and await self.store.apply_fair_keys(conn, queue, _BACKFILL_BATCH):
                        pass
                if fair:  # and the jobs of transactions that had not seen the switch
                    await await_older_transactions(self.store, conn, xid, "set_fair")
                    while await self.store.apply_fair_keys(conn, queue, _BACKFILL_BATCH):
                        pass
        return settings

    async def set_fair_weight(self, queue: str, fair_key: str, weight: int | None) -> None:
        """Give ``fair_key`` ``weight`` jobs per round in the fair queue ``queue``
        (1 to 1000; None: back to the default, 1)."""
        check_queue_name(queue)
        if not isinstance(fair_key, str) or not 0 < len(fair_key) <= 256:
            raise InvalidSetting("fair_key must be a non-empty string of at most 256 characters")
        if weight is not None and (
            isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000
        ):
            raise InvalidSetting("weight must be an integer between 1 and 1000, or None")
        with _unavailable("set_fair_weight", None):
            await self.store.set_fair_weight(self.pool, queue, fair_key, weight)

    async def fair_weights(self) -> builtins.list[FairWeight]:
        """Every fair key's weight that is not the default."""
        with _unavailable("fair_weights", None):
            return await self.store.list_fair_weights(self.pool)

    async def queues(self) -> builtins.list[QueueSettings]:
        """The queues with switches set (a queue not listed is neither paused nor fair)."""
        with _unavailable("queues", None):
            return await self.store.list_queues(self.pool)

    # -- schedules (migration 0013) -------------------------------------------------

    async def schedules(self) -> builtins.list[Schedule]:
        """Every schedule (declared by workers from code), by name."""
        with _unavailable("schedules", None):
            return await self.store.list_schedules(self.pool)

    async def pause_schedule(self, name: str) -> Schedule:
        """No tick of the schedule is enqueued until :meth:`resume_schedule`.
        Raises :class:`ScheduleNotFound`."""
        return await self._set_schedule_paused(name, True)

    async def resume_schedule(self, name: str) -> Schedule:
        """Enqueue the schedule's ticks again, from the next one on (the ticks
        missed while paused are not caught up). Raises :class:`ScheduleNotFound`."""
        return await self._set_schedule_paused(name, False)

    async def _set_schedule_paused(self, name: str, paused: bool) -> Schedule:
        with _unavailable("pause_schedule" if paused else "resume_schedule", None):
            schedule = await self.store.set_schedule_paused(self.pool, name, paused)
        if schedule is None:
            raise ScheduleNotFound(name)
        return schedule

    async def trigger_schedule(self, name: str) -> Job:
        """Enqueue the schedule's job now, outside its ticks (``meta.trigger`` is
        ``"manual"``); its ticks go on as before. Works on a paused schedule too.
        Raises :class:`ScheduleNotFound`."""
        with _unavailable("trigger_schedule", None):
            schedule = await self.store.get_schedule(self.pool, name)
        if schedule is None:
            raise ScheduleNotFound(name)
        return await self.enqueue(
            schedule.task,
            schedule.args,
            queue=schedule.queue,
            tenant=schedule.tenant,
            priority=schedule.priority,
            max_attempts=schedule.max_attempts,
            meta={"schedule": name, "trigger": "manual"},
        )

    async def remove_schedule(self, name: str) -> None:
        """Delete the schedule (its jobs stay). A worker whose code still declares it
        writes it again at start. Raises :class:`ScheduleNotFound`."""
        with _unavailable("remove_schedule", None):
            removed = await self.store.remove_schedule(self.pool, name)
        if not removed:
            raise ScheduleNotFound(name)


async def await_older_transactions(store: Store, conn: Executor, xid: str, operation: str) -> None:
    """Wait (at most a few seconds) until no other session runs a transaction or
    snapshot older than ``xid``: a write of theirs could not have seen its change."""
    pause = 0.002
    with anyio.move_on_after(_OLDER_TRANSACTIONS_WAIT) as waited:
        while await store.older_transactions(conn, xid):
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.1)
    if waited.cancelled_caught:
        log.warning(
            "older_transactions_still_running",
            operation=operation,
            waited=_OLDER_TRANSACTIONS_WAIT,
            hint="a job they enqueue or claim may miss the new setting",
        )


def _parse_id(job_id: uuid.UUID | str) -> uuid.UUID | None:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        return None


def _pooled(connection: Executor | None) -> bool:
    """Whether calls run on a pool (the client's or one given), not the application's
    own connection, whose transaction a lost connection takes with it."""
    return connection is None or isinstance(connection, asyncpg.Pool)


def _not_unavailable(exc: BaseException) -> bool:
    """asyncpg's errors about a query's arguments are InterfaceErrors too: not an outage."""
    return isinstance(exc, ValueError)


@contextlib.contextmanager
def _unavailable(
    operation: str, connection: Executor | None, *, safe: bool = True
) -> Iterator[None]:
    """Raise the driver's connection errors as :class:`DatabaseUnavailable`.

    ``safe``: whether the operation may be repeated; never on the application's
    own connection (its transaction is gone with it).
    """
    try:
        yield
    except UNAVAILABLE_DB_ERRORS as exc:
        if _not_unavailable(exc):
            raise
        pooled = _pooled(connection)
        raise DatabaseUnavailable(
            operation, exc, retry_safe=safe and pooled, own_transaction=not pooled
        ) from exc
