"""A worker app with one fast schedule, for fault tests of periodic jobs.

Every worker started with it declares ``fast``: a job of ``tick`` every
:data:`EVERY` seconds, every missed tick caught up (``catch_up="all"``). The
handler does nothing: the jobs themselves, each with its tick in ``meta``, are
what the tests count.
"""

from __future__ import annotations

from skiplock import JobContext, TaskRegistry

EVERY = 0.05

tasks = TaskRegistry()


@tasks.task()
async def tick(ctx: JobContext) -> None:
    """Nothing: the job's existence is the record."""


tasks.schedule("fast", task="tick", every=EVERY, catch_up="all")
