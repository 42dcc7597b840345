"""The worker: wires its units together, runs them in one task group, stops them.

One :class:`Worker` runs, in an anyio task group (each unit in its module):

- **claimer** (``claimer.py``, ``claim_jobs.sql``) — claims a batch sized to
  the free handler slots plus a prefetch (``sizer.py``) within the lease cap,
  then waits for a NOTIFY or a jittered poll timer;
- **executor** (``executor.py``) — one task per claimed job: runs the handler
  (with timeout and cancellation); ``outcomes.py`` turns its end into an
  outcome;
- **completer** (``completer.py``, ``complete_jobs.sql``) — writes outcomes in
  batches, retries while the lease holds, isolates refused ones;
- **progress flusher** (``progress.py``, ``update_progress.sql``);
- **heartbeat** (``heartbeat.py``, ``heartbeat_jobs.sql``) — extends every held
  lease, learns of cancel requests and lost leases;
- **rescuer** (``rescuer.py``, ``dead_workers.sql``, ``rescue_dead_workers.sql``,
  ``rescue_expired.sql``) — re-queues (or fails) the jobs of workers whose
  presence lock is gone, about every second, and jobs whose lease expired
  anywhere;
- **presence** (``presence.py``, ``register_worker.sql``) — registers the
  worker and holds its advisory lock on a dedicated connection, so that its
  death is seen by every rescuer at once;
- **listener** — a dedicated LISTEN connection, reconnected with backoff.

They share explicit objects, not this class's fields: :class:`Shared`
(settings, identity, pool, metrics, health, log), the :class:`LeaseTable`
(held leases, slots, idle) and the :class:`WriteGate` (one multi-row write at
a time). Every write for an attempt is fenced by its lease token; a write
that touches no row means the lease is gone, and the handler is stopped.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from functools import partial
from typing import Any

import anyio
import asyncpg
import structlog

from skiplock.queue.client import await_older_transactions
from skiplock.queue.listener import listen_dsn, listen_forever
from skiplock.queue.migrate import check_schema
from skiplock.queue.store import Store, open_pool
from skiplock.tracing import tracing_active
from skiplock.worker.claimer import Claimer
from skiplock.worker.completer import Completer
from skiplock.worker.executor import Executor
from skiplock.worker.gate import WriteGate
from skiplock.worker.heartbeat import Heartbeat
from skiplock.worker.leases import LeaseTable
from skiplock.worker.metrics import WorkerMetrics
from skiplock.worker.outcomes import Outcomes
from skiplock.worker.presence import Presence, WorkerIdInUse
from skiplock.worker.probes import ProbeFile, ProbeServer, WorkerHealth
from skiplock.worker.progress import ProgressFlusher
from skiplock.worker.registry import TaskRegistry
from skiplock.worker.rescuer import Rescuer
from skiplock.worker.retention import retention_loop
from skiplock.worker.scheduler import Scheduler
from skiplock.worker.settings import WorkerSettings, default_worker_id
from skiplock.worker.shared import Shared

__all__ = ["Worker", "WorkerIdInUse", "WorkerSettings"]

log = structlog.get_logger("skiplock.worker")

_ABANDON_AFTER = 5.0  # seconds a stop waits for handlers that ignore cancellation


# statement_cache_size=0 is the PgBouncer setting: LISTEN and session locks need a direct URL.
_LISTEN_URL_UNSET = {
    "reason": "statement_cache_size=0 (a transaction-mode pooler?) but no listen_url: LISTEN "
    "and the presence lock go through the main URL, where a pooler loses notifications "
    "and keeps a dead worker's lock",
    "fix": "set listen_url (SKIPLOCK_LISTEN_URL) to a direct postgresql:// URL, or 'none'",
}


class Worker:
    """Runs registered tasks from the given queues until stopped.

    >>> worker = Worker(tasks, dsn, WorkerSettings(queues=["default"], concurrency=20))
    >>> await worker.run_until_signal()   # SIGTERM/SIGINT: drain, then release

    :meth:`stop` drains gracefully: no new claims, in-flight handlers get
    ``shutdown_grace`` seconds, then are cancelled and their jobs released to
    ``queued`` at once. :meth:`kill` stops at once: its presence connection
    closes, and any other worker's rescuer re-queues its jobs within about a
    second (when it was not registered, once their leases expire).

    While running, the worker is registered in ``<schema>.workers`` and holds
    its presence lock (``presence.py``); its id must be unique among live
    workers, else :meth:`run` raises :class:`WorkerIdInUse`.
    """

    def __init__(
        self, registry: TaskRegistry, dsn: str, settings: WorkerSettings | None = None
    ) -> None:
        self.registry = registry
        self.dsn = dsn
        self.settings = s = settings or WorkerSettings()
        self.id = s.worker_id or default_worker_id()
        self.store = Store(s.schema)
        self.metrics = WorkerMetrics(self.id)
        """This worker's Prometheus metrics (served at /metrics when ``settings.metrics``)."""
        self.health = WorkerHealth(
            db_fresh_for=max(3 * s.poll, 3 * s.heartbeat_interval, s.db_timeout)
        )
        """What /livez and /readyz (and the probe file) report."""
        self.probe_port: int | None = None
        """The probe server's port once running (useful with ``probe_port=0``)."""
        self._log = log.bind(worker_id=self.id)
        self._shared = shared = Shared(
            settings=s,
            worker_id=self.id,
            store=self.store,
            metrics=self.metrics,
            health=self.health,
            log=self._log,
        )
        self._table = table = LeaseTable(shared)
        gate = WriteGate(min(s.db_timeout, s.heartbeat_interval))
        outcomes = Outcomes(self.id, s.max_result_bytes)
        self._completer = completer = Completer(shared, table, gate, outcomes)
        self._progress = progress = ProgressFlusher(shared, table, gate)
        self._heartbeat = Heartbeat(shared, table, gate)
        self._rescuer = Rescuer(shared)
        self._executor = executor = Executor(shared, registry, table, completer, progress, outcomes)
        self._claimer = claimer = Claimer(shared, table, executor, completer, outcomes)
        # The presence lock needs a real server session: it goes where LISTEN goes
        # (nowhere when polling only: then the lease alone covers a crash).
        self._listen_dsn = listen_dsn(dsn, s.listen_url)
        claimer.listening = self._listen_dsn is not None
        self._presence = Presence(
            shared,
            table,
            self._listen_dsn,
            on_registered=self._presence_registered,
            on_lost=claimer.pause,
        )
        self._stopping = False
        self._outer: anyio.CancelScope | None = None
        self._started = asyncio.Event()
        self._listener_connects = 0

    # -- lifecycle --------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        """The worker's connection pool (open while running)."""
        return self._shared.pool

    async def wait_started(self) -> None:
        """Return once the worker has checked the schema and is claiming."""
        await self._started.wait()

    def stop(self) -> None:
        """Drain: stop claiming, give handlers the grace period, then release them."""
        self.health.stopping()
        if not self._stopping:
            self._stopping = True
            self._log.info("worker_stopping", in_flight=self._table.running)
        self._claimer.stop()
        self._executor.stop()

    def kill(self) -> None:
        """Stop at once, without writing outcomes: other workers' rescuers take the jobs."""
        self._stopping = True
        self._log.warning("worker_killed", in_flight=self._table.running)
        self._executor.drop_waiting()
        for task in self._table.tasks:
            task.cancel()
        if self._outer is not None:
            self._outer.cancel()

    async def run_until_signal(self) -> None:
        """Run until SIGTERM/SIGINT (drain), or a second signal (stop at once).

        This treats the process as the worker's: besides the signals, it moves
        the objects alive at start (modules, the app, after a collection) out of
        the cyclic garbage collector's way (:func:`gc.freeze`) until it returns.
        Full collections then walk only what the worker made since; they had
        cost about 14 µs of a no-op job's ~80 (``docs/performance.md``).
        """
        gc.collect()
        gc.freeze()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals)
                await self.run()
                tg.cancel_scope.cancel()
        finally:
            gc.unfreeze()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self._stopping:
                    self._log.info("shutdown_signal_received", signal=signum.name)
                    self.stop()
                else:
                    self._log.warning("second_signal_received", signal=signum.name)
                    self.kill()

    async def run(self) -> None:
        """Run until :meth:`stop` (drains) or :meth:`kill`. Raises on an unknown schema."""
        shared = self._shared
        shared.loop = asyncio.get_running_loop()
        shared.tracing = tracing_active()
        s = self.settings
        try:
            pool = await open_pool(
                self.dsn,
                min_size=2,
                max_size=6,
                settings={"synchronous_commit": "off"} if s.async_commit else None,
                statement_cache_size=s.statement_cache_size,
            )
        except asyncpg.ProtocolViolationError as exc:
            if s.async_commit and "synchronous_commit" in str(exc):  # PgBouncer refuses it
                raise ValueError(
                    f"async_commit asks for synchronous_commit=off at connect, refused: {exc}. "
                    "Behind PgBouncer, turn async_commit off and give the workers' role the "
                    "setting instead: ALTER ROLE <worker role> SET synchronous_commit = off"
                ) from exc
            raise
        shared.attach(pool)
        try:
            await check_schema(pool, schema=s.schema)
            self.health.schema_checked()
            self.health.db_ok()
            await self._declare_limits(pool)
            scheduler = Scheduler(pool, shared.store, self.registry.schedules, poll=s.schedule_poll)
            await scheduler.declare()
            if s.statement_cache_size == 0 and s.listen_url is None:
                self._log.warning("listen_url_unset", **_LISTEN_URL_UNSET)
            await self._presence.register()
            self._log.info(
                "worker_started",
                queues=list(s.queues),
                concurrency=s.concurrency,
                tasks=sorted(t.name for t in self.registry),
                notifications="listen" if self._listen_dsn is not None else "off: poll only",
            )
            with anyio.CancelScope() as outer:
                self._outer = outer
                async with anyio.create_task_group() as loops:
                    await self._start_ops(loops, pool)
                    if self._listen_dsn is not None:
                        loops.start_soon(self._listen, self._listen_dsn)
                    loops.start_soon(self._heartbeat.run)
                    loops.start_soon(self._rescuer.run)
                    loops.start_soon(self._rescuer.watch_workers)
                    loops.start_soon(self._presence.run)
                    loops.start_soon(self._completer.run)
                    loops.start_soon(self._progress.run)
                    loops.start_soon(scheduler.run)
                    self._started.set()
                    await self._claimer.run()
                    await self._drain()
                    with anyio.move_on_after(s.lease):
                        await self._completer.wait_drained()
                    await self._presence.unregister()
                    loops.cancel_scope.cancel()
        finally:
            self._presence.close()  # killed or crashed: the rescuers see the lock go
            await self._reap_handlers()
            shared.attach(None)
            await pool.close()
            self._log.info("worker_stopped")

    async def _declare_limits(self, pool: asyncpg.Pool[Any]) -> None:
        """Write the limits the tasks declare (``TaskRegistry.task(max_running=...)``)
        whose key has none yet, and give that key to the task's waiting jobs."""
        store = self._shared.store
        for task in self.registry:
            limit = task.limit
            if limit is None:
                continue
            async with pool.acquire() as conn:
                async with conn.transaction():
                    written = await store.declare_limit(
                        conn, limit.pattern, limit.max_running, limit.max_starts, limit.per_seconds
                    )
                    if written is not None:  # the waiting and running jobs get the key at once
                        await store.apply_limit_keys(conn, limit.pattern)
                if written is not None:  # and those of transactions that had not seen it
                    await await_older_transactions(store, conn, written[1], "declare_limit")
                    await store.apply_limit_keys(conn, limit.pattern)
                    self._log.info("limit_declared", pattern=limit.pattern)

    async def _start_ops(self, loops: anyio.abc.TaskGroup, pool: asyncpg.Pool[Any]) -> None:
        """Probe server, probe file and retention loop, as the settings ask."""
        s = self.settings
        self.health.expect("heartbeat", within=3 * s.heartbeat_interval + s.db_timeout)
        self.health.expect("rescuer", within=2 * s.rescue + 2 * s.db_timeout)
        if s.probe_port is not None:
            server = ProbeServer(
                self.health.liveness,
                self.health.readiness,
                self.metrics if s.metrics else None,
                log=self._log,
            )
            self.probe_port = await loops.start(server.serve, s.probe_host, s.probe_port)
        if s.probe_file is not None:
            probe_file = ProbeFile(
                s.probe_file, self.health.liveness, interval=s.probe_file_interval, log=self._log
            )
            await loops.start(probe_file.run)
        if s.retention is not None:
            loops.start_soon(
                partial(
                    retention_loop,
                    pool,
                    self.store,
                    s.retention,
                    log=self._log,
                    on_deleted=self.metrics.purged,
                    on_error=self._retention_failed,
                )
            )

    def _retention_failed(self, exc: BaseException) -> None:
        self.metrics.db_error("retention")

    async def _drain(self) -> None:
        table = self._table
        if table.running:
            self._log.info(
                "worker_draining", in_flight=table.running, grace=self.settings.shutdown_grace
            )
            with anyio.move_on_after(self.settings.shutdown_grace):
                await table.wait_idle()
        for lease in list(table.leases.values()):
            if not lease.completing:
                table.cancel(lease, "shutdown")
        # Cancelled handlers return promptly (threads are abandoned); one that
        # ignores every cancel is left behind: its lease expires, a rescuer requeues.
        with anyio.move_on_after(_ABANDON_AFTER):
            await table.wait_idle()
        if table.running:
            self._log.error("handlers_ignore_cancellation", count=table.running)

    async def _reap_handlers(self) -> None:
        """Cancel handler tasks still alive (after kill or a crash) and wait for them."""
        tasks = self._table.tasks
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            _, alive = await asyncio.wait(list(tasks), timeout=_ABANDON_AFTER)
        if alive:
            self._log.error("handlers_ignore_cancellation", count=len(alive))

    def _presence_registered(self) -> None:
        # (Re)registered: claim again; and a heartbeat now finds any lease that a
        # rescuer took while the presence lock was gone.
        self._claimer.resume()
        self._heartbeat.now.set()

    # -- listener ---------------------------------------------------------

    async def _listen(self, dsn: str) -> None:
        def caught_up() -> None:  # claim and heartbeat now: notifications may have been missed
            if self._listener_connects:
                self.metrics.listener_reconnected()
            self._listener_connects += 1
            self._claimer.wake.set()
            self._heartbeat.now.set()

        def lost() -> None:  # also called when the loop is cancelled at shutdown
            if not self._stopping:
                self.metrics.db_error("listen")

        schema = self.settings.schema
        await listen_forever(
            dsn,
            {
                f"{schema}.queue": self._claimer.on_queue_notification,
                f"{schema}.cancel": self._heartbeat.on_cancel_notification,
                f"{schema}.flow": self._claimer.on_flow_notification,
            },
            on_connected=caught_up,
            on_disconnected=lost,
            ping_every=self.settings.poll * 5,
            db_timeout=self.settings.db_timeout,
            log=self._log,
        )
