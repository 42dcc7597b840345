"""The completer: writes outcomes in batches with ``complete_jobs`` (sql/queries/complete_jobs.sql).

Outcomes go to a buffer; one loop writes everything buffered in one statement
(at most ``max_complete_batch`` outcomes and ``max_complete_bytes`` of their
text, see :func:`batch_length`), and the next batch as soon as that returns.
While the database is unreachable it retries as long as the leases hold; a
batch the database refuses for good is split until the refused outcomes are
found, and those end their jobs ``failed`` (``CompletionRefused``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from functools import partial

import anyio

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.queue.store import Completion
from skiplock.worker.gate import WriteGate, refused
from skiplock.worker.leases import Lease, LeaseTable
from skiplock.worker.outcomes import Outcomes, utf8_size
from skiplock.worker.shared import Shared

__all__ = ["Completer", "batch_length", "completion_bytes"]

ROW_OVERHEAD_BYTES = 64  # ids, token, outcome, numbers: what a row costs besides its text


def completion_bytes(c: Completion) -> int:
    """About how many bytes ``c`` adds to a ``complete_jobs`` statement."""
    size = ROW_OVERHEAD_BYTES
    for text in (c.result_json, c.error_json, c.message):
        if text is not None:
            size += utf8_size(text)
    return size


def batch_length(pending: Sequence[Completion], max_count: int, max_bytes: int) -> int:
    """How many of ``pending`` (from the front) the next statement writes.

    At most ``max_count``, and no more than ``max_bytes`` together, but always
    at least one: an outcome larger than the cap is written alone.
    """
    total = 0
    for n, c in enumerate(pending[:max_count]):
        total += completion_bytes(c)
        if total > max_bytes and n > 0:
            return n
    return min(len(pending), max_count)


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
            s = self._shared.settings
            while self._pending:
                n = batch_length(self._pending, s.max_complete_batch, s.max_complete_bytes)
                batch = self._pending[:n]
                del self._pending[:n]
                await self._write(batch)
            if not self._pending_leases:
                self._drained.set()

    async def _write(self, batch: list[Completion]) -> None:
        shared = self._shared
        backoff = 0.05
        timeout = self._gate.timeout
        while batch:
            try:
                written = await self._gate.write(
                    partial(shared.store.complete_jobs, shared.pool, batch), within=timeout
                )
            except TRANSIENT_DB_ERRORS as exc:
                shared.metrics.db_error("complete")
                if refused(exc):  # retrying would stall every completion behind it
                    await self._write_refused(batch, exc)
                    return
                if isinstance(exc, TimeoutError):
                    # A big batch (a 10 MB result on a busy server) may need longer
                    # than the gate's bound every time: give each retry twice as
                    # long, up to db_timeout, or it would be retried for ever.
                    timeout = min(timeout * 2, max(shared.settings.db_timeout, timeout))
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
