"""PostgreSQL broken on purpose: restarts, killed backends, silent networks, lost notifications.

Real ``skiplock worker`` and ``skiplock api`` processes run through each
fault; every test ends with :func:`check_invariants`. The long variants
(10,000 jobs across restarts, a minute of killed backends) are marked
``long`` and run by ``scripts/faults``.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, Literal

import anyio
import pytest

from skiplock import JobSpec
from skiplock.queue import Store
from skiplock.testing import ThrowawayPostgres
from tests.faults.conftest import Report
from tests.faults.fleet import (
    FAST,
    STARTUP,
    ApiLoad,
    Db,
    Fleet,
    log_count,
    log_records,
    still_works,
    work_specs,
)
from tests.faults.invariants import check_invariants
from tests.faults.proxy import BlackholeProxy
from tests.helpers import SILENCE_ANNOUNCEMENTS, wait_for
from tests.worker_helpers import WorkerProcess

# Process start-up and lease expiry on a loaded machine: more than the default 120 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MARGIN = 5.0  # room for a loaded two-core machine on top of every promised time
LEASE = float(FAST["lease"])
RESCUE = float(FAST["rescue"])
# Timings for fleets that must ride out database outages without losing leases.
STEADY: dict[str, float | str] = {
    "concurrency": 10,
    "lease": 10,
    "heartbeat": 1,
    "poll": 0.5,
    "rescue": 1,
}
# Connections a process may hold: a worker's pool (6), LISTEN and presence connections; the
# API's pool (pool_max_size, 10) and its event hub's LISTEN connection.
WORKER_CONNECTIONS = 8
API_CONNECTIONS = 11


async def _end_times(db: Db, since: datetime) -> list[float]:
    """Seconds after ``since`` of every terminal end recorded after it, in order."""
    rows = await db.fetch(
        "SELECT extract(epoch FROM at - $1) AS t FROM public.job_events WHERE kind = 'end'"
        " AND state IN ('succeeded', 'failed', 'cancelled') AND at > $1 ORDER BY at",
        since,
    )
    return [float(r["t"]) for r in rows]


async def _first_end_after(db: Db, since: datetime) -> float:
    """Wait for a job to end after ``since``; the seconds from ``since`` to that end."""
    ends = await wait_for(
        lambda: _end_times(db, since),
        lambda ends: len(ends) > 0,
        timeout=STARTUP,
        what="a job to end after the restart",
    )
    return round(ends[0], 2)


def _full_speed_after(ends: list[float], rate: float, *, share: float = 0.8) -> float | None:
    """When a one-second window of ``ends`` (seconds) first held ``share`` × ``rate`` ends."""
    for i, start in enumerate(ends):
        if sum(1 for t in ends[i:] if t < start + 1.0) >= share * rate:
            return start
    return None


@pytest.mark.parametrize(
    "jobs",
    [
        pytest.param(1000, id="1000-jobs"),
        pytest.param(10_000, id="10000-jobs", marks=[pytest.mark.long, pytest.mark.timeout(1800)]),
    ],
)
async def test_postgres_restarts_lose_nothing_and_complete_nothing_twice(
    restartable_pg: ThrowawayPostgres,
    restart_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
    jobs: int,
) -> None:
    """Fast and immediate PostgreSQL restarts mid-run: none lost, none twice, all reconnect."""
    f, db = fleet(restart_dsn), probes(restart_dsn)
    ids = await db.enqueue(work_specs(jobs, ms=50, steps=2))
    api = await f.start_api()
    load = ApiLoad(api, read_ids=random.sample(ids, min(len(ids), 500)))
    names = ("R1", "R2", "R3")
    for name in names:
        await f.start(name, **STEADY)
    figures: dict[str, Any] = {}
    stop = anyio.Event()
    marks: list[tuple[str, datetime, datetime]] = []  # (mode, went down, came back)
    async with anyio.create_task_group() as tg:
        tg.start_soon(load.run, stop)
        began = await db.now()
        modes: tuple[Literal["fast", "immediate"], ...] = ("fast", "immediate")
        for n, mode in enumerate(modes, start=1):
            await db.wait_ended(ids, within=STARTUP + jobs / 10, count=jobs * n // 4)
            down = await db.now()
            clock = time.monotonic()
            await anyio.to_thread.run_sync(partial(restartable_pg.restart, mode))
            figures[f"{mode}_restart_s"] = round(time.monotonic() - clock, 2)
            back = await db.now()
            marks.append((mode, down, back))
            # workers and the API come back by themselves
            figures[f"{mode}_api_ready_s"] = round(await f.wait_api_ready(api, within=STARTUP), 2)
            figures[f"{mode}_first_completion_s"] = await _first_end_after(db, back)
        await db.wait_ended(ids, within=STARTUP + jobs / 10)
        stop.set()
    done = await db.now()
    ends = await _end_times(db, began)
    for i, (label, down, back) in enumerate(marks):
        since = marks[i - 1][2] if i else began
        before = [t for t in ends if t <= (down - began).total_seconds()]
        rate = len([t for t in before if t > (since - began).total_seconds()]) / max(
            (down - since).total_seconds(), 1e-3
        )
        until = marks[i + 1][1] if i + 1 < len(marks) else done
        after = [
            t - (back - began).total_seconds()
            for t in ends
            if (back - began).total_seconds() < t <= (until - began).total_seconds()
        ]
        full = _full_speed_after(after, rate)
        figures[f"rate_before_{label}_per_s"] = round(rate)
        figures[f"{label}_full_speed_s"] = None if full is None else round(full, 2)
    # a restart may cost the attempts in flight, no more: 3 workers x 10 slots x 2 restarts
    checked = await check_invariants(restart_dsn, ids, max_reruns=2 * len(names) * 10)
    report(
        api_requests=load.requests,
        api_503=load.unavailable,
        api_bad=len(load.bad),
        **figures,
        **checked.as_dict(),
    )
    # every worker rode both restarts out in its own process
    assert set(names) <= f.processes.keys()
    # ...and none was taken for dead: a restart ends every presence lock, but live
    # workers register again within the grace (migration 0007)
    died = await db.fetchval(
        "SELECT count(*) FROM skiplock.jobs j, jsonb_array_elements(j.errors) e"
        " WHERE j.id = ANY($1::uuid[]) AND e ->> 'type' = 'WorkerDied'",
        ids,
    )
    assert died == 0
    assert load.bad == [], load.bad[:5]
    assert load.unanswered == [], load.unanswered[:5]


async def _listener_backends(db: Db, database: str) -> set[int]:
    """Backends of skiplock processes that are LISTEN connections (last query LISTEN or ping)."""
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1"
        " AND application_name LIKE 'skiplock-%' AND (query LIKE 'LISTEN %' OR query = 'SELECT 1')",
        database,
    )
    return {r["pid"] for r in rows}


async def _presence_backends(db: Db, database: str) -> set[int]:
    """Backends holding a worker's presence lock (migration 0007)."""
    rows = await db.fetch(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE d.datname = $1 AND l.locktype = 'advisory' AND l.objsubid = 2"
        " AND l.classid = hashtext('skiplock.workers')::oid",
        database,
    )
    return {r["pid"] for r in rows}


