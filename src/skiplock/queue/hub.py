"""The event hub: one LISTEN connection fanned out to many subscribers.

Workers' writes fire NOTIFY on ``<schema>.job`` with ``[[id, state,
progress], …]``. The hub keeps one dedicated connection listening, collects
the ids that somebody watches, re-reads those rows in one query, each for
its watchers' tenant only (a burst of progress notifications for a job costs
one read; the hub never reads another tenant's row), and hands the fresh
:class:`~skiplock.queue.Job` to every subscriber of that job through a bounded
buffer. A subscriber whose buffer is full is too slow: it is dropped (its
stream ends, the client reconnects and gets the current state first), so it
never blocks the others or grows memory.

When the LISTEN connection drops, the hub reconnects with backoff, re-LISTENs
and re-reads every watched job, so no subscriber misses a terminal state.

Notifications are hints; polling is the floor. Every ``poll_seconds`` the hub
re-reads all watched jobs in the same batched query, so streams and long-polls
keep moving when notifications never arrive (PgBouncer in transaction mode, a
listener that connects but hears nothing, no LISTEN URL). A watched job
that is no longer there (deleted by retention) ends its subscriptions with
:class:`JobGone`. A subscriber gets a snapshot only when the job changed since
the last one it got.

The LISTEN connection goes to its own DSN (``listen_url``: a direct one when
the pool goes through PgBouncer in transaction mode); without one the hub does
not listen at all, and subscribers see only what the hub re-reads.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import orjson
import structlog

from skiplock.queue.listener import TRANSIENT_DB_ERRORS, listen_forever
from skiplock.queue.models import Job
from skiplock.queue.store import Store

__all__ = ["EventHub", "HubStats", "JobGone", "Subscription"]

log = structlog.get_logger("skiplock.queue.hub")


class JobGone(LookupError):
    """The watched job no longer exists (deleted while watched)."""


class _Gone:
    """The queue item that ends a subscription whose job is gone."""


_GONE = _Gone()


class Subscription:
    """One subscriber's view of one job: fresh snapshots, or the end of the stream."""

    def __init__(self, job_id: uuid.UUID, tenant: str, buffer: int) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.dropped = False
        self.gone = False
        self._last: datetime | None = None  # updated_at of the last snapshot offered
        self._queue: asyncio.Queue[Job | _Gone | None] = asyncio.Queue(maxsize=buffer)

    def _offer(self, job: Job) -> bool:
        """Queue a snapshot; False (and the subscriber is dropped) when the buffer is full.

        A snapshot no newer than the last one offered is skipped (a poll re-reads
        unchanged jobs).
        """
        if self.dropped or self.gone:
            return True
        if self._last is not None and job.updated_at <= self._last:
            return True
        self._last = job.updated_at
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._drop()
            return False
        return True

    def _end_gone(self) -> None:
        """End the subscription: its job no longer exists."""
        if self.dropped or self.gone:
            return
        self.gone = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_GONE)

    def _drop(self) -> None:
        self.dropped = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self, within: float) -> Job | None:
        """The next snapshot, or None after ``within`` seconds without one.

        Raises :class:`EOFError` when the subscriber was dropped for being slow,
        and :class:`JobGone` when the job was deleted.
        """
        with anyio.move_on_after(within):
            item = await self._queue.get()
            if item is None:
                raise EOFError("subscriber dropped: it did not keep up")
            if isinstance(item, _Gone):
                self._queue.put_nowait(_GONE)  # every later call says so too
                raise JobGone(str(self.job_id))
            return item
        return None


