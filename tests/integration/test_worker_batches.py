"""The worker's batched writes: bounded in bytes, and one refused row never wedges the rest."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog

from skiplock import Client, JobSpec
from skiplock.queue import Store
from skiplock.queue.store import Completion
from skiplock.worker.completer import Completer
from skiplock.worker.gate import WriteGate
from skiplock.worker.leases import LeaseTable
from skiplock.worker.metrics import WorkerMetrics
from skiplock.worker.outcomes import Outcomes
from skiplock.worker.probes import WorkerHealth
from skiplock.worker.settings import WorkerSettings
from skiplock.worker.shared import Shared
from tests.helpers import wait_for

MIB = 1024 * 1024


def _shared(client: Client, settings: WorkerSettings) -> Shared:
    shared = Shared(
        settings=settings,
        worker_id="batches",
        store=Store(),
        metrics=WorkerMetrics("batches"),
        health=WorkerHealth(db_fresh_for=10.0),
        log=structlog.get_logger("tests").bind(worker_id="batches"),
    )
    shared.attach(client.pool)
    return shared


@asynccontextmanager
async def _completer(client: Client, settings: WorkerSettings) -> AsyncIterator[Completer]:
    """A completer on the test database; its loop runs inside the block."""
    shared = _shared(client, settings)
    table = LeaseTable(shared)
    gate = WriteGate(10.0)
    completer = Completer(shared, table, gate, Outcomes("batches", settings.max_result_bytes))
    async with anyio.create_task_group() as tg:
        tg.start_soon(completer.run)
        yield completer
        tg.cancel_scope.cancel()


async def _claimed_outcomes(client: Client, count: int, result_bytes: int) -> list[Completion]:
    """``count`` jobs claimed, each with a ``succeeded`` outcome of a JSON string that size."""
    specs = [JobSpec("t") for _ in range(count)]
    await client.enqueue_many(specs)
    jobs = await client.store.claim_jobs(client.pool, ["default"], count, 60.0, "batches")
    assert len(jobs) == count
    result = '"' + "x" * (result_bytes - 2) + '"'
    return [
        Completion(j.id, j.lease_token, "succeeded", result_json=result)
        for j in jobs
        if j.lease_token is not None
    ]


async def _batch_sizes(client: Client, ids: list[uuid.UUID]) -> list[int]:
    """Jobs per complete_jobs statement: each statement stamps its rows with one now()."""
    rows = await client.pool.fetch(
        "SELECT finished_at FROM skiplock.jobs WHERE id = ANY($1::uuid[]) AND state = 'succeeded'",
        ids,
    )
    return sorted(Counter(r["finished_at"] for r in rows).values(), reverse=True)


async def _all_written(client: Client, ids: list[uuid.UUID]) -> list[int]:
    return await wait_for(
        lambda: _batch_sizes(client, ids),
        lambda sizes: sum(sizes) == len(ids),
        timeout=30,
        what="every outcome written",
    )


async def test_completion_batches_are_capped_in_bytes(client: Client) -> None:
    """Twelve buffered 1 MiB results are written in batches of at most 8 MiB by default."""
    outcomes = await _claimed_outcomes(client, 12, MIB)
    async with _completer(client, WorkerSettings()) as completer:
        for c in outcomes:
            completer.submit_unleased(c)
        sizes = await _all_written(client, [c.job_id for c in outcomes])
    assert max(sizes) * MIB <= 8 * MIB
    assert len(sizes) == 2


async def test_an_outcome_over_the_byte_cap_is_written_alone(client: Client) -> None:
    """An outcome larger than max_complete_bytes is still written, in a batch of its own."""
    outcomes = await _claimed_outcomes(client, 3, 4096)
    async with _completer(client, WorkerSettings(max_complete_bytes=1024)) as completer:
        for c in outcomes:
            completer.submit_unleased(c)
        sizes = await _all_written(client, [c.job_id for c in outcomes])
    assert sizes == [1, 1, 1]
