"""The completer: writes outcomes in batches with ``complete_jobs`` (sql/queries/complete_jobs.sql).

Outcomes go to a buffer; one loop writes everything buffered in one statement
(at most ``max_complete_batch``), and the next batch as soon as that returns.
While the database is unreachable it retries as long as the leases hold; a
batch the database refuses for good is split until the refused outcomes are
found, and those end their jobs ``failed`` (``CompletionRefused``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial

import anyio

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.queue.store import Completion
from skiplock.worker.gate import WriteGate, refused
from skiplock.worker.leases import Lease, LeaseTable
from skiplock.worker.outcomes import Outcomes
from skiplock.worker.shared import Shared

__all__ = ["Completer"]


class Completer:
    """The buffer of outcomes and the loop that writes them."""

    def __init__(
        self, shared: Shared, table: LeaseTable, gate: WriteGate, outcomes: Outcomes
    ) -> None:
        self._shared = shared
        self._table = table
        self._gate = gate
        self._outcomes = outcomes
        self._pending: list[Completion] = []
        self._pending_leases: dict[uuid.UUID, Lease] = {}
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()

    def submit(self, lease: Lease, completion: Completion) -> None:
        """Queue ``lease``'s outcome; its slot is freed once it is written or given up."""
        lease.completing = True
        lease.progress_dirty = False
        self._pending.append(completion)
        self._pending_leases[lease.job.id] = lease
        self._ready.set()

    def submit_unleased(self, completion: Completion) -> None:
        """Queue an outcome that holds no slot (a claimed row no handler can take)."""
        self._pending.append(completion)
        self._ready.set()

    def forget(self, lease: Lease) -> None:
        """The lease is done with: free its slot, drop it from the table and the buffer."""
        self._table.release(lease)
        job_id = lease.job.id
        if self._pending_leases.get(job_id) is lease:
            del self._pending_leases[job_id]
        if not self._pending and not self._pending_leases:
            self._drained.set()

    async def wait_drained(self) -> None:
        """Return once every queued outcome is written or given up."""
        while self._pending or self._pending_leases:
            self._drained.clear()
            await self._drained.wait()

    async def run(self) -> None:
        """Write buffered outcomes, batch after batch, forever."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._pending:
                batch = self._pending[: self._shared.settings.max_complete_batch]
                del self._pending[: len(batch)]
                await self._write(batch)
            if not self._pending_leases:
                self._drained.set()

    async def _write(self, batch: list[Completion]) -> None:
        shared = self._shared
        backoff = 0.05
        while batch:
            try:
                written = await self._gate.write(
                    partial(shared.store.complete_jobs, shared.pool, batch)
                )
            except TRANSIENT_DB_ERRORS as exc:
                shared.metrics.db_error("complete")
                if refused(exc):  # retrying would stall every completion behind it
                    await self._write_refused(batch, exc)
                    return
                shared.health.db_failed(exc)
                now = time.monotonic()
                keep: list[Completion] = []
                for c in batch:
                    lease = self._pending_leases.get(c.job_id)
                    if lease is not None and lease.deadline > now:
                        keep.append(c)
                    else:
                        shared.log.warning(
                            "completion_abandoned", job_id=str(c.job_id), reason="lease_expired"
                        )
                        if lease is not None:
                            self.forget(lease)
                batch = keep
                shared.log.warning(
                    "completion_write_failed", error=repr(exc), jobs=len(batch), retry_in=backoff
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            shared.metrics.completion_batch(len(batch))
            shared.health.db_ok()
            for c in batch:
                lease = self._pending_leases.get(c.job_id)
                if c.job_id not in written:
                    shared.metrics.lease_lost("completion")
                    shared.log.warning(
                        "lease_lost", job_id=str(c.job_id), outcome=c.outcome, write="completion"
                    )
                if lease is not None:
                    self.forget(lease)
            return

    async def _write_refused(self, batch: list[Completion], exc: BaseException) -> None:
        """Write what the database accepts of a refused batch; fail the refused outcomes.

        A batch of several is halved and each half written again, so the refused
        completions are found in O(k log n) statements and the others written. A
        single refused one ends its job ``failed`` (``CompletionRefused``, with the
        database's message, no result) in one more statement; refused again, the
        lease is given up and the rescuer takes the job when it expires.
        """
        if len(batch) > 1:
            half = len(batch) // 2
            await self._write(batch[:half])
            await self._write(batch[half:])
            return
        shared = self._shared
        (refused_one,) = batch
        lease = self._pending_leases.get(refused_one.job_id)
        shared.log.error(
            "completion_refused",
            job_id=str(refused_one.job_id),
            outcome=refused_one.outcome,
            error=repr(exc),
        )
        failure = self._outcomes.failed_outright(
            refused_one.job_id,
            refused_one.lease_token,
            lease.job.attempt if lease is not None else 0,
            "CompletionRefused",
            f"the database refused this attempt's outcome ({refused_one.outcome}): {exc}",
        )
        try:
            await self._gate.write(partial(shared.store.complete_jobs, shared.pool, [failure]))
        except TRANSIENT_DB_ERRORS as again:
            shared.log.error(
                "completion_abandoned", job_id=str(refused_one.job_id), error=repr(again)
            )
        if lease is not None:
            self.forget(lease)
