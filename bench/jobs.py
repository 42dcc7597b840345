"""The queue's figures: processing throughput, enqueue rates, pickup latency, progress
writes, a big table, and the worker's memory.

Everything goes through the public API: jobs are enqueued with
:class:`skiplock.Client` and run by a :class:`skiplock.Worker` in a subprocess
(:mod:`bench.worker`); only the measurements read the jobs table (timestamps
the database wrote, counters of ``pg_stat_user_tables``) or ``/proc``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from bench.common import SCHEMA, backend_cpu_seconds, cpu_seconds, pickup_figures
from bench.worker import WorkerProcess
from skiplock import Client, JobSpec
from skiplock.testing import admin_execute

ENQUEUE_CHUNK = 1000
PREFILL_CHUNK = 5000
POLL = 0.25  # how often a run looks at the table (and samples the worker's RSS)
WARMUP_SHARE = 0.2  # RSS "after warm-up": the sample at 20 % of the processing time
PICKUP_WARMUP_JOBS = 10

_PENDING = f"""
SELECT EXISTS (SELECT 1 FROM {SCHEMA}.jobs WHERE state = 'queued')
    OR EXISTS (SELECT 1 FROM {SCHEMA}.jobs WHERE state = 'running')
"""  # noqa: S608 - the schema is a constant

_SPAN = f"""
SELECT count(*) AS jobs,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       extract(epoch FROM max(finished_at) - min(started_at))::float8 AS seconds
FROM {SCHEMA}.jobs
WHERE created_at >= $1
"""  # noqa: S608 - the schema is a constant

# Finished jobs as the worker leaves them, spread over the past $1 seconds.
_FILL_FINISHED = f"""
INSERT INTO {SCHEMA}.jobs (id, queue, task, args, state, attempt, result, progress,
                          created_at, updated_at, started_at, finished_at)
SELECT gen_random_uuid(), 'default', 'noop', '{{}}', 'succeeded', 1, 'null', 100,
       t - interval '2 seconds', t, t - interval '1 second', t
FROM (SELECT now() - make_interval(secs => i) AS t FROM generate_series(1, $1) AS i) AS s
"""  # noqa: S608 - the schema is a constant

_UPDATED_ROWS = """
SELECT coalesce(n_tup_upd, 0) FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'jobs'
"""

_OTHER_BACKENDS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
"""


async def _enqueue_chunks(client: Client, count: int, chunk: int, task: str = "noop") -> None:
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        await client.enqueue_many([JobSpec(task=task, max_attempts=1) for _ in range(size)])


async def _wait_drained(
    conn: asyncpg.Connection[Any], worker: WorkerProcess, patience: float
) -> list[tuple[float, int]]:
    """Wait until no job is queued or running; RSS samples ``(seconds, bytes)`` meanwhile."""
    began = time.monotonic()
    samples: list[tuple[float, int]] = []
    while True:
        now = time.monotonic() - began
        samples.append((now, worker.rss()))
        if not await conn.fetchval(_PENDING):
            return samples
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.proc.returncode}")
        if now > patience:
            raise RuntimeError(f"jobs still pending after {patience:.0f} s")
        await asyncio.sleep(POLL)


def _check_all_succeeded(span: asyncpg.Record, expected: int) -> None:
    if span["succeeded"] != expected:
        raise RuntimeError(f"{span['succeeded']} of {expected} jobs succeeded ({span['jobs']})")


# -- 1 and 9: processing throughput, and the worker's memory while it runs -----


