"""The worker's batched writes: bounded in bytes, and one refused row never wedges the rest."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg
import pytest
import structlog

from skiplock import Client, JobContext, JobSpec, JobState, TaskRegistry, Worker
from skiplock.queue import Store
from skiplock.queue.store import Completion
from skiplock.worker.completer import Completer
from skiplock.worker.gate import WriteGate
from skiplock.worker.leases import Lease, LeaseTable
from skiplock.worker.metrics import WorkerMetrics
from skiplock.worker.outcomes import Outcomes
from skiplock.worker.probes import WorkerHealth
from skiplock.worker.settings import WorkerSettings
from skiplock.worker.shared import Shared
from skiplock.worker.sizer import ClaimSizer
from tests.helpers import wait_for, wait_for_state
from tests.worker_helpers import fast_settings, running

MIB = 1024 * 1024


def _shared(client: Client, settings: WorkerSettings) -> Shared:
    shared = Shared(
        settings=settings,
        worker_id="batches",
        store=Store(),
        metrics=WorkerMetrics("batches"),
        health=WorkerHealth(db_fresh_for=10.0),
        log=structlog.get_logger("tests").bind(worker_id="batches"),
    )
    shared.attach(client.pool)
    return shared


@asynccontextmanager
async def _completer(
    client: Client, settings: WorkerSettings, *, gate_timeout: float = 10.0
) -> AsyncIterator[Completer]:
    """A completer on the test database; its loop runs inside the block."""
    shared = _shared(client, settings)
    table = LeaseTable(shared)
    gate = WriteGate(gate_timeout)
    completer = Completer(shared, table, gate, Outcomes("batches", settings.max_result_bytes))
    async with anyio.create_task_group() as tg:
        tg.start_soon(completer.run)
        yield completer
        tg.cancel_scope.cancel()


async def _claimed_outcomes(client: Client, count: int, result_bytes: int) -> list[Completion]:
    """``count`` jobs claimed, each with a ``succeeded`` outcome of a JSON string that size."""
    specs = [JobSpec("t") for _ in range(count)]
    await client.enqueue_many(specs)
    jobs = await client.store.claim_jobs(client.pool, ["default"], count, 60.0, "batches")
    assert len(jobs) == count
    result = '"' + "x" * (result_bytes - 2) + '"'
    return [
        Completion(j.id, j.lease_token, "succeeded", result_json=result)
        for j in jobs
        if j.lease_token is not None
    ]


async def _batch_sizes(client: Client, ids: list[uuid.UUID]) -> list[int]:
    """Jobs per complete_jobs statement: each statement stamps its rows with one now()."""
    rows = await client.pool.fetch(
        "SELECT finished_at FROM skiplock.jobs WHERE id = ANY($1::uuid[]) AND state = 'succeeded'",
        ids,
    )
    return sorted(Counter(r["finished_at"] for r in rows).values(), reverse=True)


async def _all_written(client: Client, ids: list[uuid.UUID]) -> list[int]:
    return await wait_for(
        lambda: _batch_sizes(client, ids),
        lambda sizes: sum(sizes) == len(ids),
        timeout=30,
        what="every outcome written",
    )


async def test_completion_batches_are_capped_in_bytes(client: Client) -> None:
    """Twelve buffered 1 MiB results are written in batches of at most 8 MiB by default."""
    outcomes = await _claimed_outcomes(client, 12, MIB)
    async with _completer(client, WorkerSettings()) as completer:
        for c in outcomes:
            completer.submit_unleased(c)
        sizes = await _all_written(client, [c.job_id for c in outcomes])
    assert max(sizes) * MIB <= 8 * MIB
    assert len(sizes) == 2


async def test_an_outcome_over_the_byte_cap_is_written_alone(client: Client) -> None:
    """An outcome larger than max_complete_bytes is still written, in a batch of its own."""
    outcomes = await _claimed_outcomes(client, 3, 4096)
    async with _completer(client, WorkerSettings(max_complete_bytes=1024)) as completer:
        for c in outcomes:
            completer.submit_unleased(c)
        sizes = await _all_written(client, [c.job_id for c in outcomes])
    assert sizes == [1, 1, 1]


# -- a refused row is isolated -----------------------------------------------------


async def _refuse_updates(client: Client, condition: str) -> None:
    """A trigger refusing (RAISE: SQLSTATE P0001) every update of a job matching ``condition``."""
    await client.pool.execute(
        "CREATE FUNCTION public.refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN IF {condition} THEN RAISE EXCEPTION 'refused row %', NEW.id; END IF;"
        " RETURN NEW; END $$"
    )
    await client.pool.execute(
        "CREATE TRIGGER refuse_update BEFORE UPDATE ON skiplock.jobs"
        " FOR EACH ROW EXECUTE FUNCTION public.refuse_update()"
    )


def _progress_errors(worker: Worker) -> float:
    value = worker.metrics.registry.get_sample_value(
        "skiplock_worker_db_errors_total", {"operation": "progress"}
    )
    return value or 0.0


async def test_a_refused_progress_report_does_not_stall_the_others(
    db_dsn: str, client: Client
) -> None:
    """A progress write the database refuses is dropped; other jobs' progress still lands."""
    await _refuse_updates(client, "NEW.progress_message = 'poison'")
    tasks = TaskRegistry()
    go = anyio.Event()
    release = anyio.Event()

    @tasks.task()
    async def poisoned(ctx: JobContext) -> str:
        await ctx.progress(10, message="poison")
        await release.wait()
        return "done"

    @tasks.task()
    async def healthy(ctx: JobContext) -> str:
        await go.wait()
        await ctx.progress(50, message="fine")
        await release.wait()
        return "done"

    bad = await client.enqueue("poisoned")
    good = await client.enqueue("healthy")
    worker = Worker(tasks, db_dsn, fast_settings())
    async with running(worker):
        await wait_for(
            lambda: _async(_progress_errors(worker)),
            lambda n: n >= 1,
            what="the poisoned progress report to be refused",
        )
        go.set()
        row = await wait_for(
            lambda: client.get(good.id),
            lambda job: job is not None and job.progress_message == "fine",
            what="the healthy job's progress",
        )
        assert row is not None
        assert row.progress == 50
        release.set()
        bad_done = await wait_for_state(client, bad.id, JobState.SUCCEEDED)
        await wait_for_state(client, good.id, JobState.SUCCEEDED)
    assert bad_done.progress_message is None  # the refused report was not written later


