"""Enqueue side of flow control: unique jobs, debounce, limit keys and fair keys."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from skiplock import Client, IdempotencyConflict, Job, JobSpec, JobState, JobStateConflict
from skiplock.queue import OnDuplicate


async def _claim(client: Client, queue: str = "default") -> Job:
    (claimed,) = await client.store.claim_jobs(client.pool, [queue], 1, 30.0, "worker-1")
    return claimed


async def _active(client: Client, key: str, tenant: str = "default") -> list[Any]:
    return list(
        await client.pool.fetch(
            "SELECT id, state, args, run_at FROM skiplock.jobs"
            " WHERE tenant = $1 AND unique_key = $2 AND state IN ('queued', 'running')",
            tenant,
            key,
        )
    )


async def test_unique_keep_returns_the_queued_job_unchanged(client: Client) -> None:
    """'keep': the second enqueue writes nothing and returns the first job, duplicate True."""
    first = await client.enqueue("t", {"a": 1}, unique_key="k", priority=1)
    assert not first.duplicate
    assert first.unique_key == "k"
    again = await client.enqueue("t", {"a": 2}, unique_key="k", priority=5)
    assert again.id == first.id
    assert again.duplicate
    assert again.args == {"a": 1}
    assert again.priority == 1
    assert len(await _active(client, "k")) == 1
    assert await client.pool.fetchval("SELECT count(*) FROM skiplock.jobs") == 1


async def test_unique_true_keys_on_task_and_args(client: Client) -> None:
    """unique=True: the same task and args is a duplicate; other args are another job."""
    first = await client.enqueue("t", {"a": 1, "b": 2}, unique=True)
    same = await client.enqueue("t", {"b": 2, "a": 1}, unique=True)
    other = await client.enqueue("t", {"a": 2, "b": 2}, unique=True)
    assert same.id == first.id
    assert same.duplicate
    assert other.id != first.id
    assert not other.duplicate
    assert first.unique_key is not None
    assert len(first.unique_key) == 64


async def test_unique_replace_changes_a_queued_job(client: Client) -> None:
    """'replace': a queued holder takes the new args, meta, priority, run time, attempts."""
    first = await client.enqueue("t", {"a": 1}, unique_key="k", meta={"m": 1}, delay=3600)
    when = datetime.now(UTC) + timedelta(minutes=5)
    replaced = await client.enqueue(
        "t",
        {"a": 2},
        unique_key="k",
        on_duplicate="replace",
        meta={"m": 2},
        priority=7,
        run_at=when,
        max_attempts=9,
    )
    assert replaced.id == first.id
    assert replaced.duplicate
    assert replaced.args == {"a": 2}
    assert replaced.meta == {"m": 2}
    assert replaced.priority == 7
    assert replaced.max_attempts == 9
    assert replaced.run_at == when
    stored = await client.get(first.id)
    assert stored is not None
    assert stored.args == {"a": 2}
    assert stored.run_at == when


async def test_unique_extend_moves_a_queued_job(client: Client) -> None:
    """'extend': only the run time of a queued holder changes."""
    first = await client.enqueue("t", {"a": 1}, unique_key="k")
    later = await client.enqueue(
        "t", {"a": 2}, unique_key="k", on_duplicate="extend", delay=600, priority=3
    )
    assert later.id == first.id
    assert later.duplicate
    assert later.args == {"a": 1}
    assert later.priority == 0
    assert later.run_at > first.run_at + timedelta(seconds=590)


@pytest.mark.parametrize("mode", ["keep", "replace", "extend"])
async def test_a_running_duplicate_is_returned_unchanged(client: Client, mode: OnDuplicate) -> None:
    """Whatever on_duplicate says, a running holder is returned as it is."""
    await client.enqueue("t", {"a": 1}, unique_key="k")
    running = await _claim(client)
    dup = await client.enqueue(
        "t",
        {"a": 2},
        unique_key="k",
        on_duplicate=mode,
        delay=60,
    )
    assert dup.id == running.id
    assert dup.duplicate
    assert dup.state is JobState.RUNNING
    assert dup.args == {"a": 1}
    assert dup.run_at == running.run_at
    assert len(await _active(client, "k")) == 1


async def test_a_finished_holder_frees_the_key(client: Client) -> None:
    """Once the holder is no longer queued or running, the key makes a new job."""
    first = await client.enqueue("t", unique_key="k")
    await client.cancel(first.id)
    second = await client.enqueue("t", unique_key="k")
    assert second.id != first.id
    assert not second.duplicate


async def test_debounce_runs_once_after_the_last_enqueue_of_a_burst(client: Client) -> None:
    """Five debounced enqueues: one job, due 'debounce' after the last one."""
    jobs = [await client.enqueue("t", {"x": 1}, debounce=30) for _ in range(5)]
    assert len({j.id for j in jobs}) == 1
    assert [j.duplicate for j in jobs] == [False, True, True, True, True]
    rows = await _active(client, jobs[0].unique_key or "")
    assert len(rows) == 1
    updated_at = await client.pool.fetchval(
        "SELECT updated_at FROM skiplock.jobs WHERE id = $1", jobs[0].id
    )
    # run_at is now() + 30 s of the statement of the last enqueue (its updated_at)
    assert rows[0]["run_at"] == updated_at + timedelta(seconds=30)
    assert jobs[-1].run_at == rows[0]["run_at"]
    assert rows[0]["run_at"] > jobs[0].run_at


async def test_debounce_with_replace_keeps_the_last_arguments(client: Client) -> None:
    """debounce + replace and a shared unique_key: the last request's args run."""
    for i in range(3):
        job = await client.enqueue(
            "t", {"i": i}, unique_key="doc:1", debounce=10, on_duplicate="replace"
        )
    assert job.args == {"i": 2}
    assert job.duplicate


