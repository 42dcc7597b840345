"""The event hub reads each watched job for its watchers' tenant only, in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import orjson

from skiplock import Client
from skiplock.api import EventHub
from skiplock.queue import Job, Store
from tests.helpers import wait_until


class _RecordingStore(Store):
    """A store that records the tenants of every row the hub reads."""

    def __init__(self) -> None:
        super().__init__()
        self.read_tenants: list[str] = []
        self.reads = 0

    def _record(self, jobs: Sequence[Job]) -> None:
        self.read_tenants.extend(j.tenant for j in jobs)
        self.reads += 1

    async def get_jobs(self, ex: Any, job_ids: Any, tenant: str | None) -> list[Job]:
        jobs = await super().get_jobs(ex, job_ids, tenant)
        self._record(jobs)
        return jobs

    async def get_watched_jobs(self, ex: Any, watched: Any) -> list[Job]:
        jobs = await super().get_watched_jobs(ex, watched)
        self._record(jobs)
        return list(jobs)


async def test_the_hub_never_reads_another_tenants_row(db_dsn: str, client: Client) -> None:
    """A subscriber of tenant A naming tenant B's job id makes the hub read no row of B."""
    other = await client.enqueue("render", {"video_id": "b"}, tenant="globex")
    store = _RecordingStore()
    hub = EventHub(db_dsn, store, client.pool)
    async with anyio.create_task_group() as tg:
        tg.start_soon(hub.run)
        with anyio.fail_after(10):
            await hub.wait_connected()
        with hub.subscribe(other.id, "acme"):
            payload = orjson.dumps([[str(other.id), "running", 10]]).decode()
            await client.pool.execute("SELECT pg_notify('skiplock.job', $1)", payload)
            await wait_until(lambda: store.reads >= 1, what="the hub to read the watched job")
        tg.cancel_scope.cancel()
    assert store.read_tenants == []


async def test_get_watched_jobs_matches_ids_with_their_own_tenant(client: Client) -> None:
    """The hub's read returns a row only for the (id, tenant) pair that owns it."""
    mine = await client.enqueue("render", {"video_id": "a"}, tenant="acme")
    theirs = await client.enqueue("render", {"video_id": "b"}, tenant="globex")
    store = Store()
    jobs = await store.get_watched_jobs(
        client.pool, [(mine.id, "acme"), (theirs.id, "acme"), (mine.id, "globex")]
    )
    assert [(j.id, j.tenant) for j in jobs] == [(mine.id, "acme")]
