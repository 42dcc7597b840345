"""Flow control on a real database: limits, rate limits, pause, fair claims (migration 0010).

The claims here are ``claim_jobs`` calls (the worker's own statement), so what
is asserted is what any worker would be given.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from skiplock import (
    Client,
    InvalidSetting,
    JobContext,
    JobSpec,
    JobState,
    TaskRegistry,
    Worker,
    sql,
)
from skiplock.queue.store import Completion, next_fair_key
from skiplock.worker.retention import RetentionPolicy, purge_sweep
from skiplock.worker.sizer import ClaimSizer
from tests.helpers import wait_for, wait_for_state, wait_until
from tests.integration.conftest import nodes, plans
from tests.worker_helpers import fast_settings, running

LEASE = 30.0


async def _enqueue_keyed(
    client: Client, keys: Sequence[Sequence[str] | None], **spec: Any
) -> list[uuid.UUID]:
    """Enqueue one job per entry of ``keys``, with those limit keys, in order."""
    jobs = await client.enqueue_many([JobSpec(task="t", limit_keys=k, **spec) for k in keys])
    return [j.id for j in jobs]


async def _claim(client: Client, n: int, queues: list[str] | None = None) -> list[Any]:
    return await client.store.claim_jobs(client.pool, queues or ["default"], n, LEASE, "w1")


async def _succeed(client: Client, jobs: list[Any]) -> None:
    done = await client.store.complete_jobs(
        client.pool, [Completion(j.id, j.lease_token, "succeeded", "null") for j in jobs]
    )
    assert len(done) == len(jobs)


# -- concurrency limits --------------------------------------------------------


async def test_a_key_never_runs_more_than_its_limit_and_waits_queued(client: Client) -> None:
    """With 'user:*' at 2 running, user 1's third job stays queued (not rejected) until one
    of its two running jobs ends; user 2's jobs are not held back by user 1's."""
    await client.set_limit("user:*", max_running=2)
    ids = await _enqueue_keyed(client, [["user:1"]] * 3 + [["user:2"]] * 2)
    first = await _claim(client, 10)
    assert sorted(j.id for j in first) == sorted(ids[:2] + ids[3:])
    assert await _claim(client, 10) == []
    third = await client.get(ids[2])
    assert third is not None
    assert third.state is JobState.QUEUED

    await _succeed(client, [j for j in first if j.id == ids[0]])
    again = await _claim(client, 10)
    assert [j.id for j in again] == [ids[2]]


async def test_every_limit_on_every_key_of_a_job_applies(client: Client) -> None:
    """A job with keys user:1 and provider:x starts only when both have room; a pattern and
    an exact key matching the same key both apply (the stricter wins)."""
    await client.set_limit("user:*", max_running=5)
    await client.set_limit("user:1", max_running=1)
    await client.set_limit("provider:x", max_running=2)
    ids = await _enqueue_keyed(
        client,
        [
            ["user:1", "provider:x"],
            ["user:1", "provider:x"],
            ["user:2", "provider:x"],
            ["user:3", "provider:x"],
        ],
    )
    claimed = await _claim(client, 10)
    # user:1 admits one; provider:x two in claim order: the first and the third.
    assert sorted(j.id for j in claimed) == sorted([ids[0], ids[2]])
    await client.remove_limit("provider:x")
    assert sorted(j.id for j in await _claim(client, 10)) == [ids[3]]


async def test_max_running_zero_holds_every_job_of_the_key(client: Client) -> None:
    await client.set_limit("tenant-held", max_running=0)
    ids = await _enqueue_keyed(client, [["tenant-held"], None])
    assert [j.id for j in await _claim(client, 10)] == [ids[1]]


async def test_a_key_another_claimer_is_admitting_is_skipped_not_waited_for(
    client: Client, db_dsn: str
) -> None:
    """While another transaction holds a key's admission lock, a claim leaves that key's
    jobs queued and returns the others at once (no waiting, no deadlock)."""
    await client.set_limit("k:*", max_running=5)
    ids = await _enqueue_keyed(client, [["k:busy"], ["k:free"]])
    other = await asyncpg.connect(db_dsn)
    try:
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock(hashtext('skiplock.limits'), hashtext('k:busy'))"
            )
            assert [j.id for j in await _claim(client, 10)] == [ids[1]]
        assert [j.id for j in await _claim(client, 10)] == [ids[0]]
    finally:
        await other.close()


async def test_a_limit_on_a_task_is_given_to_the_jobs_already_queued(client: Client) -> None:
    """set_limit on an implicit key (task:<task>) gives that key to the queued jobs, so a
    limit set on a backlog holds it at once."""
    await client.enqueue_many([JobSpec(task="report") for _ in range(4)])
    limit = await client.set_limit("task:report", max_running=1)
    assert (limit.pattern, limit.max_running, limit.max_starts) == ("task:report", 1, None)
    keys = await client.pool.fetch("SELECT limit_keys FROM skiplock.jobs")
    assert [r["limit_keys"] for r in keys] == [["task:report"]] * 4
    assert len(await _claim(client, 10)) == 1
    assert await _claim(client, 10) == []


async def test_limits_are_listed_changed_and_removed(client: Client) -> None:
    await client.set_limit("b:*", max_running=3)
    await client.set_limit("a", max_starts=10, per=3600)
    await client.set_limit("b:*", max_running=4, max_starts=1, per=1.5)
    assert [
        (x.pattern, x.max_running, x.max_starts, x.per_seconds) for x in await client.limits()
    ] == [
        ("a", None, 10, 3600.0),
        ("b:*", 4, 1, 1.5),
    ]
    assert await client.remove_limit("a") is True
    assert await client.remove_limit("a") is False
    assert [x.pattern for x in await client.limits()] == ["b:*"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pattern": ""}, "pattern"),
        ({"pattern": "k"}, "give max_running"),
        ({"pattern": "k", "max_running": -1}, "max_running"),
        ({"pattern": "k", "max_running": True}, "max_running"),
        ({"pattern": "k", "max_starts": 5}, "go together"),
        ({"pattern": "k", "max_starts": 5, "per": 0}, "per"),
        ({"pattern": "k", "max_starts": 5, "per": float("nan")}, "per"),
        ({"pattern": "k", "max_starts": 5, "per": 40 * 86400}, "per"),
    ],
)
async def test_a_bad_limit_is_refused_and_nothing_is_written(
    client: Client, kwargs: dict[str, Any], message: str
) -> None:
    pattern = kwargs.pop("pattern")
    with pytest.raises(InvalidSetting, match=message):
        await client.set_limit(pattern, **kwargs)
    assert await client.limits() == []


# -- rate limits ---------------------------------------------------------------


async def test_a_rate_limit_counts_starts_in_its_window_and_survives_retention(
    client: Client,
) -> None:
    """3 starts per hour: three jobs start, the fourth waits — also after the three
    finished and retention deleted them (starts are logged apart from the jobs)."""
    await client.set_limit("api:*", max_starts=3, per=3600)
    ids = await _enqueue_keyed(client, [["api:1"]] * 4)
    first = await _claim(client, 10)
    assert sorted(j.id for j in first) == sorted(ids[:3])
    await _succeed(client, first)
    purged = await purge_sweep(
        client.pool,
        client.store,
        RetentionPolicy(succeeded_after=0.0, failed_after=0.0, cancelled_after=0.0),
    )
    assert purged == 3
    assert await _claim(client, 10) == []
    assert await client.pool.fetchval("SELECT count(*) FROM skiplock.limit_starts") == 3

    # The window moves: starts older than it no longer count.
    await client.pool.execute(
        "UPDATE skiplock.limit_starts SET started_at = started_at - interval '61 minutes'"
    )
    assert [j.id for j in await _claim(client, 10)] == [ids[3]]


async def test_old_starts_are_pruned_beyond_every_window(client: Client) -> None:
    await client.set_limit("api:*", max_starts=100, per=60)
    await _enqueue_keyed(client, [["api:1"]] * 3)
    assert len(await _claim(client, 10)) == 3
    await client.pool.execute(
        "UPDATE skiplock.limit_starts SET started_at = started_at - interval '2 minutes'"
        " WHERE job_id IN (SELECT job_id FROM skiplock.limit_starts LIMIT 2)"
    )
    assert await client.store.prune_limit_starts(client.pool, 1000) == 2
    assert await client.pool.fetchval("SELECT count(*) FROM skiplock.limit_starts") == 1


# -- pause ---------------------------------------------------------------------


async def test_a_paused_queue_gives_no_job_until_resumed(client: Client) -> None:
    await client.enqueue("t", queue="a")
    await client.enqueue("t", queue="b")
    settings = await client.pause("a")
    assert (settings.name, settings.paused, settings.fair) == ("a", True, False)
    assert [j.queue for j in await _claim(client, 10, ["a", "b"])] == ["b"]
    await client.resume("a")
    assert [j.queue for j in await _claim(client, 10, ["a", "b"])] == ["a"]
    assert [(q.name, q.paused) for q in await client.queues()] == [("a", False)]


class _FixedPrefetch(ClaimSizer):
    """A sizer that always prefetches ``prefetch`` jobs (the test decides, not timing)."""

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        pass


async def test_pausing_gives_back_the_jobs_a_worker_holds_but_has_not_started(
    client: Client, db_dsn: str
) -> None:
    """A worker running one job at a time holds four more waiting for its slot; pausing the
    queue gives those four back (queued, attempt not counted) at once — long before the
    worker's 30 s poll — and the running one finishes; none of the four starts."""
    tasks = TaskRegistry()
    started: list[uuid.UUID] = []
    go = asyncio.Event()

    @tasks.task()
    async def t(ctx: JobContext) -> None:
        started.append(ctx.id)
        await go.wait()

    await client.enqueue_many([JobSpec(task="t") for _ in range(5)])
    worker = Worker(tasks, db_dsn, fast_settings(concurrency=1, max_leases=5, poll=30.0))
    sizer = _FixedPrefetch(1, 5)
    sizer.prefetch = 4
    worker._table.sizer = sizer
    async with running(worker):
        await wait_for(
            lambda: client.pool.fetchval(
                "SELECT count(*) FROM skiplock.jobs WHERE state = 'running'"
            ),
            lambda n: n == 5 and len(started) == 1,
            what="one job running and four claimed ahead",
        )
        await client.pause("default")
        await wait_for(
            lambda: client.pool.fetchval(
                "SELECT count(*) FROM skiplock.jobs WHERE state = 'queued' AND attempt = 0"
            ),
            lambda n: n == 4,
            timeout=5.0,
            what="the four waiting jobs given back",
        )
        go.set()
        done = await wait_for_state(client, started[0], JobState.SUCCEEDED)
        assert done.attempt == 1
    assert len(started) == 1


