"""The lease table: the attempts a worker holds, its slots, and stopping handlers.

Two bounds. ``concurrency`` handler slots: a slot is taken when a handler
starts and free again as soon as it returns (its outcome goes to the
completer). ``lease_cap`` (``max_leases``) leases: a lease is held from the
claim until the job's outcome is written (or given up), so a worker never
holds more, however slow the database is to take its completions. Claimed
jobs beyond the free handler slots (the prefetch, sized by
:class:`~skiplock.worker.sizer.ClaimSizer`) wait in ``waiting``, leased.
``running`` counts claimed jobs whose handler has not ended (waiting or
executing); ``idle`` is set when it drops to zero.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Literal

from skiplock.queue.models import Job
from skiplock.worker.context import JobContext, ProgressReport
from skiplock.worker.shared import Shared
from skiplock.worker.sizer import ClaimSizer

__all__ = ["CancelReason", "Lease", "LeaseTable"]

CancelReason = Literal["cancel_requested", "lease_lost", "shutdown", "paused"]

RECANCEL_SECONDS = 0.1  # a handler that swallowed a cancel is cancelled again this often
# A lease no heartbeat renewed is given up locally this share of its length before
# its deadline: the handler has that long to stop before another worker's rescuer
# may take the job (the deadline counts from before the renewal was sent, so the
# database's expiry is later still).
EXPIRY_MARGIN = 0.2


@dataclass(eq=False, slots=True)
class Lease:
    """One attempt this worker holds, from claim until its outcome is written."""

    job: Job
    token: uuid.UUID
    deadline: float  # monotonic time by which the lease may have run out
    ctx: JobContext | None = None  # dropped on release (ctx → its report → lease: a cycle)
    task: asyncio.Task[None] | None = None  # runs the executor
    begun: bool = False  # the executor task took its first step
    executing: bool = False  # inside the handler call: cancelling the task stops it
    cancels: int = 0  # task.cancel() calls we made (each needs its uncancel())
    timed_out: bool = False
    cancel_reason: CancelReason | None = None
    progress: ProgressReport | None = None  # latest report
    progress_dirty: bool = False
    progress_written_at: float = 0.0
    completing: bool = False  # outcome handed to the completer
    released: bool = False  # its slot is free again (outcome written or given up)


class LeaseTable:
    """Held leases by job id, handler tasks, slot and idle accounting."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self.leases: dict[uuid.UUID, Lease] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # one per claimed job, until it ends
        self.running = 0  # claimed jobs whose handler has not ended (waiting or executing)
        self.held = 0  # leases held: claimed and not yet written or given up
        self.waiting: deque[Lease] = deque()  # claimed, waiting for a handler slot
        s = shared.settings
        self._concurrency = s.concurrency
        self._cap = s.lease_cap
        self.sizer = ClaimSizer(s.concurrency, self._cap)
        self._margin = EXPIRY_MARGIN * s.lease
        self._timer: asyncio.TimerHandle | None = None  # the expiry check, at _timer_at
        self._timer_at = math.inf
        self.slot_free = asyncio.Event()
        """Set when a claim is wanted again (see :meth:`claim_wanted`)."""
        self.idle = asyncio.Event()

    @property
    def free(self) -> int:
        """Jobs a claim may ask for now: the free handler slots and the prefetch, within
        the lease cap."""
        return min(self._concurrency + self.sizer.prefetch - self.running, self._cap - self.held)

    def claim_wanted(self) -> bool:
        """Whether enough can be claimed for a claim to be worth its round trip."""
        return self.free >= self.sizer.threshold

    def _wake_claimer(self) -> None:
        if not self.slot_free.is_set() and self.free >= self.sizer.threshold:
            self.slot_free.set()

    def hold(self, lease: Lease) -> None:
        """A claimed lease takes a slot, counts as running, and is covered by the expiry
        timer."""
        self.leases[lease.job.id] = lease
        self.running += 1
        self.held += 1
        if lease.deadline - self._margin < self._timer_at:
            self._arm(lease.deadline - self._margin)

    def extend(self, lease: Lease, deadline: float) -> None:
        """A heartbeat renewed the lease until ``deadline`` (monotonic)."""
        lease.deadline = deadline
        if deadline - self._margin < self._timer_at:  # renewals move deadlines later
            self._arm(deadline - self._margin)

    def _arm(self, at: float) -> None:
        """Run the expiry check at ``at`` (monotonic), instead of any later time."""
        loop = self._shared.loop
        if loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(max(0.0, at - time.monotonic()), self._check_expiry)

    def _check_expiry(self) -> None:
        """No heartbeat renewed these leases in time: another worker may take their jobs.

        One timer for the whole table, at the earliest deadline (less the margin):
        a timer, not a check after each heartbeat, since a heartbeat hanging on a
        dead network would delay the check by up to its own deadline; one timer,
        not one per lease, since leases claimed together share their deadline and
        renewals only move deadlines later (so it mostly fires, finds nothing, and
        moves to the new earliest).
        """
        self._timer = None
        self._timer_at = math.inf
        now = time.monotonic()
        margin = self._margin
        earliest = math.inf
        for lease in list(self.leases.values()):
            at = lease.deadline - margin
            if at <= now:
                self._expired(lease)
            elif at < earliest:
                earliest = at
        if earliest < math.inf:
            self._arm(earliest)

    def _expired(self, lease: Lease) -> None:
        if lease.released or lease.completing or self.leases.get(lease.job.id) is not lease:
            return  # the completer gives up an unwritten outcome at the deadline itself
        self._shared.log.warning(
            "lease_expired_locally",
            job_id=str(lease.job.id),
            reason="no heartbeat reached the database within the lease (less a margin)",
        )
        self.lose(lease, write="heartbeat")

    def handler_ended(self, seconds: float | None = None) -> None:
        """One handler stopped executing after ``seconds`` (None: it never ran); its
        outcome may still be unwritten."""
        self.running -= 1
        if seconds is not None:
            self.sizer.handler_ended(seconds)
        if not self.running:
            self.idle.set()
        self._wake_claimer()

    def release(self, lease: Lease) -> None:
        """Free the lease's slot (once) and drop it from the table."""
        if not lease.released:
            lease.released = True
            self.held -= 1
            self._wake_claimer()
            # The handler has ended: break the lease ↔ context cycle so that the
            # job's objects go by reference counting, not by the cyclic collector
            # (which cost more than the rest of a no-op job's Python path).
            lease.ctx = None
            lease.task = None
        if self.leases.get(lease.job.id) is lease:
            del self.leases[lease.job.id]

    async def wait_idle(self) -> None:
        """Return once no handler is executing."""
        while self.running:
            self.idle.clear()
            await self.idle.wait()

    # -- stopping handlers --------------------------------------------------

    def cancel(self, lease: Lease, reason: CancelReason) -> None:
        """Tell the handler to stop (``ctx.cancelled``) and cancel its call."""
        if lease.cancel_reason is None:
            lease.cancel_reason = reason
        if lease.ctx is not None:
            lease.ctx._cancel(reason)
        self._stop_handler(lease)

    def time_out(self, lease: Lease) -> None:
        """The task's timeout ran out: stop the handler unless it is stopping already."""
        if lease.executing and lease.cancel_reason is None:
            lease.timed_out = True
            if lease.ctx is not None:
                lease.ctx._cancel("timeout")
            self._stop_handler(lease)

    def lose(self, lease: Lease, *, write: str) -> None:
        """The lease is gone (a fenced write found no row): stop its handler, write nothing."""
        self._shared.metrics.lease_lost(write)
        self._shared.log.warning(
            "lease_lost", job_id=str(lease.job.id), task=lease.job.task, write=write
        )
        self.leases.pop(lease.job.id, None)
        self.cancel(lease, "lease_lost")

    def _stop_handler(self, lease: Lease) -> None:
        """Cancel the handler call if it is running, and again until it stops."""
        if lease.executing and not lease.cancels:
            self._send_cancel(lease)

    def _send_cancel(self, lease: Lease) -> None:
        # A handler may catch the CancelledError and await again (cleanup code,
        # shield, a wait_for that swallowed it): cancel again until it returns,
        # as a cancel scope would.
        task = lease.task
        loop = self._shared.loop
        if not lease.executing or task is None or task.done() or loop is None:
            return
        lease.cancels += 1
        task.cancel()
        loop.call_later(RECANCEL_SECONDS, self._send_cancel, lease)