async def throughput(
    dsn: str,
    jobs: int,
    *,
    defaults: bool = False,
    fill: Callable[[asyncpg.Connection[Any]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run ``jobs`` queued no-op jobs with one worker process; jobs/s and its memory.

    The worker runs with the best settings (:data:`bench.worker.BEST`), or with
    ``WorkerSettings()`` untouched when ``defaults``. The jobs are enqueued with
    ``Client.enqueue_many``, or by ``fill(conn)`` when given (it must queue
    ``jobs`` no-op jobs with ``max_attempts=1``: :mod:`bench.flow` writes jobs with
    limit keys that way).

    The rate is ``jobs / (max(finished_at) - min(started_at))``: from the
    first claim to the last completion, by the database's clock.
    """
    conn = await asyncpg.connect(dsn)
    try:
        since = await conn.fetchval("SELECT now()")  # rows made before (big_table) don't count
        if fill is None:
            async with await Client.connect(dsn, max_size=2) as client:
                await _enqueue_chunks(client, jobs, PREFILL_CHUNK)
        else:
            await fill(conn)
        await conn.execute(f"VACUUM ANALYZE {SCHEMA}.jobs")
        worker = await (WorkerProcess.start_defaults(dsn) if defaults else WorkerProcess.start(dsn))
        try:
            worker_cpu = cpu_seconds(worker.pid)
            server_cpu = await backend_cpu_seconds(conn)
            samples = await _wait_drained(conn, worker, patience=max(300.0, jobs / 200))
            worker_cpu = cpu_seconds(worker.pid) - worker_cpu
            server_cpu = await backend_cpu_seconds(conn) - server_cpu
            peak = worker.peak_rss()
        finally:
            await worker.stop()
        span = await conn.fetchrow(_SPAN, since)
    finally:
        await conn.close()
    assert span is not None
    _check_all_succeeded(span, jobs)
    seconds = float(span["seconds"])
    total = samples[-1][0]
    warm = next(rss for t, rss in samples if t >= WARMUP_SHARE * total)
    end = samples[-1][1]
    return {
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds if seconds > 0 else float("inf"),
        "peak_rss": peak,
        "rss_after_warmup": warm,
        "rss_end": end,
        "rss_growth": (end - warm) / warm,
        "rss_samples": len(samples),
        # CPU per job: robust where wall-clock rates are not (a shared machine).
        # The server side counts the worker's connections and this one's polls.
        "worker_cpu_us_per_job": worker_cpu / jobs * 1e6,
        "server_cpu_us_per_job": server_cpu / jobs * 1e6,
    }


# -- 2 and 3: enqueue -----------------------------------------------------------


async def bulk_enqueue(dsn: str, jobs: int, chunk: int = ENQUEUE_CHUNK) -> dict[str, Any]:
    """``Client.enqueue_many`` of ``jobs`` jobs in chunks, one after another; jobs/s.

    The time includes building the ``JobSpec`` objects (validation, JSON).
    CPU per job: this process's (the client's) and the database's backends'.
    """
    conn = await asyncpg.connect(dsn)
    try:
        async with await Client.connect(dsn, max_size=2) as client:
            server_cpu = await backend_cpu_seconds(conn)
            client_cpu = time.process_time()
            started = time.perf_counter()
            await _enqueue_chunks(client, jobs, chunk)
            seconds = time.perf_counter() - started
            client_cpu = time.process_time() - client_cpu
            server_cpu = await backend_cpu_seconds(conn) - server_cpu
    finally:
        await conn.close()
    return {
        "jobs": jobs,
        "chunk": chunk,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "client_cpu_us_per_job": client_cpu / jobs * 1e6,
        "server_cpu_us_per_job": server_cpu / jobs * 1e6,
    }


_BARE_INSERT = (  # SCHEMA is a constant of the benchmark, not input
    f"INSERT INTO {SCHEMA}.jobs (id, queue, task, args, max_attempts)"  # noqa: S608
    " VALUES (gen_random_uuid(), 'default', 'noop', '{}', 1)"
)


async def single_enqueue(dsn: str, jobs: int) -> dict[str, Any]:
    """``Client.enqueue`` ``jobs`` times, one after another; jobs/s.

    Each is a committed transaction, so the commit's WAL flush bounds the rate:
    the same number of bare one-row INSERTs on a plain connection, measured
    right after, is that bound on this machine (``bare_inserts_per_s``).
    """
    conn = await asyncpg.connect(dsn)
    try:
        async with await Client.connect(dsn, max_size=2) as client:
            server_cpu = await backend_cpu_seconds(conn)
            client_cpu = time.process_time()
            started = time.perf_counter()
            for _ in range(jobs):
                await client.enqueue("noop", max_attempts=1)
            seconds = time.perf_counter() - started
            client_cpu = time.process_time() - client_cpu
            server_cpu = await backend_cpu_seconds(conn) - server_cpu
        began = time.perf_counter()
        for _ in range(jobs):
            await conn.execute(_BARE_INSERT)
        bare = time.perf_counter() - began
    finally:
        await conn.close()
    return {
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "bare_inserts_per_s": jobs / bare,
        "client_cpu_us_per_job": client_cpu / jobs * 1e6,
        "server_cpu_us_per_job": server_cpu / jobs * 1e6,
    }


# -- 4: pickup latency ----------------------------------------------------------


async def _send_spaced(client: Client, count: int, gap: float) -> dict[uuid.UUID, float]:
    """Enqueue ``count`` probes ``gap`` seconds apart; when (wall clock) each enqueue returned."""
    returned: dict[uuid.UUID, float] = {}
    due = time.monotonic()
    for _ in range(count):
        job = await client.enqueue("pickup_probe", max_attempts=1)
        returned[job.id] = time.time()
        due += gap
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    return returned


async def pickup(dsn: str, jobs: int, gap: float) -> dict[str, Any]:
    """An idle worker; jobs enqueued one at a time ``gap`` apart; enqueue return → handler start.

    Both processes read the same wall clock (``time.time()``): the handler
    returns its start time as its result. A few warm-up jobs go first (not
    counted), so the worker's LISTEN connection is up and its statements are
    prepared. CPU per probe: the worker's and the backends' over the counted ones.
    """
    conn = await asyncpg.connect(dsn)
    try:
        worker = await WorkerProcess.start(dsn)
        try:
            async with await Client.connect(dsn, max_size=2) as client:
                await _send_spaced(client, PICKUP_WARMUP_JOBS, gap)
                await _wait_drained(conn, worker, patience=120.0)
                worker_cpu = cpu_seconds(worker.pid)
                server_cpu = await backend_cpu_seconds(conn)
                sent = await _send_spaced(client, jobs, gap)
                await _wait_drained(conn, worker, patience=120.0)
                worker_cpu = cpu_seconds(worker.pid) - worker_cpu
                server_cpu = await backend_cpu_seconds(conn) - server_cpu
        finally:
            await worker.stop()
        rows = await conn.fetch(
            f"SELECT id, state, result FROM {SCHEMA}.jobs WHERE id = ANY($1::uuid[])",  # noqa: S608
            list(sent),
        )
    finally:
        await conn.close()
    latencies: list[float] = []
    for row in rows:
        if row["state"] != "succeeded":
            raise RuntimeError(f"pickup probe {row['id']} ended {row['state']}")
        started = float(json.loads(row["result"]))
        latencies.append((started - sent[row["id"]]) * 1000)
    if len(latencies) != jobs:
        raise RuntimeError(f"{len(latencies)} of {jobs} pickup probes found")
    return pickup_figures(latencies, gap, worker_cpu, server_cpu)


# -- 5: the big table -------------------------------------------------------------


async def fill_finished(dsn: str, rows: int) -> None:
    """Insert ``rows`` succeeded jobs in one statement, then VACUUM ANALYZE."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_FILL_FINISHED, rows)
    finally:
        await conn.close()
    await admin_execute(dsn, f"VACUUM ANALYZE {SCHEMA}.jobs")


# -- 6: progress writes ------------------------------------------------------------


async def _updated_rows(conn: asyncpg.Connection[Any]) -> int:
    """The jobs table's ``n_tup_upd`` once every other backend has exited and flushed it."""
    deadline = time.monotonic() + 60
    while await conn.fetchval(_OTHER_BACKENDS):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker's connections did not close")
        await asyncio.sleep(0.05)
    # PostgreSQL < 15 reports through the stats collector, a moment later: wait until stable.
    previous = -1
    while True:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = int(await conn.fetchval(_UPDATED_ROWS, SCHEMA) or 0)
        if value == previous or time.monotonic() > deadline:
            return value
        previous = value
        await asyncio.sleep(0.5)


async def progress_writes(dsn: str, calls: int, seconds: float) -> dict[str, Any]:
    """A handler calls ``ctx.progress`` ``calls`` times over ``seconds``; the UPDATEs it caused.

    Counted as the growth of ``n_tup_upd`` of the jobs table (rows updated) over
    the job's life, read after the worker exited (a backend's counters are
    flushed by then), minus the claim and the completion (one row each). The
    lease is long enough that no heartbeat falls inside the job.
    """
    conn = await asyncpg.connect(dsn)
    try:
        before = await _updated_rows(conn)
        worker = await WorkerProcess.start(dsn, lease=300.0)
        try:
            async with await Client.connect(dsn, max_size=2) as client:
                job = await client.enqueue(
                    "progress_flood", {"calls": calls, "seconds": seconds}, max_attempts=1
                )
                await _wait_drained(conn, worker, patience=300.0)
                done = await client.get(job.id)
        finally:
            await worker.stop()
        after = await _updated_rows(conn)
    finally:
        await conn.close()
    if done is None or done.state.value != "succeeded":
        raise RuntimeError(f"the progress job ended {done and done.state.value}")
    took = float(done.result["seconds"])
    writes = after - before - 2
    return {
        "calls": calls,
        "handler_seconds": took,
        "progress_writes": writes,
        "writes_per_s": writes / took,
    }
