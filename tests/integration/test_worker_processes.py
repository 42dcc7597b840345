"""Worker processes started by the CLI: SIGKILLed mid-job, drained by SIGTERM, stopped at once."""

from __future__ import annotations

import dataclasses
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from skiplock import Client, Job, JobState
from skiplock.queue.store import Completion, Store
from tests.apps.slow import RELEASE_SQL, TABLES_SQL
from tests.helpers import wait_for, wait_for_state
from tests.worker_helpers import (
    WorkerProcess,
    execute,
    fetchval,
    install_history,
    job_history,
    start_worker_process,
)

pytestmark = pytest.mark.slow

APP = "tests.apps.slow:tasks"
# Time for a child interpreter to import skiplock and claim its first job.
STARTUP = 20.0

Spawn = Callable[..., Awaitable[WorkerProcess]]


@pytest_asyncio.fixture
async def spawn(db_dsn: str, tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start worker processes on the test's database; kill whatever is left at teardown."""
    await execute(db_dsn, TABLES_SQL)
    started: list[WorkerProcess] = []

    async def start(name: str, **options: float | str) -> WorkerProcess:
        worker = await start_worker_process(name, db_dsn, tmp_path, app=APP, **options)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
            # shown by pytest when the test fails
            sys.stderr.write(f"--- worker {worker.name} log ---\n{worker.log_text()}")


async def _runs(client: Client, job_id: uuid.UUID) -> list[tuple[str, int, bool]]:
    """(worker, attempt, finished) of every recorded run of the job, in start order."""
    rows = await client.pool.fetch(
        "SELECT worker_id, attempt, finished_at IS NOT NULL AS finished FROM runs"
        " WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    return [(r["worker_id"], r["attempt"], r["finished"]) for r in rows]


async def _wait_run_started(client: Client, job_id: uuid.UUID, worker: str, attempt: int) -> None:
    await wait_for(
        lambda: _runs(client, job_id),
        lambda runs: any(w == worker and a == attempt for w, a, _ in runs),
        timeout=STARTUP,
        what=f"attempt {attempt} of job {job_id} to start on {worker}",
    )


async def _release(client: Client, job_id: uuid.UUID) -> None:
    await client.pool.fetchval(RELEASE_SQL, job_id)


async def _kill_mid_job_then_rerun(client: Client, db_dsn: str, spawn: Spawn) -> Job:
    """Run the job on A, SIGKILL A mid-handler, start B and wait until B runs attempt 2.

    Returns the job row as it was while A held it.
    """
    timings = {"lease": 2.0, "heartbeat": 0.5, "rescue": 0.3, "poll": 0.2}
    job = await client.enqueue("hold", max_attempts=3)
    a = await spawn("A", **timings)
    await _wait_run_started(client, job.id, "A", 1)
    held = await client.get(job.id)
    assert held is not None
    assert held.state is JobState.RUNNING
    assert held.worker_id == "A"
    a.process.kill()
    assert await a.wait_exit(within=5) == -signal.SIGKILL
    await spawn("B", **timings)
    await _wait_run_started(client, job.id, "B", 2)
    return held


async def test_sigkilled_job_reruns_once_on_another_worker(
    db_dsn: str, client: Client, spawn: Spawn
) -> None:
    """A job whose worker is SIGKILLed runs again elsewhere as attempt 2 and succeeds once."""
    held = await _kill_mid_job_then_rerun(client, db_dsn, spawn)
    await _release(client, held.id)
    done = await wait_for_state(client, held.id, JobState.SUCCEEDED)
    assert done.attempt == 2
    assert done.worker_id == "B"
    assert done.result == {"worker": "B"}
    # B's rescuers: the dead-worker check (WorkerDied) or, past the 2 s lease, the lease's
    ((kind, attempt, worker),) = [(e.type, e.attempt, e.worker) for e in done.errors]
    assert kind in ("WorkerDied", "LeaseExpired")
    assert (attempt, worker) == (1, "A")
    assert await _runs(client, held.id) == [("A", 1, False), ("B", 2, True)]


async def test_write_with_dead_workers_lease_token_is_rejected(
    db_dsn: str, client: Client, spawn: Spawn
) -> None:
    """A completion carrying the SIGKILLed worker's lease token changes nothing."""
    held = await _kill_mid_job_then_rerun(client, db_dsn, spawn)
    assert held.lease_token is not None
    before = await client.get(held.id)
    assert before is not None
    assert before.lease_token not in (None, held.lease_token)
    zombie = Completion(held.id, held.lease_token, "succeeded", result_json='"zombie"')
    written = await Store().complete_jobs(client.pool, [zombie])
    after = await client.get(held.id)
    assert after is not None
    assert written == set()
    # B's heartbeats keep moving lease_expires_at; everything else must be untouched
    assert dataclasses.replace(after, lease_expires_at=before.lease_expires_at) == before


async def test_sigterm_drains_running_job(db_dsn: str, client: Client, spawn: Spawn) -> None:
    """SIGTERM lets a job finishing within the grace period succeed; the process exits 0."""
    job = await client.enqueue("hold")
    a = await spawn("A", shutdown_grace=3, lease=5, heartbeat=0.5)
    await _wait_run_started(client, job.id, "A", 1)
    a.send_signal(signal.SIGTERM)
    await a.wait_for_log("worker_draining")
    await _release(client, job.id)
    assert await a.wait_exit(within=5) == 0
    done = await client.get(job.id)
    assert done is not None
    assert done.state is JobState.SUCCEEDED
    assert done.result == {"worker": "A"}
    assert done.attempt == 1


async def test_sigterm_releases_unfinished_job(db_dsn: str, client: Client, spawn: Spawn) -> None:
    """After the grace, SIGTERM re-queues an unfinished job at once; another worker takes it."""
    await install_history(db_dsn)
    job = await client.enqueue("hold", max_attempts=1)
    # 60 s leases: only the release, not the rescuer, can hand the job on within the test
    a = await spawn("A", shutdown_grace=0.5, lease=60, heartbeat=1)
    await _wait_run_started(client, job.id, "A", 1)
    b = await spawn("B", lease=60, heartbeat=1, poll=0.2)
    await b.wait_for_log("listener_connected", within=STARTUP)
    a.send_signal(signal.SIGTERM)
    assert await a.wait_exit(within=0.5 + 2) == 0
    taken = await wait_for(
        lambda: client.get(job.id),
        lambda j: j is not None and j.state is JobState.RUNNING and j.worker_id == "B",
        timeout=1.0,
        what="worker B to take the released job",
    )
    assert taken is not None
    assert taken.attempt == 1  # the interrupted attempt was given back, not consumed
    assert taken.errors == ()
    history = [(h.state, h.attempt, h.worker_id) for h in await job_history(db_dsn, job.id)]
    assert history == [
        ("queued", 0, None),
        ("running", 1, "A"),
        ("queued", 0, "A"),
        ("running", 1, "B"),
    ]
    await _release(client, job.id)
    done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.result == {"worker": "B"}


async def test_second_signal_stops_at_once(db_dsn: str, client: Client, spawn: Spawn) -> None:
    """A second signal stops a draining worker at once; its job stays running under its lease."""
    job = await client.enqueue("hold")
    a = await spawn("A", shutdown_grace=30, lease=60, heartbeat=1)
    await _wait_run_started(client, job.id, "A", 1)
    held = await client.get(job.id)
    assert held is not None
    a.send_signal(signal.SIGTERM)
    await a.wait_for_log("worker_draining")
    a.send_signal(signal.SIGINT)
    # a 30 s grace: only the second signal explains an exit within seconds
    assert await a.wait_exit(within=3) == 0
    row = await client.get(job.id)
    assert row is not None
    assert row.state is JobState.RUNNING
    assert row.worker_id == "A"
    assert row.lease_token == held.lease_token
    assert await fetchval(
        db_dsn, "SELECT lease_expires_at > now() FROM skiplock.jobs WHERE id = $1", job.id
    )
    assert await _runs(client, job.id) == [("A", 1, False)]


async def test_sigkilled_workers_job_runs_again_well_within_its_lease(
    db_dsn: str,
    client: Client,
    spawn: Spawn,
    record_property: Callable[[str, object], None],
) -> None:
    """kill -9 closes the worker's presence connection: PostgreSQL drops its advisory lock,
    and another worker's rescuer re-queues the job at once (WorkerDied, attempt counted)
    instead of after the 30 s lease; the dead worker's registration is removed."""
    timings = {"lease": 30.0, "poll": 0.2}  # heartbeat and rescue intervals: the defaults
    job = await client.enqueue("hold", max_attempts=3)
    a = await spawn("A", **timings)
    await _wait_run_started(client, job.id, "A", 1)
    b = await spawn("B", **timings)
    await b.wait_for_log("worker_started", within=STARTUP)
    a.process.kill()
    assert await a.wait_exit(within=5) == -signal.SIGKILL
    killed_at = await fetchval(db_dsn, "SELECT clock_timestamp()")
    await wait_for(
        lambda: _runs(client, job.id),
        lambda runs: ("B", 2, False) in runs,
        timeout=10,  # a third of the lease: only the dead-worker check can be this quick
        what="attempt 2 to start on B",
    )
    rerun_at = await fetchval(
        db_dsn, "SELECT started_at FROM runs WHERE job_id = $1 AND attempt = 2", job.id
    )
    # the figure (database clock), in the JUnit XML: pytest --junitxml=…
    record_property("kill_to_rerun_seconds", round((rerun_at - killed_at).total_seconds(), 3))
    await _release(client, job.id)
    done = await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert done.attempt == 2
    assert [(e.type, e.attempt, e.worker) for e in done.errors] == [("WorkerDied", 1, "A")]

    async def registered() -> list[str]:
        rows = await client.pool.fetch("SELECT id FROM skiplock.workers ORDER BY id")
        return [r["id"] for r in rows]

    await wait_for(registered, lambda ids: ids == ["B"], what="A's registration to be removed")


async def test_a_worker_without_cache_or_listen_url_says_where_it_listens(
    db_dsn: str, tmp_path: Path
) -> None:
    """SKIPLOCK_STATEMENT_CACHE_SIZE=0 (the PgBouncer setting) with no listen URL: LISTEN and
    the presence lock would go through the pooler, so the worker says so at start; with
    SKIPLOCK_LISTEN_URL=none it does not."""
    await execute(db_dsn, TABLES_SQL)
    cache_off = {"SKIPLOCK_STATEMENT_CACHE_SIZE": "0"}
    unset = await start_worker_process("unset", db_dsn, tmp_path, cache_off, app=APP)
    polling = await start_worker_process(
        "polling", db_dsn, tmp_path, {**cache_off, "SKIPLOCK_LISTEN_URL": "none"}, app=APP
    )
    try:
        for worker in (unset, polling):
            await worker.wait_for_log("worker_started", within=STARTUP)
        assert "listen_url_unset" in unset.log_events()
        assert "listen_url_unset" not in polling.log_events()
    finally:
        for worker in (unset, polling):
            worker.process.kill()
            await worker.process.wait()
