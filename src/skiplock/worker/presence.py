"""Presence: the worker's registration and its advisory lock (migration 0007).

A worker registers itself in ``<schema>.workers`` (``register_worker.sql``)
and, on a dedicated connection, holds a session-level advisory lock keyed by
its registration for its whole life. When the process dies its connections
close and PostgreSQL drops the lock at once: any worker's rescuer
(``rescuer.py``, ``dead_workers.sql``) then re-queues the dead worker's jobs
within about a second instead of after a whole lease.

The connection goes where LISTEN goes: a session-level lock needs a real
server session, never a pooler's transaction-mode connection. Without such a
connection (``dsn=None``) the worker does not register and its jobs rely on
the lease alone.

Registration refuses a worker id that a live process holds
(:class:`WorkerIdInUse`); a dead previous holder of the id (a restart under a
fixed id) has its leftover jobs rescued first, attempt counted. When the
presence connection is lost, other rescuers may take this worker's jobs at
any moment (their writes are fenced): claiming pauses, the connection is
made again with backoff, the worker registers anew (keeping the leases it
still holds) and a heartbeat at once finds the leases it lost. A graceful
stop deletes the registration; a killed worker's is deleted by the rescuers.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import asyncpg

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.worker.gate import refused
from skiplock.worker.leases import LeaseTable
from skiplock.worker.rescuer import RESCUE_BATCH, log_rescued
from skiplock.worker.shared import Shared

__all__ = ["Presence", "WorkerIdInUse"]

_MAX_BACKOFF = 5.0


class WorkerIdInUse(RuntimeError):
    """Another live process is registered under this worker id: ids must be unique."""


def _set(event: asyncio.Event, *_: object) -> None:
    event.set()


class Presence:
    """Keeps this worker registered and its presence lock held, reconnecting after a loss."""

    def __init__(
        self,
        shared: Shared,
        table: LeaseTable,
        dsn: str | None,
        *,
        on_registered: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._shared = shared
        self._table = table
        self._dsn = dsn
        self._on_registered = on_registered
        self._on_lost = on_lost
        self._conn: asyncpg.Connection[Any] | None = None
        self._lost = asyncio.Event()
        self._lock_key: int | None = None
        self._closing = False
        self._busy = anyio.Lock()  # one statement at a time on the connection

    @property
    def registered(self) -> bool:
        """Whether this worker is registered and holds its presence lock now."""
        return self._lock_key is not None

    async def register(self) -> None:
        """Register before the first claim. Raises :class:`WorkerIdInUse`; a database
        error is logged and left to :meth:`run`, which keeps trying (the worker runs on
        its leases meanwhile: with no registration row, no rescuer takes its jobs early)."""
        if self._dsn is None:
            self._shared.log.info("presence_disabled", reason="no direct connection for it")
            return
        try:
            await self._connect_and_register()
        except TRANSIENT_DB_ERRORS as exc:
            self._failed(exc)

    async def run(self) -> None:
        """Watch the presence connection; after a loss, register again (with backoff)."""
        if self._dsn is None:
            return
        s = self._shared.settings
        ping_every = s.poll * 5
        backoff = 0.1
        while not self._closing:
            if self._conn is None:
                try:
                    await self._connect_and_register()
                    backoff = 0.1
                except WorkerIdInUse as exc:
                    # Our own previous session may linger on the server until it sees
                    # the connection gone (TCP keepalive); keep trying.
                    self._shared.log.error("presence_refused", error=str(exc))
                except TRANSIENT_DB_ERRORS as exc:
                    self._failed(exc)
                if self._conn is None:
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
            conn = self._conn
            assert conn is not None
            try:
                while not self._lost.is_set():
                    with anyio.move_on_after(ping_every):
                        await self._lost.wait()
                    async with self._busy:
                        if self._closing:
                            return
                        with anyio.fail_after(s.db_timeout):
                            await conn.fetchval("SELECT true AS present")
                raise ConnectionResetError("the presence connection was closed")
            except TRANSIENT_DB_ERRORS as exc:
                if not self._closing:
                    self._failed(exc)

    async def unregister(self) -> None:
        """A graceful stop: delete the registration (if no job is left), close the lock's
        connection. Jobs left behind (handlers that ignored cancellation) keep the row:
        the rescuers see the lock gone and take them at once."""
        self._closing = True
        conn, key = self._conn, self._lock_key
        if conn is not None and key is not None and not self._table.leases:
            shared = self._shared
            try:
                with anyio.fail_after(shared.settings.db_timeout):
                    async with self._busy:
                        await shared.store.unregister_worker(conn, shared.worker_id, key)
                shared.log.info("worker_unregistered")
            except TRANSIENT_DB_ERRORS as exc:
                shared.log.warning("unregister_failed", error=repr(exc))
        self.close()

    def close(self) -> None:
        """Drop the presence connection (and with it the lock) without a round trip."""
        self._closing = True
        self._drop()

    # -- internals ----------------------------------------------------------

    async def _connect_and_register(self) -> None:
        shared = self._shared
        s = shared.settings
        assert self._dsn is not None
        self._lost = asyncio.Event()
        conn = await asyncpg.connect(self._dsn, timeout=s.db_timeout)
        try:
            conn.add_termination_listener(partial(_set, self._lost))
            with anyio.fail_after(s.db_timeout):
                key = await self._register_on(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._lock_key = key
        shared.log.info("worker_registered", lock_key=key)
        self._on_registered()

    async def _register_on(self, conn: asyncpg.Connection[Any]) -> int:
        """One transaction: refuse a live holder of the id, rescue a dead one's leftover
        jobs, register under a fresh key and take the session-level lock."""
        shared = self._shared
        store = shared.store
        worker_id = shared.worker_id
        async with conn.transaction():
            in_use = await store.worker_id_in_use(conn, worker_id)
            if in_use:
                raise WorkerIdInUse(
                    f"worker id {worker_id!r} is registered by a live process "
                    f"(see {shared.settings.schema}.worker_presence): give each worker "
                    "its own id, or leave the default (host:pid:random)"
                )
            if in_use is False:  # an earlier registration of this id is dead
                keep = [lease.token for lease in self._table.leases.values()]
                try:
                    async with conn.transaction():  # a savepoint: a refusal undoes only this
                        while True:
                            rescued = await store.rescue_dead_workers(
                                conn, [worker_id], keep, RESCUE_BATCH
                            )
                            log_rescued(shared, "dead_worker_job_rescued", rescued)
                            if len(rescued) < RESCUE_BATCH:
                                break
                except asyncpg.PostgresError as exc:
                    if not refused(exc):
                        raise
                    # A row the database refuses: the earlier process's jobs are taken
                    # back when their leases expire (rescue_expired isolates that row).
                    shared.log.error("dead_worker_rescue_refused", error=repr(exc))
            key, locked = await store.register_worker(
                conn, worker_id, socket.gethostname(), os.getpid()
            )
            if not locked:  # another session holds this fresh key: never ours to use
                raise TimeoutError(f"presence lock key {key} is held by another session")
        return key

    def _failed(self, exc: BaseException) -> None:
        shared = self._shared
        was_registered = self.registered
        self._drop()
        shared.metrics.db_error("presence")
        shared.log.warning(
            "presence_lost" if was_registered else "presence_failed",
            error=repr(exc),
            running=len(self._table.leases),
        )
        if was_registered:
            self._on_lost()

    def _drop(self) -> None:
        conn = self._conn
        self._conn = None
        self._lock_key = None
        if conn is not None:
            conn.terminate()
