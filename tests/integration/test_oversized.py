"""Oversized and unwritable progress and results: a clear outcome, and the worker goes on.

PostgreSQL caps a NOTIFY payload at 8000 bytes and refuses NUL characters and
lone surrogates in text and jsonb. A handler may report a 10 MB progress
message or return a 100 MB result; either must end in truncation or a failed
job with a clear error — never in a write that fails again and again while the
worker's other jobs wait behind it. Every test ends by running a healthy job
on the same worker.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import anyio
import pytest

from skiplock import Client, JobContext, JobSpec, JobState, TaskRegistry, Worker
from skiplock.worker.context import MAX_MESSAGE_CHARS
from tests.helpers import wait_for, wait_for_state
from tests.worker_helpers import fast_settings, listening, running

DEFAULT_LIMIT = 16 * 1024 * 1024  # WorkerSettings.max_result_bytes


def _tasks(result: Any = None, message: str | None = None) -> TaskRegistry:
    """``make`` reports ``message`` (if any) and returns ``result``; ``ok`` returns "fine"."""
    tasks = TaskRegistry()

    @tasks.task()
    async def make(ctx: JobContext) -> Any:
        if message is not None:
            await ctx.progress(50, message=message)
        return result

    @tasks.task()
    async def ok(ctx: JobContext) -> str:
        return "fine"

    return tasks


async def _healthy_job_succeeds(client: Client) -> None:
    """A job enqueued now, on the same worker, succeeds."""
    job = await client.enqueue("ok")
    done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=15)
    assert done.result == "fine"


async def test_ten_megabyte_progress_message_is_truncated_and_announced(
    db_dsn: str, client: Client
) -> None:
    """A 10 MB message with NULs and a lone surrogate is stored cleaned and cut to 1000 chars."""
    message = "caf\udce9 \x00" + "m" * 10_000_000
    job = await client.enqueue("make")
    async with (
        listening(db_dsn, "skiplock.job") as seen,
        running(Worker(_tasks("done", message), db_dsn, fast_settings())),
    ):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=15)
        await _healthy_job_succeeds(client)
        await wait_for(
            lambda: _entries(seen, job.id),
            lambda entries: ("succeeded", 100) in entries,
            what="the succeeded notification",
        )
    stored = done.progress_message
    assert stored is not None
    assert len(stored) == MAX_MESSAGE_CHARS
    assert stored.startswith("caf? " + "m" * 10)
    assert stored.endswith("…")
    assert "\x00" not in stored
    assert all(len(payload.encode()) < 8000 for payload in seen.payloads)


async def _entries(seen: Any, job_id: uuid.UUID) -> list[tuple[str, float | None]]:
    entries: list[tuple[str, float | None]] = seen.job_entries(job_id)
    return entries


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


UNWRITABLE_RESULTS = {
    "100-megabytes": ("x" * 100_000_000, "ResultTooLarge", "over the limit of 16777216"),
    "nul-character": ({"text": "a\x00b"}, "InvalidResult", "NUL character"),
    "lone-surrogate": ({"text": "caf\udce9"}, "InvalidResult", "not JSON-serializable"),
    "integer-2**70": ({"n": 2**70}, "InvalidResult", "not JSON-serializable"),
    "nan": ([1.0, math.nan], "InvalidResult", "NaN or an infinite number"),
    "not-json": ({1, 2, 3}, "InvalidResult", "not JSON-serializable"),
    "nested-1000-deep": (_nested(1000), "InvalidResult", "not JSON-serializable"),
}


@pytest.mark.parametrize(
    ("result", "error_type", "says"), UNWRITABLE_RESULTS.values(), ids=UNWRITABLE_RESULTS.keys()
)
async def test_unwritable_result_fails_the_job_once_and_the_worker_goes_on(
    db_dsn: str, client: Client, result: Any, error_type: str, says: str
) -> None:
    """A result PostgreSQL cannot hold fails its job at once, saying why; others still run."""
    job = await client.enqueue("make", max_attempts=3)
    async with running(Worker(_tasks(result), db_dsn, fast_settings())):
        failed = await wait_for_state(client, job.id, JobState.FAILED, timeout=30)
        await _healthy_job_succeeds(client)
    assert failed.attempt == 1  # not retried: the same result would fail again
    assert failed.result is None
    (error,) = failed.errors
    assert error.type == error_type
    assert says in error.message
    assert "make" in error.message


@pytest.mark.parametrize("size", [100_000, 10_000_000], ids=["100-kb", "10-mb"])
async def test_result_far_over_the_notify_limit_is_stored_and_announced(
    db_dsn: str, client: Client, size: int
) -> None:
    """A result much larger than a NOTIFY payload is stored whole; the change is announced."""
    result = {"blob": "r" * size, "unicode": "ünïcödé ✓"}
    job = await client.enqueue("make")
    async with (
        listening(db_dsn, "skiplock.job") as seen,
        running(Worker(_tasks(result), db_dsn, fast_settings())),
    ):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=30)
        await _healthy_job_succeeds(client)
        await wait_for(
            lambda: _entries(seen, job.id),
            lambda entries: ("succeeded", 100) in entries,
            what="the succeeded notification",
        )
    assert done.result == result


async def test_result_limit_counts_bytes_not_characters(db_dsn: str, client: Client) -> None:
    """max_result_bytes=1000 refuses 600 two-byte characters (1202 bytes of JSON)."""
    job = await client.enqueue("make")
    settings = fast_settings(max_result_bytes=1000)
    async with running(Worker(_tasks("é" * 600), db_dsn, settings)):
        done = await wait_for_state(client, job.id, [JobState.FAILED, JobState.SUCCEEDED])
        await _healthy_job_succeeds(client)
    assert done.state is JobState.FAILED
    assert done.errors[0].type == "ResultTooLarge"


# -- the queue channel's payload ---------------------------------------------------------

# 150 queues whose names are as long as allowed (128 characters): their list is 19 KB, more
# than a NOTIFY payload holds (migration 0005 announces such a list as '*').
LONG_QUEUES = [f"{i:03d}" + "q" * 125 for i in range(150)]


async def test_one_batch_enqueued_into_many_long_named_queues_is_written(client: Client) -> None:
    """enqueue_many over 150 long queue names writes every job (the announcement fits)."""
    specs = [JobSpec(task="t", queue=queue) for queue in LONG_QUEUES]
    jobs = await client.enqueue_many(specs)
    assert len(jobs) == len(LONG_QUEUES)


async def test_retries_across_many_long_named_queues_do_not_stall_the_worker(
    db_dsn: str, client: Client
) -> None:
    """150 jobs retried at once in 150 long-named queues: re-queued, and the worker goes on."""
    tasks = TaskRegistry()
    release = anyio.Event()

    @tasks.task()
    async def flaky(ctx: JobContext) -> None:
        await release.wait()
        raise RuntimeError("try again later")

    @tasks.task()
    async def ok(ctx: JobContext) -> str:
        return "fine"

    jobs = [await client.enqueue("flaky", queue=queue) for queue in LONG_QUEUES]
    settings = fast_settings(queues=LONG_QUEUES, concurrency=len(LONG_QUEUES) + 1)
    async with running(Worker(tasks, db_dsn, settings)):
        await wait_for(
            lambda: _count(client, "running"),
            lambda n: n == len(LONG_QUEUES),
            timeout=30,
            what="every flaky job to run",
        )
        release.set()  # all fail together: one completion batch re-queues them all
        healthy = await client.enqueue("ok", queue=LONG_QUEUES[0])
        done = await wait_for_state(client, healthy.id, JobState.SUCCEEDED, timeout=10)
    assert done.result == "fine"
    for job in jobs:
        again = await client.get(job.id)
        assert again is not None
        assert (again.state, again.attempt, len(again.errors)) == (JobState.QUEUED, 1, 1)


async def _count(client: Client, state: str) -> int:
    value = await client.pool.fetchval(
        "SELECT count(*) FROM skiplock.jobs WHERE state = $1::skiplock.job_state", state
    )
    assert isinstance(value, int)
    return value


# -- a completion the database refuses -------------------------------------------------

_REFUSE_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.result IS NOT NULL AND NEW.result @> '{"poison": true}' THEN
        RAISE EXCEPTION 'an operator trigger refuses this result' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER refuse_poison BEFORE UPDATE ON skiplock.jobs
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def test_completion_the_database_refuses_does_not_stall_the_worker(
    db_dsn: str, client: Client
) -> None:
    """An outcome write refused for good (here by a trigger) ends that job; the others go on."""
    await client.pool.execute(_REFUSE_POISON)
    poisoned = await client.enqueue("make", max_attempts=1)
    async with running(Worker(_tasks({"poison": True}), db_dsn, fast_settings())):
        await _healthy_job_succeeds(client)
        ended = await wait_for_state(client, poisoned.id, JobState.FAILED, timeout=15)
    assert ended.result is None
    assert ended.errors[-1].type == "CompletionRefused"
    assert "refuses this result" in ended.errors[-1].message