async def _backends(db: Db, database: str) -> set[int]:
    """Backends of skiplock processes (workers and the API) connected to ``database``."""
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1"
        " AND application_name LIKE 'skiplock-%'",
        database,
    )
    return {r["pid"] for r in rows}


async def _connections(db: Db, database: str) -> Counter[str]:
    """Open connections of skiplock processes to ``database``, by application name."""
    rows = await db.fetch(
        "SELECT application_name, count(*) AS n FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name LIKE 'skiplock-%' GROUP BY 1",
        database,
    )
    return Counter({r["application_name"]: r["n"] for r in rows})


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(10, id="10s"),
        pytest.param(60, id="60s", marks=[pytest.mark.long, pytest.mark.timeout(900)]),
    ],
)
async def test_terminated_backends_lose_nothing_and_leak_no_connections(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
    seconds: int,
) -> None:
    """pg_terminate_backend on random skiplock connections: nothing lost, clean 503s, no leak."""
    f, db = fleet(fault_dsn), probes(fault_dsn)
    database = str(await db.fetchval("SELECT current_database()"))
    names = ("T1", "T2", "T3")
    for name in names:
        await f.start(name, **STEADY)
    api = await f.start_api()
    ids = await db.enqueue(work_specs(50, ms=20, steps=1))
    load = ApiLoad(api, read_ids=list(ids), create_every=5)
    kills: Counter[str] = Counter()
    stop = anyio.Event()

    async def feed() -> None:
        """A steady stream of jobs straight into the queue, next to the API's creations."""
        while not stop.is_set():
            ids.extend(await db.enqueue(work_specs(10, ms=20, steps=1)))
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(load.run, stop)
        tg.start_soon(feed)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            listeners = await _listener_backends(db, database)
            presence = await _presence_backends(db, database)
            everyone = await _backends(db, database)
            # every third kill aims at a LISTEN connection
            aim = listeners if kills.total() % 3 == 0 and listeners else everyone
            pid = random.choice(sorted(aim))
            if await db.fetchval("SELECT pg_terminate_backend($1)", pid):
                kind = "listen" if pid in listeners else "other"
                kills["presence" if pid in presence else kind] += 1
            await anyio.sleep(random.uniform(0.05, 0.3))
        stop.set()

    every = [*ids, *load.created]
    await db.wait_ended(every, within=STARTUP + 30)
    # everyone reconnected by themselves, each within its own bounds
    await wait_for(
        lambda: _listener_backends(db, database),
        lambda pids: len(pids) == len(names) + 1,
        timeout=STARTUP,
        what="every worker and the API to listen again",
    )
    open_now = await _connections(db, database)
    # A presence connection's end makes its worker look dead: rescuers take all the
    # jobs it runs (up to its concurrency), and those run again.
    max_reruns = kills["listen"] + kills["other"] + kills["presence"] * int(STEADY["concurrency"])
    figures = await check_invariants(fault_dsn, every, max_reruns=max_reruns)
    report(
        seconds=seconds,
        kills_listen=kills["listen"],
        kills_other=kills["other"],
        kills_presence=kills["presence"],
        api_requests=load.requests,
        api_503=load.unavailable,
        api_503_pct=round(100 * load.unavailable / max(load.requests, 1), 2),
        api_bad=len(load.bad),
        api_created=len(load.created),
        connections_after=sum(open_now.values()),
        **figures.as_dict(),
    )
    assert figures.states == {"succeeded": len(every)}
    for name, count in open_now.items():
        bound = API_CONNECTIONS if name == "skiplock-api" else WORKER_CONNECTIONS
        assert count <= bound, f"{name} holds {count} connections (at most {bound})"
    assert load.bad == [], load.bad[:5]
    assert load.unanswered == [], load.unanswered[:5]
    assert load.unavailable <= 0.1 * load.requests, "503s are not rare"