async def test_duplicates_within_a_batch_apply_in_order(client: Client) -> None:
    """Two specs with one key in a batch: as if enqueued one after the other."""
    specs = [
        JobSpec("t", {"i": 0}, unique_key="k"),
        JobSpec("t", {"i": 1}, unique_key="k", on_duplicate="replace"),
        JobSpec("t", {"i": 2}, unique_key="k"),
        JobSpec("t", {"i": 3}, unique_key="other"),
    ]
    jobs = await client.enqueue_many(specs)
    assert jobs[0].id == specs[0].id
    assert not jobs[0].duplicate
    assert jobs[0].args == {"i": 0}
    assert jobs[1].id == specs[0].id
    assert jobs[1].duplicate
    assert jobs[1].args == {"i": 1}
    assert jobs[2].id == specs[0].id
    assert jobs[2].duplicate
    assert jobs[2].args == {"i": 1}
    assert jobs[3].id == specs[3].id
    assert not jobs[3].duplicate
    rows = await _active(client, "k")
    assert len(rows) == 1
    assert rows[0]["args"] == '{"i": 1}'


async def test_a_batch_duplicate_of_an_existing_job(client: Client) -> None:
    """A batch spec whose key an older job holds resolves to it; the rest is inserted."""
    held = await client.enqueue("t", unique_key="k")
    specs = [JobSpec("t"), JobSpec("t", unique_key="k", on_duplicate="extend", delay=60)]
    plain, dup = await client.enqueue_many(specs)
    assert plain.id == specs[0].id
    assert not plain.duplicate
    assert dup.id == held.id
    assert dup.duplicate
    assert dup.run_at > held.run_at


async def test_concurrent_enqueues_of_one_key_make_one_job(db_dsn: str) -> None:
    """20 connections enqueue one unique key at once: one job, no error, one creator."""
    clients = [await Client.connect(db_dsn, min_size=1, max_size=1) for _ in range(20)]
    try:
        modes: tuple[OnDuplicate, ...] = ("keep", "replace", "extend")
        for mode in modes:
            key = f"burst-{mode}"
            jobs = await asyncio.gather(
                *(
                    c.enqueue("t", {"i": i}, unique_key=key, on_duplicate=mode)
                    for i, c in enumerate(clients)
                )
            )
            assert len({j.id for j in jobs}) == 1
            assert sum(not j.duplicate for j in jobs) == 1
            assert len(await _active(clients[0], key)) == 1
        # a batch each, all at once, three keys per batch in either order: one job per key
        for round_ in range(3):
            keys = [f"b{round_}-{k}" for k in range(3)]
            batches = await asyncio.gather(
                *(
                    c.enqueue_many(
                        [
                            JobSpec("t", unique_key=k, on_duplicate="extend")
                            for k in (keys if i % 2 else keys[::-1])
                        ]
                    )
                    for i, c in enumerate(clients)
                )
            )
            for position in range(3):
                assert len({b[position].id for b in batches[::2]}) == 1
            for key in keys:
                assert len(await _active(clients[0], key)) == 1
    finally:
        for c in clients:
            await c.close()


async def test_unique_keys_are_per_tenant(client: Client) -> None:
    """Tenant A's unique key never matches tenant B's job."""
    a = await client.enqueue("t", unique_key="k", tenant="a")
    b = await client.enqueue("t", unique_key="k", tenant="b")
    assert a.id != b.id
    assert not b.duplicate
    again = await client.enqueue("t", unique_key="k", tenant="b")
    assert again.id == b.id
    assert again.tenant == "b"


async def test_idempotency_key_takes_precedence(client: Client) -> None:
    """An idempotency key's holder is returned (or conflicts) before the unique key acts."""
    first = await client.enqueue("t", {"a": 1}, idempotency_key="i", unique_key="k")
    resent = await client.enqueue("t", {"a": 1}, idempotency_key="i", unique_key="k")
    assert resent.id == first.id
    assert not resent.duplicate
    with pytest.raises(IdempotencyConflict):
        await client.enqueue(
            "t", {"a": 1}, idempotency_key="i", unique_key="k", on_duplicate="replace"
        )
    other = await client.enqueue("t", {"a": 3}, idempotency_key="j", unique_key="k")
    assert other.id == first.id
    assert other.duplicate


