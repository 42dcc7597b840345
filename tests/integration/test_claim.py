"""Claiming, fenced writes and rescue, at the level of the Store's queries."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from skiplock import Client, Job, JobSpec, JobState, sql
from skiplock.queue.store import Completion, ProgressWrite, Rescued
from skiplock.worker.retention import RetentionPolicy, purge_sweep
from tests.helpers import wait_for
from tests.integration.conftest import nodes, plans

LEASE = 30.0


async def _claim(
    client: Client,
    queues: tuple[str, ...] = ("default",),
    limit: int = 100,
    *,
    lease: float = LEASE,
    worker: str = "w1",
) -> list[Job]:
    return await client.store.claim_jobs(client.pool, queues, limit, lease, worker)


async def _db_clock(client: Client) -> datetime:
    value = await client.pool.fetchval("SELECT clock_timestamp()")
    assert isinstance(value, datetime)
    return value


async def _get(client: Client, job_id: uuid.UUID) -> Job:
    job = await client.get(job_id)
    assert job is not None
    return job


async def _claim_one(
    client: Client, *, max_attempts: int = 3, lease: float = LEASE, worker: str = "w1"
) -> Job:
    """Enqueue one job and claim it."""
    job = await client.enqueue("t", max_attempts=max_attempts)
    (claimed,) = await _claim(client, lease=lease, worker=worker)
    assert claimed.id == job.id
    return claimed


async def _reclaimed(client: Client) -> tuple[Job, uuid.UUID]:
    """A job on its second attempt, and the lease token of its first (now stale)."""
    first = await _claim_one(client)
    assert first.lease_token is not None
    retry = Completion(first.id, first.lease_token, "retry", delay_seconds=0.0)
    assert await client.store.complete_jobs(client.pool, [retry]) == {first.id}
    (second,) = await _claim(client)
    assert second.id == first.id
    assert second.attempt == 2
    assert second.lease_token not in (None, first.lease_token)
    return second, first.lease_token


# -- claiming ----------------------------------------------------------------------


async def test_concurrent_claimers_claim_each_job_once(client: Client, db_dsn: str) -> None:
    """20 claimers on their own connections, claiming 5,000 jobs in batches, get each once."""
    await client.enqueue_many([JobSpec(task="t", args={"i": i}) for i in range(5000)])
    conns = await asyncio.gather(*(asyncpg.connect(db_dsn) for _ in range(20)))
    claimed: list[list[Job]] = [[] for _ in conns]

    async def claimer(i: int, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        while batch := await client.store.claim_jobs(conn, ["default"], 25, LEASE, f"w{i}"):
            claimed[i] += batch

    try:
        await asyncio.gather(*(claimer(i, c) for i, c in enumerate(conns)))
    finally:
        await asyncio.gather(*(c.close() for c in conns))

    ids = [j.id for batch in claimed for j in batch]
    assert len(ids) == len(set(ids)) == 5000
    assert all(j.worker_id == f"w{i}" for i, batch in enumerate(claimed) for j in batch)
    assert sum(1 for batch in claimed if batch) >= 2  # the claimers really overlapped
    running = await client.pool.fetchval(
        "SELECT count(*) FROM skiplock.jobs WHERE state = 'running' AND attempt = 1"
    )
    assert running == 5000


async def test_claim_order_is_priority_run_at_id(client: Client) -> None:
    """Jobs are claimed by priority, then run_at, then id."""
    base = await _db_clock(client) - timedelta(hours=1)
    specs = [
        JobSpec(task="t", priority=(5, -3, 0)[i % 3], run_at=base + timedelta(seconds=i % 4))
        for i in range(36)  # every (priority, run_at) pair three times: ties go by id
    ]
    jobs = await client.enqueue_many(specs)
    order: list[Job] = []
    while batch := await _claim(client, limit=1):
        order += batch
    expected = sorted(jobs, key=lambda j: (j.priority, j.run_at, j.id))
    assert [j.id for j in order] == [j.id for j in expected]


async def test_batch_claim_takes_first_jobs_in_order(client: Client) -> None:
    """A batch claim takes exactly the first jobs in claim order, up to its limit."""
    jobs = await client.enqueue_many([JobSpec(task="t", priority=i % 5) for i in range(30)])
    batch = await _claim(client, limit=10)
    first = sorted(jobs, key=lambda j: (j.priority, j.run_at, j.id))[:10]
    assert {j.id for j in batch} == {j.id for j in first}


async def test_delayed_job_claimed_once_due(client: Client) -> None:
    """A job enqueued with a delay is not claimed early, and is claimed once due."""
    job = await client.enqueue("t", delay=0.5)
    assert await _claim(client) == []
    claimed = await wait_for(lambda: _claim(client), bool, timeout=10, what="the delayed job")
    assert [j.id for j in claimed] == [job.id]
    assert claimed[0].started_at is not None
    assert claimed[0].started_at >= job.run_at


async def test_future_run_at_job_claimed_once_due(client: Client) -> None:
    """A job with a future run_at is passed over for due jobs, and claimed once due."""
    future = await client.enqueue("t", run_at=await _db_clock(client) + timedelta(seconds=0.5))
    due = await client.enqueue("t")
    assert [j.id for j in await _claim(client)] == [due.id]
    claimed = await wait_for(lambda: _claim(client), bool, timeout=10, what="the scheduled job")
    assert [j.id for j in claimed] == [future.id]
    assert claimed[0].started_at is not None
    assert claimed[0].started_at >= future.run_at


async def test_claim_takes_only_given_queues(client: Client) -> None:
    """A claim takes jobs from the queues it names and no other."""
    a, b, c = [await client.enqueue("t", queue=q) for q in ("a", "b", "c")]
    assert await _claim(client, ("nothing-here",)) == []
    assert {j.id for j in await _claim(client, ("a", "c"))} == {a.id, c.id}
    assert (await _get(client, b.id)).state is JobState.QUEUED


async def test_claimed_job_carries_a_lease(client: Client) -> None:
    """A claimed job runs its next attempt under a lease in the future, with the worker id."""
    job = await client.enqueue("t")
    (claimed,) = await _claim(client, worker="worker-7")
    assert claimed.id == job.id
    assert claimed.state is JobState.RUNNING
    assert claimed.attempt == job.attempt + 1 == 1
    assert claimed.lease_token is not None
    assert claimed.worker_id == "worker-7"
    assert claimed.started_at is not None
    assert claimed.lease_expires_at == claimed.started_at + timedelta(seconds=LEASE)
    assert claimed.lease_expires_at > await _db_clock(client)
    assert await _get(client, job.id) == claimed


async def test_reclaim_gets_a_new_lease_token(client: Client) -> None:
    """A job claimed again after a retry runs its next attempt under a new lease token."""
    second, stale = await _reclaimed(client)
    assert (second.attempt, second.state) == (2, JobState.RUNNING)
    assert second.lease_token != stale


# -- fenced writes -------------------------------------------------------------------


async def test_complete_is_fenced_by_lease_token(client: Client) -> None:
    """complete_jobs with a stale or wrong lease token changes nothing; the right one works."""
    job, stale = await _reclaimed(client)
    assert job.lease_token is not None
    for token in (stale, uuid.uuid4()):
        done = Completion(job.id, token, "succeeded", result_json="1")
        assert await client.store.complete_jobs(client.pool, [done]) == set()
        assert await _get(client, job.id) == job
    done = Completion(job.id, job.lease_token, "succeeded", result_json="1")
    assert await client.store.complete_jobs(client.pool, [done]) == {job.id}
    assert (await _get(client, job.id)).state is JobState.SUCCEEDED


async def test_complete_batch_writes_only_held_leases(client: Client) -> None:
    """In one complete_jobs batch, rows whose lease is not held are left alone."""
    held = await _claim_one(client)
    lost, stale = await _reclaimed(client)
    assert held.lease_token is not None
    written = await client.store.complete_jobs(
        client.pool,
        [
            Completion(held.id, held.lease_token, "succeeded", result_json="1"),
            Completion(lost.id, stale, "succeeded", result_json="2"),
        ],
    )
    assert written == {held.id}
    assert await _get(client, lost.id) == lost


async def test_complete_refuses_cancelled_without_a_cancel_request(client: Client) -> None:
    """complete_jobs writes 'cancelled' only for a job whose cancel was requested."""
    job = await _claim_one(client)
    assert job.lease_token is not None
    cancelled = Completion(job.id, job.lease_token, "cancelled")
    assert await client.store.complete_jobs(client.pool, [cancelled]) == set()
    assert await _get(client, job.id) == job
    await client.cancel(job.id)
    assert await client.store.complete_jobs(client.pool, [cancelled]) == {job.id}
    assert (await _get(client, job.id)).state is JobState.CANCELLED


async def test_update_progress_is_fenced_by_lease_token(client: Client) -> None:
    """update_progress with a stale or wrong lease token changes nothing; the right one works."""
    job, stale = await _reclaimed(client)
    assert job.lease_token is not None
    for token in (stale, uuid.uuid4()):
        write = ProgressWrite(job.id, token, 50.0, "half", 10.0)
        assert await client.store.update_progress(client.pool, [write]) == set()
        assert await _get(client, job.id) == job
    write = ProgressWrite(job.id, job.lease_token, 42.5, "half", 10.0)
    assert await client.store.update_progress(client.pool, [write]) == {job.id}
    now = await _get(client, job.id)
    assert (now.progress, now.progress_message) == (42.5, "half")
    assert now.eta == now.updated_at + timedelta(seconds=10)


async def test_heartbeat_is_fenced_by_lease_token(client: Client) -> None:
    """heartbeat_jobs with a stale or wrong lease token extends nothing; the right one does."""
    job, stale = await _reclaimed(client)
    assert job.lease_token is not None
    assert job.lease_expires_at is not None
    for token in (stale, uuid.uuid4()):
        assert await client.store.heartbeat_jobs(client.pool, [(job.id, token)], 600.0) == {}
        assert await _get(client, job.id) == job
    beat = await client.store.heartbeat_jobs(client.pool, [(job.id, job.lease_token)], 600.0)
    assert beat == {job.id: False}
    extended = (await _get(client, job.id)).lease_expires_at
    assert extended is not None
    assert extended > job.lease_expires_at + timedelta(seconds=500)


async def test_heartbeat_reports_cancel_request(client: Client) -> None:
    """heartbeat_jobs tells the worker that a held job was asked to cancel."""
    job = await _claim_one(client)
    assert job.lease_token is not None
    await client.cancel(job.id)
    beat = await client.store.heartbeat_jobs(client.pool, [(job.id, job.lease_token)], LEASE)
    assert beat == {job.id: True}


# -- outcomes ------------------------------------------------------------------------


async def test_complete_succeeded_stores_result(client: Client) -> None:
    """A succeeded completion stores result, full progress and finished_at; drops the lease."""
    job = await _claim_one(client)
    assert job.lease_token is not None
    done = Completion(job.id, job.lease_token, "succeeded", result_json='{"ok": true}')
    await client.store.complete_jobs(client.pool, [done])
    now = await _get(client, job.id)
    assert (now.state, now.result, now.progress) == (JobState.SUCCEEDED, {"ok": True}, 100.0)
    assert now.finished_at is not None
    assert (now.lease_token, now.lease_expires_at, now.eta) == (None, None, None)


async def test_complete_retry_requeues_after_delay(client: Client) -> None:
    """A retry completion queues the job again after its delay, keeping the error."""
    job = await _claim_one(client)
    assert job.lease_token is not None
    error = orjson.dumps({"type": "Boom", "message": "m", "attempt": 1}).decode()
    retry = Completion(job.id, job.lease_token, "retry", error_json=error, delay_seconds=60.0)
    await client.store.complete_jobs(client.pool, [retry])
    now = await _get(client, job.id)
    assert (now.state, now.attempt, now.finished_at) == (JobState.QUEUED, 1, None)
    assert now.run_at == now.updated_at + timedelta(seconds=60)
    assert [(e.type, e.message) for e in now.errors] == [("Boom", "m")]
    assert await _claim(client) == []


async def test_complete_release_does_not_count_attempt(client: Client) -> None:
    """A release completion queues the job, due now, without using up its attempt."""
    job = await _claim_one(client)
    assert job.lease_token is not None
    release = Completion(job.id, job.lease_token, "release")
    await client.store.complete_jobs(client.pool, [release])
    now = await _get(client, job.id)
    assert (now.state, now.attempt, now.errors) == (JobState.QUEUED, 0, ())
    assert now.run_at == now.updated_at
    (again,) = await _claim(client)
    assert again.attempt == 1


# -- rescue --------------------------------------------------------------------------


async def test_rescue_requeues_expired_job(client: Client) -> None:
    """An expired lease sends the job back to queued with a LeaseExpired error in its history."""
    job = await _claim_one(client, max_attempts=3, lease=0.6, worker="w-dead")
    assert await client.store.rescue_expired(client.pool, 10) == []  # not expired yet
    rescued = await wait_for(
        lambda: client.store.rescue_expired(client.pool, 10), bool, timeout=10, what="a rescue"
    )
    assert rescued == [Rescued(job.id, JobState.QUEUED, 1, "w-dead")]
    now = await _get(client, job.id)
    assert (now.state, now.lease_token, now.lease_expires_at, now.finished_at) == (
        JobState.QUEUED,
        None,
        None,
        None,
    )
    assert now.error is None  # queued again: no error, the attempt is in the history
    assert now.last_error is not None
    assert (now.last_error.type, now.last_error.attempt, now.last_error.worker) == (
        "LeaseExpired",
        1,
        "w-dead",
    )
    assert "w-dead" in now.last_error.message
    (again,) = await _claim(client)
    assert (again.id, again.attempt) == (job.id, 2)


async def test_rescue_fails_expired_job_without_attempts_left(client: Client) -> None:
    """An expired lease on the last attempt fails the job."""
    job = await _claim_one(client, max_attempts=1, lease=0.6, worker="w-dead")
    rescued = await wait_for(
        lambda: client.store.rescue_expired(client.pool, 10), bool, timeout=10, what="a rescue"
    )
    assert rescued == [Rescued(job.id, JobState.FAILED, 1, "w-dead")]
    now = await _get(client, job.id)
    assert now.state is JobState.FAILED
    assert now.finished_at is not None
    assert now.error is not None
    assert now.error.type == "LeaseExpired"
    assert await _claim(client) == []


async def test_error_is_shown_only_on_a_failed_job(client: Client) -> None:
    """``Job.error`` is the last error of a failed job only: a job that failed once and then
    succeeded (or was cancelled) keeps its history in ``errors`` but has no error."""
    error = orjson.dumps({"type": "Boom", "message": "first try", "attempt": 1}).decode()
    ended: dict[str, Job] = {}
    for outcome in ("succeeded", "cancelled", "failed"):
        first = await _claim_one(client)
        assert first.lease_token is not None
        retry = Completion(first.id, first.lease_token, "retry", error_json=error)
        assert await client.store.complete_jobs(client.pool, [retry]) == {first.id}
        waiting = await _get(client, first.id)
        assert (waiting.state, waiting.error) == (JobState.QUEUED, None)
        (second,) = await _claim(client)
        assert second.lease_token is not None
        last_error = error.replace("first try", "second try") if outcome == "failed" else None
        if outcome == "cancelled":  # written only for a requested cancel
            await client.cancel(second.id, tenant=second.tenant)
        done = Completion(second.id, second.lease_token, outcome, error_json=last_error)
        assert await client.store.complete_jobs(client.pool, [done]) == {second.id}
        ended[outcome] = await _get(client, first.id)
    for outcome in ("succeeded", "cancelled"):
        assert ended[outcome].error is None, outcome
        assert [e.message for e in ended[outcome].errors] == ["first try"]
    failed = ended["failed"]
    assert failed.error is not None
    assert failed.error.message == "second try"
    assert [e.message for e in failed.errors] == ["first try", "second try"]


async def test_a_running_job_whose_lease_was_not_renewed_is_stalled(client: Client) -> None:
    """Past its lease expiry a running job says ``stalled`` (database clock) in get, get_jobs,
    list and cancel, until it is rescued; a renewed lease is not stalled."""
    held = await _claim_one(client, lease=600.0, worker="w-alive")
    dead = await _claim_one(client, lease=0.3, worker="w-dead")
    assert (await _get(client, held.id)).stalled is False

    stalled = await wait_for(
        lambda: _get(client, dead.id), lambda j: j.stalled, timeout=10, what="a stalled job"
    )
    assert (stalled.state, stalled.worker_id) == (JobState.RUNNING, "w-dead")
    assert {
        j.id: j.stalled for j in await client.store.get_jobs(client.pool, [held.id, dead.id], None)
    } == {
        held.id: False,
        dead.id: True,
    }
    page = await client.list(states=[JobState.RUNNING])
    assert {j.id: j.stalled for j in page.jobs} == {held.id: False, dead.id: True}
    asked = await client.cancel(dead.id)
    assert (asked.state, asked.cancel_requested, asked.stalled) == (JobState.RUNNING, True, True)

    assert await client.store.rescue_expired(client.pool, 10) != []
    rescued = await _get(client, dead.id)
    assert (rescued.state, rescued.stalled) == (JobState.CANCELLED, False)


# -- plans ---------------------------------------------------------------------------


async def _plan(client: Client, name: str, *args: object) -> str:
    rows = await client.pool.fetch("EXPLAIN " + sql.query(name), *args)
    return "\n".join(str(r[0]) for r in rows)


async def _bury_in_finished_jobs(client: Client) -> None:
    await client.pool.execute(
        "INSERT INTO skiplock.jobs (id, queue, task, args, state, finished_at)"
        " SELECT gen_random_uuid(), 'default', 't', '{}', 'succeeded', now()"
        " FROM generate_series(1, 20000)"
    )


async def test_claim_uses_claim_index(
    client: Client, explaining: tuple[asyncpg.Connection[Any], list[str]]
) -> None:
    """Among 20,000 finished jobs, the claim (skiplock.claim, run inside claim_jobs) finds the
    queued ones through jobs_claim_idx: the plans it ran with, nested ones too, as
    auto_explain logged them, never scan the table."""
    conn, notices = explaining
    await _bury_in_finished_jobs(client)
    await client.enqueue_many([JobSpec(task="t") for _ in range(5)])
    await client.pool.execute("ANALYZE skiplock.jobs")
    claimed = await conn.fetch(sql.query("claim_jobs"), ["default"], 10, LEASE, "w1", None)
    assert len(claimed) == 5
    scans = [
        (n.get("Node Type"), n.get("Index Name"))
        for plan in plans(notices)
        for n in nodes(plan["Plan"])
        if n.get("Relation Name") == "jobs"
    ]
    assert ("Index Scan", "jobs_claim_idx") in scans, scans
    assert not [s for s in scans if s[0] == "Seq Scan"], scans


async def test_rescue_uses_lease_index(client: Client) -> None:
    """Among 20,000 finished jobs, the rescue query finds running ones through jobs_lease_idx."""
    await _bury_in_finished_jobs(client)
    await client.enqueue_many([JobSpec(task="t") for _ in range(5)])
    await _claim(client)
    await client.pool.execute("ANALYZE skiplock.jobs")
    plan = await _plan(client, "rescue_expired", 10, [])
    assert "jobs_lease_idx" in plan, plan


# -- expiry ----------------------------------------------------------------------------


async def _expired(client: Client, **kwargs: Any) -> Job:
    """A queued job whose expires_at has passed by the database clock."""
    job = await client.enqueue("t", expires_at=datetime.now(UTC) + timedelta(seconds=0.3), **kwargs)
    assert job.expires_at is not None
    await wait_for(
        lambda: client.pool.fetchval("SELECT now() > $1", job.expires_at),
        bool,
        timeout=10,
        what="the expiry to pass",
    )
    return job


async def test_claim_skips_a_job_past_its_expiry(client: Client) -> None:
    """A queued job past its expires_at is never claimed; one before it is."""
    expired = await _expired(client, priority=-1)
    fresh = await client.enqueue("t", expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert [j.id for j in await _claim(client)] == [fresh.id]
    assert (await _get(client, expired.id)).state is JobState.QUEUED


async def test_expiry_sweep_cancels_jobs_not_started_in_time(client: Client) -> None:
    """purge_sweep first ends queued jobs past their expiry as cancelled with an Expired
    entry in their history (not as an error: they did not fail), keeps them like any
    cancelled job, and leaves running jobs past their expiry alone."""
    expired = await _expired(client)
    running = await _expired(client, queue="busy")
    # Claim the second one as if it had started before its expiry (the claim skips it now).
    await client.pool.execute(
        "UPDATE skiplock.jobs SET expires_at = now() + interval '1 hour' WHERE id = $1",
        running.id,
    )
    (claimed,) = await _claim(client, ("busy",))
    await client.pool.execute(
        "UPDATE skiplock.jobs SET expires_at = now() - interval '1 second' WHERE id = $1",
        running.id,
    )

    policy = RetentionPolicy(batch_pause=0)
    assert await purge_sweep(client.pool, client.store, policy) == 0  # nothing deleted

    ended = await _get(client, expired.id)
    assert (ended.state, ended.cancel_requested, ended.error) == (JobState.CANCELLED, False, None)
    assert ended.finished_at is not None
    (entry,) = ended.errors
    assert (entry.type, entry.attempt, entry.worker) == ("Expired", 0, None)
    assert "before it started" in entry.message
    still = await _get(client, claimed.id)
    assert (still.state, still.lease_token) == (JobState.RUNNING, claimed.lease_token)
    assert await client.store.expire_jobs(client.pool, 100) == 0  # nothing left to expire


async def test_a_job_finished_before_its_expiry_is_purged_at_it(client: Client) -> None:
    """Retention deletes a job that finished before its expires_at once that has passed,
    whatever its state's age; a job that ended at or after it follows its state's age."""
    job = await client.enqueue("t", expires_at=datetime.now(UTC) + timedelta(seconds=0.5))
    (claimed,) = await _claim(client)
    assert claimed.lease_token is not None
    done = Completion(claimed.id, claimed.lease_token, "succeeded", result_json="1")
    assert await client.store.complete_jobs(client.pool, [done]) == {job.id}
    late = await _expired(client)
    policy = RetentionPolicy(batch_pause=0)
    await wait_for(
        lambda: client.pool.fetchval("SELECT now() > $1", job.expires_at),
        bool,
        timeout=10,
        what="the expiry to pass",
    )
    assert await purge_sweep(client.pool, client.store, policy) == 1
    assert await client.get(job.id) is None
    assert (await _get(client, late.id)).state is JobState.CANCELLED
