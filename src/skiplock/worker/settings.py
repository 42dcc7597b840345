"""How a worker behaves: :class:`WorkerSettings`, validated when built."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from skiplock.queue.listener import check_listen_url
from skiplock.queue.store import DEFAULT_STATEMENT_CACHE_SIZE
from skiplock.worker.retention import RetentionPolicy

__all__ = ["WorkerSettings", "default_worker_id"]


def default_worker_id() -> str:
    """``host:pid:random``: unique per process, readable in the jobs table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker behaves. Times are in seconds.

    ``concurrency`` caps the handlers running at once; a handler's slot is free
    again as soon as it returns (its outcome goes to the background writer).
    ``max_leases`` caps the leases the worker holds at once: jobs claimed and
    not yet started, running, and finished with their outcome not yet written
    (None: ``max(4 × concurrency, 1000)``). The claim batch adapts: a claim asks
    for the free handler slots plus a prefetch, which grows (doubling, from
    ``concurrency``) while claims come back full and is bounded by the jobs
    the handlers get through in one claim round trip (short jobs: many; jobs
    that take longer than a claim round trip: none); a claim that comes back
    short halves it. Prefetched jobs wait for a free handler slot with their
    lease held (and renewed). The claim batch never exceeds
    ``max_claim_batch``. When a worker dies, the jobs it held (at most
    ``max_leases``) go back to ``queued`` and run again, attempt counted.

    ``heartbeat`` defaults to a third of ``lease``. ``progress_interval`` is the
    minimum time between two progress writes of one job (0.1 s: at most 10
    writes per job per second). ``max_result_bytes`` caps a handler's JSON result.
    One ``complete_jobs`` statement writes at most ``max_complete_batch``
    outcomes and about ``max_complete_bytes`` of results, errors and messages
    (an outcome larger than that is written alone): PostgreSQL refuses a
    message over 1 GiB, and a smaller batch holds fewer locks for less time.

    ``probe_port``: serve ``/livez``, ``/readyz`` (and ``/metrics`` when
    ``metrics``) on ``probe_host`` at this port (0: any free port; None: no
    server). ``probe_file``: rewrite this file every ``probe_file_interval``
    seconds while live, for exec probes. ``retention``: delete old finished
    jobs from this worker by that policy (None: never). ``schedule_poll``: how
    often the worker looks for due ticks of periodic jobs (every worker does;
    each tick is enqueued once).

    ``worker_id`` names the worker in the jobs it runs; it must be unique among
    live workers (the default, ``host:pid:random``, is). A worker gives back
    the rows running under its id with tokens it does not hold (claims whose
    reply it lost): two live workers sharing an id would release each other's
    jobs.

    Behind PgBouncer in transaction mode (see docs/operations.md):
    ``statement_cache_size=0`` (asyncpg's named prepared statements do not
    survive the pooler), and ``listen_url`` a direct URL for the LISTEN and
    presence connections, or ``"none"`` to poll only (claims every ``poll``
    seconds, cancel requests learnt at the next heartbeat, no presence lock:
    a crashed worker's jobs wait for their lease). ``listen_url`` None: the
    main URL.

    ``async_commit``: the worker's own writes (claims, completions, heartbeats,
    progress) commit without waiting for the WAL flush
    (``synchronous_commit=off`` on its sessions; enqueues stay durable). A
    claim no longer waits for the disk before its handler starts. The price:
    a PostgreSQL *crash* (not a restart) can lose the last few hundred
    milliseconds of them. A lost claim puts its job back to queued (it runs
    again; the fencing refuses the old attempt's writes); a lost completion
    leaves its job running under the old lease, so the rescuer re-queues it
    with one more attempt counted, and a job on its last attempt then ends
    ``failed`` (``LeaseExpired``) although its handler succeeded. Off by
    default.
    """

    queues: Sequence[str] = ("default",)
    concurrency: int = 10
    max_leases: int | None = None
    lease: float = 30.0
    heartbeat: float | None = None
    poll: float = 1.0
    rescue: float = 5.0
    shutdown_grace: float = 30.0
    progress_interval: float = 0.1
    max_claim_batch: int = 1000
    max_complete_batch: int = 2000
    max_complete_bytes: int = 8 * 1024 * 1024
    max_result_bytes: int = 16 * 1024 * 1024
    db_timeout: float = 10.0
    schema: str = "skiplock"
    worker_id: str | None = None
    probe_port: int | None = None
    probe_host: str = "0.0.0.0"  # noqa: S104 (the kubelet connects from outside the pod)
    probe_file: str | None = None
    probe_file_interval: float = 10.0
    metrics: bool = True
    retention: RetentionPolicy | None = None
    async_commit: bool = False
    statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE
    listen_url: str | None = None
    schedule_poll: float = 1.0

    def __post_init__(self) -> None:
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_leases is not None and self.max_leases < self.concurrency:
            raise ValueError("max_leases must be at least concurrency")
        if self.lease <= 0.5:
            raise ValueError("lease must be longer than 0.5 s")
        if self.heartbeat is not None and not 0 < self.heartbeat < self.lease:
            raise ValueError("heartbeat must be positive and shorter than the lease")
        if self.poll <= 0 or self.rescue <= 0 or self.shutdown_grace < 0:
            raise ValueError("poll and rescue must be positive, shutdown_grace non-negative")
        if not self.schedule_poll > 0:
            raise ValueError("schedule_poll must be positive")
        if self.probe_port is not None and not 0 <= self.probe_port <= 65535:
            raise ValueError("probe_port must be between 0 and 65535")
        if self.max_claim_batch < 1 or self.max_complete_batch < 1:
            raise ValueError("max_claim_batch and max_complete_batch must be at least 1")
        if self.max_complete_bytes < 1 or self.max_result_bytes < 1:
            raise ValueError("max_complete_bytes and max_result_bytes must be at least 1")
        if self.statement_cache_size < 0:
            raise ValueError("statement_cache_size must be 0 (no cache) or more")
        check_listen_url(self.listen_url)
        if self.probe_file_interval <= 0:
            raise ValueError("probe_file_interval must be positive")

    @property
    def lease_cap(self) -> int:
        """The most leases the worker holds at once (``max_leases`` or its default)."""
        if self.max_leases is not None:
            return self.max_leases
        return max(4 * self.concurrency, 1000)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between two heartbeats."""
        return self.heartbeat if self.heartbeat is not None else self.lease / 3
