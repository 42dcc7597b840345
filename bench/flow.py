"""Flow control's figures (migration 0010): what limits, fair queues and pause cost.

* **limited throughput**: no-op jobs spread over many keys, each key limited to
  2 running (``set_limit("k:*", max_running=2)``), run by one worker process
  with the best settings, against the same number of jobs without keys or
  limits on a fresh database of the same server: :func:`limited_throughput`.
* **fair wait**: a fair queue, tenant A's backlog of 10 ms jobs at concurrency
  50, tenant B's single jobs enqueued meanwhile: B's waits (:func:`fair_wait`).
* **rate limit**: one key at 50 starts per second, four worker processes on a
  large backlog: the most starts in any one-second window (:func:`rate_limit`).
* **pause**: a worker on short jobs; the queue paused and resumed again and
  again: pause → the last start (:func:`pause_effect`).

The backlogs are written in SQL (an ``INSERT … SELECT … generate_series``,
with their limit and fair keys): the enqueue is not what is measured; tenant
B's jobs go through ``Client.enqueue`` (a fair queue gives them their tenant
as fair key). Every time is the database's clock (``started_at``,
``created_at``, ``clock_timestamp()``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from bench import jobs as queue_jobs
from bench.common import SCHEMA, backend_cpu_seconds, cpu_seconds, note, percentile
from bench.worker import WorkerProcess
from skiplock import Client

LIMIT_PATTERN = "k:*"
MAX_RUNNING = 2
FAIR_CONCURRENCY = 50
FAIR_JOB_SECONDS = 0.01
FAIR_WARMUP_JOBS = 500  # tenant A's jobs started before B's first job is sent
RATE_KEY = "rate:1"
RATE_STARTS = 50  # per second
RATE_WORKERS = 4
PAUSE_JOB_SECONDS = 0.005
PAUSE_RUN_JOBS = 200  # jobs started after a resume before the next pause
WAIT_PATIENCE = 120.0
POLL = 0.01  # how often the pause and fair runs look at the table

# Queued no-op jobs, job i with the key k:<i mod $2> (none when $2 is NULL).
_FILL_KEYED = f"""
INSERT INTO {SCHEMA}.jobs (id, queue, task, args, max_attempts, limit_keys)
SELECT gen_random_uuid(), 'default', 'noop', '{{}}', 1,
       CASE WHEN $2::integer IS NOT NULL THEN ARRAY['k:' || (i % $2::integer)] END
FROM generate_series(0, $1 - 1) AS i
"""  # noqa: S608 - the schema is a constant

# Queued jobs of a task with its args, tenant, fair key and limit keys.
_FILL = f"""
INSERT INTO {SCHEMA}.jobs (id, queue, task, args, max_attempts, tenant, fair_key, limit_keys)
SELECT gen_random_uuid(), 'default', $2, $3::jsonb, 1, $4, $5, $6::text[]
FROM generate_series(1, $1)
"""  # noqa: S608 - the schema is a constant


async def _wait_until(
    conn: asyncpg.Connection[Any], query: str, *args: Any, patience: float = WAIT_PATIENCE
) -> None:
    """Poll ``query`` (one boolean) until it is true; fail after ``patience`` s."""
    deadline = time.monotonic() + patience
    while not await conn.fetchval(query, *args):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not true after {patience:.0f} s: {query.strip()}")
        await asyncio.sleep(POLL)


# -- limited throughput ---------------------------------------------------------


async def limited_throughput(dsn: str, jobs: int, keys: int | None) -> dict[str, Any]:
    """:func:`bench.jobs.throughput` of ``jobs`` no-op jobs, job i with key ``k:<i mod keys>``
    and every such key limited to :data:`MAX_RUNNING` running; ``keys`` None: no key and
    no limit (the reference)."""

    async def fill(conn: asyncpg.Connection[Any]) -> None:
        if keys is not None:
            async with await Client.connect(dsn, max_size=1) as client:
                await client.set_limit(LIMIT_PATTERN, max_running=MAX_RUNNING)
        await conn.execute(_FILL_KEYED, jobs, keys)

    result = await queue_jobs.throughput(dsn, jobs, fill=fill)
    result["keys"] = keys
    return result


_SUCCEEDED = f"""
SELECT count(*) >= $1 FROM {SCHEMA}.jobs WHERE state = 'succeeded'
"""  # noqa: S608 - the schema is a constant

# The rate of the first $1 completions: from the first claim to the $1-th completion.
_FIRST_SPAN = f"""
SELECT extract(epoch FROM
    (SELECT finished_at FROM {SCHEMA}.jobs WHERE state = 'succeeded'
     ORDER BY finished_at OFFSET $1 - 1 LIMIT 1)
    - (SELECT min(started_at) FROM {SCHEMA}.jobs))::float8 AS seconds,
    (SELECT count(*) FROM {SCHEMA}.jobs WHERE state = 'succeeded') AS succeeded