async def _async(value: float) -> float:
    return value


async def test_a_refused_rescue_does_not_stall_the_others(db_dsn: str, client: Client) -> None:
    """A row whose rescue the database refuses is left aside; other expired jobs are rescued."""
    await _refuse_updates(client, "NEW.args ? 'poison' AND NEW.state <> 'running'")
    tasks = TaskRegistry()

    @tasks.task()
    async def t(ctx: JobContext) -> str:
        return "rerun"

    store = client.store
    poison = await client.enqueue("t", {"poison": True}, queue="dead")
    await store.claim_jobs(client.pool, ["dead"], 1, 0.05, "dead-worker")
    good = await client.enqueue("t", queue="dead")
    await store.claim_jobs(client.pool, ["dead"], 1, 0.05, "dead-worker")
    await wait_for(
        lambda: client.pool.fetchval(
            "SELECT count(*) FROM skiplock.jobs WHERE lease_expires_at < now()"
        ),
        lambda n: n == 2,
        what="both leases to expire",
    )
    async with running(Worker(tasks, db_dsn, fast_settings(queues=("dead",)))):
        done = await wait_for_state(client, good.id, JobState.SUCCEEDED, timeout=10)
    assert done.result == "rerun"
    stuck = await client.get(poison.id)
    assert stuck is not None
    assert stuck.state is JobState.RUNNING


async def test_a_refused_dead_worker_rescue_does_not_stall_the_others(
    db_dsn: str, client: Client
) -> None:
    """Two registered workers die, one holding a job whose rescue the database refuses: the
    other one's job is still rescued at once (its lease has a minute left), and the refused
    worker is left out of the fast path instead of failing every check."""
    await _refuse_updates(client, "NEW.args ? 'poison' AND NEW.state <> 'running'")
    tasks = TaskRegistry()

    @tasks.task()
    async def t(ctx: JobContext) -> str:
        return "rerun"

    store = client.store
    for name, args in (("dead-a", {"poison": True}), ("dead-b", {})):
        presence = await asyncpg.connect(db_dsn)
        try:
            _, locked = await store.register_worker(presence, name, "gone", 1)
            assert locked
            await client.enqueue("t", args, queue="dead")
            (held,) = await store.claim_jobs(client.pool, ["dead"], 1, 60.0, name)
            assert held.worker_id == name
        finally:
            await presence.close()  # the process "dies": its presence lock goes
    good = await client.pool.fetchval("SELECT id FROM skiplock.jobs WHERE worker_id = 'dead-b'")
    poison = await client.pool.fetchval("SELECT id FROM skiplock.jobs WHERE worker_id = 'dead-a'")
    worker = Worker(tasks, db_dsn, fast_settings(queues=("dead",), lease=60.0))
    async with running(worker):
        done = await wait_for_state(client, good, JobState.SUCCEEDED, timeout=10)
    assert done.result == "rerun"
    assert [e.type for e in done.errors] == ["WorkerDied"]
    stuck = await client.get(poison)
    assert stuck is not None
    assert (stuck.state, stuck.worker_id) == (JobState.RUNNING, "dead-a")


