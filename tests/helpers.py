"""Waiting for states and events, never sleeping to synchronise."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from skiplock import ALL_TENANTS, Client, Job, JobSpec, JobState
from skiplock.queue import Store

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float = 10.0,
    what: str = "condition",
) -> T:
    """Call ``probe`` until ``accept`` says yes; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        await anyio.sleep(0.01)
        value = await probe()
    return value


async def wait_for_state(
    client: Client,
    job_id: uuid.UUID,
    states: JobState | Iterable[JobState],
    *,
    timeout: float = 10.0,
) -> Job:
    """Wait until the job is in one of ``states`` and return it."""
    wanted = {states} if isinstance(states, JobState) else set(states)

    async def probe() -> Job | None:
        return await client.get(job_id, tenant=ALL_TENANTS)

    job = await wait_for(
        probe,
        lambda j: j is not None and j.state in wanted,
        timeout=timeout,
        what=f"job {job_id} in {sorted(s.value for s in wanted)}",
    )
    assert job is not None
    return job


async def wait_until(
    condition: Callable[[], bool], *, within: float = 10.0, what: str = "condition"
) -> None:
    """Wait until a local condition (one the test's own callbacks update) holds."""

    async def probe() -> bool:
        return condition()

    await wait_for(probe, bool, timeout=within, what=what)


# Statements announce their changes through skiplock.announce (migration 0009);
# replacing it with a function that sends nothing silences every NOTIFY about
# jobs in that database, as a dead listener or a transaction-mode pooler would.
SILENCE_ANNOUNCEMENTS = """
CREATE OR REPLACE FUNCTION skiplock.announce(
    ids uuid[], states skiplock.job_state[], progress real[],
    queued_queues text[] DEFAULT NULL, cancelling uuid[] DEFAULT NULL
) RETURNS integer LANGUAGE sql VOLATILE AS 'SELECT 0'
"""


async def enqueue_keyed(
    conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
    specs: Sequence[JobSpec],
    keys: Sequence[Sequence[str]],
    *,
    schema: str = "skiplock",
) -> list[uuid.UUID]:
    """Enqueue ``specs``, each with the limit keys of the same place in ``keys``; their ids."""
    if len(specs) != len(keys):
        raise ValueError("one list of keys per spec")
    keyed = [dataclasses.replace(s, limit_keys=tuple(k)) for s, k in zip(specs, keys, strict=True)]
    jobs = await Store(schema).enqueue_many(conn, keyed, strict=True)
    ids = [job.id for job in jobs if job is not None]
    assert len(ids) == len(specs)
    return ids