async def test_unique_inside_the_application_transaction(client: Client, db_dsn: str) -> None:
    """On the caller's connection the duplicate resolves inside its transaction."""
    conn = await asyncpg.connect(db_dsn)
    try:
        async with conn.transaction():
            first = await client.enqueue("t", unique_key="k", connection=conn)
            again = await client.enqueue(
                "t", unique_key="k", connection=conn, on_duplicate="extend", delay=5
            )
            assert again.id == first.id
            assert again.duplicate
    finally:
        await conn.close()


async def test_limit_keys_stored_as_given_without_limits(client: Client) -> None:
    """No limits defined: the given keys are stored, no implicit ones, none by default."""
    job = await client.enqueue("t", limit_keys=["user:1", "gpu"], tenant="acme")
    plain = await client.enqueue("t", tenant="acme")
    batch = await client.enqueue_many(
        [JobSpec("t", limit_keys=["user:2"]), JobSpec("t"), JobSpec("t", queue="q")]
    )
    assert job.limit_keys == ("user:1", "gpu")
    assert plain.limit_keys is None
    assert [j.limit_keys for j in batch] == [("user:2",), None, None]
    stored = {
        r["id"]: r["limit_keys"]
        for r in await client.pool.fetch("SELECT id, limit_keys FROM skiplock.jobs")
    }
    assert stored[job.id] == ["user:1", "gpu"]
    assert stored[plain.id] is None
    assert [stored[j.id] for j in batch] == [["user:2"], None, None]
    got = await client.get(job.id, tenant="acme")
    assert got is not None
    assert got.limit_keys == ("user:1", "gpu")


async def test_implicit_keys_stored_when_a_limit_matches(client: Client) -> None:
    """Limits on 'tenant:*' and 'task:heavy': new jobs carry the implicit keys they match
    (tenant:<t> and tenant:<t>/task:<task> both match 'tenant:*'), after their own."""
    await client.pool.execute(
        "INSERT INTO skiplock.limits (pattern, max_running) VALUES ('tenant:*', 2),"
        " ('task:heavy', 1)"
    )
    one = await client.enqueue("heavy", limit_keys=["user:1"], tenant="acme")
    plain = await client.enqueue("light", tenant="acme")
    batch = await client.enqueue_many(
        [JobSpec("heavy", tenant="b"), JobSpec("light", tenant="c", limit_keys=["x"])]
    )
    assert one.limit_keys == ("user:1", "task:heavy", "tenant:acme", "tenant:acme/task:heavy")
    assert plain.limit_keys == ("tenant:acme", "tenant:acme/task:light")
    assert [j.limit_keys for j in batch] == [
        ("task:heavy", "tenant:b", "tenant:b/task:heavy"),
        ("x", "tenant:c", "tenant:c/task:light"),
    ]
    for job in (one, plain, *batch):
        got = await client.get(job.id, tenant=job.tenant)
        assert got is not None
        assert got.limit_keys == job.limit_keys


async def test_fair_key_defaults_to_the_tenant_in_a_fair_queue(client: Client) -> None:
    """A queue marked fair gives its jobs their tenant as fair_key unless one is given."""
    await client.pool.execute("INSERT INTO skiplock.queues (name, fair) VALUES ('fq', true)")
    fair = await client.enqueue("t", queue="fq", tenant="acme")
    given = await client.enqueue("t", queue="fq", tenant="acme", fairness_key="user:9")
    plain = await client.enqueue("t", queue="other", tenant="acme")
    plain_given = await client.enqueue("t", queue="other", fairness_key="g")
    batch = await client.enqueue_many(
        [JobSpec("t", queue="fq", tenant="x"), JobSpec("t", queue="other", tenant="x")]
    )
    assert fair.fair_key == "acme"
    assert given.fair_key == "user:9"
    assert plain.fair_key is None
    assert plain_given.fair_key == "g"
    assert [j.fair_key for j in batch] == ["x", None]
    for job in (fair, given, plain, plain_given, *batch):
        stored = await client.pool.fetchval(
            "SELECT fair_key FROM skiplock.jobs WHERE id = $1", job.id
        )
        assert stored == job.fair_key


async def test_retrying_a_unique_job_whose_key_is_taken_again_is_a_conflict(
    client: Client,
) -> None:
    """A failed unique job cannot go back to the queue while another job holds its key: a
    JobStateConflict (HTTP 409), not a database error, and nothing changes."""
    first = await client.enqueue("t", unique_key="k")
    await client.pool.execute(
        "UPDATE skiplock.jobs SET state = 'failed', finished_at = now() WHERE id = $1", first.id
    )
    second = await client.enqueue("t", unique_key="k")
    assert second.id != first.id
    with pytest.raises(JobStateConflict, match="unique key"):
        await client.retry(first.id)
    again = await client.get(first.id)
    assert again is not None
    assert again.state is JobState.FAILED
