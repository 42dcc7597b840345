"""The event hub's LISTEN connection: losing it never costs a subscriber the terminal state."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import asyncpg

from skiplock import Client, JobState, Worker
from skiplock.queue import Store
from tests.helpers import wait_for_state, wait_until
from tests.integration.api.conftest import StartApi, admin_execute
from tests.integration.api.support import (
    Keys,
    LiveApi,
    RenderControl,
    SseStream,
    bearer,
    create_job,
    fetchval,
    sse,
)

APP_NAME = "skiplock-api-under-test"


async def _start(start_api_with: StartApi, db_dsn: str) -> LiveApi:
    """An app whose connections carry APP_NAME, so its LISTEN connection can be found."""
    return await start_api_with(database_url=f"{db_dsn}?application_name={APP_NAME}")


async def _kill_hub_connection(admin_dsn: str, db_dsn: str) -> None:
    """pg_terminate_backend the app's LISTEN connection to ``db_dsn``'s database, only that."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        # The hub's connection runs LISTEN, then only a periodic "SELECT 1" ping;
        # the app's pooled connections run neither.
        pids = [
            r["pid"]
            for r in await conn.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = $1 AND application_name = $2"
                " AND (query LIKE 'LISTEN %' OR query = 'SELECT 1')",
                _database(db_dsn),
                APP_NAME,
            )
        ]
        assert len(pids) == 1, pids
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pids[0]) is True
    finally:
        await conn.close()


def _database(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


@asynccontextmanager
async def _streams(
    api: LiveApi, keys: Keys, job_id: str, count: int
) -> AsyncIterator[list[SseStream]]:
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(
                sse(api.http, f"/v1/jobs/{job_id}/events", headers=bearer(keys.a_write))
            )
            for _ in range(count)
        ]
        yield streams


async def test_subscribers_see_the_end_after_the_listen_connection_is_killed(
    start_api_with: StartApi,
    db_dsn: str,
    pg_admin_dsn: str,
    keys: Keys,
    control: RenderControl,
    worker: Worker,
    client: Client,
) -> None:
    """Kill the hub's LISTEN backend mid-stream; the job then ends; every stream gets the end."""
    api = await _start(start_api_with, db_dsn)
    job_id = await create_job(api, keys.a_write)
    await control.wait_started(uuid.UUID(job_id))
    await wait_for_state(client, uuid.UUID(job_id), JobState.RUNNING)
    async with _streams(api, keys, job_id, 3) as streams:
        for stream in streams:
            first = await stream.next()
            assert first is not None
            assert first.json()["state"] == "running"
        control.step(uuid.UUID(job_id), 20.0)
        for stream in streams:
            event = await stream.next()
            assert event is not None
            assert event.json()["progress"] == 20.0
        reconnects = api.hub.stats.reconnects

        await _kill_hub_connection(pg_admin_dsn, db_dsn)
        control.step(uuid.UUID(job_id), 60.0)
        control.finish(uuid.UUID(job_id), {"ok": True})
        tails = [await stream.rest() for stream in streams]
    for tail in tails:
        assert tail, "the stream ended without the terminal event"
        assert tail[-1].json()["state"] == "succeeded"
        assert tail[-1].json()["result"] == {"ok": True}
        progress = [e.json()["progress"] for e in tail]
        assert progress == sorted(progress)
    assert api.hub.stats.reconnects > reconnects
    await wait_until(lambda: api.hub.connected, what="the hub to listen again")


async def test_hub_keeps_retrying_while_the_database_refuses_connections(
    start_api_with: StartApi, db_dsn: str, pg_admin_dsn: str, keys: Keys
) -> None:
    """While new connections are refused the hub retries; once allowed it catches up the end."""
    api = await _start(start_api_with, db_dsn)
    job_id = await create_job(api, keys.a_write)
    database = _database(db_dsn)
    writer = await asyncpg.connect(db_dsn)  # opened before connections are refused
    try:
        async with sse(
            api.http, f"/v1/jobs/{job_id}/events", headers=bearer(keys.a_write)
        ) as stream:
            first = await stream.next()
            assert first is not None
            assert first.json()["state"] == "queued"
            reconnects = api.hub.stats.reconnects
            await admin_execute(
                pg_admin_dsn, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false'
            )
            try:
                await _kill_hub_connection(pg_admin_dsn, db_dsn)
                # The kill, then at least one refused attempt.
                await wait_until(
                    lambda: api.hub.stats.reconnects >= reconnects + 2,
                    what="the hub to retry while refused",
                )
                cancelled = await Store().cancel_job(writer, uuid.UUID(job_id), None)
                assert cancelled is not None
                assert cancelled.state is JobState.CANCELLED
            finally:
                await admin_execute(
                    pg_admin_dsn, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true'
                )
            rest = await stream.rest()
    finally:
        await writer.close()
    assert [(e.event, e.json()["state"]) for e in rest] == [("job", "cancelled")]
    await wait_until(lambda: api.hub.connected, what="the hub to listen again")
    assert await fetchval(db_dsn, "SELECT state::text FROM skiplock.jobs") == "cancelled"
