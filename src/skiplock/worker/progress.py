"""The progress flusher: coalesced ``update_progress`` writes (sql/queries/update_progress.sql).

``ctx.progress()`` only records the latest report on the lease; this loop
writes at most one report per job per ``progress_interval``, all due jobs in
one fenced statement. The completion carries the latest report, so the final
value is always written even when the flusher never got to it. A report the
database refuses (a trigger, a constraint) is found by halving the batch and
dropped, so it never holds up the others.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

import anyio

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.queue.store import ProgressWrite
from skiplock.worker.context import ProgressReport
from skiplock.worker.gate import WriteGate, refused
from skiplock.worker.leases import Lease, LeaseTable
from skiplock.worker.shared import Shared

__all__ = ["ProgressFlusher"]


class ProgressFlusher:
    """Records handlers' reports and writes the due ones."""

    def __init__(self, shared: Shared, table: LeaseTable, gate: WriteGate) -> None:
        self._shared = shared
        self._table = table
        self._gate = gate
        self._ready = asyncio.Event()

    def report(self, lease: Lease, report: ProgressReport) -> None:
        """Record ``report`` as the lease's latest; callable from a handler's thread."""
        lease.progress = report
        loop = self._shared.loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._mark(lease)
        else:  # a sync handler's thread
            loop.call_soon_threadsafe(self._mark, lease)

    def _mark(self, lease: Lease) -> None:
        if not lease.completing:
            lease.progress_dirty = True
            self._ready.set()

    async def run(self) -> None:
        """Write due reports whenever there are some, forever."""
        interval = self._shared.settings.progress_interval
        while True:
            await self._ready.wait()
            self._ready.clear()
            while True:
                now = time.monotonic()
                dirty = [
                    lease
                    for lease in self._table.leases.values()
                    if lease.progress_dirty and not lease.completing
                ]
                if not dirty:
                    break
                due = [lease for lease in dirty if now - lease.progress_written_at >= interval]
                if not due:
                    wait = min(lease.progress_written_at + interval for lease in dirty) - now
                    await anyio.sleep(max(wait, 0.001))
                    continue
                await self._write(due, now)

    async def _write(self, leases: list[Lease], now: float) -> None:
        writes: list[tuple[Lease, ProgressReport, ProgressWrite]] = []
        for lease in leases:
            report = lease.progress
            assert report is not None
            lease.progress_dirty = False
            lease.progress_written_at = now
            write = ProgressWrite(
                lease.job.id, lease.token, report.percent, report.message, report.eta_seconds
            )
            writes.append((lease, report, write))
        await self._send(writes)

    async def _send(self, writes: list[tuple[Lease, ProgressReport, ProgressWrite]]) -> None:
        shared = self._shared
        try:
            written = await self._gate.write(
                partial(shared.store.update_progress, shared.pool, [w for _, _, w in writes])
            )
        except TRANSIENT_DB_ERRORS as exc:
            shared.metrics.db_error("progress")
            if refused(exc):  # retrying would stall every report behind it
                await self._send_refused(writes, exc)
                return
            shared.health.db_failed(exc)
            shared.log.warning("progress_write_failed", error=repr(exc), jobs=len(writes))
            for lease, _, _ in writes:
                lease.progress_dirty = True  # try again; the completion carries it anyway
            await anyio.sleep(min(1.0, shared.settings.heartbeat_interval))
            return
        shared.health.db_ok()
        for lease, _, _ in writes:
            if lease.job.id not in written and not lease.completing:
                self._table.lose(lease, write="progress")

    async def _send_refused(
        self, writes: list[tuple[Lease, ProgressReport, ProgressWrite]], exc: BaseException
    ) -> None:
        """Write what the database accepts of a refused batch; drop the refused reports.

        A batch of several is halved and each half sent again, as the completer
        does. A single refused report is dropped (logged ``progress_refused``):
        progress is advisory, and the completion must not carry it either, or
        the database would refuse the job's outcome too. The handler's next
        report is written as usual.
        """
        if len(writes) > 1:
            half = len(writes) // 2
            await self._send(writes[:half])
            await self._send(writes[half:])
            return
        ((lease, report, _),) = writes
        self._shared.log.error(
            "progress_refused", job_id=str(lease.job.id), task=lease.job.task, error=repr(exc)
        )
        if lease.progress is report:  # not replaced by a newer report meanwhile
            lease.progress = None
