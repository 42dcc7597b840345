"""A worker recovers what a fault or a deploy would otherwise cost: missed notifications
counted honestly, unknown tasks released without burning attempts, lost claim replies."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from skiplock import Client, Job, JobContext, JobState, Retry, TaskRegistry, Worker
from skiplock.queue import TERMINAL_STATES
from skiplock.worker import WorkerIdInUse
from skiplock.worker.outcomes import MAX_UNKNOWN_TASK_RELEASES
from tests.helpers import wait_for, wait_for_state, wait_until
from tests.worker_helpers import execute, fast_settings, running


def _sample(worker: Worker, name: str) -> float:
    value = worker.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def _missed(worker: Worker) -> float:
    return _sample(worker, "skiplock_worker_notifications_missed_total")


def _claims(worker: Worker) -> float:
    return _sample(worker, "skiplock_worker_claim_duration_seconds_count")


# -- notifications_missed_total -----------------------------------------------


async def test_delayed_and_retried_jobs_found_by_the_poll_are_not_missed_notifications(
    db_dsn: str, client: Client
) -> None:
    """A job whose run_at comes after the previous claim was not due then: no notification
    could have announced it, so the poll that finds it counts nothing."""
    tasks = TaskRegistry()
    tries: list[int] = []

    @tasks.task()
    async def ok(ctx: JobContext) -> str:
        return "ok"

    @tasks.task()
    async def once_more(ctx: JobContext) -> str:
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retry(0.5)
        return "ok"

    async with running(Worker(tasks, db_dsn, fast_settings(poll=0.1))) as worker:
        delayed = await client.enqueue("ok", delay=0.5)
        retried = await client.enqueue("once_more")
        await wait_for_state(client, delayed.id, JobState.SUCCEEDED)
        done = await wait_for_state(client, retried.id, JobState.SUCCEEDED)
        assert done.attempt == 2
        assert _missed(worker) == 0


async def test_a_due_job_whose_notification_was_lost_counts_as_missed(
    db_dsn: str, client: Client
) -> None:
    """A job due before the previous claim, announced by no notification, counts once."""
    tasks = TaskRegistry()

    @tasks.task()
    async def ok(ctx: JobContext) -> str:
        return "ok"

    async with running(Worker(tasks, db_dsn, fast_settings(poll=0.1))) as worker:
        conn = await asyncpg.connect(db_dsn)
        try:
            async with conn.transaction():
                # Written by hand, not by enqueue: announced by no NOTIFY. run_at: now().
                job_id = await conn.fetchval(
                    "INSERT INTO skiplock.jobs (id, queue, task, args)"
                    " VALUES (gen_random_uuid(), 'default', 'ok', '{}') RETURNING id"
                )
                claims = _claims(worker)
                # Due now, invisible until commit: let the worker claim past it once.
                await wait_until(lambda: _claims(worker) > claims, within=5)
        finally:
            await conn.close()
        await wait_for_state(client, job_id, JobState.SUCCEEDED)
        assert _missed(worker) == 1


# -- unknown tasks ---------------------------------------------------------------


def _tasks(*names: str) -> TaskRegistry:
    tasks = TaskRegistry()
    for name in names:

        async def handler(ctx: JobContext) -> str:
            return f"done by {ctx.job.worker_id}"

        tasks.task(name=name)(handler)
    return tasks


async def test_unknown_task_is_released_without_an_attempt_then_runs_where_known(
    db_dsn: str, client: Client
) -> None:
    """An old worker (rolling deploy) gives a new task's job back, attempt not counted and
    not claimable at once, saying so in its history; a worker that knows the task runs it."""
    job = await client.enqueue("new_task", max_attempts=1)
    old = Worker(_tasks("old_task"), db_dsn, fast_settings(worker_id="old"))
    async with running(old):

        async def released() -> bool:
            j = await client.get(job.id)
            return j is not None and len(j.errors) == 1

        await wait_for(released, bool, timeout=5, what="the old worker to release the job")
    back = await client.get(job.id)
    assert back is not None
    assert back.state is JobState.QUEUED
    assert back.attempt == 0
    assert back.run_at > back.updated_at  # held back: the old worker does not spin on it
    (entry,) = back.errors
    assert entry.type == "UnknownTask"
    assert entry.counted is False
    assert entry.worker == "old"
    assert "new_task" in entry.message

    new = Worker(_tasks("new_task"), db_dsn, fast_settings(worker_id="new"))
    async with running(new):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.attempt == 1
    assert done.result == "done by new"


async def test_unknown_task_fails_once_its_releases_are_used_up(
    db_dsn: str, client: Client
) -> None:
    """The releases are bounded: a task no worker has learned after them fails, UnknownTask."""
    job = await client.enqueue("typo_task", max_attempts=3)
    entry = {
        "type": "UnknownTask",
        "message": "m",
        "traceback": None,
        "attempt": 1,
        "worker": "w",
        "at": "2026-01-01T00:00:00+00:00",
        "counted": False,
    }
    await execute(
        db_dsn,
        "UPDATE skiplock.jobs SET errors = (SELECT jsonb_agg($2::jsonb) FROM"
        " generate_series(1, $3)) WHERE id = $1",
        job.id,
        orjson.dumps(entry).decode(),
        MAX_UNKNOWN_TASK_RELEASES,
    )
    async with running(Worker(_tasks("other"), db_dsn, fast_settings())):
        done = await wait_for_state(client, job.id, JobState.FAILED)
    assert done.attempt == 1
    assert len(done.errors) == MAX_UNKNOWN_TASK_RELEASES + 1
    last = done.errors[-1]
    assert last.type == "UnknownTask"
    assert last.counted is True
    assert f"released {MAX_UNKNOWN_TASK_RELEASES} times" in last.message


# -- lost claim replies ---------------------------------------------------------


@pytest.mark.parametrize(
    "lost_reply",
    [
        TimeoutError,  # the worker's fail_after(db_timeout) fired after the server committed
        asyncpg.ConnectionDoesNotExistError,  # the connection died with the reply in flight
    ],
)
async def test_a_claim_whose_reply_was_lost_is_given_back_and_runs_on_its_only_attempt(
    db_dsn: str,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    lost_reply: type[Exception],
) -> None:
    """A claim that committed but whose reply never reached the worker leaves the job
    running under it with a token it never saw; the next claim gives it back without
    counting, so a max_attempts=1 job still runs (and succeeds) as attempt 1."""
    job = await client.enqueue("ok", max_attempts=1)
    worker = Worker(_tasks("ok"), db_dsn, fast_settings(worker_id="w1"))
    claim = worker.store.claim_jobs
    lost: list[Job] = []

    async def claim_losing_the_first_reply(*args: Any, **kwargs: Any) -> list[Job]:
        jobs = await claim(*args, **kwargs)  # committed
        if jobs and not lost:
            lost.extend(jobs)
            raise lost_reply("the claim's reply was lost")
        return jobs

    monkeypatch.setattr(worker.store, "claim_jobs", claim_losing_the_first_reply)
    async with running(worker):
        done = await wait_for_state(client, job.id, TERMINAL_STATES, timeout=8)
    assert [j.id for j in lost] == [job.id]
    assert done.state is JobState.SUCCEEDED
    assert done.attempt == 1
    (entry,) = done.errors
    assert entry.type == "ClaimLost"
    assert entry.counted is False
    assert entry.worker == "w1"
    assert entry.attempt == 1


# -- presence (migration 0007) ------------------------------------------------------

_PRESENCE = "SELECT id, lock_key, alive FROM skiplock.worker_presence ORDER BY id"


async def _presence(db_dsn: str) -> list[tuple[str, int, bool]]:
    conn = await asyncpg.connect(db_dsn)
    try:
        return [(r["id"], r["lock_key"], r["alive"]) for r in await conn.fetch(_PRESENCE)]
    finally:
        await conn.close()


async def test_a_worker_registers_while_running_and_unregisters_on_a_graceful_stop(
    db_dsn: str,
) -> None:
    """Running, the worker is registered and alive; a graceful stop deletes its row."""
    async with running(Worker(_tasks("ok"), db_dsn, fast_settings(worker_id="w1"))):
        ((worker_id, _, alive),) = await _presence(db_dsn)
        assert (worker_id, alive) == ("w1", True)
    assert await _presence(db_dsn) == []


async def test_a_second_live_worker_with_the_same_id_is_refused(db_dsn: str) -> None:
    """Worker ids must be unique among live workers: a duplicate does not start."""
    async with running(Worker(_tasks("ok"), db_dsn, fast_settings(worker_id="twin"))):
        twin = Worker(_tasks("ok"), db_dsn, fast_settings(worker_id="twin"))
        with pytest.raises(WorkerIdInUse, match="'twin' is registered by a live process"):
            await twin.run()
        ((worker_id, _, alive),) = await _presence(db_dsn)
        assert (worker_id, alive) == ("twin", True)


async def test_a_worker_that_loses_its_presence_connection_registers_again(
    db_dsn: str, client: Client
) -> None:
    """The presence connection terminated: the worker registers anew under a fresh lock
    key and keeps working."""
    async with running(Worker(_tasks("ok"), db_dsn, fast_settings(worker_id="w1"))):
        ((_, first_key, _),) = await _presence(db_dsn)
        await execute(
            db_dsn,
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
            " WHERE l.locktype = 'advisory' AND l.objid = $1::oid AND l.objsubid = 2",
            first_key,
        )

        async def registered_again() -> list[tuple[str, int, bool]]:
            return await _presence(db_dsn)

        await wait_for(
            registered_again,
            lambda rows: len(rows) == 1 and rows[0][1] != first_key and rows[0][2],
            what="the worker to register again under a new key",
        )
        job = await client.enqueue("ok")
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
        assert done.worker_id == "w1"