# -- fair queues ---------------------------------------------------------------


async def test_a_fair_queue_serves_a_small_tenant_beside_a_big_backlog(client: Client) -> None:
    """Tenant A has 200 queued jobs, then B enqueues one: a plain claim of 5 gives A's
    oldest; once the queue is fair, the next claim of 5 includes B's job."""
    await client.enqueue_many([JobSpec(task="t", tenant="A") for _ in range(200)])
    b = await client.enqueue("t", tenant="B")
    assert {j.tenant for j in await _claim(client, 5)} == {"A"}
    settings = await client.set_fair("default")
    assert settings.fair is True
    claimed = await _claim(client, 5)
    assert b.id in {j.id for j in claimed}
    assert len(claimed) == 5


async def test_fair_weights_share_a_claim(client: Client) -> None:
    """Weights 3 and 1: a claim of 8 gives six of A's jobs and two of B's."""
    await client.enqueue_many([JobSpec(task="t", tenant="A") for _ in range(20)])
    await client.enqueue_many([JobSpec(task="t", tenant="B") for _ in range(20)])
    await client.set_fair("default")
    await client.set_fair_weight("default", "A", 3)
    claimed = await _claim(client, 8)
    assert sorted(j.tenant for j in claimed) == ["A"] * 6 + ["B"] * 2
    assert [(w.fair_key, w.weight) for w in await client.fair_weights()] == [("A", 3)]


