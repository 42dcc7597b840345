"""Flow control (issue 12) with real worker processes: limits kept fleet-wide, freed on a crash.

The workers run ``tests/apps/flow.py``, whose handlers record each run's start
and end (the database's clock) in ``flow_runs``; what is asserted is computed
from that record after the run, not sampled while it went on.
"""

from __future__ import annotations

import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from skiplock import Client, JobSpec, JobState
from tests.apps.flow import MAX_OVERLAP_SQL, RELEASE_SQL, TABLES_SQL
from tests.helpers import enqueue_keyed, wait_for, wait_for_state
from tests.worker_helpers import WorkerProcess, execute, fetchval, start_worker_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "tests.apps.flow:tasks"
# Time for a child interpreter to import skiplock and claim its first job.
STARTUP = 20.0

Spawn = Callable[..., Awaitable[WorkerProcess]]
Report = Callable[[str, object], None]


@pytest_asyncio.fixture
async def spawn(db_dsn: str, tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start flow-app worker processes on the test's database; kill what is left after."""
    await execute(db_dsn, TABLES_SQL)
    started: list[WorkerProcess] = []

    async def start(name: str, **options: float | str) -> WorkerProcess:
        worker = await start_worker_process(name, db_dsn, tmp_path, app=APP, **options)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
            # shown by pytest when the test fails
            sys.stderr.write(f"--- worker {worker.name} log ---\n{worker.log_text()}")


async def _count(client: Client, query: str, *args: object) -> int:
    return int(await client.pool.fetchval(query, *args))


async def test_limits_are_never_exceeded_by_four_worker_processes(
    client: Client, spawn: Spawn, record_property: Report
) -> None:
    """300 jobs over users 0–4 ('user:*', 2 running each) that all carry 'provider:x' (7
    running), run by 4 worker processes of concurrency 8 (32 slots, 10 admissible by the
    users, 7 by the provider): at no instant did more runs of a key overlap than its limit,
    and the limits were reached (a claim that ignored them would show it). Each job ran
    and succeeded exactly once."""
    limits = {"user:*": 2, "provider:x": 7}
    for pattern, running in limits.items():
        await client.set_limit(pattern, max_running=running)
    users = [f"user:{i % 5}" for i in range(300)]
    random.shuffle(users)
    specs = [JobSpec(task="span", args={"min_ms": 5, "max_ms": 40}) for _ in users]
    async with client.pool.acquire() as conn:
        ids = await enqueue_keyed(conn, specs, [[user, "provider:x"] for user in users])

    began = time.monotonic()
    for name in ("W1", "W2", "W3", "W4"):
        await spawn(name, concurrency=8, lease=10, poll=0.2)
    await wait_for(
        lambda: _count(client, "SELECT count(*) FROM skiplock.jobs WHERE state = 'succeeded'"),
        lambda n: n == len(ids),
        timeout=STARTUP + 120,
        what="every job to succeed",
    )
    record_property("all_succeeded_after_seconds", round(time.monotonic() - began, 2))

    # each job succeeded once: one attempt, one recorded run, finished
    assert await _count(
        client,
        "SELECT count(*) FROM skiplock.jobs WHERE id = ANY($1::uuid[])"
        " AND state = 'succeeded' AND attempt = 1",
        ids,
    ) == len(ids)
    runs = await client.pool.fetch("SELECT job_id, ended_at FROM flow_runs")
    assert sorted(r["job_id"] for r in runs) == sorted(ids)
    assert all(r["ended_at"] is not None for r in runs)
    # the work was spread over the processes (each one claims under the limits)
    workers = await client.pool.fetch(
        "SELECT worker_id, count(*) AS n FROM flow_runs GROUP BY worker_id ORDER BY worker_id"
    )
    record_property("runs_per_worker", {r["worker_id"]: r["n"] for r in workers})

    most = {r["key"]: r["most"] for r in await client.pool.fetch(MAX_OVERLAP_SQL)}
    record_property("most_overlapping_runs", most)
    limit_of = {f"user:{i}": 2 for i in range(5)} | {"provider:x": 7}
    assert most.keys() == limit_of.keys()
    over = {k: (n, limit_of[k]) for k, n in most.items() if n > limit_of[k]}
    assert over == {}, f"keys whose runs overlapped beyond their limit (most, limit): {over}"
    reached = [k for k, n in most.items() if n == limit_of[k]]
    assert reached, f"no key ever reached its limit, so the check proves nothing: {most}"


async def _k_runs(client: Client, job_ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, int, str]]:
    """(job, attempt, worker) of every recorded run of ``job_ids``, in start order."""
    rows = await client.pool.fetch(
        "SELECT job_id, attempt, worker_id FROM flow_runs WHERE job_id = ANY($1::uuid[])"
        " ORDER BY started_at",
        job_ids,
    )
    return [(r["job_id"], r["attempt"], r["worker_id"]) for r in rows]


