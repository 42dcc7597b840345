"""The claimer: ``claim_jobs`` (sql/queries/claim_jobs.sql) takes jobs as fenced leases.

It waits until a claim is wanted, claims a batch sized to the free handler
slots plus the prefetch (``sizer.py``), within the lease cap and
``max_claim_batch``, in one ``FOR UPDATE SKIP LOCKED`` statement and hands
each job to the executor. When it got fewer jobs than it asked for, it waits
for a NOTIFY on ``<schema>.queue`` or a jittered poll timer.

A claim that failed may have committed all the same (its reply timed out or
its connection died after the server's commit): its rows would stay
``running`` under this worker with tokens it never saw. Before the next claim
``release_orphans`` (sql/queries/release_orphans.sql) gives them back,
attempt not counted. It runs between claims, never beside one, so a claim in
flight is never taken for orphaned; this relies on worker ids being unique
among live workers.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from datetime import timedelta

import anyio

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.queue.models import Job
from skiplock.queue.store import Unreadable, next_fair_key
from skiplock.worker.completer import Completer
from skiplock.worker.executor import Executor
from skiplock.worker.leases import Lease, LeaseTable
from skiplock.worker.outcomes import Outcomes
from skiplock.worker.shared import Shared

__all__ = ["Claimer"]


class Claimer:
    """The claim loop, and the wake-ups (notifications, stop) that end its waits."""

    def __init__(
        self,
        shared: Shared,
        table: LeaseTable,
        executor: Executor,
        completer: Completer,
        outcomes: Outcomes,
    ) -> None:
        self._shared = shared
        self._table = table
        self._executor = executor
        self._completer = completer
        self._outcomes = outcomes
        self._queues = list(shared.settings.queues)
        self._queue_set = frozenset(self._queues)
        self._stopping = False
        self._orphans_possible = False  # a claim failed: it may have committed
        # Whether notifications wake this worker: polling only, a claim found by the
        # timer missed no notification.
        self.listening = True
        # Tokens of claimed rows that could not be decoded: their failure is being
        # written by the completer without a lease in the table.
        self._unleased: deque[uuid.UUID] = deque(maxlen=1000)
        self.wake = asyncio.Event()
        """Set to claim now rather than at the next poll."""
        self._allowed = asyncio.Event()
        self._allowed.set()
        # queue -> when (perf_counter) its pause was announced: a claim sent before
        # that may return jobs of it, which are given back instead of started.
        self._paused_at: dict[str, float] = {}
        self._fair_after: str | None = None  # the last fair key served: fair claims go on after it

    def stop(self) -> None:
        """Claim no more; :meth:`run` returns."""
        self._stopping = True
        self.wake.set()
        self._allowed.set()
        self._table.slot_free.set()

    def pause(self) -> None:
        """Claim nothing until :meth:`resume` (the worker's presence is lost: rescuers
        would take whatever it claimed)."""
        self._allowed.clear()

    def resume(self) -> None:
        """Claim again, at once."""
        self._allowed.set()
        self.wake.set()

    def on_queue_notification(self, payload: str) -> None:
        """A NOTIFY on ``<schema>.queue``: claim now when one of our queues is named."""
        # '*': too many queues to list in one payload (migration 0005): all of them.
        if payload == "*" or self._queue_set.intersection(payload.split(",")):
            self.wake.set()

    def on_flow_notification(self, payload: str) -> None:
        """A NOTIFY on ``<schema>.flow``: ``paused:<queue>`` gives back the jobs of
        that queue claimed but not started."""
        kind, _, queue = payload.partition(":")
        if kind == "paused" and queue in self._queue_set:
            self._paused_at[queue] = time.perf_counter()
            given = self._executor.release_waiting({queue})
            self._shared.log.info("queue_paused", queue=queue, released=given)

    async def _check_paused(self) -> None:
        """At a poll, for a worker that may have missed a notification: give back the
        waiting jobs of paused queues."""
        shared = self._shared
        if not self._table.waiting:
            return
        try:
            with anyio.fail_after(shared.settings.db_timeout):
                paused = await shared.store.paused_queues(shared.pool, self._queues)
        except TRANSIENT_DB_ERRORS:
            return  # the claim that follows reports the outage
        if paused:
            self._executor.release_waiting(paused)

    async def run(self) -> None:
        """Claim until stopped."""
        shared = self._shared
        s = shared.settings
        table = self._table
        loop = asyncio.get_running_loop()
        backoff = 0.1
        by_poll = False  # this claim was woken by the poll timer, not a notification
        previous: float | None = None  # when the last claim that succeeded was sent
        while not self._stopping:
            if not self._allowed.is_set():
                await self._allowed.wait()
                continue
            if self._orphans_possible and not await self._release_orphans():
                await self._sleep_or_wake(backoff)
                backoff = min(backoff * 2, s.poll * 5)
                continue
            if not table.claim_wanted():
                table.slot_free.clear()
                await table.slot_free.wait()
                by_poll = False
                continue
            free = table.free
            self.wake.clear()
            limit = min(free, s.max_claim_batch)
            deadline = time.monotonic() + s.lease
            claim_started = time.perf_counter()
            try:
                with anyio.fail_after(s.db_timeout):
                    jobs = await shared.store.claim_jobs(
                        shared.pool,
                        self._queues,
                        limit,
                        s.lease,
                        shared.worker_id,
                        fair_after=self._fair_after,
                        on_unreadable=self._fail_unreadable,
                    )
            except TRANSIENT_DB_ERRORS as exc:
                self._orphans_possible = True
                shared.metrics.db_error("claim")
                shared.health.db_failed(exc)
                shared.log.warning("claim_failed", error=repr(exc), retry_in=round(backoff, 2))
                await self._sleep_or_wake(backoff)
                backoff = min(backoff * 2, s.poll * 5)
                by_poll = False
                continue
            answered = time.perf_counter()
            self._fair_after = next_fair_key(self._fair_after, jobs)
            missed = 0
            if by_poll and self.listening and jobs and previous is not None:
                missed = _due_before(jobs, answered - previous)
            previous = claim_started
            shared.metrics.claimed(len(jobs), answered - claim_started, missed=missed)
            table.sizer.claimed(limit, len(jobs), answered - claim_started)
            shared.health.db_ok()
            by_poll = False
            backoff = 0.1
            paused_at = self._paused_at
            for job in jobs:
                assert job.lease_token is not None
                lease = Lease(job=job, token=job.lease_token, deadline=deadline)
                if paused_at and paused_at.get(job.queue, 0.0) > claim_started:
                    self._executor.release(lease, loop)
                else:
                    self._executor.start(lease, loop)
            if jobs:
                shared.log.debug("jobs_claimed", count=len(jobs))
            if len(jobs) < limit:
                by_poll = not await self._sleep_or_wake(s.poll * random.uniform(0.8, 1.2))
                if by_poll:
                    await self._check_paused()

    async def _release_orphans(self) -> bool:
        """Give back the rows a lost claim reply left under this worker; whether done."""
        shared = self._shared
        held = [lease.token for lease in self._table.leases.values()]
        held.extend(self._unleased)
        try:
            with anyio.fail_after(shared.settings.db_timeout):
                released = await shared.store.release_orphans(shared.pool, shared.worker_id, held)
        except TRANSIENT_DB_ERRORS as exc:
            shared.metrics.db_error("claim")
            shared.health.db_failed(exc)
            shared.log.warning("release_orphans_failed", error=repr(exc))
            return False
        self._orphans_possible = False
        for job_id, state in released:
            shared.log.warning(
                "claim_lost_job_released",
                job_id=str(job_id),
                state=state.value,
                reason="claimed by a claim whose reply never arrived; attempt not counted",
            )
        return True

    async def _sleep_or_wake(self, seconds: float) -> bool:
        """Wait for a wake-up or ``seconds``; whether woken (False: the timer ran out)."""
        with anyio.move_on_after(seconds):
            await self.wake.wait()
            return True
        return False

    def _fail_unreadable(self, row: Unreadable) -> None:
        """A claimed row that cannot be decoded fails at once (no handler can take it)."""
        self._shared.log.error("job_unreadable", job_id=str(row.job_id), error=row.error)
        self._unleased.append(row.lease_token)
        self._completer.submit_unleased(
            self._outcomes.failed_outright(
                row.job_id,
                row.lease_token,
                row.attempt,
                "UnreadableJob",
                f"the job's stored JSON cannot be decoded: {row.error}",
            )
        )


def _due_before(jobs: list[Job], since_previous: float) -> int:
    """How many of ``jobs`` were already due when the previous claim ran.

    Such a job was committed after that claim (else it had taken it) and
    announced by no notification that reached us: a missed notification. A job
    whose ``run_at`` came later (a delay, a retry's backoff) was not due then,
    and no notification is sent when a delay runs out. The previous claim's
    database time is bounded from below without another round trip: this
    claim's ``now()`` (every claimed row's ``started_at``) minus the local time
    from sending the previous claim to receiving this one's answer.
    """
    started_at = jobs[0].started_at
    assert started_at is not None
    bound = started_at - timedelta(seconds=since_previous)
    return sum(1 for job in jobs if job.run_at <= bound)
