"""The rescuer: ``rescue_expired`` (sql/queries/rescue_expired.sql) takes back expired leases.

Every few seconds (jittered), jobs whose lease expired on any worker go back
to ``queued``, or end ``failed`` when no attempt is left (``cancelled`` when
their cancel was requested), in batches of :data:`RESCUE_BATCH`, with
``SKIP LOCKED`` so the rescuers of many workers never block each other.
"""

from __future__ import annotations

import random

import anyio

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.worker.shared import Shared

__all__ = ["RESCUE_BATCH", "Rescuer"]

RESCUE_BATCH = 500


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
