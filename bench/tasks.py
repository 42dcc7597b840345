"""Tasks for the benchmark worker: ``python -m skiplock worker --app bench.tasks:tasks``."""

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
