"""Schedules' figures (migration 0013): are fast ticks enqueued exactly once by a fleet?

* **cron duplicates**: four worker processes, each declaring the same schedule of a
  no-op job every :data:`EVERY` seconds with ``catch_up="all"`` and looking for
  due ticks every :data:`POLL` seconds, run until ``ticks`` ticks were enqueued.
  From the jobs (each carries its tick in ``meta.tick``): the ticks enqueued more
  than once (``cron_duplicates``, target 0), the ticks left out between the first
  and the last (``cron_missing``), and how late each tick's job was created
  (``created_at − tick``, p50 and p95).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import asyncpg

from bench.common import SCHEMA, note, percentile
from bench.worker import WorkerProcess

NAME = "bench-tick"
EVERY = 0.02  # seconds between ticks: 1,000 ticks in 20 s
POLL = 0.005  # each worker's schedule_poll
WORKERS = 4
WAIT_PATIENCE = 120.0

_TICKS = f"""
SELECT meta->>'tick' AS tick, count(*) AS jobs,
       extract(epoch FROM min(created_at) - (meta->>'tick')::timestamptz)::float8 AS late
FROM {SCHEMA}.jobs WHERE meta->>'schedule' = $1
GROUP BY meta->>'tick' ORDER BY meta->>'tick'
"""  # noqa: S608 - the schema is a constant
_COUNT = f"SELECT count(*) FROM {SCHEMA}.jobs WHERE meta->>'schedule' = $1"  # noqa: S608


async def cron_duplicates(dsn: str, ticks: int) -> dict[str, Any]:
    """Four workers on one fast schedule until ``ticks`` ticks were enqueued."""
    workers = await asyncio.gather(
        *(
            WorkerProcess.start(dsn, schedule_every=EVERY, schedule_poll=POLL)
            for _ in range(WORKERS)
        )
    )
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + WAIT_PATIENCE + ticks * EVERY
        while await conn.fetchval(_COUNT, NAME) < ticks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ticks:,} ticks not enqueued in time")
            await asyncio.sleep(0.1)
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
    try:
        rows = await conn.fetch(_TICKS, NAME)
    finally:
        await conn.close()
    stamps = [time_of(r["tick"]) for r in rows]
    span = round((stamps[-1] - stamps[0]) / EVERY) + 1
    late = [float(r["late"]) * 1000 for r in rows]
    result = {
        "workers": WORKERS,
        "every_s": EVERY,
        "ticks": len(rows),
        "jobs": sum(int(r["jobs"]) for r in rows),
        "duplicates": sum(int(r["jobs"]) - 1 for r in rows),
        "missing": span - len(rows),
        "late_p50_ms": percentile(late, 50),
        "late_p95_ms": percentile(late, 95),
    }
    note(f"schedules: {result['ticks']} ticks, {result['duplicates']} duplicates")
    return result


def time_of(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 tick."""
    return datetime.fromisoformat(stamp).timestamp()
