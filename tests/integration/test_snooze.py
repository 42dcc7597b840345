"""Snooze (issue 12): a handler puts its job back in the queue without spending an attempt."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta

import anyio
import pytest
from structlog.testing import capture_logs

from skiplock import Client, Job, JobContext, JobState, Snooze, TaskRegistry, Worker
from skiplock.worker.errors import MAX_DELAY_SECONDS
from tests.helpers import wait_for, wait_for_state
from tests.worker_helpers import fast_settings, install_history, job_history, running


def _finished(worker: Worker, task: str, outcome: str) -> float:
    value = worker.metrics.registry.get_sample_value(
        "skiplock_worker_jobs_finished_total", {"task": task, "outcome": outcome}
    )
    return 0.0 if value is None else value


def _cancel_blocking(dsn: str, job_id: uuid.UUID) -> None:
    """Cancel a job from another thread and event loop, blocking the caller until committed
    (so the worker hears of the cancel only after the handler has ended)."""

    async def cancel() -> None:
        async with await Client.connect(dsn) as other:
            await other.cancel(job_id)

    thread = threading.Thread(target=asyncio.run, args=(cancel(),))
    thread.start()
    thread.join()


async def test_a_single_attempt_job_snoozes_three_times_then_succeeds(
    db_dsn: str, client: Client
) -> None:
    """max_attempts=1: three snoozes give the attempt back each time, each run waits for the
    delay on the database's clock, the timeout bounds each run (not their sum), nothing is
    added to the error history, meta counts the snoozes and the metrics count them."""
    tasks = TaskRegistry()
    seen: list[tuple[int, object]] = []

    # Each run takes 0.2 s of a 0.5 s timeout; the four runs together take longer.
    @tasks.task(timeout=0.5)
    async def poll(ctx: JobContext) -> str:
        seen.append((ctx.attempt, ctx.meta.get("_snoozed")))
        await anyio.sleep(0.2)
        if len(seen) <= 3:
            raise Snooze(0.3)
        return "ready"

    await install_history(db_dsn)
    job = await client.enqueue("poll", max_attempts=1, meta={"model": "m1"})
    with capture_logs() as logs:
        async with running(Worker(tasks, db_dsn, fast_settings())) as worker:
            done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.result == "ready"
    assert done.attempt == 1
    assert done.errors == ()
    assert done.meta == {"model": "m1", "_snoozed": 3}
    assert seen == [(1, None), (1, 1), (1, 2), (1, 3)]

    history = await job_history(db_dsn, job.id)
    assert [(h.state, h.attempt) for h in history] == [
        ("queued", 0),
        ("running", 1),
        ("queued", 0),
        ("running", 1),
        ("queued", 0),
        ("running", 1),
        ("queued", 0),
        ("running", 1),
        ("succeeded", 1),
    ]
    snoozes = [h for h in history[1:] if h.state == "queued"]
    claims = [h for h in history if h.state == "running"]
    # run_at moved by the delay, on the database's clock (changed_at is the statement's now())
    delays = [(h.run_at - h.changed_at).total_seconds() for h in snoozes]
    assert delays == pytest.approx([0.3, 0.3, 0.3], abs=1e-3)
    for snooze, claim in zip(snoozes, claims[1:], strict=True):
        assert claim.started_at is not None
        assert claim.started_at >= snooze.run_at

    assert _finished(worker, "poll", "snoozed") == 3
    assert _finished(worker, "poll", "succeeded") == 1
    assert _finished(worker, "poll", "failed") == 0
    snoozed_lines = [e for e in logs if e["event"] == "job_snoozed"]
    assert [(e["log_level"], e["delay"]) for e in snoozed_lines] == [("info", 0.3)] * 3


async def test_sync_handler_snoozes_with_ctx_snooze_keeping_progress(
    db_dsn: str, client: Client
) -> None:
    """A sync handler's ctx.snooze(timedelta) queues the job again an hour ahead (database
    clock), its attempt given back, its progress and message kept, no error entry."""
    tasks = TaskRegistry()
    after: list[str] = []

    @tasks.task()
    def wait_upstream(ctx: JobContext) -> None:
        ctx.progress(40, "waiting for upstream")
        ctx.snooze(timedelta(hours=1))
        after.append("ran on after snooze")  # never: ctx.snooze raises

    job = await client.enqueue("wait_upstream", max_attempts=1, meta={"_snoozed": 4.5})
    async with running(Worker(tasks, db_dsn, fast_settings())) as worker:

        async def probe() -> Job | None:
            return await client.get(job.id)

        snoozed = await wait_for(
            probe,
            lambda j: j is not None and j.meta.get("_snoozed") == 5.5,
            what="the job snoozed once",
        )
    assert snoozed is not None
    assert snoozed.state is JobState.QUEUED
    assert snoozed.attempt == 0
    assert snoozed.errors == ()
    assert (snoozed.progress, snoozed.progress_message) == (40, "waiting for upstream")
    assert snoozed.finished_at is None
    assert snoozed.lease_token is None
    # run_at and updated_at come from the same statement's now()
    assert (snoozed.run_at - snoozed.updated_at).total_seconds() == pytest.approx(3600, abs=1e-3)
    assert after == []
    assert _finished(worker, "wait_upstream", "snoozed") == 1


async def test_snooze_of_a_job_whose_cancel_was_requested_ends_it_cancelled(
    db_dsn: str, client: Client
) -> None:
    """A cancel that lands while the handler snoozes ends the job cancelled, not queued."""
    tasks = TaskRegistry()
    runs: list[int] = []

    @tasks.task()
    async def doomed(ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        # The event loop stays blocked until the cancel is committed, so the worker
        # hears of it only after this run has snoozed.
        _cancel_blocking(db_dsn, ctx.id)
        raise Snooze(0)

    job = await client.enqueue("doomed", max_attempts=1)
    async with running(Worker(tasks, db_dsn, fast_settings())) as worker:
        done = await wait_for_state(client, job.id, JobState.CANCELLED)
    assert runs == [1]
    assert done.finished_at is not None
    assert done.errors == ()
    assert "_snoozed" not in done.meta  # not snoozed: ended
    assert _finished(worker, "doomed", "snoozed") == 1  # what the handler asked for


@pytest.mark.parametrize(
    ("delay", "kind", "message"),
    [
        (
            -1,
            "ValueError",
            f"Snooze delay must be between 0 and {MAX_DELAY_SECONDS} seconds (366 days), not -1.0",
        ),
        (
            float("inf"),
            "ValueError",
            f"Snooze delay must be between 0 and {MAX_DELAY_SECONDS} seconds (366 days), not inf",
        ),
        ("soon", "TypeError", "Snooze delay must be a number of seconds or a timedelta, not str"),
    ],
)
async def test_a_bad_snooze_delay_fails_the_attempt(
    db_dsn: str, client: Client, delay: object, kind: str, message: str
) -> None:
    """A bad delay is a handler error: the attempt fails with a clear message, no snooze."""
    tasks = TaskRegistry()

    @tasks.task()
    async def careless(ctx: JobContext) -> None:
        ctx.snooze(delay)  # type: ignore[arg-type]  # the bad value under test

    job = await client.enqueue("careless", max_attempts=1)
    async with running(Worker(tasks, db_dsn, fast_settings())) as worker:
        failed = await wait_for_state(client, job.id, JobState.FAILED)
    assert failed.attempt == 1
    assert [(e.type, e.message, e.attempt) for e in failed.errors] == [(kind, message, 1)]
    assert "_snoozed" not in failed.meta
    assert _finished(worker, "careless", "snoozed") == 0
    assert _finished(worker, "careless", "failed") == 1
