"""In-process workers against a real database: outcomes, retries, cancellation, leases, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from skiplock import (
    Cancelled,
    Client,
    Fail,
    JobContext,
    JobState,
    Retry,
    RetryPolicy,
    SchemaMismatch,
    TaskRegistry,
    Worker,
)
from skiplock.queue import TERMINAL_STATES, Store
from tests.helpers import wait_for, wait_for_state, wait_until
from tests.worker_helpers import (
    execute,
    fast_settings,
    install_history,
    job_history,
    listening,
    running,
    wait_listening,
)

FAST_RETRY = RetryPolicy(base=0.05, factor=2, jitter=0)


def _ok_tasks() -> TaskRegistry:
    tasks = TaskRegistry()

    @tasks.task()
    async def ok(ctx: JobContext) -> str:
        return "ok"

    return tasks


# -- outcomes ---------------------------------------------------------------


async def test_async_handler_return_value_is_the_result(db_dsn: str, client: Client) -> None:
    """An async handler's return value ends the job succeeded with that result."""
    tasks = TaskRegistry()

    @tasks.task()
    async def add(ctx: JobContext, *, a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    job = await client.enqueue("add", {"a": 2, "b": 3})
    async with running(Worker(tasks, db_dsn, fast_settings())) as worker:
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.result == {"sum": 5}
    assert done.attempt == 1
    assert done.worker_id == worker.id
    assert done.errors == ()
    assert done.progress == 100
    assert done.lease_token is None
    assert done.finished_at is not None


_SYNC_COMMIT = "SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'"


async def test_async_commit_worker_writes_without_waiting_for_the_flush(
    db_dsn: str, client: Client
) -> None:
    """async_commit: the worker's sessions run synchronous_commit=off; jobs still complete."""
    tasks = TaskRegistry()

    @tasks.task()
    async def add(ctx: JobContext, *, a: int, b: int) -> int:
        return a + b

    job = await client.enqueue("add", {"a": 2, "b": 3})
    async with running(Worker(tasks, db_dsn, fast_settings(async_commit=True))) as worker:
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
        worker_session = await worker.pool.fetchrow(_SYNC_COMMIT)
    assert done.result == 5
    assert worker_session is not None
    assert tuple(worker_session) == ("off", "client")  # set by the worker for its sessions
    client_session = await client.pool.fetchrow(_SYNC_COMMIT)
    assert client_session is not None
    assert client_session["source"] != "client"  # enqueues keep the server's setting


async def test_handler_gets_args_as_keyword_arguments(db_dsn: str, client: Client) -> None:
    """The job's args arrive as keyword arguments, keyword-only parameters included."""
    tasks = TaskRegistry()
    received: list[dict[str, Any]] = []

    @tasks.task()
    async def keywords(ctx: JobContext, *, name: str, sizes: list[int]) -> None:
        received.append({"name": name, "sizes": sizes})

    job = await client.enqueue("keywords", {"name": "clip", "sizes": [1, 2]})
    async with running(Worker(tasks, db_dsn, fast_settings())):
        await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert received == [{"name": "clip", "sizes": [1, 2]}]


async def test_context_carries_job_identity(db_dsn: str, client: Client) -> None:
    """ctx exposes the job's id, attempt number, meta labels and tenant."""
    tasks = TaskRegistry()
    seen: dict[str, Any] = {}

    @tasks.task()
    async def introspect(ctx: JobContext) -> None:
        seen.update(id=ctx.id, attempt=ctx.attempt, meta=ctx.meta, tenant=ctx.tenant)

    job = await client.enqueue("introspect", tenant="acme", meta={"model": "m1"})
    async with running(Worker(tasks, db_dsn, fast_settings())):
        await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert seen == {"id": job.id, "attempt": 1, "meta": {"model": "m1"}, "tenant": "acme"}


async def test_sync_handler_runs_in_a_thread(db_dsn: str, client: Client) -> None:
    """A plain def handler runs off the main thread and its result is stored."""
    tasks = TaskRegistry()
    threads: list[threading.Thread] = []

    @tasks.task()
    def double(ctx: JobContext, *, n: int) -> int:
        threads.append(threading.current_thread())
        return n * 2

    job = await client.enqueue("double", {"n": 21})
    async with running(Worker(tasks, db_dsn, fast_settings())):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.result == 42
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()


async def test_sync_handler_reports_progress_without_await(db_dsn: str, client: Client) -> None:
    """ctx.progress() called from a sync handler's thread reaches the row."""
    tasks = TaskRegistry()

    @tasks.task()
    def report(ctx: JobContext) -> None:
        ctx.progress(50, "halfway from a thread")
        raise Fail("stop here so the progress is kept")

    job = await client.enqueue("report")
    async with running(Worker(tasks, db_dsn, fast_settings())):
        done = await wait_for_state(client, job.id, JobState.FAILED)
    assert done.progress == 50
    assert done.progress_message == "halfway from a thread"


# -- failures and retries ---------------------------------------------------


async def test_exception_is_retried_then_fails_with_error_history(
    db_dsn: str, client: Client
) -> None:
    """An exception is retried until max_attempts, then the job fails with every attempt's error."""
    tasks = TaskRegistry()

    @tasks.task(retry=FAST_RETRY)
    async def flaky(ctx: JobContext) -> None:
        raise ValueError(f"boom {ctx.attempt}")

    job = await client.enqueue("flaky", max_attempts=3)
    async with running(Worker(tasks, db_dsn, fast_settings())) as worker:
        failed = await wait_for_state(client, job.id, JobState.FAILED)
    assert failed.attempt == 3
    assert [e.type for e in failed.errors] == ["ValueError"] * 3
    assert [e.message for e in failed.errors] == ["boom 1", "boom 2", "boom 3"]
    assert [e.attempt for e in failed.errors] == [1, 2, 3]
    assert {e.worker for e in failed.errors} == {worker.id}
    for error in failed.errors:
        assert error.traceback is not None
        assert "in flaky" in error.traceback
        assert f"ValueError: boom {error.attempt}" in error.traceback


async def test_retry_waits_for_backoff_per_database_clock(db_dsn: str, client: Client) -> None:
    """A retry is re-queued at the database's now + the policy's delay and waits for it."""
    tasks = TaskRegistry()

    @tasks.task(retry=FAST_RETRY)
    async def flaky(ctx: JobContext) -> None:
        raise ValueError("boom")

    await install_history(db_dsn)
    job = await client.enqueue("flaky", max_attempts=3)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        await wait_for_state(client, job.id, JobState.FAILED)
    history = await job_history(db_dsn, job.id)
    requeues = [h for h in history if h.state == "queued" and h.attempt > 0]
    claims = [h for h in history if h.state == "running"]
    assert [h.attempt for h in requeues] == [1, 2]
    delays = [(h.run_at - h.changed_at).total_seconds() for h in requeues]
    assert delays == pytest.approx([0.05, 0.1], abs=1e-3)
    assert [h.attempt for h in claims] == [1, 2, 3]
    for requeue, claim in zip(requeues, claims[1:], strict=True):
        assert claim.started_at is not None
        assert claim.started_at >= requeue.run_at


async def test_error_message_with_nul_fails_the_job_not_the_worker(
    db_dsn: str, client: Client
) -> None:
    """An exception message holding a NUL character is stored without it; the worker survives."""
    tasks = TaskRegistry()

    @tasks.task()
    async def nul(ctx: JobContext) -> None:
        raise ValueError("bad\x00byte")

    job = await client.enqueue("nul", max_attempts=1)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        failed = await wait_for_state(client, job.id, JobState.FAILED)
    (error,) = failed.errors
    assert (error.type, error.message) == ("ValueError", "badbyte")
    assert error.traceback is not None
    assert "ValueError: badbyte" in error.traceback


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


async def test_exception_with_broken_str_fails_the_job_not_the_worker(
    db_dsn: str, client: Client
) -> None:
    """An exception whose str() raises still fails its job, with a placeholder message."""
    tasks = TaskRegistry()

    @tasks.task()
    async def unprintable(ctx: JobContext) -> None:
        raise _UnprintableError()

    job = await client.enqueue("unprintable", max_attempts=1)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        failed = await wait_for_state(client, job.id, JobState.FAILED)
    (error,) = failed.errors
    assert error.type == "_UnprintableError"
    assert error.message == "<_UnprintableError: str() failed>"


async def test_fail_ends_the_job_at_once(db_dsn: str, client: Client) -> None:
    """raise Fail(...) ends the job failed after one attempt, whatever attempts are left."""
    tasks = TaskRegistry()

    @tasks.task(retry=FAST_RETRY)
    async def refuse(ctx: JobContext) -> None:
        raise Fail("bad input")

    job = await client.enqueue("refuse", max_attempts=5)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        failed = await wait_for_state(client, job.id, JobState.FAILED)
    assert failed.attempt == 1
    assert [(e.type, e.message, e.attempt) for e in failed.errors] == [("Fail", "bad input", 1)]


async def test_retry_requeues_and_next_attempt_succeeds(db_dsn: str, client: Client) -> None:
    """raise Retry(0.1) re-queues the job and its second attempt succeeds."""
    tasks = TaskRegistry()

    @tasks.task()
    async def again(ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise Retry(0.1)
        return "second time"

    job = await client.enqueue("again", max_attempts=3)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.attempt == 2
    assert done.result == "second time"
    assert [(e.type, e.attempt) for e in done.errors] == [("Retry", 1)]


async def test_task_timeout_ends_attempts_then_fails(db_dsn: str, client: Client) -> None:
    """A handler over its task timeout is cancelled, retried, then fails with TimeoutError."""
    tasks = TaskRegistry()
    cancelled_attempts: list[int] = []

    @tasks.task(timeout=0.3, retry=FAST_RETRY)
    async def hang(ctx: JobContext) -> None:
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            cancelled_attempts.append(ctx.attempt)
            raise

    job = await client.enqueue("hang", max_attempts=2)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        failed = await wait_for_state(client, job.id, JobState.FAILED)
    assert cancelled_attempts == [1, 2]
    assert [(e.type, e.attempt) for e in failed.errors] == [
        ("TimeoutError", 1),
        ("TimeoutError", 2),
    ]
    assert all("timeout of 0.3 s" in e.message for e in failed.errors)


async def test_a_jobs_own_timeout_overrides_the_tasks(db_dsn: str, client: Client) -> None:
    """``JobSpec.timeout`` bounds the attempt instead of the task's timeout, both ways."""
    tasks = TaskRegistry()

    @tasks.task()  # no task timeout: only the job's can stop it
    async def hang(ctx: JobContext) -> None:
        await anyio.Event().wait()

    @tasks.task(timeout=0.3)
    async def work(ctx: JobContext) -> str:
        await anyio.sleep(1.0)  # the work itself: longer than the task's 0.3 s
        return "done"

    bounded = await client.enqueue("hang", max_attempts=1, timeout=0.3)
    longer = await client.enqueue("work", max_attempts=1, timeout=30)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        failed = await wait_for_state(client, bounded.id, JobState.FAILED)
        done = await wait_for_state(client, longer.id, JobState.SUCCEEDED)
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == (
        "TimeoutError",
        "attempt 1 exceeded the job timeout of 0.3 s",
    )
    assert done.result == "done"


# -- cancellation -----------------------------------------------------------


async def test_cancelled_queued_job_never_runs(db_dsn: str, client: Client) -> None:
    """A job cancelled while queued is never handed to a handler."""
    tasks = TaskRegistry()
    ran: list[str] = []

    @tasks.task()
    async def record(ctx: JobContext, *, name: str) -> None:
        ran.append(name)

    doomed = await client.enqueue("record", {"name": "doomed"})
    assert (await client.cancel(doomed.id)).state is JobState.CANCELLED
    async with running(Worker(tasks, db_dsn, fast_settings(concurrency=1))):
        # enqueued after the cancelled one, so it would be claimed first were it claimable
        later = await client.enqueue("record", {"name": "later"})
        await wait_for_state(client, later.id, JobState.SUCCEEDED)
    row = await client.get(doomed.id)
    assert row is not None
    assert row.state is JobState.CANCELLED
    assert row.attempt == 0
    assert ran == ["later"]


async def test_cancelling_a_running_job_stops_its_handler(db_dsn: str, client: Client) -> None:
    """Cancelling a running job cancels its handler within a second and ends it cancelled."""
    tasks = TaskRegistry()
    started = anyio.Event()
    reasons: list[str | None] = []

    @tasks.task()
    async def stuck(ctx: JobContext) -> None:
        started.set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            reasons.append(ctx.cancel_reason)
            raise

    job = await client.enqueue("stuck")
    # a 10 s heartbeat: only the cancel notification can explain a stop within a second
    settings = fast_settings(lease=30.0, heartbeat=10.0)
    async with running(Worker(tasks, db_dsn, settings)):
        with anyio.fail_after(5):
            await started.wait()
        await client.cancel(job.id)
        done = await wait_for_state(client, job.id, JobState.CANCELLED, timeout=1.0)
    assert reasons == ["cancel_requested"]
    assert done.attempt == 1
    assert done.errors == ()
    assert done.result is None


async def test_forged_cancel_notification_does_not_cancel_a_running_job(
    db_dsn: str, client: Client
) -> None:
    """A cancel NOTIFY for a job nobody asked to cancel only prompts a re-read: it runs on."""
    tasks = TaskRegistry()
    started = anyio.Event()
    release = anyio.Event()

    @tasks.task()
    async def waits(ctx: JobContext) -> bool:
        started.set()
        await release.wait()
        return ctx.cancelled

    # a 10 s heartbeat: only the notification can explain a lease renewed within seconds
    settings = fast_settings(lease=30.0, heartbeat=10.0)
    async with running(Worker(tasks, db_dsn, settings)):
        await wait_listening(db_dsn)
        job = await client.enqueue("waits")
        with anyio.fail_after(5):
            await started.wait()
        lease_row = "SELECT state::text, lease_expires_at FROM skiplock.jobs WHERE id = $1"
        before = await client.pool.fetchrow(lease_row, job.id)
        assert before is not None
        await execute(db_dsn, "SELECT pg_notify('skiplock.cancel', $1)", str(job.id))
        after = await wait_for(
            lambda: client.pool.fetchrow(lease_row, job.id),
            lambda row: (
                row is not None
                and (
                    row["state"] != "running"
                    or row["lease_expires_at"] > before["lease_expires_at"]
                )
            ),
            timeout=5,
            what="the worker to re-read the job's cancel flag",
        )
        assert after is not None
        assert after["state"] == "running"
        release.set()
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=5)
    assert done.result is False  # the handler was never told to stop


async def test_handler_that_swallows_a_cancel_is_cancelled_again(
    db_dsn: str, client: Client
) -> None:
    """A handler that catches the CancelledError and awaits again is still stopped."""
    tasks = TaskRegistry()
    started = anyio.Event()
    caught: list[int] = []

    @tasks.task()
    async def stubborn(ctx: JobContext) -> None:
        started.set()
        for attempt in range(3):  # cleanup code that awaits, twice
            try:
                await anyio.Event().wait()
            except asyncio.CancelledError:
                caught.append(attempt)
                if attempt == 2:
                    raise

    job = await client.enqueue("stubborn")
    settings = fast_settings(lease=30.0, heartbeat=10.0)
    async with running(Worker(tasks, db_dsn, settings)):
        with anyio.fail_after(5):
            await started.wait()
        await client.cancel(job.id)
        done = await wait_for_state(client, job.id, JobState.CANCELLED, timeout=5.0)
    assert caught == [0, 1, 2]
    assert done.errors == ()


async def test_drain_stops_a_handler_that_swallows_cancels(db_dsn: str, client: Client) -> None:
    """stop() gets past a handler that keeps catching cancels: the job is released."""
    tasks = TaskRegistry()
    started = anyio.Event()

    @tasks.task()
    async def stubborn(ctx: JobContext) -> None:
        started.set()
        for _ in range(2):
            with contextlib.suppress(asyncio.CancelledError):
                await anyio.Event().wait()
        await anyio.Event().wait()  # the third cancel ends it

    job = await client.enqueue("stubborn")
    worker = Worker(tasks, db_dsn, fast_settings(shutdown_grace=0.2))
    with anyio.fail_after(20):  # run() must return: grace, three cancels, the release write
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await started.wait()
            worker.stop()
            released = await wait_for_state(client, job.id, JobState.QUEUED, timeout=10.0)
    assert released.attempt == 0  # a release gives the attempt back


def _cancel_blocking(dsn: str, job_id: uuid.UUID) -> None:
    """Cancel a job from another thread and event loop, blocking the caller until committed."""

    async def cancel() -> None:
        async with await Client.connect(dsn) as other:
            await other.cancel(job_id)

    thread = threading.Thread(target=asyncio.run, args=(cancel(),))
    thread.start()
    thread.join()


async def test_cancel_during_a_failing_attempt_is_not_lost(db_dsn: str, client: Client) -> None:
    """A cancel that lands while an attempt fails ends the job cancelled instead of retrying it."""
    tasks = TaskRegistry()
    attempts: list[int] = []

    @tasks.task(retry=FAST_RETRY)
    async def doomed(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            # The event loop stays blocked until the cancel is committed, so the worker
            # hears of it only after this attempt has already failed.
            _cancel_blocking(db_dsn, ctx.id)
            raise ValueError("failed as the cancel arrived")

    job = await client.enqueue("doomed", max_attempts=3)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        done = await wait_for_state(client, job.id, TERMINAL_STATES)
    assert done.state is JobState.CANCELLED
    assert attempts == [1]
    assert [(e.type, e.attempt) for e in done.errors] == [("ValueError", 1)]


async def test_cancel_during_shutdown_release_is_not_lost(db_dsn: str, client: Client) -> None:
    """A cancel that lands as stop() releases a job ends it cancelled instead of re-queued."""
    tasks = TaskRegistry()
    started = anyio.Event()

    @tasks.task()
    async def stubborn(ctx: JobContext) -> None:
        started.set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            # cancelled for the shutdown: the cancel request lands before the release
            _cancel_blocking(db_dsn, ctx.id)
            raise

    job = await client.enqueue("stubborn")
    async with running(Worker(tasks, db_dsn, fast_settings(shutdown_grace=0.1))):
        with anyio.fail_after(5):
            await started.wait()
    row = await client.get(job.id)
    assert row is not None
    assert row.state is JobState.CANCELLED
    assert row.finished_at is not None


async def test_cancelled_sync_handler_sees_ctx_cancelled(db_dsn: str, client: Client) -> None:
    """A sync handler working in chunks sees ctx.cancelled once its job is cancelled."""
    tasks = TaskRegistry()
    started = threading.Event()
    outcome: list[str] = []

    @tasks.task()
    def crunch(ctx: JobContext) -> None:
        started.set()
        try:
            while True:
                ctx.raise_if_cancelled()
                time.sleep(0.005)  # one chunk of blocking work
        except Cancelled:
            outcome.append(ctx.cancel_reason or "?")
            raise

    job = await client.enqueue("crunch")
    async with running(Worker(tasks, db_dsn, fast_settings())):
        await wait_until(started.is_set, what="the handler thread to start")
        await client.cancel(job.id)
        await wait_for_state(client, job.id, JobState.CANCELLED)
        await wait_until(lambda: bool(outcome), what="the handler thread to stop")
    assert outcome == ["cancel_requested"]


# -- progress ---------------------------------------------------------------


async def test_progress_writes_are_coalesced(db_dsn: str, client: Client) -> None:
    """5,000 progress reports become a bounded number of writes, the last one kept."""
    tasks = TaskRegistry()
    runtimes: list[float] = []

    @tasks.task()
    async def chatty(ctx: JobContext) -> None:
        started = time.monotonic()
        for i in range(1, 5001):
            await ctx.progress(i / 50, message=f"step {i}")
            await anyio.lowlevel.checkpoint()  # let the worker's other loops run
            if i % 500 == 0:
                await anyio.sleep(0.05)  # spread the reports over about half a second
        runtimes.append(time.monotonic() - started)

    async with listening(db_dsn, "skiplock.job") as notes:
        job = await client.enqueue("chatty")
        async with running(Worker(tasks, db_dsn, fast_settings())):
            done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
            await wait_until(
                lambda: any(s == "succeeded" for s, _ in notes.job_entries(job.id)),
                what="the completion's notification",
            )
    progress_writes = [
        e for e in notes.job_entries(job.id) if e[0] == "running" and e[1] is not None
    ]
    (runtime,) = runtimes
    assert 2 <= len(progress_writes) <= 10 * runtime + 3, (len(progress_writes), runtime)
    assert done.progress_message == "step 5000"
    assert done.progress == 100


async def test_progress_survives_a_failure(db_dsn: str, client: Client) -> None:
    """A handler that reports 37 % with a message and then fails keeps both on the row."""
    tasks = TaskRegistry()

    @tasks.task()
    async def partial(ctx: JobContext) -> None:
        await ctx.progress(37, "transcoding")
        raise Fail("encoder crashed")

    job = await client.enqueue("partial")
    async with running(Worker(tasks, db_dsn, fast_settings())):
        failed = await wait_for_state(client, job.id, JobState.FAILED)
    assert failed.progress == 37
    assert failed.progress_message == "transcoding"


# -- leases -----------------------------------------------------------------


async def test_lost_lease_cancels_handler_and_writes_nothing(db_dsn: str, client: Client) -> None:
    """A lease lost under a running job cancels its handler, and nothing is written."""
    tasks = _ok_tasks()
    started = anyio.Event()
    cancelled = anyio.Event()
    reasons: list[str | None] = []

    @tasks.task()
    async def stuck(ctx: JobContext) -> str:
        started.set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            reasons.append(ctx.cancel_reason)
            cancelled.set()
            raise
        return "unreachable"

    job = await client.enqueue("stuck")
    foreign = uuid.uuid4()
    async with running(Worker(tasks, db_dsn, fast_settings(lease=5.0, heartbeat=0.3))):
        with anyio.fail_after(5):
            await started.wait()
        await execute(
            db_dsn, "UPDATE skiplock.jobs SET lease_token = $2 WHERE id = $1", job.id, foreign
        )
        with anyio.fail_after(2):  # the next heartbeat, 0.3 s away, notices
            await cancelled.wait()
        # any write the worker queued for the lost job goes out before this one's
        other = await client.enqueue("ok")
        await wait_for_state(client, other.id, JobState.SUCCEEDED)
    row = await client.get(job.id)
    assert row is not None
    assert reasons == ["lease_lost"]
    assert row.state is JobState.RUNNING
    assert row.lease_token == foreign
    assert row.result is None
    assert row.errors == ()


async def test_rescuer_requeues_expired_lease(db_dsn: str, client: Client) -> None:
    """A job whose lease expired is re-queued by a worker's rescuer and runs as attempt 2."""
    tasks = _ok_tasks()
    job = await client.enqueue("ok", max_attempts=3)
    (claimed,) = await Store().claim_jobs(client.pool, ["default"], 1, 0.6, "ghost")
    assert claimed.id == job.id
    async with running(Worker(tasks, db_dsn, fast_settings(rescue=0.3))) as worker:
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=5)
    assert done.attempt == 2
    assert done.worker_id == worker.id
    assert [(e.type, e.attempt, e.worker) for e in done.errors] == [("LeaseExpired", 1, "ghost")]


async def test_rescuer_cancels_expired_job_whose_cancel_was_requested(
    db_dsn: str, client: Client
) -> None:
    """An expired job whose cancel was requested is cancelled by the rescuer, never run again."""
    tasks = TaskRegistry()
    ran: list[int] = []

    @tasks.task()
    async def record(ctx: JobContext) -> None:
        ran.append(ctx.attempt)

    job = await client.enqueue("record", max_attempts=3)
    (claimed,) = await Store().claim_jobs(client.pool, ["default"], 1, 0.6, "ghost")
    assert claimed.id == job.id
    assert (await client.cancel(job.id)).cancel_requested
    async with running(Worker(tasks, db_dsn, fast_settings(rescue=0.3))):
        done = await wait_for_state(client, job.id, TERMINAL_STATES, timeout=5)
    assert done.state is JobState.CANCELLED
    assert ran == []


# -- shutdown ---------------------------------------------------------------


async def test_stop_lets_running_job_finish(db_dsn: str, client: Client) -> None:
    """stop() while a handler runs lets it finish within the grace period: the job succeeds."""
    tasks = TaskRegistry()
    started = anyio.Event()
    finish = anyio.Event()

    @tasks.task()
    async def slow(ctx: JobContext) -> str:
        started.set()
        await finish.wait()
        return "finished"

    job = await client.enqueue("slow")
    worker = Worker(tasks, db_dsn, fast_settings(shutdown_grace=10.0))
    stopped = anyio.Event()

    async def run() -> None:
        await worker.run()
        stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(5):
            await started.wait()
        worker.stop()
        draining = await client.get(job.id)
        assert draining is not None
        assert draining.state is JobState.RUNNING
        assert not stopped.is_set()
        finish.set()
        with anyio.fail_after(5):
            await stopped.wait()
    done = await client.get(job.id)
    assert done is not None
    assert done.state is JobState.SUCCEEDED
    assert done.result == "finished"


async def test_stop_releases_unfinished_job_after_grace(db_dsn: str, client: Client) -> None:
    """After the grace, stop() releases an unfinished job to queued, its attempt given back."""
    tasks = TaskRegistry()
    started = anyio.Event()
    reasons: list[str | None] = []

    @tasks.task()
    async def hog(ctx: JobContext) -> str:
        if ctx.job.worker_id == "first":
            started.set()
            try:
                await anyio.Event().wait()
            except anyio.get_cancelled_exc_class():
                reasons.append(ctx.cancel_reason)
                raise
        return f"done by {ctx.job.worker_id}"

    job = await client.enqueue("hog", max_attempts=1)
    # a 30 s lease: only the release can put the job back before the test ends
    first = fast_settings(worker_id="first", lease=30.0, heartbeat=10.0, shutdown_grace=0.3)
    async with running(Worker(tasks, db_dsn, first)):
        with anyio.fail_after(5):
            await started.wait()
    released = await client.get(job.id)
    assert released is not None
    assert reasons == ["shutdown"]
    assert released.state is JobState.QUEUED
    assert released.attempt == 0
    assert released.lease_token is None
    assert released.errors == ()
    async with running(Worker(tasks, db_dsn, fast_settings(worker_id="second"))):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.result == "done by second"
    assert done.attempt == 1


# -- startup and wake-up ----------------------------------------------------


def _dsn_for_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def test_worker_refuses_database_without_schema(pg_admin_dsn: str) -> None:
    """A worker refuses to start (SchemaMismatch) on a database where skiplock is not installed."""
    name = f"skiplock_empty_{uuid.uuid4().hex[:12]}"
    await execute(pg_admin_dsn, f'CREATE DATABASE "{name}"')
    try:
        worker = Worker(_ok_tasks(), _dsn_for_database(pg_admin_dsn, name), fast_settings())
        with anyio.fail_after(10), pytest.raises(SchemaMismatch, match="not installed"):
            await worker.run()
    finally:
        await execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_notification_wakes_an_idle_worker(db_dsn: str, client: Client) -> None:
    """With a 30 s poll, a job enqueued while the worker idles starts within 2 s: NOTIFY woke it."""
    async with running(Worker(_ok_tasks(), db_dsn, fast_settings(poll=30.0))):
        await wait_listening(db_dsn)
        # a first job absorbs any claim the worker had pending from its start
        warm = await client.enqueue("ok")
        await wait_for_state(client, warm.id, JobState.SUCCEEDED, timeout=5)
        job = await client.enqueue("ok")
        await wait_for_state(client, job.id, {JobState.RUNNING, JobState.SUCCEEDED}, timeout=2)
