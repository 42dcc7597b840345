"""Tasks of the fault suite: every handler execution leaves a row in ``executions``.

The test installs the tables first (:func:`tests.faults.invariants.install`).
Handlers write that record through their own small pool on ``FAULTS_SIDE_DSN``
(default: the worker's own database URL) under the application name
``faults-side``, so faults aimed at skiplock's connections (a black-holing
proxy, ``pg_terminate_backend`` on ``skiplock-*`` backends) spare the record of
what ran. Side writes are retried through restarts and dropped connections
until they land or the handler is cancelled; each is idempotent (the
execution's id is made here), so a retried write never counts a run twice.

- ``work(ms, steps)``: runs about ``ms`` milliseconds in ``steps`` progress
  reports whose message is ``tok:<lease token>`` (so the database can tell
  which lease a progress write came from), then returns
  ``{"execution": id, "token": lease token, "worker": worker id}``;
- ``raises``: raises every time;
- ``hangs``: sleeps past its 1 s task timeout every time;
- ``kills``: SIGKILLs its own worker process every time.

A handler that is stopped (cancel, timeout, lost lease, shutdown) records
``stopped`` and the reason before it goes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncpg

from skiplock import JobContext, RetryPolicy, TaskRegistry
from skiplock.queue.listener import TRANSIENT_DB_ERRORS

T = TypeVar("T")

SIDE_APPLICATION_NAME = "faults-side"
# Retries come back at once: the suite counts attempts, it does not wait for backoff.
QUICK_RETRY = RetryPolicy(base=0.05, factor=1.0, jitter=0.0)
HANG_TIMEOUT = 1.0

tasks = TaskRegistry()

_pool: asyncpg.Pool[Any] | None = None
_pool_lock = asyncio.Lock()


async def _side_pool() -> asyncpg.Pool[Any]:
    global _pool
    async with _pool_lock:
        if _pool is None:
            dsn = os.environ.get("FAULTS_SIDE_DSN") or os.environ["SKIPLOCK_DATABASE_URL"]
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=8,
                server_settings={"application_name": SIDE_APPLICATION_NAME},
            )
            assert pool is not None
            _pool = pool
        return _pool


async def _side(write: Callable[[asyncpg.Pool[Any]], Awaitable[T]]) -> T:
    """Run one idempotent side write, retrying transient errors until it lands."""
    backoff = 0.05
    while True:
        try:
            with anyio.fail_after(5):
                return await write(await _side_pool())
        except TRANSIENT_DB_ERRORS:
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


async def _start(ctx: JobContext) -> uuid.UUID:
    """Record that this handler started running the job's current attempt."""
    execution = uuid.uuid4()
    token = ctx.job.lease_token
    assert token is not None

    async def insert(pool: asyncpg.Pool[Any]) -> None:
        await pool.execute(
            "INSERT INTO executions (id, job_id, task, attempt, lease_token, worker_id, pid)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            execution,
            ctx.id,
            ctx.job.task,
            ctx.attempt,
            token,
            ctx.job.worker_id or "?",
            os.getpid(),
        )

    await _side(insert)
    return execution


async def _mark(execution: uuid.UUID, column: str, reason: str | None = None) -> None:
    async def update(pool: asyncpg.Pool[Any]) -> None:
        await pool.execute(
            f"UPDATE executions SET {column} = clock_timestamp(), stop_reason = $2"  # noqa: S608
            f" WHERE id = $1 AND {column} IS NULL",
            execution,
            reason,
        )

    await _side(update)


async def _record_stop(ctx: JobContext, execution: uuid.UUID) -> None:
    """Best effort, shielded from the cancellation that is stopping the handler."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        await _mark(execution, "stopped", ctx.cancel_reason or "cancelled")


@tasks.task(retry=QUICK_RETRY)
async def work(ctx: JobContext, *, ms: float = 0, steps: int = 0) -> dict[str, Any]:
    """Run ``ms`` milliseconds in ``steps`` progress reports; name the execution in the result."""
    execution = await _start(ctx)
    token = str(ctx.job.lease_token)
    try:
        if steps <= 0:
            await anyio.sleep(ms / 1000)
        for step in range(steps):
            await anyio.sleep(ms / 1000 / steps)
            await ctx.progress(100 * (step + 1) / (steps + 1), message=f"tok:{token}")
    except BaseException:
        await _record_stop(ctx, execution)
        raise
    await _mark(execution, "finished")
    return {"execution": str(execution), "token": token, "worker": ctx.job.worker_id}


@tasks.task(retry=QUICK_RETRY)
async def raises(ctx: JobContext) -> None:
    """Fail every attempt with an exception."""
    execution = await _start(ctx)
    await _mark(execution, "finished")
    raise RuntimeError(f"poison: attempt {ctx.attempt} raises")


@tasks.task(retry=QUICK_RETRY, timeout=HANG_TIMEOUT)
async def hangs(ctx: JobContext) -> None:
    """Hang every attempt past the task timeout."""
    execution = await _start(ctx)
    try:
        await anyio.sleep_forever()
    finally:
        await _record_stop(ctx, execution)


@tasks.task(retry=QUICK_RETRY)
async def kills(ctx: JobContext) -> None:
    """Kill the worker process running every attempt."""
    await _start(ctx)
    os.kill(os.getpid(), signal.SIGKILL)
