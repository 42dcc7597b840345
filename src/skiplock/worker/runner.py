"""The worker: claims jobs, runs handlers, writes outcomes, keeps leases alive.

One :class:`Worker` runs these loops in an anyio task group:

- **claimer** — claims a batch sized to the free slots in one
  ``FOR UPDATE SKIP LOCKED`` statement, then waits for a NOTIFY or a jittered
  poll timer;
- **executor** — one task per claimed job: runs the handler (with timeout and
  cancellation), turns its return or exception into an outcome;
- **completer** — writes queued outcomes in one statement, the next batch as
  soon as the previous write returns; retries while the lease still holds;
- **progress flusher** — writes coalesced progress reports, at most one per
  job per ``progress_interval``;
- **heartbeat** — extends every held lease in one statement, learns of cancel
  requests and lost leases, and gives up handlers whose lease may have run out
  while the database was unreachable;
- **rescuer** — re-queues (or fails) jobs whose lease expired anywhere;
- **listener** — a dedicated LISTEN connection, reconnected with backoff.

Every write for an attempt is fenced by ``state='running' AND lease_token=…``;
a write that touches no row means the lease is gone, and the handler is
stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import anyio
import asyncpg
import structlog

from skiplock.queue.jsoncodec import dumps
from skiplock.queue.listener import (
    TRANSIENT_DB_ERRORS,
    check_listen_url,
    listen_dsn,
    listen_forever,
)
from skiplock.queue.migrate import check_schema
from skiplock.queue.models import Job
from skiplock.queue.store import (
    DEFAULT_STATEMENT_CACHE_SIZE,
    Completion,
    Outcome,
    ProgressWrite,
    Store,
    Unreadable,
    open_pool,
)
from skiplock.tracing import job_span, record_exception, tracing_active
from skiplock.worker.context import JobContext, ProgressReport
from skiplock.worker.errors import Cancelled, Fail, Retry
from skiplock.worker.metrics import WorkerMetrics
from skiplock.worker.probes import ProbeFile, ProbeServer, WorkerHealth
from skiplock.worker.registry import Task, TaskRegistry
from skiplock.worker.retention import RetentionPolicy, retention_loop

__all__ = ["Worker", "WorkerSettings"]

log = structlog.get_logger("skiplock.worker")

CancelReason = Literal["cancel_requested", "lease_lost", "shutdown"]

_DB_DOWN = TRANSIENT_DB_ERRORS

# SQLSTATE classes of a statement that can never succeed as written, however
# often it is retried: a data exception (22), an integrity violation (23), a
# program limit (54), a RAISE in a trigger or function (P0). Everything else in
# _DB_DOWN (deadlocks, too many connections, shutdowns, timeouts, lost
# connections) is retried.
_REFUSED_CLASSES = frozenset({"22", "23", "54", "P0"})


def _refused(exc: BaseException) -> bool:
    """Whether the database refused a statement for good (rather than could not run it now)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        isinstance(exc, asyncpg.PostgresError)
        and isinstance(sqlstate, str)
        and sqlstate[:2] in _REFUSED_CLASSES
    )


_RECANCEL_SECONDS = 0.1  # a handler that swallowed a cancel is cancelled again this often
_ABANDON_AFTER = 5.0  # seconds a stop waits for handlers that ignore cancellation