"""  # noqa: S608 - the schema is a constant


async def backlog_throughput(
    dsn: str, backlog: int, measured: int, keys: int | None
) -> dict[str, Any]:
    """Like :func:`limited_throughput` on a backlog of ``backlog`` jobs (``keys`` keys),
    timed over its first ``measured`` completions only: the claim's cost with that many
    distinct keys queued, without waiting for the whole backlog to drain. CPU per job:
    over the jobs that ended before the worker was stopped."""
    conn = await asyncpg.connect(dsn)
    try:
        if keys is not None:
            async with await Client.connect(dsn, max_size=1) as client:
                await client.set_limit(LIMIT_PATTERN, max_running=MAX_RUNNING)
        await conn.execute(_FILL_KEYED, backlog, keys)
        await conn.execute(f"VACUUM ANALYZE {SCHEMA}.jobs")
        worker = await WorkerProcess.start(dsn)
        try:
            worker_cpu = cpu_seconds(worker.pid)
            server_cpu = await backend_cpu_seconds(conn)
            deadline = time.monotonic() + WAIT_PATIENCE + measured / 100
            while not await conn.fetchval(_SUCCEEDED, measured):
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{measured:,} jobs not done (worker: {worker.proc.poll()})")
                await asyncio.sleep(0.1)
            worker_cpu = cpu_seconds(worker.pid) - worker_cpu
            server_cpu = await backend_cpu_seconds(conn) - server_cpu
        finally:
            await worker.stop()
        span = await conn.fetchrow(_FIRST_SPAN, measured)
    finally:
        await conn.close()
    assert span is not None
    done = int(span["succeeded"])
    return {
        "jobs": measured,
        "backlog": backlog,
        "keys": keys,
        "seconds": span["seconds"],
        "jobs_per_s": measured / span["seconds"],
        "worker_cpu_us_per_job": worker_cpu / done * 1e6,
        "server_cpu_us_per_job": server_cpu / done * 1e6,
    }


# -- fair queue -------------------------------------------------------------------

_STARTED = f"""
SELECT count(*) >= $2 FROM {SCHEMA}.jobs WHERE tenant = $1 AND started_at IS NOT NULL
"""  # noqa: S608 - the schema is a constant

_WAITS = f"""
SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 AS wait_ms
FROM {SCHEMA}.jobs WHERE tenant = $1
"""  # noqa: S608 - the schema is a constant


async def fair_wait(dsn: str, backlog: int, probes: int, gap: float) -> dict[str, Any]:
    """Tenant A's ``backlog`` of 10 ms jobs in a fair queue, run at concurrency 50; tenant
    B enqueues ``probes`` single jobs ``gap`` s apart meanwhile. B's waits
    (``started_at - created_at``) in ms.

    B's jobs are enqueued with ``Client.enqueue``: the fair queue gives them their
    tenant as fair key.
    """
    args = f'{{"seconds": {FAIR_JOB_SECONDS}}}'
    conn = await asyncpg.connect(dsn)
    try:
        async with await Client.connect(dsn, max_size=2) as client:
            await client.set_fair("default")
            await conn.execute(_FILL, backlog, "sleep", args, "A", "A", None)
            await conn.execute(f"VACUUM ANALYZE {SCHEMA}.jobs")
            worker = await WorkerProcess.start(dsn, concurrency=FAIR_CONCURRENCY)
            try:
                await _wait_until(conn, _STARTED, "A", min(FAIR_WARMUP_JOBS, backlog // 10))
                a_before = await conn.fetchval(_A_DONE)
                began = time.monotonic()
                due = began
                for _ in range(probes):
                    job = await client.enqueue(
                        "sleep", {"seconds": FAIR_JOB_SECONDS}, tenant="B", max_attempts=1
                    )
                    assert job.fair_key == "B"
                    due += gap
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                await _wait_until(conn, _STARTED, "B", probes)
                seconds = time.monotonic() - began
                a_done = await conn.fetchval(_A_DONE) - a_before
                a_left = await conn.fetchval(_A_LEFT)
            finally:
                await worker.stop()
        waits = [float(row["wait_ms"]) for row in await conn.fetch(_WAITS, "B")]
    finally:
        await conn.close()
    if len(waits) != probes:
        raise RuntimeError(f"{len(waits)} of tenant B's {probes} jobs found")
    return {
        "backlog": backlog,
        "probes": probes,
        "gap_ms": gap * 1000,
        "p50": percentile(waits, 50),
        "p95": percentile(waits, 95),
        "max": max(waits),
        # A's backlog must still be there when B's last job starts, or B waited for nothing.
        "a_queued_at_end": a_left,
        "a_jobs_per_s": a_done / seconds,
    }


_A_DONE = f"SELECT count(*) FROM {SCHEMA}.jobs WHERE tenant = 'A' AND state = 'succeeded'"  # noqa: S608
_A_LEFT = f"SELECT count(*) FROM {SCHEMA}.jobs WHERE tenant = 'A' AND state = 'queued'"  # noqa: S608


# -- rate limit -------------------------------------------------------------------

# The most starts in any window [t, t + 1 s) beginning at a start, among the starts
# between $2 and $3: from the log the claim wrote (limit_starts, the admission time).
_MOST_LOGGED = f"""
SELECT coalesce(max(n), 0) FROM (
    SELECT (SELECT count(*) FROM {SCHEMA}.limit_starts b
            WHERE b.key = a.key AND b.started_at >= a.started_at
              AND b.started_at < a.started_at + interval '1 second') AS n
    FROM {SCHEMA}.limit_starts a
    WHERE a.key = $1 AND a.started_at BETWEEN $2 AND $3
) s
"""  # noqa: S608 - the schema is a constant

# The same from the jobs' started_at (the claim's transaction time).
_MOST_JOBS = f"""
WITH s AS (
    SELECT started_at FROM {SCHEMA}.jobs
    WHERE limit_keys @> ARRAY[$1] AND started_at BETWEEN $2 AND $3
)
SELECT coalesce(max(n), 0) FROM (
    SELECT (SELECT count(*) FROM s b
            WHERE b.started_at >= a.started_at
              AND b.started_at < a.started_at + interval '1 second') AS n
    FROM s a
) c
"""  # noqa: S608 - the schema is a constant

_LOGGED = f"""
SELECT count(*), min(started_at) FROM {SCHEMA}.limit_starts
WHERE key = $1 AND started_at BETWEEN $2 AND $3
"""  # noqa: S608 - the schema is a constant


async def rate_limit(dsn: str, seconds: float) -> dict[str, Any]:
    """:data:`RATE_KEY` limited to :data:`RATE_STARTS` starts per second; four worker
    processes on a backlog of its no-op jobs larger than ``seconds`` can start. After
    ``seconds``, the most starts in any one-second window minus the limit, from the
    logged starts and from ``jobs.started_at``, and the achieved starts per second.

    The workers' upkeep (which prunes logged starts older than the window) is set
    far past the run, so every start stays in the log to be counted.
    """
    backlog = int(RATE_STARTS * seconds * 2) + 1000
    conn = await asyncpg.connect(dsn)
    try:
        async with await Client.connect(dsn, max_size=1) as client:
            await client.set_limit(RATE_KEY, max_starts=RATE_STARTS, per=1)
        workers = await asyncio.gather(
            *(
                WorkerProcess.start(dsn, rescue=max(600.0, 20 * seconds))
                for _ in range(RATE_WORKERS)
            )
        )
        try:
            await conn.execute(_FILL, backlog, "noop", "{}", "default", None, [RATE_KEY])
            await conn.execute(f"SELECT pg_notify('{SCHEMA}.queue', 'default')")  # else: a poll
            first: Any = None
            while first is None:  # from the first start on
                first = await conn.fetchval(
                    f"SELECT min(started_at) FROM {SCHEMA}.limit_starts"  # noqa: S608
                )
                await asyncio.sleep(POLL)
            await asyncio.sleep(seconds)
            end = await conn.fetchval("SELECT clock_timestamp()")
        finally:
            await asyncio.gather(*(w.stop() for w in workers))
        row = await conn.fetchrow(_LOGGED, RATE_KEY, first, end)
        assert row is not None
        logged, first = row
        most_logged = await conn.fetchval(_MOST_LOGGED, RATE_KEY, first, end)
        most_jobs = await conn.fetchval(_MOST_JOBS, RATE_KEY, first, end)
    finally:
        await conn.close()
    span = (end - first).total_seconds()
    return {
        "seconds": span,
        "workers": RATE_WORKERS,
        "starts": logged,
        "starts_per_s": logged / span,
        "max_over": most_logged - RATE_STARTS,
        "max_over_started_at": most_jobs - RATE_STARTS,
    }


# -- pause ------------------------------------------------------------------------

_RUNNING = f"SELECT NOT EXISTS (SELECT 1 FROM {SCHEMA}.jobs WHERE state = 'running')"  # noqa: S608
_LAST_START = f"""
SELECT extract(epoch FROM max(started_at) - $1)::float8 * 1000
FROM {SCHEMA}.jobs WHERE started_at >= $1
"""  # noqa: S608 - the schema is a constant
_STARTED_SINCE = f"""
SELECT count(*) >= $2 FROM {SCHEMA}.jobs WHERE started_at >= $1
"""  # noqa: S608 - the schema is a constant


async def pause_effect(dsn: str, cycles: int, backlog: int) -> dict[str, Any]:
    """A worker (best settings) on a backlog of 5 ms jobs; ``cycles`` times: let
    :data:`PAUSE_RUN_JOBS` jobs start, take the database's ``clock_timestamp()``, pause
    the queue, wait until none of its jobs runs, then read how long after that time
    the last job started (0 when none did), and resume.

    ``started_at`` is the claim's time: a claim whose transaction began before the
    pause counts as before it, whenever it committed.
    """
    args = f'{{"seconds": {PAUSE_JOB_SECONDS}}}'
    effects: list[float] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_FILL, backlog, "sleep", args, "default", None, None)
        await conn.execute(f"VACUUM ANALYZE {SCHEMA}.jobs")
        async with await Client.connect(dsn, max_size=1) as client:
            worker = await WorkerProcess.start(dsn)
            try:
                resumed = await conn.fetchval("SELECT clock_timestamp()")
                for _ in range(cycles):
                    await _wait_until(conn, _STARTED_SINCE, resumed, PAUSE_RUN_JOBS)
                    paused = await conn.fetchval("SELECT clock_timestamp()")
                    await client.pause("default")
                    await _wait_until(conn, _RUNNING)
                    effects.append(max(0.0, await conn.fetchval(_LAST_START, paused) or 0.0))
                    resumed = await conn.fetchval("SELECT clock_timestamp()")
                    await client.resume("default")
                left = await conn.fetchval(
                    f"SELECT count(*) FROM {SCHEMA}.jobs WHERE state = 'queued'"  # noqa: S608
                )
            finally:
                await worker.stop()
    finally:
        await conn.close()
    if not left:
        raise RuntimeError("the backlog ran out before the last pause: enlarge it")
    return {
        "cycles": cycles,
        "p50": percentile(effects, 50),
        "p95": percentile(effects, 95),
        "max": max(effects),
        "effects_ms": effects,
    }


# -- the group -------------------------------------------------------------------


async def one_run(server: Any, sizes: Any) -> dict[str, Any]:
    """Every flow figure once, each on a fresh database of ``server`` (a
    :class:`bench.common.Server`) at ``sizes`` (:class:`bench.__main__.Sizes`)."""
    empty = await server.template("empty")
    run: dict[str, Any] = {}
    began = time.monotonic()

    def done(what: str) -> None:
        note(f"flow: {what} after {time.monotonic() - began:.0f} s")

    for name, keys in (("unlimited", None), ("limited", sizes.flow_keys)):
        async with server.fresh_database(empty) as dsn:
            run[name] = await limited_throughput(dsn, sizes.flow_jobs, keys)
        done(f"{name}: {run[name]['jobs_per_s']:.0f} jobs/s")
    for name, keys in (("many_unlimited", None), ("many_keys", sizes.flow_many_keys)):
        async with server.fresh_database(empty) as dsn:
            run[name] = await backlog_throughput(dsn, sizes.flow_many_keys, sizes.flow_jobs, keys)
        done(f"{name}: {run[name]['jobs_per_s']:.0f} jobs/s")
    run["limited_throughput_ratio"] = run["limited"]["jobs_per_s"] / run["unlimited"]["jobs_per_s"]
    many = run["many_keys"]["jobs_per_s"] / run["many_unlimited"]["jobs_per_s"]
    run["many_keys_claim_ratio"] = many
    async with server.fresh_database(empty) as dsn:
        run["fair"] = await fair_wait(
            dsn, sizes.flow_fair_backlog, sizes.flow_fair_probes, sizes.flow_fair_gap
        )
    done(f"fair: p95 {run['fair']['p95']:.0f} ms")
    async with server.fresh_database(empty) as dsn:
        run["rate"] = await rate_limit(dsn, sizes.flow_rate_seconds)
    done(f"rate: {run['rate']['starts_per_s']:.1f} starts/s")
    async with server.fresh_database(empty) as dsn:
        run["pause"] = await pause_effect(dsn, sizes.flow_pause_cycles, sizes.flow_pause_backlog)
    done(f"pause: p95 {run['pause']['p95']:.0f} ms")
    return run
