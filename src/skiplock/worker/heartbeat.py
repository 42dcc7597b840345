"""The heartbeat: ``heartbeat_jobs`` (sql/queries/heartbeat_jobs.sql) extends every held lease.

Every ``heartbeat_interval`` (a third of the lease by default), or at once
when asked (a listener reconnect), one statement extends all held leases and
returns which were asked to cancel; a missing row is a lost lease. A lease
that no heartbeat renews in time is given up locally by a timer in the lease
table, a fifth of the lease before its deadline: the database may be
unreachable, and another worker may take the job once the lease ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial

import anyio

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.worker.gate import WriteGate
from skiplock.worker.leases import Lease, LeaseTable
from skiplock.worker.shared import Shared

__all__ = ["Heartbeat"]


class Heartbeat:
    """Keeps the worker's leases alive and learns of cancels and lost leases."""

    def __init__(self, shared: Shared, table: LeaseTable, gate: WriteGate) -> None:
        self._shared = shared
        self._table = table
        self._gate = gate
        self.now = asyncio.Event()
        """Set to send a heartbeat at once instead of at the next interval."""

    async def run(self) -> None:
        """Beat every interval (or when :attr:`now` is set), forever."""
        shared = self._shared
        while True:
            with anyio.move_on_after(shared.settings.heartbeat_interval):
                await self.now.wait()
            self.now.clear()
            shared.health.alive("heartbeat")
            leases = list(self._table.leases.values())
            if leases:
                await self._beat(leases)
            else:
                shared.metrics.heartbeat_ok()  # nothing to extend: the pass succeeded

    async def _beat(self, leases: list[Lease]) -> None:
        shared = self._shared
        lease_seconds = shared.settings.lease
        sent_at = time.monotonic()
        try:
            # The deadline covers waiting for the gate: a write hanging on a dead
            # connection must not hold up the heartbeat and the local lease check.
            held = await self._gate.write(
                partial(
                    shared.store.heartbeat_jobs,
                    shared.pool,
                    [(lease.job.id, lease.token) for lease in leases],
                    lease_seconds,
                )
            )
        except TRANSIENT_DB_ERRORS as exc:
            shared.metrics.db_error("heartbeat")
            shared.health.db_failed(exc)
            shared.log.warning("heartbeat_failed", error=repr(exc), jobs=len(leases))
            return
        shared.metrics.heartbeat_ok()
        shared.health.db_ok()
        for lease in leases:
            cancel_requested = held.get(lease.job.id)
            if cancel_requested is None:
                if not lease.completing:
                    self._table.lose(lease, write="heartbeat")
                continue
            self._table.extend(lease, sent_at + lease_seconds)
            if cancel_requested and not lease.completing and lease.cancel_reason is None:
                shared.log.info("cancel_requested", job_id=str(lease.job.id))
                self._table.cancel(lease, "cancel_requested")

    def on_cancel_notification(self, payload: str) -> None:
        """A NOTIFY on ``<schema>.cancel`` naming a job this worker holds: beat now.

        Only a hint: any role that can connect can send one. The heartbeat
        returns each held job's real ``cancel_requested`` flag, and only that
        stops a handler.
        """
        for raw in payload.split(","):
            try:
                job_id = uuid.UUID(raw)
            except ValueError:
                continue
            lease = self._table.leases.get(job_id)
            if lease is not None and not lease.completing:
                self._shared.log.debug("cancel_notified", job_id=raw)
                self.now.set()