async def test_jobs_enqueued_into_a_fair_queue_without_a_fair_key_are_swept(
    client: Client,
) -> None:
    """A job that reached a fair queue without a fair key (its transaction had not seen the
    switch) is given one by the workers' sweep and is claimed."""
    await client.set_fair("default")
    job = await client.enqueue("t")
    await client.pool.execute("UPDATE skiplock.jobs SET fair_key = NULL WHERE id = $1", job.id)
    assert await _claim(client, 5) == []
    assert await client.store.apply_fair_keys(client.pool, None, 100) == 1
    assert [j.id for j in await _claim(client, 5)] == [job.id]


# -- limits declared in code ---------------------------------------------------


async def test_a_task_declares_its_limit_and_a_run_time_change_survives_restarts(
    client: Client, db_dsn: str
) -> None:
    """``@tasks.task(max_running=1)``: a starting worker writes the limit of task:<name>
    and gives the key to the jobs already queued, which then run one at a time; a limit
    changed at run time is not overwritten by the next worker's start."""
    tasks = TaskRegistry()
    running_now: list[uuid.UUID] = []
    most = [0]

    @tasks.task(max_running=1)
    async def report(ctx: JobContext) -> None:
        running_now.append(ctx.id)
        most[0] = max(most[0], len(running_now))
        await asyncio.sleep(0.02)  # the job's work, overlapping others if the limit failed
        running_now.remove(ctx.id)

    jobs = await client.enqueue_many([JobSpec(task="report") for _ in range(6)])
    async with running(Worker(tasks, db_dsn, fast_settings(concurrency=4))):
        for job in jobs:
            await wait_for_state(client, job.id, JobState.SUCCEEDED)
    assert most[0] == 1
    assert [(x.pattern, x.max_running) for x in await client.limits()] == [("task:report", 1)]

    await client.set_limit("task:report", max_running=3)
    async with running(Worker(tasks, db_dsn, fast_settings())):
        pass
    assert [(x.pattern, x.max_running) for x in await client.limits()] == [("task:report", 3)]