MAX_TRACEBACK_CHARS = 16_000
MAX_ERROR_MESSAGE_CHARS = 4_000


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker behaves. Times are in seconds.

    ``heartbeat`` defaults to a third of ``lease``. ``progress_interval`` is the
    minimum time between two progress writes of one job (0.1 s: at most 10
    writes per job per second). ``max_result_bytes`` caps a handler's JSON result.

    ``probe_port``: serve ``/livez``, ``/readyz`` (and ``/metrics`` when
    ``metrics``) on ``probe_host`` at this port (0: any free port; None: no
    server). ``probe_file``: rewrite this file every ``probe_file_interval``
    seconds while live, for exec probes. ``retention``: delete old finished
    jobs from this worker by that policy (None: never).

    ``async_commit``: the worker's own writes (claims, completions, heartbeats,
    progress) commit without waiting for the WAL flush
    (``synchronous_commit=off`` on its sessions; enqueues stay durable). A
    claim no longer waits for the disk before its handler starts. The price:
    a PostgreSQL *crash* (not a restart) can lose the last few hundred
    milliseconds of them. A lost claim puts its job back to queued (it runs
    again; the fencing refuses the old attempt's writes); a lost completion
    leaves its job running under the old lease, so the rescuer re-queues it
    with one more attempt counted, and a job on its last attempt then ends
    ``failed`` (``LeaseExpired``) although its handler succeeded. Off by
    default.

    Behind PgBouncer in transaction mode (see docs/operations.md):
    ``statement_cache_size=0`` (asyncpg's named prepared statements do not
    survive the pooler), and ``listen_url`` a direct URL for the LISTEN
    connection, or ``"none"`` to poll only (claims every ``poll`` seconds,
    cancel requests learnt at the next heartbeat). ``listen_url`` None: LISTEN
    on the main URL.
    """

    queues: Sequence[str] = ("default",)
    concurrency: int = 10
    lease: float = 30.0
    heartbeat: float | None = None
    poll: float = 1.0
    rescue: float = 5.0
    shutdown_grace: float = 30.0
    progress_interval: float = 0.1
    max_claim_batch: int = 1000
    max_complete_batch: int = 2000
    max_result_bytes: int = 16 * 1024 * 1024
    db_timeout: float = 10.0
    schema: str = "skiplock"
    worker_id: str | None = None
    probe_port: int | None = None
    probe_host: str = "0.0.0.0"  # noqa: S104 (the kubelet connects from outside the pod)
    probe_file: str | None = None
    probe_file_interval: float = 10.0
    metrics: bool = True
    retention: RetentionPolicy | None = None
    async_commit: bool = False
    statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE
    listen_url: str | None = None

    def __post_init__(self) -> None:
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.lease <= 0.5:
            raise ValueError("lease must be longer than 0.5 s")
        if self.heartbeat is not None and not 0 < self.heartbeat < self.lease:
            raise ValueError("heartbeat must be positive and shorter than the lease")
        if self.poll <= 0 or self.rescue <= 0 or self.shutdown_grace < 0:
            raise ValueError("poll and rescue must be positive, shutdown_grace non-negative")
        if self.probe_port is not None and not 0 <= self.probe_port <= 65535:
            raise ValueError("probe_port must be between 0 and 65535")
        if self.probe_file_interval <= 0:
            raise ValueError("probe_file_interval must be positive")
        if self.statement_cache_size < 0:
            raise ValueError("statement_cache_size must be 0 (no cache) or more")
        check_listen_url(self.listen_url)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between two heartbeats."""
        return self.heartbeat if self.heartbeat is not None else self.lease / 3


@dataclass(eq=False, slots=True)
class _Lease:
    """One attempt this worker holds, from claim until its outcome is written."""

    job: Job
    token: uuid.UUID
    deadline: float  # monotonic time by which the lease may have run out
    ctx: JobContext | None = None
    task: asyncio.Task[None] | None = None  # runs _execute
    executing: bool = False  # inside the handler call: cancelling the task stops it
    cancels: int = 0  # task.cancel() calls we made (each needs its uncancel())
    timed_out: bool = False
    cancel_reason: CancelReason | None = None
    progress: ProgressReport | None = None  # latest report
    progress_dirty: bool = False
    progress_written_at: float = 0.0
    completing: bool = False  # outcome handed to the completer
    released: bool = False  # its slot is free again (outcome written or given up)


def _utf8_size(text: str) -> int:
    """``text``'s size in UTF-8 bytes (no copy for ASCII, which CPython flags)."""
    return len(text) if text.isascii() else len(text.encode())


def _enabled_for(logger: Any, level: int) -> bool:
    """Whether ``logger`` emits ``level`` (True when it cannot tell)."""
    check = getattr(logger, "is_enabled_for", None)
    return True if check is None else bool(check(level))


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _exc_message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception cannot be printed."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def _clean(text: str) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _error_json(
    exc: BaseException | None, *, kind: str, message: str, attempt: int, worker: str
) -> str:
    # jsonb refuses NUL characters: drop them, as JobContext.progress does for messages
    tb = None
    if exc is not None:
        tb = _clean("".join(traceback.format_exception(exc)))[-MAX_TRACEBACK_CHARS:]
    return dumps(
        {
            "type": _clean(kind),
            "message": _clean(message)[:MAX_ERROR_MESSAGE_CHARS],
            "traceback": tb,
            "attempt": attempt,
            "worker": worker,
            "at": datetime.now(UTC).isoformat(),
        },
        what="error",
    )


