"""Worker processes broken on purpose: SIGKILL, SIGSTOP past the lease, SIGTERM, poison jobs.

Every test runs real ``skiplock worker`` processes (tests/apps/faulty.py),
strikes while they hold jobs, and ends with :func:`check_invariants`.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable

import pytest

from skiplock import JobSpec
from tests.faults.conftest import Report
from tests.faults.fleet import (
    FAST,
    STARTUP,
    Db,
    Fleet,
    log_count,
    log_records,
    still_works,
    work_specs,
)
from tests.faults.invariants import check_invariants
from tests.helpers import wait_for
from tests.worker_helpers import WorkerProcess

# Process start-up and lease expiry on a loaded machine: more than the default 120 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LEASE = float(FAST["lease"])
HEARTBEAT = float(FAST["heartbeat"])
RESCUE = float(FAST["rescue"])
CONCURRENCY = int(FAST["concurrency"])
# Room for a loaded two-core machine on top of every promised time.
MARGIN = 5.0


async def test_sigkill_mid_job_reruns_each_job_in_flight_exactly_once(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
) -> None:
    """kill -9 a worker under load: each job it held runs exactly once more, within the lease."""
    f, db = fleet(fault_dsn), probes(fault_dsn)
    # A takes the long jobs (first by priority); B is kept busy by a stream of short ones
    ids = await db.enqueue(work_specs(CONCURRENCY, ms=3000, steps=30))
    a = await f.start("A")
    await db.holding("A", CONCURRENCY)
    ids += await db.enqueue(work_specs(150, priority=1, ms=60, steps=2))
    await f.start("B")
    await db.holding("B", CONCURRENCY)

    fault_at = await db.now()
    a.process.kill()
    assert await a.wait_exit(within=MARGIN) == -signal.SIGKILL
    in_flight = await db.running_on("A")  # A is dead: these are the leases it died with
    assert in_flight, "A held no job when it was killed"

    await db.wait_ended(ids, within=STARTUP + len(ids))
    figures = await check_invariants(
        fault_dsn,
        ids,
        max_reruns=len(in_flight),
        fault_at=fault_at,
        affected=in_flight,
        recover_within=LEASE + RESCUE + MARGIN,
    )
    reruns = await db.fetch(
        "SELECT j.id, j.attempt, j.state::text AS state,"
        " count(*) FILTER (WHERE e.worker_id <> 'A') AS after_kill,"
        " (j.errors -> 0 ->> 'type') AS error"
        " FROM skiplock.jobs j LEFT JOIN public.executions e ON e.job_id = j.id"
        " WHERE j.id = ANY($1::uuid[]) GROUP BY j.id",
        in_flight,
    )
    # rescued by the dead-worker check (WorkerDied) or, when the lease ran out first,
    # by the lease (LeaseExpired)
    assert {(r["state"], r["attempt"], r["after_kill"]) for r in reruns} == {("succeeded", 2, 1)}
    assert {r["error"] for r in reruns} <= {"WorkerDied", "LeaseExpired"}
    report(in_flight=len(in_flight), lease_s=LEASE, **figures.as_dict())


async def test_sigstopped_worker_past_its_lease_is_fenced_off_and_stops_its_handlers(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
) -> None:
    """SIGSTOP a worker past its lease, then SIGCONT: its late writes are refused, it stops."""
    f, db = fleet(fault_dsn), probes(fault_dsn)
    ids = await db.enqueue(work_specs(CONCURRENCY, ms=3000, steps=30))
    a = await f.start("A")
    held = await db.holding("A", CONCURRENCY)
    b = await f.start("B")
    await b.wait_for_log("listener_connected", within=STARTUP)

    fault_at = await db.now()
    a.send_signal(signal.SIGSTOP)
    # B rescues the expired leases and runs every job to the end while A is frozen
    await db.wait_ended(ids, within=LEASE + 3 + STARTUP)
    frozen_for = (await db.now() - fault_at).total_seconds()
    assert frozen_for > LEASE

    thawed = time.monotonic()
    a.send_signal(signal.SIGCONT)
    await wait_for(
        lambda: _logged(a, "job_abandoned"),
        lambda n: n >= len(held),
        timeout=HEARTBEAT + MARGIN,
        what="A to give up every handler it held",
    )
    noticed = time.monotonic() - thawed
    lost = log_records(a.log_path, "lease_lost")
    stopped = await db.fetch(
        "SELECT stop_reason, finished IS NOT NULL AS finished FROM public.executions"
        " WHERE worker_id = 'A'"
    )
    # A stopped every handler because its lease was gone; none ran to its end
    assert [(r["stop_reason"], r["finished"]) for r in stopped] == [("lease_lost", False)] * len(
        held
    )
    extra = await still_works(db, a, [b])
    figures = await check_invariants(
        fault_dsn,
        [*ids, extra],
        max_reruns=len(held),
        fault_at=fault_at,
        affected=held,
        recover_within=LEASE + RESCUE + MARGIN,
    )
    report(
        frozen_s=round(frozen_for, 2),
        noticed_after_thaw_s=round(noticed, 2),
        heartbeat_s=HEARTBEAT,
        refused_writes=len(lost),
        **figures.as_dict(),
    )


async def _logged(worker: WorkerProcess, event: str) -> int:
    return log_count(worker, event)


async def test_sigterm_under_load_exits_in_grace_and_requeues_at_once(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
) -> None:
    """SIGTERM a busy worker: it exits within grace + 2 s, its unfinished jobs queued at once."""
    grace = 1.0
    f, db = fleet(fault_dsn), probes(fault_dsn)
    # 5 s jobs: none of A's can end by itself within the 1 s grace.
    ids = await db.enqueue(work_specs(16, ms=5000, steps=10))
    # 60 s leases: only the release, never the rescuer, can hand a job on within the test
    slow_lease = {"lease": 60, "heartbeat": 1}
    # B first, then A, and A is signalled as soon as its handlers run: a worker process
    # starting on a loaded machine can take longer than a job, so starting B after A
    # let A's first jobs finish before the signal and made the held set a guess.
    await f.start("B", **slow_lease)
    await db.holding("B", CONCURRENCY)
    a = await f.start("A", concurrency=8, shutdown_grace=grace, **slow_lease)
    held = await db.holding("A", 8)

    fault_at = await db.now()
    signalled = time.monotonic()
    a.send_signal(signal.SIGTERM)
    assert await a.wait_exit(within=grace + 2) == 0
    exited = time.monotonic() - signalled
    assert await db.running_on("A") == []
    released = await db.fetch(
        "SELECT job_id, at FROM public.job_events WHERE kind = 'end' AND worker_id = 'A'"
        " AND state = 'queued' AND error_type IS NULL"
    )
    assert {r["job_id"] for r in released} == set(held)
    # queued "at once": within a moment of the grace running out, not after any lease
    latest = max(r["at"] for r in released)
    assert (latest - fault_at).total_seconds() < grace + 2

    await f.start("C", concurrency=8, **slow_lease)
    await db.wait_ended(ids, within=STARTUP + 30)
    figures = await check_invariants(
        fault_dsn, ids, max_reruns=len(held), fault_at=fault_at, affected=held
    )
    attempts = await db.fetch(
        "SELECT DISTINCT attempt FROM skiplock.jobs WHERE id = ANY($1::uuid[])", ids
    )
    assert [r["attempt"] for r in attempts] == [1]  # released attempts were given back
    report(
        exit_after_sigterm_s=round(exited, 2),
        grace_s=grace,
        released=len(released),
        **figures.as_dict(),
    )


async def _healthy_rate(db: Db, job_ids: list[uuid.UUID]) -> float:
    """Healthy jobs finished per second, from the first claim to the last end among them."""
    row = await db.fetch(
        "SELECT count(DISTINCT job_id) FILTER (WHERE kind = 'end') AS done,"
        " extract(epoch FROM max(at) - min(at)) AS seconds"
        " FROM public.job_events WHERE job_id = ANY($1::uuid[]) AND kind IN ('claim', 'end')",
        job_ids,
    )
    return float(row[0]["done"]) / max(float(row[0]["seconds"]), 1e-3)


async def test_poison_jobs_fail_after_exactly_max_attempts_while_healthy_jobs_flow(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
) -> None:
    """Jobs that raise, hang or kill their worker fail after exactly max_attempts; others flow."""
    f, db = fleet(fault_dsn), probes(fault_dsn)
    workers = [await f.start_supervised(name) for name in ("P1", "P2")]
    for w in workers:
        await w.current.wait_for_log("listener_connected", within=STARTUP)
    attempts = 3

    async def phase(*poison_tasks: str) -> tuple[list[uuid.UUID], list[uuid.UUID], float]:
        """Run ``poison_tasks`` next to 600 healthy jobs; (poison, healthy, healthy jobs/s)."""
        poison = await db.enqueue([JobSpec(task=t, max_attempts=attempts) for t in poison_tasks])
        healthy = await db.enqueue(work_specs(600, ms=40))
        await db.wait_ended([*poison, *healthy], within=STARTUP + attempts * (LEASE + STARTUP))
        return poison, healthy, await _healthy_rate(db, healthy)

    _, alone, alone_rate = await phase()
    # the killer runs on its own: rescued together, a job it shares a process with dies with it
    raising, healthy_1, raising_rate = await phase("raises", "hangs")
    (killer,), healthy_2, killing_rate = await phase("kills")

    rows = await db.fetch(
        "SELECT j.task, j.state::text AS state, j.attempt,"
        " array(SELECT CASE WHEN e ->> 'type' IN ('LeaseExpired', 'WorkerDied')"
        " THEN 'Rescued' ELSE e ->> 'type' END FROM jsonb_array_elements(j.errors) e) AS errors,"
        " (SELECT count(*) FROM public.executions x WHERE x.job_id = j.id) AS runs"
        " FROM skiplock.jobs j WHERE j.id = ANY($1::uuid[]) ORDER BY j.task",
        [*raising, killer],
    )
    assert [tuple(r.values()) for r in rows] == [
        ("hangs", "failed", attempts, ["TimeoutError"] * attempts, attempts),
        ("kills", "failed", attempts, ["Rescued"] * attempts, attempts),
        ("raises", "failed", attempts, ["RuntimeError"] * attempts, attempts),
    ]
    restarts = sum(w.restarts for w in workers)
    assert restarts == attempts  # the killer took down one process per attempt, no more
    # each kill may interrupt the healthy jobs its process held, and the killer's own run
    figures = await check_invariants(
        fault_dsn,
        [*alone, *raising, *healthy_1, killer, *healthy_2],
        max_reruns=attempts * CONCURRENCY,
    )
    report(
        worker_restarts=restarts,
        healthy_per_s_alone=round(alone_rate, 1),
        healthy_per_s_with_raise_and_hang=round(raising_rate, 1),
        healthy_per_s_with_killer=round(killing_rate, 1),
        **figures.as_dict(),
    )