async def _pickup_waits(db: Db, ids: list[uuid.UUID], *, jobs: int) -> list[float]:
    """Enqueue ``jobs`` jobs one at a time into an idle queue; how long each waited for a claim.

    Their ids are added to ``ids``.
    """
    waits: list[float] = []
    for _ in range(jobs):
        (job,) = await db.enqueue(work_specs(1))
        ids.append(job)
        await db.wait_ended([job], within=STARTUP)
        waits.append(
            float(
                await db.fetchval(
                    "SELECT wait FROM public.job_events WHERE job_id = $1 AND kind = 'claim'", job
                )
            )
        )
    return waits


async def test_without_notifications_work_is_picked_up_within_the_poll_interval(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
) -> None:
    """With announcements silenced, an idle worker still claims new work within its poll."""
    poll = 1.0
    f, db = fleet(fault_dsn), probes(fault_dsn)
    worker = await f.start("N", poll=poll)
    await worker.wait_for_log("listener_connected", within=STARTUP)
    ids: list[uuid.UUID] = []
    notified = await _pickup_waits(db, ids, jobs=3)

    await db.fetchval(SILENCE_ANNOUNCEMENTS)
    silent = await _pickup_waits(db, ids, jobs=6)

    # the poll timer is jittered by ±20 %
    assert max(silent) <= poll * 1.2 + MARGIN
    figures = await check_invariants(fault_dsn, ids, max_reruns=0)
    report(
        poll_s=poll,
        notified_wait_max_s=round(max(notified), 3),
        silent_wait_p50_s=round(statistics.median(silent), 3),
        silent_wait_max_s=round(max(silent), 3),
        **figures.as_dict(),
    )