class Worker:
    """Runs registered tasks from the given queues until stopped.

    >>> worker = Worker(tasks, dsn, WorkerSettings(queues=["default"], concurrency=20))
    >>> await worker.run_until_signal()   # SIGTERM/SIGINT: drain, then release

    :meth:`stop` drains gracefully: no new claims, in-flight handlers get
    ``shutdown_grace`` seconds, then are cancelled and their jobs released to
    ``queued`` at once. :meth:`kill` stops at once; leases then expire and any
    worker's rescuer re-queues the jobs.
    """

    def __init__(
        self, registry: TaskRegistry, dsn: str, settings: WorkerSettings | None = None
    ) -> None:
        self.registry = registry
        self.dsn = dsn
        self.settings = settings or WorkerSettings()
        self.id = self.settings.worker_id or _default_worker_id()
        self.store = Store(self.settings.schema)
        self._queues = list(self.settings.queues)
        self._queue_set = frozenset(self._queues)
        self._leases: dict[uuid.UUID, _Lease] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # one per claimed job, until it ends
        self._running = 0  # handlers executing
        self._held = 0  # slots in use: claimed and not yet written or given up
        self._pending: list[Completion] = []
        self._pending_leases: dict[uuid.UUID, _Lease] = {}
        self._pool: asyncpg.Pool[Any] | None = None
        self._stopping = False
        self._outer: anyio.CancelScope | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_limiter = anyio.CapacityLimiter(self.settings.concurrency)
        # One multi-row write (completions, progress, heartbeat) at a time: the
        # planner locks rows in its own order, not the array's, so two of this
        # worker's statements over the same rows could deadlock each other.
        # Other workers hold other rows; claims and the rescuer skip locked rows.
        self._write_lock = asyncio.Lock()
        # A write holding that lock longer than a heartbeat interval would make the
        # heartbeat miss its turn: every write (retried anyway) gets at most that.
        s = self.settings
        self._write_timeout = min(s.db_timeout, s.heartbeat_interval)
        self._log = log.bind(worker_id=self.id)
        self._debug = _enabled_for(self._log, logging.DEBUG)
        self._tracing = False  # decided when it starts: a tracer provider is configured
        # asyncio events (the worker runs on asyncio: asyncpg needs it)
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._idle = asyncio.Event()
        self._completions_ready = asyncio.Event()
        self._completions_drained = asyncio.Event()
        self._progress_ready = asyncio.Event()
        self._heartbeat_now = asyncio.Event()
        self._started = asyncio.Event()
        self.metrics = WorkerMetrics(self.id)
        """This worker's Prometheus metrics (served at /metrics when ``settings.metrics``)."""
        self.health = WorkerHealth(
            db_fresh_for=max(3 * s.poll, 3 * s.heartbeat_interval, s.db_timeout)
        )
        """What /livez and /readyz (and the probe file) report."""
        self.probe_port: int | None = None
        """The probe server's port once running (useful with ``probe_port=0``)."""
        self._listener_connects = 0
        self._listen_dsn = listen_dsn(dsn, self.settings.listen_url)  # None: poll only

    # -- lifecycle --------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        """The worker's connection pool (open while running)."""
        if self._pool is None:
            raise RuntimeError("the worker is not running")
        return self._pool

    async def wait_started(self) -> None:
        """Return once the worker has checked the schema and is claiming."""
        await self._started.wait()

    def stop(self) -> None:
        """Drain: stop claiming, give handlers the grace period, then release them."""
        self.health.stopping()
        if not self._stopping:
            self._stopping = True
            self._log.info("worker_stopping", in_flight=self._running)
        self._wake.set()
        self._slot_free.set()

    def kill(self) -> None:
        """Stop at once, without writing outcomes: leases expire and get rescued."""
        self._stopping = True
        self._log.warning("worker_killed", in_flight=self._running)
        for task in self._tasks:
            task.cancel()
        if self._outer is not None:
            self._outer.cancel()

    async def run_until_signal(self) -> None:
        """Run until SIGTERM/SIGINT (drain), or a second signal (stop at once)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_signals)
            await self.run()
            tg.cancel_scope.cancel()

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
        self._loop = asyncio.get_running_loop()
        self._tracing = tracing_active()
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
        self._pool = pool
        try:
            await check_schema(pool, schema=s.schema)
            self.health.schema_checked()
            self.health.db_ok()
            self._log.info(
                "worker_started",
                queues=self._queues,
                concurrency=s.concurrency,
                tasks=sorted(t.name for t in self.registry),
                notifications="listen" if self._listen_dsn is not None else "off: poll only",
            )
            with anyio.CancelScope() as outer:
                self._outer = outer
                async with anyio.create_task_group() as loops:
                    await self._start_ops(loops, pool)
                    if self._listen_dsn is not None:
                        loops.start_soon(self._listen_loop, self._listen_dsn)
                    loops.start_soon(self._heartbeat_loop)
                    loops.start_soon(self._rescue_loop)
                    loops.start_soon(self._completer_loop)
                    loops.start_soon(self._progress_loop)
                    self._started.set()
                    await self._claim_loop()
                    await self._drain()
                    with anyio.move_on_after(s.lease):
                        await self._wait_completions_drained()
                    loops.cancel_scope.cancel()
        finally:
            await self._reap_handlers()
            self._pool = None
            await pool.close()
            self._log.info("worker_stopped")

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
        if self._running:
            self._log.info(
                "worker_draining", in_flight=self._running, grace=self.settings.shutdown_grace
            )
            with anyio.move_on_after(self.settings.shutdown_grace):
                await self._wait_idle()
        for lease in list(self._leases.values()):
            if not lease.completing:
                self._cancel(lease, "shutdown")
        # Cancelled handlers return promptly (threads are abandoned); one that
        # ignores every cancel is left behind: its lease expires, a rescuer requeues.
        with anyio.move_on_after(_ABANDON_AFTER):
            await self._wait_idle()
        if self._running:
            self._log.error("handlers_ignore_cancellation", count=self._running)

    async def _reap_handlers(self) -> None:
        """Cancel handler tasks still alive (after kill or a crash) and wait for them."""
        if not self._tasks:
            return
        for task in self._tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            _, alive = await asyncio.wait(list(self._tasks), timeout=_ABANDON_AFTER)
        if alive:
            self._log.error("handlers_ignore_cancellation", count=len(alive))

    async def _wait_idle(self) -> None:
        while self._running:
            self._idle.clear()
            await self._idle.wait()

    async def _wait_completions_drained(self) -> None:
        while self._pending or self._pending_leases:
            self._completions_drained.clear()
            await self._completions_drained.wait()

    # -- claimer ----------------------------------------------------------

    async def _claim_loop(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        backoff = 0.1
        by_poll = False  # this claim was woken by the poll timer, not a notification
        while not self._stopping:
            free = s.concurrency - self._held
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                by_poll = False
                continue
            self._wake.clear()
            limit = min(free, s.max_claim_batch)
            deadline = time.monotonic() + s.lease
            claim_started = time.perf_counter()
            try:
                with anyio.fail_after(s.db_timeout):
                    jobs = await self.store.claim_jobs(
                        self.pool,
                        self._queues,
                        limit,
                        s.lease,
                        self.id,
                        on_unreadable=self._fail_unreadable,
                    )
            except _DB_DOWN as exc:
                self.metrics.db_error("claim")
                self.health.db_failed(exc)
                self._log.warning("claim_failed", error=repr(exc), retry_in=round(backoff, 2))
                await self._sleep_or_wake(backoff)
                backoff = min(backoff * 2, s.poll * 5)
                by_poll = False
                continue
            # Poll only (no LISTEN): a claim found by the timer missed no notification.
            by_poll = by_poll and self._listen_dsn is not None
            self.metrics.claimed(len(jobs), time.perf_counter() - claim_started, by_poll=by_poll)
            self.health.db_ok()
            by_poll = False
            backoff = 0.1
            for job in jobs:
                assert job.lease_token is not None
                lease = _Lease(job=job, token=job.lease_token, deadline=deadline)
                self._leases[job.id] = lease
                self._running += 1
                self._held += 1
                # Plain asyncio tasks: an anyio task group and cancel scope per job
                # cost several times the whole rest of the job's Python path.
                task = loop.create_task(self._execute(lease))
                lease.task = task
                self._tasks.add(task)
                task.add_done_callback(partial(self._handler_done, lease))
            if jobs:
                self._log.debug("jobs_claimed", count=len(jobs))
            if len(jobs) < limit:
                by_poll = not await self._sleep_or_wake(s.poll * random.uniform(0.8, 1.2))

    async def _sleep_or_wake(self, seconds: float) -> bool:
        """Wait for a wake-up or ``seconds``; whether woken (False: the timer ran out)."""
        with anyio.move_on_after(seconds):
            await self._wake.wait()
            return True
        return False

    def _fail_unreadable(self, row: Unreadable) -> None:
        """A claimed row that cannot be decoded fails at once (no handler can take it)."""
        self._log.error("job_unreadable", job_id=str(row.job_id), error=row.error)
        self._pending.append(
            self._failed_outright(
                row.job_id,
                row.lease_token,
                row.attempt,
                "UnreadableJob",
                f"the job's stored JSON cannot be decoded: {row.error}",
            )
        )
        self._completions_ready.set()

    def _on_queue_notification(self, payload: str) -> None:
        # '*': too many queues to list in one payload (migration 0005): all of them.
        if payload == "*" or self._queue_set.intersection(payload.split(",")):
            self._wake.set()

    # -- executor ---------------------------------------------------------

    def _handler_done(self, lease: _Lease, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if lease.ctx is None:  # cancelled (killed) before its first step
            self._running -= 1
            if not self._running:
                self._idle.set()
            self._forget(lease)
        if not task.cancelled() and task.exception() is not None:
            # A bug in the worker itself, not in a handler (those become outcomes).
            self._log.error("executor_crashed", error=repr(task.exception()))

    async def _execute(self, lease: _Lease) -> None:
        ctx = JobContext(lease.job, report=partial(self._report_progress, lease), log=self._log)
        lease.ctx = ctx
        task = lease.job.task
        self.metrics.started(task)
        outcome = "abandoned"  # lease lost, or cancelled from outside: nothing written
        started = time.monotonic()
        try:
            if self._tracing:
                with job_span(lease.job) as span:
                    completion = await self._run_handler(lease, ctx)
                    span.set_outcome(
                        None if completion is None else completion.outcome,
                        None if completion is None else completion.error_json,
                    )
            else:
                completion = await self._run_handler(lease, ctx)
            if completion is not None:
                outcome = completion.outcome
        except BaseException:
            # Cancelled from outside (kill): write nothing, stop heartbeating; the
            # rescuer takes the job.
            self._forget(lease)
            raise
        finally:
            self.metrics.finished(task, outcome, time.monotonic() - started)
            self._running -= 1
            if not self._running:
                self._idle.set()
        if completion is None:
            self._forget(lease)
        else:
            self._submit(lease, completion)

    async def _run_handler(self, lease: _Lease, ctx: JobContext) -> Completion | None:
        job = lease.job
        task = self.registry.get(job.task)
        if task is None:
            message = f"no handler for task {job.task!r} is registered on worker {self.id}"
            ctx.log.error("job_task_unknown")
            return self._failure(lease, None, "UnknownTask", message, retryable=True, task=None)
        if self._debug:  # per-job lines are debug: at thousands of jobs/s they would be the cost
            ctx.log.debug("job_started")
        started = time.monotonic()
        result: Any = None
        error: BaseException | None = None
        if lease.cancel_reason is None:  # else stopped before it started: skip the call
            timer = None
            if task.timeout is not None:
                timer = asyncio.get_running_loop().call_later(task.timeout, self._time_out, lease)
            lease.executing = True
            stopped: asyncio.CancelledError | None = None
            try:
                result = await self._call(task, ctx, job.args)
            except (Exception, Cancelled) as exc:
                error = exc
                if self._tracing:
                    record_exception(exc)  # the traceback on the job's span
            except asyncio.CancelledError as exc:
                stopped = exc
            finally:
                lease.executing = False  # no more cancels from here on
                if timer is not None:
                    timer.cancel()
            current = asyncio.current_task()
            if current is not None:
                for _ in range(lease.cancels):
                    current.uncancel()  # ours, consumed here: the outcome says why
                if stopped is not None and current.cancelling():
                    raise stopped  # the worker is being killed: write nothing
            if stopped is not None and not lease.cancels:
                error = stopped  # the handler raised it itself: an ordinary failure
        elapsed = round(time.monotonic() - started, 4)

        reason = lease.cancel_reason
        if reason == "lease_lost":
            ctx.log.warning("job_abandoned", reason="lease_lost", seconds=elapsed)
            return None
        if reason == "shutdown":
            ctx.log.info("job_released", seconds=elapsed)
            return self._completion(lease, "release")
        if reason == "cancel_requested":
            ctx.log.info("job_cancelled", seconds=elapsed)
            return self._completion(lease, "cancelled")
        if lease.timed_out:
            message = f"attempt {job.attempt} exceeded the task timeout of {task.timeout} s"
            ctx.log.warning("job_timed_out", seconds=elapsed)
            return self._failure(lease, None, "TimeoutError", message, retryable=True, task=task)
        if isinstance(error, Fail):
            ctx.log.warning("job_failed", error=_exc_message(error), seconds=elapsed)
            return self._failure(
                lease, error, type(error).__name__, _exc_message(error), retryable=False, task=task
            )
        if isinstance(error, Retry):
            ctx.log.info("job_retry_requested", delay=error.delay, seconds=elapsed)
            return self._failure(
                lease, None, "Retry", error.reason, retryable=True, task=task, delay=error.delay
            )
        if error is not None:
            ctx.log.warning("job_errored", error=_exc_message(error), seconds=elapsed)
            return self._failure(
                lease, error, type(error).__name__, _exc_message(error), retryable=True, task=task
            )
        try:
            result_json = dumps(result, what=f"the result of task {job.task!r}")
        except ValueError as exc:
            ctx.log.error("job_result_invalid", error=str(exc))
            return self._failure(lease, None, "InvalidResult", str(exc), retryable=False, task=task)
        size = _utf8_size(result_json)
        if size > self.settings.max_result_bytes:
            message = (
                f"the result of task {job.task!r} is {size} bytes, over the "
                f"limit of {self.settings.max_result_bytes}"
            )
            ctx.log.error("job_result_too_large", size=size)
            return self._failure(lease, None, "ResultTooLarge", message, retryable=False, task=task)
        if self._debug:
            ctx.log.debug("job_succeeded", seconds=elapsed)
        return self._completion(lease, "succeeded", result_json=result_json)

    async def _call(self, task: Task, ctx: JobContext, args: dict[str, Any]) -> Any:
        if task.is_async:
            return await task.fn(ctx, **args)
        return await anyio.to_thread.run_sync(
            partial(task.fn, ctx, **args), limiter=self._thread_limiter, abandon_on_cancel=True
        )

    def _completion(
        self,
        lease: _Lease,
        outcome: Outcome,
        *,
        result_json: str | None = None,
        error_json: str | None = None,
        delay: float | None = None,
    ) -> Completion:
        report = lease.progress
        return Completion(
            job_id=lease.job.id,
            lease_token=lease.token,
            outcome=outcome,
            result_json=result_json,
            error_json=error_json,
            delay_seconds=delay,
            progress=None if report is None else report.percent,
            message=None if report is None else report.message,
            eta_seconds=None if report is None else report.eta_seconds,
        )

    def _failure(
        self,
        lease: _Lease,
        exc: BaseException | None,
        kind: str,
        message: str,
        *,
        retryable: bool,
        task: Task | None,
        delay: float | None = None,
    ) -> Completion:
        job = lease.job
        error_json = _error_json(
            exc, kind=kind, message=message, attempt=job.attempt, worker=self.id
        )
        if retryable and job.attempt < job.max_attempts:
            if delay is None:
                delay = task.retry.delay(job.attempt) if task is not None else 5.0
            return self._completion(lease, "retry", error_json=error_json, delay=delay)
        return self._completion(lease, "failed", error_json=error_json)

    def _failed_outright(
        self, job_id: uuid.UUID, token: uuid.UUID, attempt: int, kind: str, message: str
    ) -> Completion:
        """A ``failed`` outcome with no retry, result or progress: no handler can help."""
        error_json = _error_json(None, kind=kind, message=message, attempt=attempt, worker=self.id)
        return Completion(job_id=job_id, lease_token=token, outcome="failed", error_json=error_json)

    def _cancel(self, lease: _Lease, reason: CancelReason) -> None:
        if lease.cancel_reason is None:
            lease.cancel_reason = reason
        if lease.ctx is not None:
            lease.ctx._cancel(reason)
        self._stop_handler(lease)

    def _stop_handler(self, lease: _Lease) -> None:
        """Cancel the handler call if it is running, and again until it stops."""
        if lease.executing and not lease.cancels:
            self._send_cancel(lease)

    def _send_cancel(self, lease: _Lease) -> None:
        # A handler may catch the CancelledError and await again (cleanup code,
        # shield, a wait_for that swallowed it): cancel again until it returns,
        # as a cancel scope would.
        task = lease.task
        if not lease.executing or task is None or task.done() or self._loop is None:
            return
        lease.cancels += 1
        task.cancel()
        self._loop.call_later(_RECANCEL_SECONDS, self._send_cancel, lease)

    def _time_out(self, lease: _Lease) -> None:
        if lease.executing and lease.cancel_reason is None:
            lease.timed_out = True
            if lease.ctx is not None:
                lease.ctx._cancel("timeout")
            self._stop_handler(lease)

    # -- completer --------------------------------------------------------

    def _submit(self, lease: _Lease, completion: Completion) -> None:
        lease.completing = True
        lease.progress_dirty = False
        self._pending.append(completion)
        self._pending_leases[lease.job.id] = lease
        self._completions_ready.set()

    def _forget(self, lease: _Lease) -> None:
        if not lease.released:
            lease.released = True
            self._held -= 1
            self._slot_free.set()
        job_id = lease.job.id
        if self._leases.get(job_id) is lease:
            del self._leases[job_id]
        if self._pending_leases.get(job_id) is lease:
            del self._pending_leases[job_id]
        if not self._pending and not self._pending_leases:
            self._completions_drained.set()

    async def _completer_loop(self) -> None:
        while True:
            await self._completions_ready.wait()
            self._completions_ready.clear()
            while self._pending:
                batch = self._pending[: self.settings.max_complete_batch]
                del self._pending[: len(batch)]
                await self._write_completions(batch)
            if not self._pending_leases:
                self._completions_drained.set()

    async def _write_completions(self, batch: list[Completion]) -> None:
        backoff = 0.05
        while batch:
            try:
                with anyio.fail_after(self._write_timeout):
                    async with self._write_lock:
                        written = await self.store.complete_jobs(self.pool, batch)
            except _DB_DOWN as exc:
                self.metrics.db_error("complete")
                if _refused(exc):  # retrying would stall every completion behind it
                    await self._write_refused(batch, exc)
                    return
                self.health.db_failed(exc)
                now = time.monotonic()
                keep: list[Completion] = []
                for c in batch:
                    lease = self._pending_leases.get(c.job_id)
                    if lease is not None and lease.deadline > now:
                        keep.append(c)
                    else:
                        self._log.warning(
                            "completion_abandoned", job_id=str(c.job_id), reason="lease_expired"
                        )
                        if lease is not None:
                            self._forget(lease)
                batch = keep
                self._log.warning(
                    "completion_write_failed", error=repr(exc), jobs=len(batch), retry_in=backoff
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self.metrics.completion_batch(len(batch))
            self.health.db_ok()
            for c in batch:
                lease = self._pending_leases.get(c.job_id)
                if c.job_id not in written:
                    self.metrics.lease_lost("completion")
                    self._log.warning(
                        "lease_lost", job_id=str(c.job_id), outcome=c.outcome, write="completion"
                    )
                if lease is not None:
                    self._forget(lease)
            return

    async def _write_refused(self, batch: list[Completion], exc: BaseException) -> None:
        """Write what the database accepts of a refused batch; fail the refused outcomes.

        A batch of several is halved and each half written again, so the refused
        completions are found in O(k log n) statements and the others written. A
        single refused one ends its job ``failed`` (``CompletionRefused``, with the
        database's message, no result) in one more statement; refused again, the
        lease is given up and the rescuer takes the job when it expires.
        """
        if len(batch) > 1:
            half = len(batch) // 2
            await self._write_completions(batch[:half])
            await self._write_completions(batch[half:])
            return
        (refused,) = batch
        lease = self._pending_leases.get(refused.job_id)
        self._log.error(
            "completion_refused",
            job_id=str(refused.job_id),
            outcome=refused.outcome,
            error=repr(exc),
        )
        failure = self._failed_outright(
            refused.job_id,
            refused.lease_token,
            lease.job.attempt if lease is not None else 0,
            "CompletionRefused",
            f"the database refused this attempt's outcome ({refused.outcome}): {exc}",
        )
        try:
            with anyio.fail_after(self._write_timeout):
                async with self._write_lock:
                    await self.store.complete_jobs(self.pool, [failure])
        except _DB_DOWN as again:
            self._log.error("completion_abandoned", job_id=str(refused.job_id), error=repr(again))
        if lease is not None:
            self._forget(lease)

    # -- progress ---------------------------------------------------------

    def _report_progress(self, lease: _Lease, report: ProgressReport) -> None:
        lease.progress = report
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._mark_progress(lease)
        else:  # a sync handler's thread
            loop.call_soon_threadsafe(self._mark_progress, lease)

    def _mark_progress(self, lease: _Lease) -> None:
        if not lease.completing:
            lease.progress_dirty = True
            self._progress_ready.set()

    async def _progress_loop(self) -> None:
        interval = self.settings.progress_interval
        while True:
            await self._progress_ready.wait()
            self._progress_ready.clear()
            while True:
                now = time.monotonic()
                dirty = [
                    lease
                    for lease in self._leases.values()
                    if lease.progress_dirty and not lease.completing
                ]
                if not dirty:
                    break
                due = [lease for lease in dirty if now - lease.progress_written_at >= interval]
                if not due:
                    wait = min(lease.progress_written_at + interval for lease in dirty) - now
                    await anyio.sleep(max(wait, 0.001))
                    continue
                await self._write_progress(due, now)

    async def _write_progress(self, leases: list[_Lease], now: float) -> None:
        writes: list[ProgressWrite] = []
        for lease in leases:
            report = lease.progress
            assert report is not None
            lease.progress_dirty = False
            lease.progress_written_at = now
            writes.append(
                ProgressWrite(
                    lease.job.id, lease.token, report.percent, report.message, report.eta_seconds
                )
            )
        try:
            with anyio.fail_after(self._write_timeout):
                async with self._write_lock:
                    written = await self.store.update_progress(self.pool, writes)
        except _DB_DOWN as exc:
            self.metrics.db_error("progress")
            self.health.db_failed(exc)
            self._log.warning("progress_write_failed", error=repr(exc), jobs=len(writes))
            for lease in leases:
                lease.progress_dirty = True  # try again; the completion carries it anyway
            await anyio.sleep(min(1.0, self.settings.heartbeat_interval))
            return
        self.health.db_ok()
        for lease in leases:
            if lease.job.id not in written and not lease.completing:
                self._lost(lease, write="progress")

    def _lost(self, lease: _Lease, *, write: str) -> None:
        self.metrics.lease_lost(write)
        self._log.warning("lease_lost", job_id=str(lease.job.id), task=lease.job.task, write=write)
        self._leases.pop(lease.job.id, None)
        self._cancel(lease, "lease_lost")

    # -- heartbeat --------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        s = self.settings
        while True:
            with anyio.move_on_after(s.heartbeat_interval):
                await self._heartbeat_now.wait()
            self._heartbeat_now.clear()
            self.health.alive("heartbeat")
            leases = list(self._leases.values())
            if leases:
                await self._heartbeat(leases)
            else:
                self.metrics.heartbeat_ok()  # nothing to extend: the pass succeeded
            now = time.monotonic()
            for lease in list(self._leases.values()):
                if lease.deadline <= now and not lease.completing:
                    self._log.warning(
                        "lease_expired_locally",
                        job_id=str(lease.job.id),
                        reason="no heartbeat reached the database within the lease",
                    )
                    self._lost(lease, write="heartbeat")

    async def _heartbeat(self, leases: list[_Lease]) -> None:
        s = self.settings
        sent_at = time.monotonic()
        try:
            # The deadline covers waiting for the lock: a write hanging on a dead
            # connection must not hold up the heartbeat and the local lease check.
            with anyio.fail_after(self._write_timeout):
                async with self._write_lock:
                    held = await self.store.heartbeat_jobs(
                        self.pool, [(lease.job.id, lease.token) for lease in leases], s.lease
                    )
        except _DB_DOWN as exc:
            self.metrics.db_error("heartbeat")
            self.health.db_failed(exc)
            self._log.warning("heartbeat_failed", error=repr(exc), jobs=len(leases))
            return
        self.metrics.heartbeat_ok()
        self.health.db_ok()
        for lease in leases:
            cancel_requested = held.get(lease.job.id)
            if cancel_requested is None:
                if not lease.completing:
                    self._lost(lease, write="heartbeat")
                continue
            lease.deadline = sent_at + s.lease
            if cancel_requested and not lease.completing:
                self._cancel(lease, "cancel_requested")

    def _on_cancel_notification(self, payload: str) -> None:
        for raw in payload.split(","):
            try:
                job_id = uuid.UUID(raw)
            except ValueError:
                continue
            lease = self._leases.get(job_id)
            if lease is not None and not lease.completing:
                self._log.info("cancel_requested", job_id=raw)
                self._cancel(lease, "cancel_requested")

    # -- rescuer ----------------------------------------------------------

    async def _rescue_loop(self) -> None:
        s = self.settings
        while True:
            await anyio.sleep(s.rescue * random.uniform(0.5, 1.0))
            self.health.alive("rescuer")
            try:
                while True:
                    with anyio.fail_after(s.db_timeout):
                        rescued = await self.store.rescue_expired(self.pool, 500)
                    self.health.db_ok()
                    self.health.alive("rescuer")
                    for r in rescued:
                        self._log.warning(
                            "lease_expired_job_rescued",
                            job_id=str(r.job_id),
                            state=r.state.value,
                            attempt=r.attempt,
                            previous_worker=r.worker_id,
                        )
                    if len(rescued) < 500:
                        break
            except _DB_DOWN as exc:
                self.metrics.db_error("rescue")
                self.health.db_failed(exc)
                self._log.warning("rescue_failed", error=repr(exc))

    # -- listener ---------------------------------------------------------

    async def _listen_loop(self, dsn: str) -> None:
        def caught_up() -> None:  # claim and heartbeat now: notifications may have been missed
            if self._listener_connects:
                self.metrics.listener_reconnected()
            self._listener_connects += 1
            self._wake.set()
            self._heartbeat_now.set()

        def lost() -> None:  # also called when the loop is cancelled at shutdown
            if not self._stopping:
                self.metrics.db_error("listen")

        schema = self.settings.schema
        await listen_forever(
            dsn,
            {
                f"{schema}.queue": self._on_queue_notification,
                f"{schema}.cancel": self._on_cancel_notification,
            },
            on_connected=caught_up,
            on_disconnected=lost,
            ping_every=self.settings.poll * 5,
            db_timeout=self.settings.db_timeout,
            log=self._log,
        )
