"""Flow control (issue 12) through PostgreSQL restarts, with real worker processes.

The workers run ``tests/apps/flow.py``: each handler run is recorded in
``flow_runs`` (through restarts), and ``hold`` blocks until the test
releases its job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Literal

import anyio
import asyncpg
import pytest

from skiplock import Client, JobSpec, migrate
from skiplock.testing import ThrowawayPostgres
from tests.apps.flow import MAX_OVERLAP_SQL, RELEASE_SQL, TABLES_SQL
from tests.faults.conftest import Report, own_server_binaries
from tests.faults.fleet import STARTUP, Db, Fleet
from tests.helpers import enqueue_keyed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "tests.apps.flow:tasks"
# Leases that outlive a restart by far: the held jobs must keep them through it.
TIMINGS: dict[str, float | str] = {
    "concurrency": 4,
    "lease": 10,
    "heartbeat": 1,
    "poll": 0.5,
    "rescue": 1,
}


async def _states(db: Db, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await db.fetch(
        "SELECT id, state::text AS state FROM skiplock.jobs WHERE id = ANY($1::uuid[])", job_ids
    )
    return {r["id"]: r["state"] for r in rows}


async def _run_marker(db: Db) -> str:
    """Enqueue an unlimited ``mark`` job and wait until it succeeded; the worker that ran it.

    Enqueued after the limited jobs, it comes after them in claim order: the claim that
    took it had them among its candidates.
    """
    (marker,) = await db.enqueue([JobSpec(task="mark")])
    await wait_for(
        lambda: _states(db, [marker]),
        lambda states: states == {marker: "succeeded"},
        timeout=STARTUP,
        what="the marker job to succeed",
    )
    return str(await db.fetchval("SELECT worker_id FROM flow_runs WHERE job_id = $1", marker))


async def _held(db: Db, job_ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
    """(job, lease token, worker) of the jobs of ``job_ids`` running now, by job id."""
    rows = await db.fetch(
        "SELECT id, lease_token, worker_id FROM skiplock.jobs"
        " WHERE id = ANY($1::uuid[]) AND state = 'running' ORDER BY id",
        job_ids,
    )
    return [(r["id"], r["lease_token"], r["worker_id"]) for r in rows]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_keeps_limit_counts_right(
    restartable_pg: ThrowawayPostgres,
    restart_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
    mode: Literal["fast", "immediate"],
) -> None:
    """Key 'k' at 2 running: two held jobs run, a third waits. Across a restart of
    PostgreSQL the two keep their leases and slots, and once both workers have claimed
    again (each ran an unlimited marker enqueued after the restart, the third job ahead
    of it in claim order) the third is still queued; when one held job is released, the
    third starts. Each job is claimed exactly once and no more than 2 ever ran at once.
    (The count is taken from the running jobs at each claim, so there is no counter a
    restart could leave behind or lose.)"""
    f, db = fleet(restart_dsn), probes(restart_dsn)
    await db.run(lambda c: c.execute(TABLES_SQL))
    f.app = APP
    names = ("L1", "L2")
    workers = [await f.start(name, **TIMINGS) for name in names]
    for worker in workers:
        await worker.wait_for_log("listener_connected", within=STARTUP)
    async with await Client.connect(restart_dsn) as client:
        await client.set_limit("k", max_running=2)
        async with client.pool.acquire() as conn:
            jobs = await enqueue_keyed(conn, [JobSpec(task="hold") for _ in range(3)], [["k"]] * 3)

    async def started() -> list[uuid.UUID]:
        rows = await db.fetch(
            "SELECT job_id FROM flow_runs WHERE job_id = ANY($1::uuid[]) ORDER BY job_id", jobs
        )
        return [r["job_id"] for r in rows]

    first_two = await wait_for(
        started, lambda ids: len(ids) == 2, timeout=STARTUP, what="two held jobs to start"
    )
    (third,) = set(jobs) - set(first_two)
    await _run_marker(db)
    assert (await _states(db, [third]))[third] == "queued"
    held_before = await _held(db, jobs)
    assert [job for job, _, _ in held_before] == sorted(first_two)

    clock = time.monotonic()
    await anyio.to_thread.run_sync(partial(restartable_pg.restart, mode))
    restart_s = round(time.monotonic() - clock, 2)
    back = time.monotonic()

    # both workers claim again after the restart: markers until each has run one
    ran_on: set[str] = set()
    markers = 0
    while ran_on != set(names) and markers < 50:
        ran_on.add(await _run_marker(db))
        markers += 1
    assert ran_on == set(names), f"after 50 markers, only {ran_on} ran any"
    claims_back_s = round(time.monotonic() - back, 2)
    assert (await _states(db, [third]))[third] == "queued"
    # the held jobs kept their leases (same tokens, same workers): nothing was re-claimed
    assert await _held(db, jobs) == held_before

    await db.run(lambda c: c.execute(RELEASE_SQL, first_two[0]))
    await wait_for(
        started, lambda ids: third in ids, timeout=STARTUP, what="the third job to start"
    )
    await db.run(lambda c: c.executemany(RELEASE_SQL, [(job,) for job in jobs]))
    await wait_for(
        lambda: _states(db, jobs),
        lambda states: set(states.values()) == {"succeeded"},
        timeout=STARTUP,
        what="the three held jobs to succeed",
    )
    claims = await db.fetch(
        "SELECT job_id, count(*) AS n FROM public.job_events WHERE kind = 'claim'"
        " AND job_id = ANY($1::uuid[]) GROUP BY job_id",
        jobs,
    )
    assert {r["job_id"]: r["n"] for r in claims} == dict.fromkeys(jobs, 1)
    most = {r["key"]: r["most"] for r in await db.fetch(MAX_OVERLAP_SQL)}
    assert most == {"k": 2}
    report(restart_s=restart_s, both_workers_claimed_again_s=claims_back_s, markers=markers)


async def test_a_full_lock_table_makes_claims_smaller_never_failed() -> None:
    """On a server whose shared lock table cannot hold the 1,024 key locks a claim may
    take (max_locks_per_transaction 10), claims of 1,000 jobs over 1,000 limited keys give
    the locks back and try with fewer: no claim fails, every key gets its one slot, and
    no key ever has two jobs running."""
    settings = {"max_locks_per_transaction": "10"}
    with ThrowawayPostgres(own_server_binaries(), max_connections=10, settings=settings) as pg:
        dsn = pg.dsn
        conn = await asyncpg.connect(dsn)
        try:
            # The premise: 1,024 advisory locks do not fit in this server's lock table.
            with pytest.raises(asyncpg.OutOfMemoryError):
                async with conn.transaction():
                    await conn.fetchval(
                        "SELECT count(*) FROM generate_series(1, 1024) AS g"
                        " WHERE pg_try_advisory_xact_lock(7, g)"
                    )
        finally:
            await conn.close()
        await migrate(dsn)
        async with await Client.connect(dsn, max_size=2) as client:
            await client.set_limit("k:*", max_running=1)
            keys = [[f"k:{i}"] for i in range(1000)] * 2
            await client.enqueue_many([JobSpec(task="t", limit_keys=k) for k in keys])
            claimed: list[str] = []
            sizes: list[int] = []
            while len(claimed) < 1000 and len(sizes) < 200:
                jobs = await client.store.claim_jobs(client.pool, ["default"], 1000, 60, "w")
                sizes.append(len(jobs))
                claimed += [key for job in jobs for key in job.limit_keys or ()]
            assert sorted(claimed) == sorted(f"k:{i}" for i in range(1000)), sizes
            assert sizes[0] > 0
            assert await client.store.claim_jobs(client.pool, ["default"], 1000, 60, "w") == []