def test_a_bad_declared_limit_is_refused_at_registration() -> None:
    tasks = TaskRegistry()
    with pytest.raises(InvalidSetting, match="max_starts and per go together"):

        @tasks.task(max_starts=5)
        async def t(ctx: JobContext) -> None: ...


async def test_claims_of_one_job_go_round_the_fair_keys(client: Client) -> None:
    """Each claim goes on after the last fair key the worker was served: claims of one job
    serve A, B, C, A, B, C… however big A's backlog."""
    await client.enqueue_many([JobSpec(task="t", tenant="A") for _ in range(50)])
    await client.enqueue_many([JobSpec(task="t", tenant=t) for t in "BC" for _ in range(3)])
    await client.set_fair("default")
    after: str | None = None
    served = []
    for _ in range(7):
        jobs = await client.store.claim_jobs(
            client.pool, ["default"], 1, LEASE, "w1", fair_after=after
        )
        served.append(jobs[0].tenant)
        after = next_fair_key(after, jobs)
    assert "".join(served) == "ABCABCA"


async def test_a_fair_claim_reads_a_small_key_through_the_fair_index(
    client: Client, explaining: tuple[asyncpg.Connection[Any], list[str]]
) -> None:
    """Behind A's 5,000 queued jobs, B's jobs are found through jobs_fair_idx by every claim,
    with the generic plans PL/pgSQL settles on (forced here from the first call): never by
    walking jobs_claim_idx past A's backlog."""
    conn, notices = explaining
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await client.enqueue_many([JobSpec(task="t", tenant="A") for _ in range(5000)])
    await client.enqueue_many([JobSpec(task="t", tenant="B") for _ in range(10)])
    await client.set_fair("default")
    await client.pool.execute("ANALYZE skiplock.jobs")
    after: str | None = None
    for _ in range(8):
        rows = await conn.fetch(sql.query("claim_jobs"), ["default"], 2, LEASE, "w1", after)
        assert sorted(r["tenant"] for r in rows) == ["A", "B"]
        after = "B"
    walks = [plan for plan in plans(notices) if "LIMIT grp.n_rows" in plan.get("Query Text", "")]
    assert len(walks) == 8
    used = {n.get("Index Name") for plan in walks for n in nodes(plan["Plan"])}
    assert "jobs_fair_idx" in used
    assert "jobs_claim_idx" not in used


async def test_one_keys_backlog_at_the_head_does_not_hold_back_the_jobs_behind_it(
    client: Client,
) -> None:
    """User 1's 300 jobs stand first in the queue, limited to 2 running: a claim of 10 still
    starts user 1's two and eight of the other users' jobs behind them."""
    await client.set_limit("user:*", max_running=2)
    await _enqueue_keyed(client, [["user:1"]] * 300)
    others = await _enqueue_keyed(client, [[f"user:{i}"] for i in range(2, 12)])
    claimed = await _claim(client, 10)
    assert sorted(j.limit_keys == ("user:1",) for j in claimed) == [False] * 8 + [True] * 2
    assert {j.id for j in claimed if j.limit_keys != ("user:1",)} == set(others[:8])


