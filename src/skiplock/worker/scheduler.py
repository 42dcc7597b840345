"""The worker's scheduler: enqueue the due ticks of periodic jobs (migration 0013).

Every worker runs it. Every ``schedule_poll`` seconds it takes the due
schedules (``next_tick`` passed, or not computed yet) with ``FOR UPDATE SKIP
LOCKED``, enqueues the job of each tick to run (as ``catch_up`` says), and moves
``last_tick`` and ``next_tick`` on, all in one transaction: a tick's job exists
exactly when ``last_tick`` has passed it, so any number of workers enqueue each
tick once, and a worker killed halfway enqueues nothing (its transaction rolls
back; another worker takes the schedule). The job's idempotency key,
``schedule:<name>:<tick>``, is a second guard. Times are the database's clock.

Cron expressions are read by `cronsim <https://pypi.org/project/cronsim/>`_:
five fields, Debian cron's meaning, in the schedule's time zone, daylight
saving time as cron does it (a time that does not exist that night runs when
the clocks have gone forward; in the hour that happens twice, a job of a
fixed hour runs once, a job of every hour in both). Interval schedules tick at
the multiples of their interval since the Unix epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from cronsim import CronSim, CronSimError

from skiplock.queue.client import Client
from skiplock.queue.errors import IdempotencyConflict, InvalidJob, InvalidSetting
from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.queue.models import JobSpec
from skiplock.queue.schedules import MAX_CATCH_UP, Schedule, ScheduleDefinition
from skiplock.queue.store import Store

__all__ = ["Scheduler", "TickPlan", "check_cron", "plan_ticks"]

log = structlog.get_logger("skiplock.worker.scheduler")

# A tick of a "skip" schedule still runs when it is at most this late (a worker
# busy, a slow poll); one interval when the schedule ticks more often.
SKIP_GRACE = timedelta(seconds=60)
# Schedules handled per transaction (the rest wait for the next pass, at once).
BATCH = 100
# A schedule whose cron expression cannot be read is looked at again this late.
BROKEN_RETRY = timedelta(hours=1)


def check_cron(expr: str) -> None:
    """Raise :class:`InvalidSetting` unless ``expr`` is a cron expression cronsim reads."""
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise InvalidSetting(f"bad cron expression {expr!r}: {exc}") from None


def _index(t: datetime, every: float) -> int:
    """The number of the last interval tick at or before ``t`` (ticks are stored to the
    microsecond: one within a thousandth of an interval counts as that tick)."""
    x = t.timestamp() / every
    nearest = round(x)
    return nearest if abs(x - nearest) < 1e-3 else math.floor(x)


def _next_after(s: Schedule | ScheduleDefinition, after: datetime) -> datetime | None:
    """The schedule's first tick strictly after ``after`` (None: none in 50 years)."""
    if s.every_seconds is not None:
        k = _index(after, s.every_seconds) + 1
        return datetime.fromtimestamp(k * s.every_seconds, UTC)
    assert s.cron is not None
    local = after.astimezone(ZoneInfo(s.timezone))
    try:
        return next(CronSim(s.cron, local)).astimezone(UTC)
    except StopIteration:
        return None


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What one pass does with a schedule: the ticks to enqueue, oldest first, and
    the schedule's new ``last_tick`` and ``next_tick``."""

    enqueue: tuple[datetime, ...]
    last_tick: datetime | None
    next_tick: datetime | None
    missed: int  # due ticks passed over (catch_up skip or once, or beyond MAX_CATCH_UP)


def plan_ticks(
    s: Schedule | ScheduleDefinition, last_tick: datetime | None, now: datetime
) -> TickPlan:
    """The ticks of ``s`` due in (``last_tick``, ``now``], and what to do with them.

    A schedule never handled (``last_tick`` None) starts now: its first tick is
    the next one. Raises :class:`InvalidSetting` for a cron expression cronsim
    cannot read.
    """
    if s.cron is not None:
        check_cron(s.cron)
    if last_tick is None:
        return TickPlan((), now, _next_after(s, now), 0)
    due: list[datetime] = []
    count = 0
    tick = _next_after(s, last_tick)
    if s.every_seconds is not None and tick is not None and tick <= now:
        # Arithmetic, not a walk: a day down is 86,400 ticks of a 1 s schedule.
        first = _index(tick, s.every_seconds)
        last = _index(now, s.every_seconds)
        count = last - first + 1
        keep = range(max(first, last - MAX_CATCH_UP + 1), last + 1)
        due = [datetime.fromtimestamp(k * s.every_seconds, UTC) for k in keep]
    else:
        while tick is not None and tick <= now:
            count += 1
            due.append(tick)
            if len(due) > MAX_CATCH_UP:
                del due[0]
            tick = _next_after(s, tick)
    if not due:
        return TickPlan((), last_tick, tick, 0)
    latest = due[-1]
    if s.catch_up == "all":
        run = due
    elif s.catch_up == "once":
        run = due[-1:]
    else:
        grace = SKIP_GRACE
        if s.every_seconds is not None:
            grace = min(grace, timedelta(seconds=s.every_seconds))
        run = due[-1:] if now - latest <= grace else []
    return TickPlan(tuple(run), latest, _next_after(s, latest), count - len(run))