async def test_worker_cut_off_by_a_silent_network_gives_up_its_jobs(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
) -> None:
    """A worker behind a black-holing proxy loses its leases to others and stops its handlers."""
    f, db = fleet(fault_dsn), probes(fault_dsn)
    proxy = await BlackholeProxy.in_front_of(fault_dsn)
    try:
        # on a queue of their own, so nobody but A takes them until B is started for it;
        # two short jobs A finishes while cut off (late completions), two long ones
        ids = await db.enqueue(work_specs(2, ms=600, steps=6, queue="cut"))
        ids += await db.enqueue(work_specs(2, ms=6000, steps=60, queue="cut"))
        # A renews at the default third of its lease: a heartbeat that hangs on the
        # dead network then takes a third of the lease before it gives up
        a = await f.start_via(proxy.dsn(fault_dsn), "A", queues="cut", heartbeat=LEASE / 3)
        held = await db.holding("A", 4)

        fault_at = await db.now()
        cut = time.monotonic()
        proxy.blackhole()
        b = await f.start("B", queues="cut")
        await wait_for(
            lambda: _logged(a, "job_abandoned"),
            lambda n: n >= 2,
            timeout=LEASE + MARGIN,
            what="A to give up the handlers it could not renew",
        )
        gave_up = time.monotonic() - cut
        await db.wait_ended(ids, within=LEASE + STARTUP + 10)
        proxy.heal()
        extra = await still_works(db, a, [b], queue="cut")
    finally:
        await proxy.close()
    figures = await check_invariants(
        fault_dsn,
        [*ids, extra],
        max_reruns=len(held),
        fault_at=fault_at,
        affected=held,
        recover_within=LEASE + RESCUE + MARGIN,
    )
    refused = {
        r["job_id"] for r in log_records(a.log_path, "lease_lost") if r.get("write") == "completion"
    }
    abandoned = {r["job_id"] for r in log_records(a.log_path, "completion_abandoned")}
    report(
        gave_up_after_s=round(gave_up, 2),
        lease_s=LEASE,
        late_completions_refused=len(refused),
        late_completions_abandoned=len(abandoned),
        **figures.as_dict(),
    )
    # what A finished while cut off was refused by the fence when the network healed,
    # or given up by A once the lease could no longer hold
    assert refused | abandoned == {str(job) for job in ids[:2]}
    runs = await db.fetch(
        "SELECT stop_reason, finished IS NOT NULL AS finished FROM public.executions"
        " WHERE worker_id = 'A' AND job_id = ANY($1::uuid[])",
        ids,
    )
    # the short runs finished (their outcome never counted); the long ones were stopped
    assert Counter((r["stop_reason"], r["finished"]) for r in runs) == {
        (None, True): 2,
        ("lease_lost", False): 2,
    }
    # A stopped each long handler before B started that job again: never two at once
    overlaps = await db.fetch(
        "SELECT a.job_id, extract(epoch FROM a.stopped - b.started) AS late_s"
        " FROM public.executions a JOIN public.executions b USING (job_id)"
        " WHERE a.worker_id = 'A' AND b.worker_id = 'B' AND a.job_id = ANY($1::uuid[])"
        " AND (a.stopped IS NULL OR a.stopped >= b.started)",
        ids[2:],
    )
    assert [dict(r) for r in overlaps] == []


async def _logged(worker: WorkerProcess, event: str) -> int:
    return log_count(worker, event)


async def _claim_waits(db: Db, job_ids: list[uuid.UUID]) -> list[float]:
    rows = await db.fetch(
        "SELECT wait FROM public.job_events WHERE kind = 'claim' AND job_id = ANY($1::uuid[])",
        job_ids,
    )
    return sorted(float(r["wait"]) for r in rows)


def _pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


async def test_retention_loop_under_load_deletes_only_finished_jobs(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
) -> None:
    """purge_finished in a tight loop under load never deletes a queued or running job."""
    f, db = fleet(fault_dsn), probes(fault_dsn)
    for name in ("G1", "G2"):
        worker = await f.start(name, concurrency=8)
    await worker.wait_for_log("listener_connected", within=STARTUP)

    async def stream(seconds: float) -> list[uuid.UUID]:
        """About 100 jobs a second for ``seconds``; their ids once they all ended."""
        ids: list[uuid.UUID] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ids += await db.enqueue(work_specs(10, ms=5, steps=1))
            await anyio.sleep(0.1)
        await db.wait_ended(ids, within=STARTUP + 30)
        return ids

    baseline = await stream(4)
    # jobs due later stay queued through the whole purge
    later = await db.enqueue([JobSpec(task="work", delay=3.0) for _ in range(20)])
    deleted = 0
    sweeps = 0
    stop = anyio.Event()

    purger = probes(fault_dsn)

    async def purge() -> None:
        nonlocal deleted, sweeps
        store = Store()
        while not stop.is_set():
            n = await purger.run(
                lambda c: store.purge_finished(
                    c, 200, succeeded_after=0, failed_after=0, cancelled_after=0
                )
            )
            deleted += n
            sweeps += 1
            if n == 0:
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(purge)
        purged = await stream(4)
        await db.wait_ended(later, within=STARTUP)
        stop.set()
    everything = [*baseline, *later, *purged]
    figures = await check_invariants(fault_dsn, everything, max_reruns=0)
    remaining = await db.fetchval("SELECT count(*) FROM skiplock.jobs")
    assert deleted > 0
    assert deleted + remaining == len(everything)
    quiet, busy = await _claim_waits(db, baseline), await _claim_waits(db, purged)
    report(
        purge_sweeps=sweeps,
        purged=deleted,
        claim_wait_p50_ms_alone=_pct(quiet, 0.5),
        claim_wait_p95_ms_alone=_pct(quiet, 0.95),
        claim_wait_p50_ms_purging=_pct(busy, 0.5),
        claim_wait_p95_ms_purging=_pct(busy, 0.95),
        **figures.as_dict(),
    )
