"""The event hub's polling floor: streams and long-polls work without notifications.

Notifications are blocked the way a PgBouncer in transaction mode or a dead
listener blocks them: the workers' updates announce nothing (``skiplock.announce``
sends nothing in the test's own database), or the hub does not LISTEN at
all (``listen_url="none"``). The hub's periodic batched re-read of the watched
jobs must still carry every change, and a job deleted while watched must end
its stream (``event: gone``) and its long-poll (404).
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import asyncpg

from skiplock import Client, JobState, Worker
from tests.helpers import SILENCE_ANNOUNCEMENTS, wait_for_state, wait_until
from tests.integration.api.conftest import StartApi
from tests.integration.api.support import (
    Keys,
    LiveApi,
    RenderControl,
    assert_problem,
    bearer,
    create_job,
    sse,
)

POLL = 0.2  # the hub's re-read interval in these tests


async def _block_update_notifications(dsn: str) -> None:
    """Changes of jobs announce nothing from now on (this test's database only)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SILENCE_ANNOUNCEMENTS)
    finally:
        await conn.close()


async def _delete_job(dsn: str, job_id: str) -> None:
    """Delete the job's row, as retention would."""
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.execute("DELETE FROM skiplock.jobs WHERE id = $1", uuid.UUID(job_id)) == (
            "DELETE 1"
        )
    finally:
        await conn.close()


async def _follow_to_the_end(
    api: LiveApi, keys: Keys, control: RenderControl, client: Client
) -> list[dict[str, Any]]:
    """Run a job through 40 % to success while streaming it; every event's document."""
    job_id = await create_job(api, keys.a_write)
    await control.wait_started(uuid.UUID(job_id))
    await wait_for_state(client, uuid.UUID(job_id), JobState.RUNNING)
    async with sse(api.http, f"/v1/jobs/{job_id}/events", headers=bearer(keys.a_write)) as stream:
        first = await stream.next()
        assert first is not None
        assert first.json()["state"] == "running"
        control.step(uuid.UUID(job_id), 40.0)
        progressed = await stream.next()
        assert progressed is not None
        control.finish(uuid.UUID(job_id), {"ok": True})
        rest = await stream.rest()
    return [first.json(), progressed.json(), *(e.json() for e in rest)]


async def test_stream_sees_progress_and_the_end_without_update_notifications(
    start_api_with: StartApi,
    db_dsn: str,
    keys: Keys,
    control: RenderControl,
    worker: Worker,
    client: Client,
) -> None:
    """With the update NOTIFY silenced, a stream still gets the progress and the terminal state."""
    api = await start_api_with(hub_poll_seconds=POLL)
    await _block_update_notifications(db_dsn)
    docs = await _follow_to_the_end(api, keys, control, client)
    assert docs[1]["progress"] == 40.0
    assert docs[-1]["state"] == "succeeded"
    assert docs[-1]["result"] == {"ok": True}


async def test_long_poll_sees_a_change_without_update_notifications(
    start_api_with: StartApi,
    db_dsn: str,
    keys: Keys,
    control: RenderControl,
    worker: Worker,
    client: Client,
) -> None:
    """With the update NOTIFY silenced, ?wait= answers the change, not the old document."""
    api = await start_api_with(hub_poll_seconds=POLL)
    await _block_update_notifications(db_dsn)
    job_id = await create_job(api, keys.a_write)
    await control.wait_started(uuid.UUID(job_id))
    running = await wait_for_state(client, uuid.UUID(job_id), JobState.RUNNING)
    first = await api.http.get(f"/v1/jobs/{job_id}", headers=bearer(keys.a_write))
    assert first.json()["updated_at"] == running.updated_at.isoformat()
    async with anyio.create_task_group() as tg:
        answers: list[Any] = []

        async def long_poll() -> None:
            headers = {**bearer(keys.a_write), "If-None-Match": first.headers["etag"]}
            answers.append(await api.http.get(f"/v1/jobs/{job_id}?wait=15", headers=headers))

        tg.start_soon(long_poll)
        await wait_until(lambda: api.hub.stats.subscribers == 1, what="the long-poll to wait")
        control.step(uuid.UUID(job_id), 70.0)
    (answer,) = answers
    assert answer.status_code == 200
    assert answer.json()["progress"] == 70.0
    control.finish(uuid.UUID(job_id), None)


async def test_stream_works_with_the_hub_not_listening(
    start_api_with: StartApi,
    keys: Keys,
    control: RenderControl,
    worker: Worker,
    client: Client,
) -> None:
    """listen_url="none": no LISTEN connection, and streams still follow a job to the end."""
    api = await start_api_with(listen_url="none", hub_poll_seconds=POLL)
    docs = await _follow_to_the_end(api, keys, control, client)
    assert docs[-1]["state"] == "succeeded"
    assert api.hub.stats.notifications == 0
    assert not api.hub.connected
    ready = await api.http.get("/readyz")
    assert ready.json()["checks"]["listener"] == "off"


async def test_a_deleted_job_ends_its_stream_with_gone(
    start_api_with: StartApi, db_dsn: str, keys: Keys
) -> None:
    """A watched job deleted by retention ends its stream with `event: gone`."""
    api = await start_api_with(hub_poll_seconds=POLL)
    job_id = await create_job(api, keys.a_write)
    async with sse(api.http, f"/v1/jobs/{job_id}/events", headers=bearer(keys.a_write)) as stream:
        first = await stream.next()
        assert first is not None
        assert first.json()["state"] == "queued"
        await _delete_job(db_dsn, job_id)
        rest = await stream.rest()
    assert [e.event for e in rest] == ["gone"]
    assert rest[0].json() == {"id": job_id}
    assert api.hub.stats.subscribers == 0


async def test_a_deleted_job_ends_its_long_poll_with_404(
    start_api_with: StartApi, db_dsn: str, keys: Keys
) -> None:
    """A long-poll of a job deleted while it waits answers 404 job-not-found."""
    api = await start_api_with(hub_poll_seconds=POLL)
    job_id = await create_job(api, keys.a_write)
    answers: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def long_poll() -> None:
            url = f"/v1/jobs/{job_id}?wait=15"
            answers.append(await api.http.get(url, headers=bearer(keys.a_write)))

        tg.start_soon(long_poll)
        await wait_until(lambda: api.hub.stats.subscribers == 1, what="the long-poll to wait")
        await _delete_job(db_dsn, job_id)
    (answer,) = answers
    assert_problem(answer, 404, "job-not-found")
