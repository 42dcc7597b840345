"""A soak: many jobs with progress through three worker processes and the API, memory watched.

The quick variant runs 2,000 jobs; the long one (``scripts/faults``) 100,000.
Every process's resident memory (VmRSS) is sampled twice a second; after the
warm-up (the first fifth of the jobs) it must stay flat. The figures show it
after the warm-up, half-way and at the end, in MiB.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import pytest

from tests.faults.conftest import Report
from tests.faults.fleet import STARTUP, ApiLoad, Db, Fleet, rss_kib, work_specs
from tests.faults.invariants import check_invariants
from tests.helpers import wait_for

# Process start-up and lease expiry on a loaded machine: more than the default 120 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKERS = ("S1", "S2", "S3")
SOAK: dict[str, float | str] = {
    "concurrency": 20,
    "lease": 10,
    "heartbeat": 2,
    "poll": 0.5,
    "rescue": 2,
}
# Growth allowed after the warm-up: allocator noise, caches filling, not a leak.
RSS_SLACK_KIB = 24 * 1024
RSS_SLACK_SHARE = 0.25


@pytest.mark.parametrize(
    "jobs",
    [
        pytest.param(2_000, id="2000-jobs"),
        pytest.param(
            100_000, id="100000-jobs", marks=[pytest.mark.long, pytest.mark.timeout(3600)]
        ),
    ],
)
async def test_soak_with_progress_finishes_everything_in_flat_memory(
    fault_dsn: str,
    fleet: Callable[[str], Fleet],
    probes: Callable[[str], Db],
    report: Report,
    jobs: int,
) -> None:
    """Every job of a long run with progress reports finishes once; no process's memory grows."""
    f, db, sampler = fleet(fault_dsn), probes(fault_dsn), probes(fault_dsn)
    # 300 ms in three progress reports: every report is written (progress_interval 0.1 s)
    ids = await db.enqueue(work_specs(jobs, ms=300, steps=3))
    api = await f.start_api()
    load = ApiLoad(api, read_ids=random.sample(ids, min(jobs, 1000)))
    for name in WORKERS:
        await f.start(name, **SOAK)
    samples: dict[str, list[tuple[int, int]]] = {}  # name -> [(jobs ended, VmRSS KiB)]
    stop = anyio.Event()

    async def sample() -> None:
        while not stop.is_set():
            ended = await sampler.ended_in_all()
            for name, pid in f.processes.items():
                samples.setdefault(name, []).append((ended, rss_kib(pid)))
            await anyio.sleep(0.5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(load.run, stop)
        tg.start_soon(sample)
        await wait_for(
            db.ended_in_all,
            lambda n: n >= jobs,
            timeout=STARTUP + jobs / 20,
            what=f"all {jobs} jobs to end",
        )
        stop.set()
    figures = await check_invariants(fault_dsn, ids, max_reruns=0)

    memory: dict[str, str] = {}
    grown: list[str] = []
    for name, series in sorted(samples.items()):
        warm = next(rss for ended, rss in series if ended >= jobs // 5)
        half = next(rss for ended, rss in series if ended >= jobs // 2)
        last = max(rss for _, rss in series[-3:])
        peak = max(rss for ended, rss in series if ended >= jobs // 5)
        memory[f"{name}_rss_mib"] = (
            f"{warm / 1024:.0f}->{half / 1024:.0f}->{last / 1024:.0f} (peak {peak / 1024:.0f})"
        )
        if last - warm > RSS_SLACK_KIB + RSS_SLACK_SHARE * warm:
            grown.append(f"{name}: {warm} KiB after warm-up, {last} KiB at the end")
    report(
        api_requests=load.requests,
        api_bad=len(load.bad),
        progress_reports=3 * jobs,
        **memory,
        **figures.as_dict(),
    )
    assert figures.states == {"succeeded": jobs}
    assert load.bad == [], load.bad[:5]
    assert grown == [], grown
