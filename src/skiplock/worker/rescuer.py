"""The rescuer: takes back the jobs of dead workers and expired leases.

About every second (jittered), ``dead_workers`` (sql/queries/dead_workers.sql;
it reads only the workers table and ``pg_locks``) finds registered workers
whose presence lock is gone: their process died and PostgreSQL closed its
connections (see ``presence.py``). ``rescue_dead_workers`` re-queues their
running jobs at once (attempt counted, ``WorkerDied``) and
``forget_dead_workers`` deletes their registrations.

Every few seconds (jittered), ``rescue_expired`` (sql/queries/rescue_expired.sql)
takes back jobs whose lease expired on any worker, for what the database
cannot see (a hung but connected worker, a partition, an unregistered one).

With the expired-lease rescue, the flow-control upkeep (migration 0010):
``prune_limit_starts`` deletes logged starts older than every rate window, and
about every minute ``apply_fair_keys`` gives the queued jobs of fair queues
that have no fair key one (jobs enqueued by a transaction that had not yet
seen its queue made fair).

Both rescues put jobs back to ``queued``, or end them ``failed`` when no attempt is
left (``cancelled`` when their cancel was requested), in batches of
:data:`RESCUE_BATCH`, with ``SKIP LOCKED`` so the rescuers of many workers
never block each other.

A row whose rescue the database refuses (a trigger, a constraint) would fail
every batch it is in: the rescuer halves its batch until the refused row is
alone, names it with ``expired_jobs`` (sql/queries/expired_jobs.sql), logs
``rescue_refused`` and leaves it out for :data:`REFUSED_RETRY_SECONDS`, so
the other expired jobs are rescued.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence

import anyio

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.queue.store import Rescued
from skiplock.worker.gate import refused
from skiplock.worker.shared import Shared

__all__ = [
    "DEAD_WORKER_CHECK",
    "MAX_REFUSED",
    "REFUSED_RETRY_SECONDS",
    "RESCUE_BATCH",
    "Rescuer",
    "log_rescued",
]

RESCUE_BATCH = 500
REFUSED_RETRY_SECONDS = 60.0  # a refused row is tried again after this (an operator may fix it)
MAX_REFUSED = 1000  # refused rows left out at once; the oldest is tried again first
UPKEEP_BATCH = 10_000  # rows per flow-control upkeep statement
FAIR_SWEEP_SECONDS = 60.0  # between sweeps for fair queues' jobs without a fair key (0.5–1×)
DEAD_WORKER_CHECK = 1.0  # seconds between dead-worker checks (0.5–1× jittered)


class Rescuer:
    """The loop that re-queues (or fails) jobs whose lease expired anywhere."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._refused: dict[uuid.UUID, float] = {}  # job id -> monotonic time to try again
        # dead worker id -> monotonic time to try its fast rescue again
        self._refused_workers: dict[str, float] = {}

    async def run(self) -> None:
        """Rescue every ``rescue`` seconds (0.5–1× jittered), forever; with it, the
        flow-control upkeep (:meth:`_flow_upkeep`)."""
        shared = self._shared
        s = shared.settings
        next_sweep = time.monotonic() + FAIR_SWEEP_SECONDS * random.uniform(0.5, 1.0)
        while True:
            await anyio.sleep(s.rescue * random.uniform(0.5, 1.0))
            shared.health.alive("rescuer")
            try:
                await self._rescue_all()
                sweep = time.monotonic() >= next_sweep
                if sweep:
                    next_sweep = time.monotonic() + FAIR_SWEEP_SECONDS * random.uniform(0.5, 1.0)
                await self._flow_upkeep(sweep_fair_keys=sweep)
            except TRANSIENT_DB_ERRORS as exc:
                shared.metrics.db_error("rescue")
                shared.health.db_failed(exc)
                shared.log.warning("rescue_failed", error=repr(exc))

    async def _flow_upkeep(self, *, sweep_fair_keys: bool) -> None:
        """Delete logged starts older than every rate window; now and then, give the
        queued jobs of fair queues that have none a fair key (a job enqueued by a
        transaction that had not seen its queue made fair)."""
        shared = self._shared
        with anyio.fail_after(shared.settings.db_timeout):
            while await shared.store.prune_limit_starts(shared.pool, UPKEEP_BATCH) >= UPKEEP_BATCH:
                pass
            if sweep_fair_keys:
                given = await shared.store.apply_fair_keys(shared.pool, None, UPKEEP_BATCH)
                if given:
                    shared.log.info("fair_keys_given", count=given)

    async def watch_workers(self) -> None:
        """Every :data:`DEAD_WORKER_CHECK` seconds (0.5–1× jittered), rescue the jobs
        of workers whose presence lock is gone, then forget those workers."""
        shared = self._shared
        s = shared.settings
        while True:
            await anyio.sleep(DEAD_WORKER_CHECK * random.uniform(0.5, 1.0))
            try:
                with anyio.fail_after(s.db_timeout):
                    dead = await shared.store.dead_workers(shared.pool)
                if dead:
                    await self._rescue_dead(dead)
            except TRANSIENT_DB_ERRORS as exc:
                shared.metrics.db_error("rescue")
                shared.health.db_failed(exc)
                shared.log.warning("dead_worker_check_failed", error=repr(exc))

    async def _rescue_dead(self, dead: list[str]) -> None:
        """Rescue the dead workers' jobs, all in one statement while none is refused.

        A row the database refuses (a trigger, a constraint) would fail every batch
        it is in: the workers are then tried one by one, and a worker whose rescue is
        refused is left out of this fast path for :data:`REFUSED_RETRY_SECONDS`. Its
        jobs are taken back when their leases expire, by ``rescue_expired``, which
        isolates the refused row itself; the other dead workers are rescued at once.
        """
        now = time.monotonic()
        for worker_id in [w for w, until in self._refused_workers.items() if until <= now]:
            del self._refused_workers[worker_id]
        dead = [w for w in dead if w not in self._refused_workers]
        if not dead:
            return
        try:
            await self._rescue_dead_of(dead)
            return
        except TRANSIENT_DB_ERRORS as exc:
            if not refused(exc):
                raise
        for worker_id in dead:  # one by one, to find whose rescue is refused
            try:
                await self._rescue_dead_of([worker_id])
            except TRANSIENT_DB_ERRORS as exc:
                if not refused(exc):
                    raise
                self._leave_worker_out(worker_id, exc)

    async def _rescue_dead_of(self, dead: list[str]) -> None:
        shared = self._shared
        db_timeout = shared.settings.db_timeout
        while True:
            with anyio.fail_after(db_timeout):
                rescued = await shared.store.rescue_dead_workers(
                    shared.pool, dead, [], RESCUE_BATCH
                )
            log_rescued(shared, "dead_worker_job_rescued", rescued)
            if len(rescued) < RESCUE_BATCH:
                break
        with anyio.fail_after(db_timeout):
            forgotten = await shared.store.forget_dead_workers(shared.pool, dead)
        for worker_id in forgotten:
            shared.log.info("dead_worker_forgotten", dead_worker=worker_id)

    def _leave_worker_out(self, worker_id: str, exc: BaseException) -> None:
        self._shared.metrics.db_error("rescue")
        self._shared.log.error(
            "dead_worker_rescue_refused",
            dead_worker=worker_id,
            error=repr(exc),
            retry_in=REFUSED_RETRY_SECONDS,
            reason="its jobs are taken back when their leases expire",
        )
        if len(self._refused_workers) >= MAX_REFUSED:
            oldest = min(self._refused_workers, key=self._refused_workers.__getitem__)
            del self._refused_workers[oldest]
        self._refused_workers[worker_id] = time.monotonic() + REFUSED_RETRY_SECONDS

    def _left_out(self) -> list[uuid.UUID]:
        now = time.monotonic()
        for job_id in [j for j, until in self._refused.items() if until <= now]:
            del self._refused[job_id]
        return list(self._refused)

    async def _rescue_all(self) -> None:
        """Rescue batch after batch until fewer than asked come back."""
        shared = self._shared
        db_timeout = shared.settings.db_timeout
        limit = RESCUE_BATCH
        while True:
            skip = self._left_out()
            try:
                with anyio.fail_after(db_timeout):
                    rescued = await shared.store.rescue_expired(shared.pool, limit, skip)
            except TRANSIENT_DB_ERRORS as exc:
                if not refused(exc):
                    raise
                shared.metrics.db_error("rescue")
                if limit > 1:
                    limit //= 2  # the rows before the refused one go in smaller batches
                    continue
                with anyio.fail_after(db_timeout):
                    culprit = await shared.store.expired_jobs(shared.pool, 1, skip)
                if not culprit:  # another rescuer took it meanwhile: next pass
                    return
                self._leave_out(culprit[0], exc)
                limit = RESCUE_BATCH
                continue
            shared.health.db_ok()
            shared.health.alive("rescuer")
            log_rescued(shared, "lease_expired_job_rescued", rescued)
            if len(rescued) < limit:
                return

    def _leave_out(self, job_id: uuid.UUID, exc: BaseException) -> None:
        self._shared.log.error(
            "rescue_refused",
            job_id=str(job_id),
            error=repr(exc),
            retry_in=REFUSED_RETRY_SECONDS,
        )
        if len(self._refused) >= MAX_REFUSED:
            del self._refused[min(self._refused, key=self._refused.__getitem__)]
        self._refused[job_id] = time.monotonic() + REFUSED_RETRY_SECONDS


def log_rescued(shared: Shared, event: str, rescued: Sequence[Rescued]) -> None:
    """One warning per rescued job: where it went, its attempt, the worker it left."""
    for r in rescued:
        shared.log.warning(
            event,
            job_id=str(r.job_id),
            state=r.state.value,
            attempt=r.attempt,
            previous_worker=r.worker_id,
        )
