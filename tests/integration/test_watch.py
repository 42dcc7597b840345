"""Waiting from the app (issue 13): ``Client.updates``, ``Client.wait`` and ``SyncClient``.

The jobs are moved by hand (the store's claim and completion, as a worker does),
each step only once the previous one was seen, so nothing here depends on timing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
import asyncpg
import pytest
import pytest_asyncio

from skiplock import ALL_TENANTS, Client, Job, JobNotFound, JobState, SyncClient
from skiplock.queue.store import Completion, ProgressWrite
from tests.helpers import wait_for

LEASE = 30.0


async def _claim(client: Client, job_id: uuid.UUID) -> Job:
    (job,) = await client.store.claim_jobs(client.pool, ["default"], 1, LEASE, "w1")
    assert job.id == job_id
    return job


async def _finish(
    client: Client, job: Job, outcome: Literal["succeeded", "failed"] = "succeeded"
) -> None:
    assert job.lease_token is not None
    result = '{"ok": true}' if outcome == "succeeded" else None
    error = '{"message": "boom"}' if outcome == "failed" else None
    done = await client.store.complete_jobs(
        client.pool, [Completion(job.id, job.lease_token, outcome, result, error)]
    )
    assert len(done) == 1


async def _progress(client: Client, job: Job, percent: float) -> None:
    assert job.lease_token is not None
    written = await client.store.update_progress(
        client.pool, [ProgressWrite(job.id, job.lease_token, percent, "half way", None)]
    )
    assert written == {job.id}


@pytest_asyncio.fixture
async def polling_client(db_dsn: str) -> AsyncIterator[Client]:
    """A client that never LISTENs: its updates come from re-reads every 0.05 s only."""
    async with await Client.connect(db_dsn, listen_dsn=False, watch_poll_seconds=0.05) as c:
        yield c


async def _follow(client: Client, job_id: uuid.UUID, tenant: Any = "default") -> list[Job]:
    """Follow the job, moving it one step each time the previous step was seen."""
    seen: list[Job] = []
    claimed: Job | None = None
    with anyio.fail_after(30):
        async for job in client.updates(job_id, tenant=tenant):
            seen.append(job)
            if job.state is JobState.QUEUED:
                claimed = await _claim(client, job_id)
            elif job.state is JobState.RUNNING and job.progress is None:
                assert claimed is not None
                await _progress(client, claimed, 50)
            elif job.state is JobState.RUNNING:
                assert claimed is not None
                await _finish(client, claimed)
    return seen


@pytest.mark.parametrize("how", ["listening", "polling"])
async def test_updates_yield_every_step_until_the_job_ends(
    client: Client, polling_client: Client, how: str
) -> None:
    """Queued, running, progress, succeeded: each step once, in order, then the end."""
    follower = client if how == "listening" else polling_client
    job = await client.enqueue("render", {"video_id": "v1"})
    seen = await _follow(follower, job.id)
    assert [(j.state, j.progress) for j in seen] == [
        (JobState.QUEUED, None),
        (JobState.RUNNING, None),
        (JobState.RUNNING, 50),
        (JobState.SUCCEEDED, 100),
    ]
    assert seen[-1].result == {"ok": True}


async def test_a_listening_client_hears_changes_without_polling(db_dsn: str) -> None:
    """With a re-read only every hour, every step still arrives: through NOTIFY."""
    async with await Client.connect(db_dsn, watch_poll_seconds=3600) as client:
        job = await client.enqueue("render")
        seen = await _follow(client, job.id)
        assert [j.state for j in seen][-1] is JobState.SUCCEEDED
        assert len(seen) == 4


async def test_wait_returns_the_ended_job(client: Client) -> None:
    job = await client.enqueue("render")

    async def work() -> None:
        claimed = await _claim(client, job.id)
        await _finish(client, claimed, "failed")

    ended: list[Job] = []

    async def wait() -> None:
        ended.append(await client.wait(job.id, timeout=30))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        tg.start_soon(work)
    assert ended[0].state is JobState.FAILED
    assert ended[0].errors[-1].message == "boom"


async def test_wait_on_an_ended_job_returns_at_once(client: Client) -> None:
    job = await client.enqueue("render")
    await client.cancel(job.id)
    with anyio.fail_after(5):
        assert (await client.wait(job.id)).state is JobState.CANCELLED


async def test_wait_times_out_and_leaves_the_job_alone(client: Client) -> None:
    job = await client.enqueue("render")
    with pytest.raises(TimeoutError):
        await client.wait(job.id, timeout=0.2)
    current = await client.get(job.id)
    assert current is not None
    assert current.state is JobState.QUEUED


async def test_updates_are_scoped_to_the_tenant(client: Client) -> None:
    job = await client.enqueue("render", tenant="acme")
    with pytest.raises(JobNotFound):
        await client.wait(job.id, timeout=5, tenant="globex")
    with pytest.raises(JobNotFound):
        await client.wait(uuid.uuid4(), timeout=5, tenant="acme")
    with pytest.raises(JobNotFound):
        await client.wait("not-an-id", timeout=5, tenant="acme")
    with pytest.raises(ValueError, match="tenant"):
        await client.wait(job.id, timeout=5, tenant=None)  # type: ignore[arg-type]
    seen = await _follow(client, job.id, tenant=ALL_TENANTS)
    assert seen[-1].state is JobState.SUCCEEDED
    assert seen[-1].tenant == "acme"


async def test_a_job_deleted_while_watched_ends_the_updates(polling_client: Client) -> None:
    job = await polling_client.enqueue("render")
    seen: list[Job] = []

    async def follow() -> None:
        async for current in polling_client.updates(job.id):
            seen.append(current)
            await polling_client.pool.execute("DELETE FROM skiplock.jobs WHERE id = $1", job.id)

    with anyio.fail_after(30):
        with pytest.raises(JobNotFound):
            await follow()
    assert [j.state for j in seen] == [JobState.QUEUED]


async def test_close_stops_watching(db_dsn: str) -> None:
    """The LISTEN connection a client opened to watch jobs is gone once it is closed."""
    client = await Client.connect(db_dsn)
    job = await client.enqueue("render")
    with pytest.raises(TimeoutError):
        await client.wait(job.id, timeout=0.2)
    assert client._hub_task is not None
    task = client._hub_task
    await client.close()
    assert task.done()
    admin = await asyncpg.connect(db_dsn)
    try:
        # A backend leaves pg_stat_activity a moment after its client hung up.
        await wait_for(
            lambda: admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN%'"
            ),
            lambda listening: listening == 0,
            timeout=10,
            what="the watch's LISTEN connection to go",
        )
    finally:
        await admin.close()


# -- the synchronous client ------------------------------------------------------


def test_sync_client_enqueues_reads_cancels_and_waits(db_dsn: str) -> None:
    """From plain threads, as a WSGI app calls it: eight threads at once, one client."""
    with SyncClient(db_dsn) as jobs:
        made: list[Job] = []
        errors: list[BaseException] = []

        def request(i: int) -> None:
            try:
                job = jobs.enqueue("render", {"video_id": f"v{i}"}, tenant="acme")
                got = jobs.get(job.id, tenant="acme")
                assert got is not None
                assert got.args == {"video_id": f"v{i}"}
                made.append(jobs.cancel(job.id, tenant="acme"))
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        assert sorted(j.state for j in made) == [JobState.CANCELLED] * 8
        assert jobs.wait(made[0].id, timeout=5, tenant="acme").state is JobState.CANCELLED
        page = jobs.list(tenant="acme", limit=100)
        assert len(page.jobs) == 8
        with pytest.raises(JobNotFound):
            jobs.cancel(made[0].id, tenant="globex")
        with pytest.raises(TimeoutError):
            jobs.wait(jobs.enqueue("render", tenant="acme").id, timeout=0.2, tenant="acme")
    with pytest.raises(RuntimeError, match="closed"):
        jobs.get(made[0].id, tenant="acme")


def test_sync_client_refuses_a_bad_database_at_once() -> None:
    with pytest.raises((OSError, asyncpg.PostgresError)):
        SyncClient("postgresql://nobody@127.0.0.1:1/none")


_NEVER_CLOSED = """
import os, sys
import skiplock
jobs = skiplock.SyncClient(sys.argv[1])
job = jobs.enqueue("render", tenant="acme")
pid = os.fork()
if pid == 0:
    try:
        jobs.get(job.id, tenant="acme")
    except RuntimeError as exc:
        os._exit(3 if "another process" in str(exc) else 4)
    os._exit(5)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
print("parent", jobs.get(job.id, tenant="acme").state)
"""


def test_sync_client_refuses_a_forked_child_and_never_holds_the_process(db_dsn: str) -> None:
    """A child forked after the client was made gets a clear error, not a hang; the
    parent, which never closes its client, still exits at once when its script ends."""
    done = subprocess.run(
        [sys.executable, "-c", _NEVER_CLOSED, db_dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["child 3", "parent queued"]
