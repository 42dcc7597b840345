"""Tasks for subprocess workers: each run is recorded in the test's database.

The test creates the tables in :data:`TABLES_SQL`. ``hold`` records its run in
``runs``, then blocks until the test releases the job (a row in ``releases``
plus a ``release`` notification), then marks the run finished.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg

from skiplock import JobContext, TaskRegistry

TABLES_SQL = """
CREATE TABLE runs (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL,
    attempt     integer NOT NULL,
    worker_id   text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);
CREATE TABLE releases (job_id uuid PRIMARY KEY);
"""

RELEASE_SQL = (
    "WITH r AS (INSERT INTO releases (job_id) VALUES ($1::uuid) ON CONFLICT DO NOTHING)"
    " SELECT pg_notify('release', $1::uuid::text)"
)

tasks = TaskRegistry()


@tasks.task()
async def hold(ctx: JobContext) -> dict[str, Any]:
    """Record the run, wait until the test releases this job, record the end."""
    worker_id = ctx.job.worker_id or "?"
    released = asyncio.Event()

    def on_release(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == str(ctx.id):
            released.set()

    conn = await asyncpg.connect(os.environ["SKIPLOCK_DATABASE_URL"])
    try:
        run_id = await conn.fetchval(
            "INSERT INTO runs (job_id, attempt, worker_id) VALUES ($1, $2, $3) RETURNING id",
            ctx.id,
            ctx.attempt,
            worker_id,
        )
        await conn.add_listener("release", on_release)
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM releases WHERE job_id = $1)", ctx.id):
            released.set()
        await released.wait()
        await conn.execute("UPDATE runs SET finished_at = clock_timestamp() WHERE id = $1", run_id)
    finally:
        conn.terminate()
    return {"worker": worker_id}
