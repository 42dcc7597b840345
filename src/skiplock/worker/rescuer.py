"""The rescuer: takes back the jobs of dead workers and expired leases.

About every second (jittered), ``dead_workers`` (sql/queries/dead_workers.sql;
it reads only the workers table and ``pg_locks``) finds registered workers
whose presence lock is gone: their process died and PostgreSQL closed its
connections (see ``presence.py``). ``rescue_dead_workers`` re-queues their
running jobs at once (attempt counted, ``WorkerDied``) and
``forget_dead_workers`` deletes their registrations.

Every few seconds (jittered), ``rescue_expired`` (sql/queries/rescue_expired.sql)
takes back jobs whose lease expired on any worker, for what the database
cannot see (a hung but connected worker, a partition, an unregistered one).

Both put jobs back to ``queued``, or end them ``failed`` when no attempt is
left (``cancelled`` when their cancel was requested), in batches of
:data:`RESCUE_BATCH`, with ``SKIP LOCKED`` so the rescuers of many workers
never block each other.
"""

from __future__ import annotations

import random

import anyio

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.worker.shared import Shared

__all__ = ["DEAD_WORKER_CHECK", "RESCUE_BATCH", "Rescuer"]

RESCUE_BATCH = 500
DEAD_WORKER_CHECK = 1.0  # seconds between dead-worker checks (0.5–1× jittered)


class Rescuer:
    """The loop that re-queues (or fails) jobs whose lease expired anywhere."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared

    async def run(self) -> None:
        """Rescue every ``rescue`` seconds (0.5–1× jittered), forever."""
        shared = self._shared
        s = shared.settings
        while True:
            await anyio.sleep(s.rescue * random.uniform(0.5, 1.0))
            shared.health.alive("rescuer")
            try:
                while True:
                    with anyio.fail_after(s.db_timeout):
                        rescued = await shared.store.rescue_expired(shared.pool, RESCUE_BATCH)
                    shared.health.db_ok()
                    shared.health.alive("rescuer")
                    for r in rescued:
                        shared.log.warning(
                            "lease_expired_job_rescued",
                            job_id=str(r.job_id),
                            state=r.state.value,
                            attempt=r.attempt,
                            previous_worker=r.worker_id,
                        )
                    if len(rescued) < RESCUE_BATCH:
                        break
            except TRANSIENT_DB_ERRORS as exc:
                shared.metrics.db_error("rescue")
                shared.health.db_failed(exc)
                shared.log.warning("rescue_failed", error=repr(exc))

    async def watch_workers(self) -> None:
        """Every :data:`DEAD_WORKER_CHECK` seconds (0.5–1× jittered), rescue the jobs
        of workers whose presence lock is gone, then forget those workers."""
        shared = self._shared
        s = shared.settings
        while True:
            await anyio.sleep(DEAD_WORKER_CHECK * random.uniform(0.5, 1.0))
            try:
                with anyio.fail_after(s.db_timeout):
                    dead = await shared.store.dead_workers(shared.pool)
                if dead:
                    await self._rescue_dead(dead)
            except TRANSIENT_DB_ERRORS as exc:
                shared.metrics.db_error("rescue")
                shared.health.db_failed(exc)
                shared.log.warning("dead_worker_check_failed", error=repr(exc))

    async def _rescue_dead(self, dead: list[str]) -> None:
        shared = self._shared
        s = shared.settings
        while True:
            with anyio.fail_after(s.db_timeout):
                rescued = await shared.store.rescue_dead_workers(
                    shared.pool, dead, [], RESCUE_BATCH
                )
            for r in rescued:
                shared.log.warning(
                    "dead_worker_job_rescued",
                    job_id=str(r.job_id),
                    state=r.state.value,
                    attempt=r.attempt,
                    previous_worker=r.worker_id,
                )
            if len(rescued) < RESCUE_BATCH:
                break
        with anyio.fail_after(s.db_timeout):
            forgotten = await shared.store.forget_dead_workers(shared.pool, dead)
        for worker_id in forgotten:
            shared.log.info("dead_worker_forgotten", dead_worker=worker_id)