async def test_a_completion_slower_than_the_write_bound_is_written(client: Client) -> None:
    """A batch that takes longer than the write gate's bound gets longer retries and lands."""
    await client.enqueue("t")
    (job,) = await client.store.claim_jobs(client.pool, ["default"], 1, 60.0, "batches")
    assert job.lease_token is not None
    outcome = Completion(job.id, job.lease_token, "succeeded", result_json="1")
    # every update of the row takes 0.2 s: ten times the gate's bound below
    await client.pool.execute(
        "CREATE FUNCTION public.slow_update() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$"
    )
    await client.pool.execute(
        "CREATE TRIGGER slow_update BEFORE UPDATE ON skiplock.jobs"
        " FOR EACH ROW EXECUTE FUNCTION public.slow_update()"
    )
    async with _completer(client, WorkerSettings(), gate_timeout=0.02) as completer:
        # held while it is written: a retry keeps an outcome only while its lease holds
        completer.submit(Lease(job, job.lease_token, deadline=time.monotonic() + 60), outcome)
        sizes = await _all_written(client, [outcome.job_id])
    assert sizes == [1]


async def test_leases_held_never_exceed_max_leases_while_outcomes_wait(
    db_dsn: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler's slot is free as soon as it returns, but the leases a worker holds
    (running, or finished with the outcome unwritten) stay within ``max_leases``.

    Outcome writes are held back until the database shows ``max_leases`` rows running
    under the worker: with two handler slots, only slots freed before the writes could
    get it there; and no handler or write ever sees more.
    """
    tasks = TaskRegistry()
    seen: list[int] = []  # rows running under the worker, seen by each handler and write
    executing = [0, 0]  # handlers executing now, the most at once
    full = anyio.Event()
    worker = Worker(tasks, db_dsn, fast_settings(concurrency=2, max_leases=5))

    async def held() -> int:
        count = await client.pool.fetchval(
            "SELECT count(*) FROM skiplock.jobs WHERE state = 'running' AND worker_id = $1",
            worker.id,
        )
        return int(count)

    @tasks.task()
    async def quick(ctx: JobContext) -> None:
        executing[0] += 1
        executing[1] = max(executing)
        count = await held()
        seen.append(count)
        if count >= 5:
            full.set()
        executing[0] -= 1

    write = worker.store.complete_jobs

    async def held_back(ex: asyncpg.Pool, completions: list[Completion]) -> set[uuid.UUID]:
        seen.append(await held())
        await full.wait()
        return await write(ex, completions)

    monkeypatch.setattr(worker.store, "complete_jobs", held_back)
    await client.enqueue_many([JobSpec("quick") for _ in range(40)])
    async with running(worker):
        await wait_for(
            lambda: client.pool.fetchval(
                "SELECT count(*) FROM skiplock.jobs WHERE state = 'succeeded'"
            ),
            lambda n: n == 40,
            what="all 40 jobs to succeed",
        )
    assert max(seen) == 5
    assert len(seen) > 40
    assert executing[1] == 2  # concurrency still caps the handlers running at once


class _FixedPrefetch(ClaimSizer):
    """A sizer that always prefetches ``prefetch`` jobs (the test decides, not timing)."""

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        pass


async def test_stop_releases_prefetched_jobs_at_once_without_running_them(
    db_dsn: str, client: Client
) -> None:
    """Jobs claimed ahead, waiting for a handler slot, go back to ``queued`` (attempt
    given back) as soon as the worker stops, even when a slot frees during the grace."""
    tasks = TaskRegistry()
    ran: list[int] = []
    finish = anyio.Event()

    @tasks.task()
    async def step(ctx: JobContext, *, n: int) -> None:
        ran.append(n)
        await finish.wait()

    worker = Worker(tasks, db_dsn, fast_settings(concurrency=1, max_leases=3, shutdown_grace=5))
    sizer = _FixedPrefetch(1, 3)
    sizer.prefetch = 2
    worker._table.sizer = sizer
    jobs = await client.enqueue_many([JobSpec("step", {"n": n}) for n in range(3)])
    async with running(worker):
        await wait_for(
            lambda: client.pool.fetchval(
                "SELECT count(*) FROM skiplock.jobs WHERE state = 'running' AND worker_id = $1",
                worker.id,
            ),
            lambda n: n == 3 and len(ran) == 1,
            what="one job running and two claimed ahead",
        )
        worker.stop()
        finish.set()  # the running handler returns within the grace: its slot frees
    rows = [await client.get(job.id) for job in jobs]
    states = sorted((row.state, row.attempt, row.args["n"] in ran) for row in rows if row)
    assert len(ran) == 1
    assert states == [
        (JobState.QUEUED, 0, False),
        (JobState.QUEUED, 0, False),
        (JobState.SUCCEEDED, 1, True),
    ]