def _spec(s: Schedule, tick: datetime) -> JobSpec:
    stamp = tick.isoformat(timespec="microseconds")
    return JobSpec(
        task=s.task,
        args=s.args,
        queue=s.queue,
        tenant=s.tenant,
        priority=s.priority,
        max_attempts=s.max_attempts,
        idempotency_key=f"schedule:{s.name}:{stamp}",
        meta={"schedule": s.name, "tick": stamp},
    )


class Scheduler:
    """Declares the registry's schedules, then enqueues due ticks every ``poll`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        store: Store,
        definitions: list[ScheduleDefinition],
        *,
        poll: float,
    ) -> None:
        self._pool = pool
        self._store = store
        self._client = Client(pool, schema=store.schema)
        self._definitions = definitions
        self._poll = poll
        self.enqueued = 0
        self.passes = 0

    async def declare(self) -> None:
        """Write the definitions the code declares (their run-time state is kept)."""
        for d in self._definitions:
            await self._store.declare_schedule(self._pool, d)
            log.info("schedule_declared", schedule=d.name, task=d.task)

    async def run(self) -> None:
        """Enqueue due ticks until cancelled; database trouble is logged and retried."""
        while True:
            try:
                while await self.run_once() >= BATCH:
                    pass  # more were due than one transaction takes: go on at once
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("scheduler_pass_failed", error=repr(exc))
            except Exception:  # a bug here must not stop the worker's jobs: log, go on
                log.exception("scheduler_pass_crashed")
                await anyio.sleep(max(self._poll, 1.0))
            await anyio.sleep(self._poll)

    async def run_once(self) -> int:
        """One pass: the due schedules handled in one transaction; how many there were."""
        self.passes += 1
        enqueued = 0
        async with self._pool.acquire() as conn, conn.transaction():
            schedules, now = await self._store.due_schedules(conn, BATCH)
            for s in schedules:
                assert now is not None  # read with the rows
                enqueued += await self._handle(conn, s, now)
        self.enqueued += enqueued  # counted once committed
        return len(schedules)

    async def _handle(
        self, conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any], s: Schedule, now: datetime
    ) -> int:
        """Enqueue ``s``'s due ticks and advance it; the number of jobs enqueued."""
        try:
            plan = plan_ticks(s, s.last_tick, now)
        except InvalidSetting as exc:
            log.error("schedule_invalid", schedule=s.name, error=str(exc))
            await self._store.advance_schedule(conn, s.name, s.last_tick, now + BROKEN_RETRY, None)
            return 0
        last_job = None
        made = 0
        if plan.enqueue:
            try:
                specs = [_spec(s, tick) for tick in plan.enqueue]
                async with conn.transaction():  # a savepoint: one schedule's trouble is its own
                    jobs = await self._client.enqueue_many(specs, connection=conn)
                last_job = jobs[-1].id
                made = len(jobs)
            except IdempotencyConflict:
                # The tick's job exists with another request (the definition changed
                # in between): the tick has its job.
                log.warning("schedule_tick_exists", schedule=s.name, ticks=len(plan.enqueue))
            except (
                InvalidJob,
                asyncpg.DataError,
                asyncpg.IntegrityConstraintViolationError,
            ) as exc:
                # A row this version cannot make a job of (written by hand, or by
                # another version): its ticks are passed over, loudly, not retried
                # in a loop.
                log.error(
                    "schedule_tick_refused",
                    schedule=s.name,
                    ticks=len(plan.enqueue),
                    error=str(exc),
                )
        if plan.missed:
            log.info(
                "schedule_ticks_missed", schedule=s.name, missed=plan.missed, policy=s.catch_up
            )
        await self._store.advance_schedule(conn, s.name, plan.last_tick, plan.next_tick, last_job)
        return made
