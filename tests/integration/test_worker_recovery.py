"""A worker recovers what a fault or a deploy would otherwise cost: missed notifications
counted honestly, unknown tasks released without burning attempts, lost claim replies."""

from __future__ import annotations

import asyncpg

from skiplock import Client, JobContext, JobState, Retry, TaskRegistry, Worker
from tests.helpers import wait_for_state, wait_until
from tests.worker_helpers import fast_settings, running


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
                # Triggers off for this transaction: the insert sends no NOTIFY.
                await conn.execute("SET LOCAL session_replication_role = replica")
                job = await client.enqueue("ok", connection=conn)  # run_at: this txn's now()
                claims = _claims(worker)
                # Due now, invisible until commit: let the worker claim past it once.
                await wait_until(lambda: _claims(worker) > claims, within=5)
        finally:
            await conn.close()
        await wait_for_state(client, job.id, JobState.SUCCEEDED)
        assert _missed(worker) == 1
