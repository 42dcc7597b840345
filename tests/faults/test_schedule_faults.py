"""Periodic jobs (issue 13) through kill -9 and PostgreSQL restarts, with worker processes.

Four workers run ``tests/apps/schedules.py``: one schedule, a job every 50 ms,
every missed tick caught up. Whatever dies, each tick between the first and the
last has exactly one job: the tick's job and the schedule's ``last_tick`` are
written in one transaction, so a worker killed halfway wrote neither.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Literal

import anyio
import pytest

from skiplock.testing import ThrowawayPostgres
from tests.apps.schedules import EVERY
from tests.faults.conftest import Report
from tests.faults.fleet import STARTUP, Db, Fleet
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "tests.apps.schedules:tasks"
TIMINGS: dict[str, float | str] = {"schedule_poll": 0.01, "lease": 10, "heartbeat": 1}

_TICKS = """
SELECT meta->>'tick' AS tick, count(*) AS jobs FROM skiplock.jobs
WHERE meta->>'schedule' = 'fast' GROUP BY 1 ORDER BY 1
"""


async def _count(db: Db) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM skiplock.jobs WHERE meta->>'schedule' = 'fast'")
    )


async def _grows_by(db: Db, ticks: int, what: str) -> None:
    start = await _count(db)
    await wait_for(
        lambda: _count(db), lambda n: n >= start + ticks, timeout=STARTUP + 30, what=what
    )


async def _check_every_tick_once(db: Db, report: Report, **figures: float) -> None:
    rows = await db.fetch(_TICKS)
    stamps = [datetime.fromisoformat(r["tick"]).timestamp() for r in rows]
    duplicates = sum(int(r["jobs"]) - 1 for r in rows)
    span = round((stamps[-1] - stamps[0]) / EVERY) + 1
    report(ticks=len(rows), duplicates=duplicates, missing=span - len(rows), **figures)
    assert duplicates == 0, "a tick was enqueued twice"
    assert span == len(rows), f"{span - len(rows)} ticks were left out"


async def test_kill_9_while_ticking_enqueues_every_tick_once(
    restart_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
) -> None:
    """Four workers; one after another is killed with SIGKILL (and started again) while
    the schedule ticks every 50 ms."""
    f, db = fleet(restart_dsn), probes(restart_dsn)
    f.app = APP
    workers = [await f.start(f"S{i}", **TIMINGS) for i in range(4)]
    await _grows_by(db, 20, "the schedule to tick")
    kills = 0
    for i in range(4):
        workers[i].process.send_signal(signal.SIGKILL)
        assert await workers[i].wait_exit(within=10) == -signal.SIGKILL
        kills += 1
        await _grows_by(db, 10, "ticks after a kill")
        workers[i] = await f.start(f"S{i}b", **TIMINGS)
    await _grows_by(db, 10, "ticks with the fleet back")
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        await worker.wait_exit(within=30)
    await _check_every_tick_once(db, report, kills=kills)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_while_ticking_enqueues_every_tick_once(
    restartable_pg: ThrowawayPostgres,
    restart_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
    mode: Literal["fast", "immediate"],
) -> None:
    """Four workers tick; PostgreSQL restarts under them; the ticks missed meanwhile are
    caught up, none twice."""
    f, db = fleet(restart_dsn), probes(restart_dsn)
    f.app = APP
    workers = [await f.start(f"R{i}", **TIMINGS) for i in range(4)]
    await _grows_by(db, 20, "the schedule to tick")
    clock = time.monotonic()
    await anyio.to_thread.run_sync(partial(restartable_pg.restart, mode))
    restart_s = round(time.monotonic() - clock, 2)
    await _grows_by(db, 20, "ticks after the restart")
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        await worker.wait_exit(within=30)
    await _check_every_tick_once(db, report, restart_s=restart_s)
