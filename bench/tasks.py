"""Benchmark tasks (:mod:`bench.worker`; ``skiplock worker --app bench.tasks:tasks``)."""

from __future__ import annotations

import asyncio
import time

from skiplock import JobContext, TaskRegistry

tasks = TaskRegistry()


@tasks.task()
async def progress_probe(ctx: JobContext, *, steps: int = 100, interval: float = 0.05) -> int:
    """Report progress ``steps`` times, ``interval`` seconds apart, with the send time as message.

    The message is ``repr(time.time())`` so that a reader of the job's events can
    compute how long the report took to reach it.
    """
    for i in range(1, steps + 1):
        await ctx.progress(min(100.0, 100.0 * i / steps), message=repr(time.time()))
        await asyncio.sleep(interval)
    return steps


@tasks.task()
async def noop(ctx: JobContext) -> None:
    """Do nothing: the job's whole cost is the queue's."""


@tasks.task()
async def sleep(ctx: JobContext, *, seconds: float = 0.01) -> None:
    """Wait ``seconds`` (``asyncio.sleep``): a short job that holds its handler slot."""
    await asyncio.sleep(seconds)


@tasks.task()
async def pickup_probe(ctx: JobContext) -> float:
    """Return the wall-clock time (``time.time()``) at which the handler started."""
    return time.time()


@tasks.task()
async def progress_flood(
    ctx: JobContext, *, calls: int = 10_000, seconds: float = 2.0
) -> dict[str, float]:
    """Call ``ctx.progress`` ``calls`` times, spread evenly over ``seconds``; return the time.

    Between two calls the handler yields to the event loop (sleeping until the
    next call is due, or ``sleep(0)`` when it is late), as a handler doing I/O
    would, so the worker's progress flusher runs while it reports.
    """
    started = time.perf_counter()
    step = seconds / calls
    for i in range(1, calls + 1):
        await ctx.progress(100.0 * i / calls)
        await asyncio.sleep(max(0.0, started + i * step - time.perf_counter()))
    return {"calls": calls, "seconds": time.perf_counter() - started}