async def test_a_killed_workers_limited_slot_is_freed_within_its_lease(
    db_dsn: str, client: Client, spawn: Spawn, record_property: Report
) -> None:
    """Key 'k' at 1 running: worker A runs job 1, job 2 waits queued. A is SIGKILLed; a job
    of 'k' starts on worker B before A's kill time + the 5 s lease.

    What frees the slot is the dead-worker rescue, not lease expiry: the kill closes A's
    presence connection, PostgreSQL drops its advisory lock, and B's rescuer (every 0.3 s)
    re-queues A's job at once with a ``WorkerDied`` error (attempt 1 spent). The slot is
    counted from the running jobs themselves, so the re-queued job 1 no longer holds it
    and B's next claim admits a 'k' job. The ``WorkerDied`` entry in job 1's history is
    what tells the two mechanisms apart (an expired lease would be ``LeaseExpired``), and
    B is started before the kill so its start-up is not part of the time measured.
    """
    lease = 5.0
    timings = {"lease": lease, "poll": 0.2, "rescue": 0.3}
    await client.set_limit("k", max_running=1)
    async with client.pool.acquire() as conn:
        first, second = await enqueue_keyed(
            conn, [JobSpec(task="hold", max_attempts=3) for _ in range(2)], [["k"], ["k"]]
        )
    a = await spawn("A", **timings)
    await wait_for(
        lambda: _k_runs(client, [first, second]),
        lambda runs: runs == [(first, 1, "A")],
        timeout=STARTUP,
        what="job 1 to start on A",
    )
    # an unlimited job enqueued after job 2 and run: A claimed with job 2 before it in
    # claim order, and left job 2 queued
    marker = await client.enqueue("mark")
    await wait_for_state(client, marker.id, JobState.SUCCEEDED, timeout=STARTUP)
    waiting = await client.get(second)
    assert waiting is not None
    assert waiting.state is JobState.QUEUED
    b = await spawn("B", **timings)
    await b.wait_for_log("worker_started", within=STARTUP)
    waiting = await client.get(second)
    assert waiting is not None
    assert waiting.state is JobState.QUEUED

    a.process.kill()
    assert await a.wait_exit(within=5) == -signal.SIGKILL
    # read just after the kill: the bound below is looser by the milliseconds in between
    killed_at = await fetchval(db_dsn, "SELECT clock_timestamp()")
    runs = await wait_for(
        lambda: _k_runs(client, [first, second]),
        lambda runs: any(worker == "B" for _, _, worker in runs),
        timeout=STARTUP,
        what="a job of key k to start on B",
    )
    started_on_b = next((job, attempt) for job, attempt, worker in runs if worker == "B")
    started_at = await fetchval(
        db_dsn,
        "SELECT started_at FROM flow_runs WHERE job_id = $1 AND attempt = $2",
        *started_on_b,
    )
    record_property("kill_to_start_seconds", round((started_at - killed_at).total_seconds(), 3))
    assert started_at < killed_at + timedelta(seconds=lease)

    # while that job holds the slot, the other job of k waits queued
    other = first if started_on_b[0] == second else second
    waiting = await client.get(other)
    assert waiting is not None
    assert waiting.state is JobState.QUEUED
    await client.pool.execute(RELEASE_SQL, started_on_b[0])
    await wait_for_state(client, started_on_b[0], JobState.SUCCEEDED, timeout=STARTUP)
    await client.pool.execute(RELEASE_SQL, other)
    for job_id in (first, second):
        await wait_for_state(client, job_id, JobState.SUCCEEDED, timeout=STARTUP)

    one = await client.get(first)
    two = await client.get(second)
    assert one is not None
    assert two is not None
    assert [(e.type, e.attempt, e.worker) for e in one.errors] == [("WorkerDied", 1, "A")]
    assert (one.attempt, one.result, two.attempt, two.result) == (2, "B", 1, "B")
    # B's two runs of key k did not overlap
    spans = await client.pool.fetch(
        "SELECT started_at, ended_at FROM flow_runs WHERE worker_id = 'B'"
        " AND job_id = ANY($1::uuid[]) ORDER BY started_at",
        [first, second],
    )
    assert len(spans) == 2
    assert spans[0]["ended_at"] < spans[1]["started_at"]