async def test_a_claim_admits_a_thousand_distinct_keys_at_once(client: Client) -> None:
    """1,000 jobs, each with a key of its own limited to 1: one claim of 1,000 starts them
    all (up to 1,024 keys are locked per claim; it used to stop at 256 and a second round)."""
    await client.set_limit("k:*", max_running=1)
    ids = await _enqueue_keyed(client, [[f"k:{i}"] for i in range(1000)])
    claimed = await _claim(client, 1000)
    assert {j.id for j in claimed} == set(ids)
    assert await _claim(client, 10) == []


async def test_a_claim_short_by_less_than_half_does_not_look_further(client: Client) -> None:
    """Keys full at the head of the queue: a claim that got at least half of what it asked
    for returns that (the next claim goes on); one that got less looks past the full keys
    (test_one_keys_backlog_at_the_head_does_not_hold_back_the_jobs_behind_it)."""
    await client.set_limit("k:*", max_running=1)
    await _enqueue_keyed(client, [["k:0"]] * 20 + [[f"k:{i}"] for i in range(1, 21)])
    # 20 + 16 candidates: k:0's first job and k:1 … k:16 start, 17 >= 20 / 2.
    first = await _claim(client, 20)
    assert sorted(j.limit_keys[0] for j in first) == sorted(f"k:{i}" for i in range(17))
    second = await _claim(client, 20)
    assert sorted(j.limit_keys[0] for j in second) == sorted(f"k:{i}" for i in range(17, 21))


async def test_a_claim_of_nothing_claims_nothing_under_limits(client: Client) -> None:
    await client.set_limit("k:*", max_running=5)
    await _enqueue_keyed(client, [["k:1"], None])
    assert await _claim(client, 0) == []


async def test_full_keys_of_a_fair_queue_do_not_hide_the_keys_after_them(client: Client) -> None:
    """40 tenants have used their one start an hour; tenant zz's job, behind all of them in
    the fair queue's key order, still starts, whatever key the worker was at."""
    await client.set_limit("tenant:*", max_starts=1, per=3600)
    await client.set_fair("default")
    tenants = [f"t{i:02d}" for i in range(40)]
    await client.enqueue_many([JobSpec(task="t", tenant=t) for t in tenants])
    first = await _claim(client, 100)
    assert len(first) == 40
    await client.enqueue_many([JobSpec(task="t", tenant=t) for t in tenants])
    late = await client.enqueue("t", tenant="zz")
    for after in (None, "t05"):
        claimed = await client.store.claim_jobs(
            client.pool, ["default"], 10, LEASE, "w1", fair_after=after
        )
        if claimed:
            break
    assert [j.id for j in claimed] == [late.id]


async def test_sixteen_keys_and_the_implicit_ones_fit(client: Client) -> None:
    """A job may carry 16 keys of its own and every implicit key a limit matches."""
    await client.set_limit("task:*", max_running=100)
    await client.set_limit("tenant:*", max_running=100)
    await client.set_limit("queue:*", max_running=100)
    job = await client.enqueue("t", limit_keys=[f"k:{i}" for i in range(16)])
    assert job.limit_keys is not None
    assert len(job.limit_keys) == 20


async def test_a_claim_short_of_a_key_another_claimer_holds_wakes_the_queue(
    client: Client, db_dsn: str
) -> None:
    """While another claimer admits key k:busy, a claim leaves its job and, being short,
    announces the queue so that workers claim again once the other commits."""
    await client.set_limit("k:*", max_running=5)
    await _enqueue_keyed(client, [["k:busy"]])
    heard: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    other = await asyncpg.connect(db_dsn)
    try:
        await listener.add_listener(
            "skiplock.queue", lambda _c, _p, _ch, payload: heard.append(str(payload))
        )
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock(hashtext('skiplock.limits'), hashtext('k:busy'))"
            )
            assert await _claim(client, 10) == []
        await wait_until(lambda: "default" in heard, what="the queue announced")
        assert len(await _claim(client, 10)) == 1
    finally:
        await listener.close()
        await other.close()
