"""A worker survives what handlers and the database throw at it (found in review)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from skiplock import Client, JobContext, JobState, Retry, TaskRegistry, Worker
from tests.helpers import wait_for, wait_for_state
from tests.worker_helpers import fast_settings, running


async def test_exception_message_with_lone_surrogate_fails_the_job_not_the_worker(
    db_dsn: str, client: Client
) -> None:
    """A lone surrogate in an exception message is replaced; the job fails, others still run."""
    tasks = TaskRegistry()

    @tasks.task()
    async def surrogate(ctx: JobContext) -> None:
        raise ValueError("caf\udce9")

    @tasks.task()
    async def ok(ctx: JobContext) -> str:
        return "fine"

    bad = await client.enqueue("surrogate", max_attempts=1)
    good = await client.enqueue("ok")
    async with running(Worker(tasks, db_dsn, fast_settings())):
        failed = await wait_for_state(client, bad.id, JobState.FAILED)
        done = await wait_for_state(client, good.id, JobState.SUCCEEDED)
    assert failed.errors[0].message == "caf?"
    assert done.result == "fine"


async def test_progress_message_with_lone_surrogate_is_written_replaced(
    db_dsn: str, client: Client
) -> None:
    """A progress message with a lone surrogate is written with it replaced."""
    tasks = TaskRegistry()

    @tasks.task()
    async def report(ctx: JobContext) -> None:
        await ctx.progress(40, message="caf\udce9")

    job = await client.enqueue("report")
    async with running(Worker(tasks, db_dsn, fast_settings())):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.progress_message == "caf?"


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), 1e13])
def test_retry_refuses_unwritable_delays(delay: float) -> None:
    """Retry refuses NaN, infinite and absurd delays that the database could not store."""
    with pytest.raises(ValueError, match="between 0 and"):
        Retry(delay)


async def test_handler_raising_cancelled_error_gives_its_job_back(
    db_dsn: str, client: Client
) -> None:
    """A handler raising CancelledError itself fails that attempt; the worker keeps going."""
    tasks = TaskRegistry()

    @tasks.task()
    async def rogue(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise asyncio.CancelledError
        return "second attempt"

    job = await client.enqueue("rogue", max_attempts=3)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=10)
    assert done.attempt == 2
    assert [e.type for e in done.errors] == ["CancelledError"]


async def test_claimed_row_with_undecodable_json_fails_and_the_worker_goes_on(
    db_dsn: str, client: Client
) -> None:
    """A row hand-written with a number no double holds fails; the next job still runs."""
    tasks = TaskRegistry()

    @tasks.task()
    async def echo(ctx: JobContext, **args: object) -> str:
        return "ok"

    bad = await client.enqueue("echo", {"n": 1})
    # jsonb keeps 1e400 as numeric; only SQL can store it (the client refuses it)
    await client.pool.execute(
        "UPDATE skiplock.jobs SET args = '{\"n\": 1e400}'::jsonb WHERE id = $1", bad.id
    )

    async def bad_row() -> Any:  # read with SQL: the Client cannot decode this row either
        return await client.pool.fetchrow(
            "SELECT state::text, attempt, errors -> -1 ->> 'type' AS error"
            " FROM skiplock.jobs WHERE id = $1",
            bad.id,
        )

    async with running(Worker(tasks, db_dsn, fast_settings())):
        failed = await wait_for(bad_row, lambda r: r["state"] == "failed", what="failed")
        good = await client.enqueue("echo", {"n": 2})
        done = await wait_for_state(client, good.id, JobState.SUCCEEDED)
    assert tuple(failed) == ("failed", 1, "UnreadableJob")
    assert done.result == "ok"
