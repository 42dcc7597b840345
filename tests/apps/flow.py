"""Tasks for flow-control tests with worker processes: every run is recorded in the database.

The test creates the tables in :data:`TABLES_SQL`. Each handler records its
run in ``flow_runs`` — job, attempt, worker, ``started_at`` and ``ended_at``
from the database's ``clock_timestamp()`` — through a small asyncpg pool of
its process, made on first use (application name ``flow-side``). The
handler's run lies inside the job's time as ``running`` (the claim committed
before the handler starts; the completion is written after it ends), so runs
that overlap were running at once. Writes are retried through restarts of
PostgreSQL and dropped connections; each one is idempotent.

- ``span(min_ms, max_ms)``: works a random time between the two, then returns
  the worker's id;
- ``hold``: blocks until the test releases the job (:data:`RELEASE_SQL`; the
  handler looks for its row in ``flow_releases`` every 20 ms), then returns
  the worker's id;
- ``mark``: records its run and returns the worker's id at once.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncpg

from skiplock import JobContext, TaskRegistry
from skiplock.queue.listener import TRANSIENT_DB_ERRORS

T = TypeVar("T")

TABLES_SQL = """
CREATE TABLE flow_runs (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL,
    attempt    integer NOT NULL,
    worker_id  text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at   timestamptz,
    UNIQUE (job_id, attempt)
);
CREATE TABLE flow_releases (job_id uuid PRIMARY KEY);
"""

RELEASE_SQL = "INSERT INTO flow_releases (job_id) VALUES ($1) ON CONFLICT DO NOTHING"

# The most runs of each limited key that overlapped, from the runs' recorded [start, end]
# intervals: +1 at each start, -1 at each end, summed in time order per key (a start at the
# very instant of an end counts as overlapping it: the intervals are closed; a run that
# never ended counts to the end).
MAX_OVERLAP_SQL = """
WITH events AS (
    SELECT k AS key, r.started_at AS at, 1 AS delta
    FROM flow_runs r JOIN skiplock.jobs j ON j.id = r.job_id, unnest(j.limit_keys) AS k
    UNION ALL
    SELECT k, r.ended_at, -1
    FROM flow_runs r JOIN skiplock.jobs j ON j.id = r.job_id, unnest(j.limit_keys) AS k
), running AS (
    SELECT key, sum(delta) OVER (PARTITION BY key ORDER BY at, delta DESC
                                 ROWS UNBOUNDED PRECEDING) AS n
    FROM events
)
SELECT key, max(n)::integer AS most FROM running GROUP BY key ORDER BY key
"""

SIDE_APPLICATION_NAME = "flow-side"
RELEASE_CHECK = 0.02  # seconds between two looks for a hold's release

tasks = TaskRegistry()

_pool: asyncpg.Pool[Any] | None = None
_pool_lock = asyncio.Lock()


async def _side_pool() -> asyncpg.Pool[Any]:
    global _pool
    async with _pool_lock:
        if _pool is None:
            pool = await asyncpg.create_pool(
                os.environ["SKIPLOCK_DATABASE_URL"],
                min_size=1,
                max_size=8,
                server_settings={"application_name": SIDE_APPLICATION_NAME},
            )
            assert pool is not None
            _pool = pool
        return _pool


async def _side(write: Callable[[asyncpg.Pool[Any]], Awaitable[T]]) -> T:
    """Run one idempotent statement, retrying transient errors until it lands."""
    backoff = 0.05
    while True:
        try:
            with anyio.fail_after(5):
                return await write(await _side_pool())
        except TRANSIENT_DB_ERRORS:
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


async def _start(ctx: JobContext) -> None:
    """Record that this attempt's handler started (once, however often retried)."""
    await _side(
        lambda pool: pool.execute(
            "INSERT INTO flow_runs (job_id, attempt, worker_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (job_id, attempt) DO NOTHING",
            ctx.id,
            ctx.attempt,
            ctx.job.worker_id or "?",
        )
    )


async def _end(ctx: JobContext) -> None:
    await _side(
        lambda pool: pool.execute(
            "UPDATE flow_runs SET ended_at = clock_timestamp()"
            " WHERE job_id = $1 AND attempt = $2 AND ended_at IS NULL",
            ctx.id,
            ctx.attempt,
        )
    )


async def _released(ctx: JobContext) -> bool:
    return bool(
        await _side(
            lambda pool: pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM flow_releases WHERE job_id = $1)", ctx.id
            )
        )
    )


@tasks.task()
async def span(ctx: JobContext, *, min_ms: float = 5, max_ms: float = 40) -> str:
    """Record the run, work a random ``min_ms``–``max_ms`` milliseconds, record the end."""
    await _start(ctx)
    await anyio.sleep(random.uniform(min_ms, max_ms) / 1000)
    await _end(ctx)
    return ctx.job.worker_id or "?"


@tasks.task()
async def hold(ctx: JobContext) -> str:
    """Record the run, wait until the test releases this job, record the end."""
    await _start(ctx)
    while not await _released(ctx):  # noqa: ASYNC110 - the release is a row, not an event
        await anyio.sleep(RELEASE_CHECK)
    await _end(ctx)
    return ctx.job.worker_id or "?"


@tasks.task()
async def mark(ctx: JobContext) -> str:
    """Record the run; nothing else."""
    await _start(ctx)
    await _end(ctx)
    return ctx.job.worker_id or "?"