@dataclass(slots=True)
class HubStats:
    """Counters for metrics and tests."""

    connected: bool = False
    reconnects: int = 0
    notifications: int = 0
    reads: int = 0
    polls: int = 0
    gone: int = 0
    dropped: int = 0
    subscribers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class EventHub:
    """Fans ``<schema>.job`` notifications out to per-job subscribers.

    ``dsn``: where to LISTEN (None: nowhere, poll only, for a database reached
    only through a transaction-mode pooler); ``pool``: where to read jobs.
    ``poll_seconds``: how often every watched job is re-read whatever the
    notifications say.
    """

    def __init__(
        self,
        dsn: str | None,
        store: Store,
        pool: asyncpg.Pool[Any],
        *,
        buffer: int = 64,
        poll_seconds: float = 2.0,
    ):
        if not poll_seconds > 0:
            raise ValueError("poll_seconds must be more than 0")
        self._dsn = dsn
        self._poll_seconds = poll_seconds
        self._store = store
        self._pool = pool
        self._buffer = buffer
        self._subs: dict[uuid.UUID, set[Subscription]] = {}
        self._dirty: set[uuid.UUID] = set()
        self._dirty_event = asyncio.Event()
        self._connected = asyncio.Event()
        self.stats = HubStats()

    @property
    def listens(self) -> bool:
        """Whether the hub LISTENs at all (False: it was given no DSN to listen on)."""
        return self._dsn is not None

    @property
    def connected(self) -> bool:
        """Whether the LISTEN connection is up (always False when the hub does not listen)."""
        return self.stats.connected

    async def wait_connected(self) -> None:
        """Return once the LISTEN connection is up; at once when the hub does not listen."""
        if self._dsn is not None:
            await self._connected.wait()

    @contextmanager
    def subscribe(self, job_id: uuid.UUID, tenant: str) -> Iterator[Subscription]:
        """Watch one job; the subscription ends when the block exits."""
        sub = Subscription(job_id, tenant, self._buffer)
        self._subs.setdefault(job_id, set()).add(sub)
        self.stats.subscribers += 1
        try:
            yield sub
        finally:
            self.stats.subscribers -= 1
            subs = self._subs.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[job_id]

    async def run(self) -> None:
        """Listen (unless disabled), poll and fan out until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._fanout_loop)
            tg.start_soon(self._poll_loop)
            if self._dsn is not None:
                await self._listen_loop(self._dsn)

    async def _poll_loop(self) -> None:
        """The floor: re-read every watched job every ``poll_seconds``."""
        while True:
            await anyio.sleep(self._poll_seconds)
            if self._subs:
                self.stats.polls += 1
                self._dirty.update(self._subs)
                self._dirty_event.set()

    # -- listening --------------------------------------------------------

    def _on_notify(self, payload: str) -> None:
        self.stats.notifications += 1
        try:
            entries = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("notification_unreadable", payload=payload[:200])
            return
        for entry in entries:
            try:
                job_id = uuid.UUID(str(entry[0]))
            except (ValueError, IndexError, TypeError):
                continue
            if job_id in self._subs:
                self._dirty.add(job_id)
        if self._dirty:
            self._dirty_event.set()

    async def _listen_loop(self, dsn: str) -> None:
        def connected() -> None:
            self.stats.connected = True
            self._connected.set()
            # Catch up: re-read every watched job, changes may have been missed.
            self._dirty.update(self._subs)
            self._dirty_event.set()

        def disconnected() -> None:  # a lost connection or a failed attempt: retrying
            self.stats.reconnects += 1
            self.stats.connected = False
            if self._connected.is_set():
                self._connected = asyncio.Event()

        await listen_forever(
            dsn,
            {f"{self._store.schema}.job": self._on_notify},
            on_connected=connected,
            on_disconnected=disconnected,
            log=log,
        )

    # -- fan-out ----------------------------------------------------------

    async def _fanout_loop(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            ids = [i for i in self._dirty if i in self._subs]
            self._dirty.clear()
            if not ids:
                continue
            try:
                # Each job is read for its watchers' tenants only, in SQL.
                watched = {(i, sub.tenant) for i in ids for sub in self._subs.get(i, ())}
                jobs = await self._store.get_watched_jobs(self._pool, watched)
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("hub_read_failed", error=repr(exc), jobs=len(ids))
                self._dirty.update(ids)
                await anyio.sleep(0.2)
                self._dirty_event.set()
                continue
            self.stats.reads += 1
            found = {(job.id, job.tenant): job for job in jobs}
            for job_id in ids:
                for sub in list(self._subs.get(job_id, ())):
                    job = found.get((job_id, sub.tenant))
                    if job is None:
                        if not sub.gone and not sub.dropped:
                            self.stats.gone += 1
                            log.info("watched_job_gone", job_id=str(job_id))
                        sub._end_gone()
                    # A subscriber already dropped is not dropped (or counted) again.
                    elif not sub.dropped and not sub._offer(job):
                        self.stats.dropped += 1
                        log.info("subscriber_dropped", job_id=str(job_id), reason="slow")
