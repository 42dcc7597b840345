"""The client: enqueue (also inside the application's transaction), get, list, cancel, retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

import skiplock
from skiplock import (
    ALL_TENANTS,
    Client,
    IdempotencyConflict,
    InvalidJob,
    Job,
    JobNotFound,
    JobSpec,
    JobState,
    JobStateConflict,
)
from skiplock.queue.client import ENQUEUE_ATTEMPTS
from skiplock.queue.errors import DatabaseUnavailable
from skiplock.queue.store import Completion, Outcome
from tests.helpers import wait_for


@pytest_asyncio.fixture
async def app_conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """The application's own connection, outside the client's pool."""
    c = await asyncpg.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()


async def _count(client: Client, where: str = "true", *args: Any) -> int:
    value = await client.pool.fetchval(f"SELECT count(*) FROM skiplock.jobs WHERE {where}", *args)  # noqa: S608 - fixed test clauses
    return int(value)


async def _running(client: Client, **kwargs: Any) -> Job:
    """Enqueue a job on a queue of its own and claim it, as a worker would."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    job = await client.enqueue("t", queue=queue, **kwargs)
    (claimed,) = await client.store.claim_jobs(client.pool, [queue], 1, 30.0, "worker-1")
    assert claimed.id == job.id
    return claimed


async def _finished(client: Client, outcome: Outcome, **kwargs: Any) -> Job:
    """A job that ran and ended with ``outcome``."""
    job = await _running(client, **kwargs)
    assert job.lease_token is not None
    error = '{"type": "Boom", "message": "boom", "attempt": 1}' if outcome == "failed" else None
    result = "42" if outcome == "succeeded" else None
    if outcome == "cancelled":  # a worker writes 'cancelled' only for a requested cancel
        await client.cancel(job.id, tenant=job.tenant)
    done = await client.store.complete_jobs(
        client.pool,
        [Completion(job.id, job.lease_token, outcome, result_json=result, error_json=error)],
    )
    assert done == {job.id}
    ended = await client.get(job.id, tenant=job.tenant)
    assert ended is not None
    assert ended.state == outcome
    return ended


# -- enqueue -------------------------------------------------------------------


async def test_enqueue_returns_job_with_given_fields(client: Client) -> None:
    """enqueue returns the stored job carrying every field it was given."""
    run_at = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    job = await client.enqueue(
        "send_email",
        {"to": "a@example.com", "n": [1, 2.5, None]},
        queue="mail",
        priority=-5,
        run_at=run_at,
        max_attempts=7,
        tenant="acme",
        idempotency_key="k-1",
        meta={"model": "m1"},
    )
    assert (job.task, job.args, job.queue, job.priority, job.run_at) == (
        "send_email",
        {"to": "a@example.com", "n": [1, 2.5, None]},
        "mail",
        -5,
        run_at,
    )
    assert (job.max_attempts, job.tenant, job.idempotency_key, job.meta) == (
        7,
        "acme",
        "k-1",
        {"model": "m1"},
    )
    assert (job.state, job.attempt, job.errors, job.result, job.cancel_requested) == (
        JobState.QUEUED,
        0,
        (),
        None,
        False,
    )
    assert (job.lease_token, job.lease_expires_at, job.worker_id) == (None, None, None)
    assert (job.started_at, job.finished_at, job.progress) == (None, None, None)
    assert await client.get(job.id, tenant="acme") == job


async def test_enqueue_without_schedule_is_due_at_creation(client: Client) -> None:
    """A job with neither run_at nor delay is due at its creation time."""
    job = await client.enqueue("t")
    assert job.run_at == job.created_at


async def test_enqueue_delay_counts_from_database_now(client: Client) -> None:
    """A delayed job is due exactly delay after its creation, by the database clock."""
    job = await client.enqueue("t", delay=timedelta(seconds=2.5))
    assert job.run_at - job.created_at == timedelta(seconds=2.5)


async def test_literal_backslash_u0000_round_trips(client: Client) -> None:
    """Args holding the text \\u0000 (not a NUL) are stored and read back unchanged."""
    args = {"s": "\\u0000", "t": "\\\\u0000", "u": "é\u2028"}
    job = await client.enqueue("t", args)
    stored = await client.get(job.id)
    assert stored is not None
    assert job.args == stored.args == args


async def test_invalid_enqueue_writes_nothing(client: Client) -> None:
    """An enqueue rejected by validation leaves the table empty."""
    with pytest.raises(InvalidJob, match="NUL"):
        await client.enqueue("t", {"s": "\x00"})
    assert await _count(client) == 0


async def test_transactional_enqueue_invisible_until_commit(
    client: Client, app_conn: asyncpg.Connection[Any]
) -> None:
    """A job enqueued in the app's transaction is invisible to others until commit."""
    async with app_conn.transaction():
        job = await client.enqueue("t", {"a": 1}, connection=app_conn)
        assert await client.get(job.id, connection=app_conn) == job
        assert await client.get(job.id) is None
        assert await _count(client) == 0
    assert await client.get(job.id) == job


async def test_rolled_back_enqueue_leaves_no_job(
    client: Client, app_conn: asyncpg.Connection[Any]
) -> None:
    """A job enqueued in a transaction that rolls back never exists."""
    tr = app_conn.transaction()
    await tr.start()
    job = await client.enqueue("t", connection=app_conn)
    await tr.rollback()
    assert await client.get(job.id) is None
    assert await _count(client) == 0


async def test_enqueue_many_keeps_order(client: Client) -> None:
    """enqueue_many of 5,000 jobs in one call returns them in the given order, distinct."""
    specs = [JobSpec(task="t", args={"i": i}, priority=i % 7) for i in range(5000)]
    jobs = await client.enqueue_many(specs)
    assert [j.id for j in jobs] == [s.id for s in specs]
    assert [j.args["i"] for j in jobs] == list(range(5000))
    assert len({j.id for j in jobs}) == 5000
    assert len({j.created_at for j in jobs}) == 1  # one statement
    assert await _count(client) == 5000


async def test_enqueue_many_ids_are_time_ordered(client: Client, db_dsn: str) -> None:
    """enqueue_many makes UUIDv7 ids on the client: the database's order by id is the order
    the jobs were given in, across two batches, and their timestamps are not decreasing."""
    first = await client.enqueue_many([JobSpec(task="t", args={"i": i}) for i in range(1000)])
    second = await client.enqueue_many(
        [JobSpec(task="t", args={"i": i}) for i in range(1000, 2000)]
    )
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT (args->>'i')::int AS i, substr(id::text, 15, 1) AS version,
                   ('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint AS ms
            FROM skiplock.jobs ORDER BY id
            """
        )
    finally:
        await conn.close()
    assert [r["i"] for r in rows] == list(range(2000))
    assert {r["version"] for r in rows} == {"7"}
    stamps = [r["ms"] for r in rows]
    assert stamps == sorted(stamps)
    assert [j.id for j in first + second] == sorted(j.id for j in first + second)


async def test_enqueue_many_of_nothing(client: Client) -> None:
    """enqueue_many of an empty batch returns [] and writes nothing."""
    assert await client.enqueue_many([]) == []
    assert await _count(client) == 0


async def test_enqueue_many_refuses_non_specs(client: Client) -> None:
    """enqueue_many refuses anything but JobSpec objects, writing nothing."""
    batch: list[Any] = [JobSpec(task="t"), {"task": "t"}]
    with pytest.raises(InvalidJob, match="takes JobSpec objects, not dict"):
        await client.enqueue_many(batch)
    assert await _count(client) == 0


async def test_conflicting_batch_writes_nothing(client: Client) -> None:
    """An enqueue_many batch that raises IdempotencyConflict leaves none of its jobs behind."""
    await client.enqueue("t", {"a": 1}, idempotency_key="k")
    batch = [JobSpec(task="t"), JobSpec(task="t", args={"a": 2}, idempotency_key="k")]
    with pytest.raises(IdempotencyConflict):
        await client.enqueue_many(batch)
    assert await _count(client) == 1


def _kinds_of_job() -> list[dict[str, Any]]:
    """Specs differing from each other in every column enqueue_many writes."""
    later = datetime.now(UTC) + timedelta(days=2)
    return [
        {"task": "t"},
        {
            "task": "mail",
            "args": {"to": "a@example.com", "n": [1, 2.5, None]},
            "queue": "mail",
            "priority": -5,
            "run_at": datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
            "max_attempts": 9,
            "tenant": "acme",
            "meta": {"model": "m1"},
            "expires_at": datetime(2031, 1, 1, tzinfo=UTC),
            "timeout": 2.5,
        },
        {"task": "t", "delay": 90, "idempotency_key": "k", "expires_at": later, "timeout": 7},
        {"task": "t", "delay": timedelta(milliseconds=1500), "priority": 3, "tenant": "other"},
    ]


_COLUMNS = """
    queue, task, args, state, priority, attempt, max_attempts, lease_token, lease_expires_at,
    worker_id, progress, progress_message, eta, result, errors, tenant, idempotency_key, meta,
    cancel_requested, started_at, finished_at, expires_at, timeout_seconds,
    request_fingerprint, created_at = updated_at AS updated_at_is_created_at,
    run_at, run_at - created_at AS run_after
"""


async def _row_without_id(client: Client, job: Job, spec: JobSpec) -> dict[str, Any]:
    """Every column of ``job``'s row but the id and created_at; run_at as its distance from
    created_at unless it was given (two statements run at two different now())."""
    row = await client.pool.fetchrow(f"SELECT {_COLUMNS} FROM skiplock.jobs WHERE id = $1", job.id)  # noqa: S608 - fixed test clauses
    assert row is not None
    values = dict(row)
    del values["run_after" if spec.run_at is not None else "run_at"]
    return values


async def test_alike_and_mixed_batches_write_the_same_rows(client: Client) -> None:
    """A batch of alike jobs (one value sent per column) and a mixed batch (one per job)
    write identical rows, column by column, and return the jobs as stored."""
    kinds = _kinds_of_job()
    alike = {i: [JobSpec(**kind) for _ in range(3)] for i, kind in enumerate(kinds[:2])}
    # Keys are unique per tenant: alike keyed specs are the same request, made once.
    alike[2] = [JobSpec(**kinds[2])] * 3
    alike[3] = [JobSpec(**kinds[3]) for _ in range(3)]
    made = {i: await client.enqueue_many(specs) for i, specs in alike.items()}
    mixed_kinds = [dict(kind, tenant="mixed") for kind in kinds]
    mixed = [JobSpec(**kind) for kind in mixed_kinds]
    mixed_jobs = await client.enqueue_many(mixed)
    assert [j.id for j in mixed_jobs] == [s.id for s in mixed]
    for i, specs in alike.items():
        assert [j.id for j in made[i]] == [s.id for s in specs]
        rows = [await _row_without_id(client, j, s) for j, s in zip(made[i], specs, strict=True)]
        assert rows[0] == rows[1] == rows[2]
        other = await _row_without_id(client, mixed_jobs[i], mixed[i])
        # Only the tenant (and so the fingerprint, and a row time) tell them apart.
        for values in (rows[0], other):
            del values["tenant"], values["request_fingerprint"]
        assert rows[0] == other
    for job in [j for jobs in made.values() for j in jobs] + mixed_jobs:
        assert await client.get(job.id, tenant=job.tenant) == job


async def test_one_job_alone_writes_the_row_a_batch_writes(
    client: Client, app_conn: asyncpg.Connection[Any]
) -> None:
    """A job enqueued alone (its own one-row statement, plain or skipping conflicts, on the
    pool or the application's connection) is stored as in a batch, column by column."""
    kinds = _kinds_of_job()
    batch = [JobSpec(**dict(kind, tenant="batch")) for kind in kinds]
    in_batch = await client.enqueue_many(batch)
    alone = [JobSpec(**dict(kind, tenant="alone")) for kind in kinds]
    by_app = [JobSpec(**dict(kind, tenant="app")) for kind in kinds]
    made = [(await client.enqueue_many([spec]))[0] for spec in alone]
    made_by_app = [(await client.enqueue_many([s], connection=app_conn))[0] for s in by_app]
    for i, spec in enumerate(batch):
        expected = await _row_without_id(client, in_batch[i], spec)
        del expected["tenant"], expected["request_fingerprint"]
        for job, other in ((made[i], alone[i]), (made_by_app[i], by_app[i])):
            assert job.id == other.id
            row = await _row_without_id(client, job, other)
            del row["tenant"], row["request_fingerprint"]
            assert row == expected
            assert await client.get(job.id, tenant=job.tenant) == job


async def test_a_batch_sent_again_with_new_jobs_returns_every_job_in_order(
    client: Client,
) -> None:
    """Specs already stored (a resend) and new ones in one batch: the stored ones come back,
    the new ones are inserted, in the order given, nothing twice."""
    old = [JobSpec(task="t", args={"i": i}) for i in range(0, 10, 2)]
    await client.enqueue_many(old)
    batch = [JobSpec(task="t", args={"i": i}) for i in range(10)]
    for spec in old:  # the even positions hold the specs sent before
        batch[spec.args["i"]] = spec
    jobs = await client.enqueue_many(batch)
    assert [j.id for j in jobs] == [s.id for s in batch]
    assert [j.args["i"] for j in jobs] == list(range(10))
    assert await _count(client) == 10
    for job in jobs:
        assert await client.get(job.id) == job


async def test_a_keyed_batch_sent_again_returns_the_same_jobs(client: Client) -> None:
    """A batch with idempotency keys, rebuilt from the same requests, resolves to the jobs
    the first send made (new ids, the same fingerprints)."""

    def build() -> list[JobSpec]:
        return [JobSpec(task="t", args={"i": i}, idempotency_key=f"k{i}") for i in range(50)]

    first = await client.enqueue_many(build())
    again = await client.enqueue_many(build())
    assert [j.id for j in again] == [j.id for j in first]
    assert await _count(client) == 50


async def test_an_invalid_spec_in_a_batch_writes_nothing(client: Client) -> None:
    """A batch whose one spec cannot be built raises InvalidJob before anything is sent."""
    with pytest.raises(InvalidJob, match=r"^max_attempts must be between"):
        await client.enqueue_many(
            [JobSpec(task="t"), JobSpec(task="t", max_attempts=0), JobSpec(task="t")]
        )
    assert await _count(client) == 0


def _spy_on_inserts(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The ``strict`` flag of every Store.enqueue_many the client runs (the database is real)."""
    calls: list[bool] = []
    real = client.store.enqueue_many

    async def spy(ex: Any, specs: Any, *, strict: bool = False) -> list[Job | None]:
        calls.append(strict)
        return await real(ex, specs, strict=strict)

    monkeypatch.setattr(client.store, "enqueue_many", spy)
    return calls


async def test_new_jobs_without_keys_take_one_plain_insert(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs without idempotency keys on the pool: one plain insert, no conflict handling."""
    calls = _spy_on_inserts(client, monkeypatch)
    jobs = await client.enqueue_many([JobSpec(task="t", args={"i": i}) for i in range(100)])
    job = await client.enqueue("t")
    assert calls == [True, True]
    assert await _count(client) == 101
    for made in [*jobs, job]:
        assert await client.get(made.id) == made


async def test_a_batch_sent_again_falls_back_to_resolving_conflicts(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain insert of a batch sent again fails whole; the batch then resolves to the
    jobs it made, as before (and a new spec in it is inserted)."""
    sent = [JobSpec(task="t", args={"i": i}) for i in range(3)]
    first = await client.enqueue_many(sent)
    calls = _spy_on_inserts(client, monkeypatch)
    again = await client.enqueue_many([*sent, JobSpec(task="t", args={"i": 3})])
    assert calls == [True, False]
    assert [j.id for j in again[:3]] == [j.id for j in first]
    assert await _count(client) == 4


async def test_one_spec_twice_in_a_batch_is_one_job(client: Client) -> None:
    """The same JobSpec twice in one batch makes one job, returned at both places."""
    spec = JobSpec(task="t")
    jobs = await client.enqueue_many([spec, JobSpec(task="t"), spec])
    assert jobs[0] == jobs[2]
    assert jobs[0].id == spec.id
    assert await _count(client) == 2


async def test_keys_or_an_application_connection_skip_the_plain_insert(
    client: Client, app_conn: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an idempotency key, or on the application's connection (a failed statement
    would abort its transaction), conflicts are skipped in the statement itself."""
    calls = _spy_on_inserts(client, monkeypatch)
    await client.enqueue_many([JobSpec(task="t"), JobSpec(task="t", idempotency_key="k")])
    await client.enqueue("t", connection=app_conn)
    async with app_conn.transaction():
        await client.enqueue_many([JobSpec(task="t"), JobSpec(task="t")], connection=app_conn)
    assert calls == [False, False, False]
    assert await _count(client) == 5


# -- idempotency -----------------------------------------------------------------


async def test_concurrent_enqueues_with_one_key_make_one_job(client: Client, db_dsn: str) -> None:
    """50 concurrent enqueues with one idempotency key, each on its own connection, make one job."""
    conns = await asyncio.gather(*(asyncpg.connect(db_dsn) for _ in range(50)))
    try:
        jobs = await asyncio.gather(
            *(client.enqueue("t", {"a": 1}, idempotency_key="once", connection=c) for c in conns)
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert len({j.id for j in jobs}) == 1
    assert await _count(client) == 1


async def test_same_key_same_request_returns_existing_job(client: Client) -> None:
    """Enqueueing the same task and args under a used key returns the existing job."""
    first = await client.enqueue("t", {"a": 1}, idempotency_key="k")
    again = await client.enqueue("t", {"a": 1}, idempotency_key="k")
    assert again == first
    assert await _count(client) == 1


async def test_same_key_different_request_conflicts(client: Client) -> None:
    """The same key with other args or another task raises IdempotencyConflict, adding no row."""
    first = await client.enqueue("t", {"a": 1}, idempotency_key="k")
    for task, args in [("t", {"a": 2}), ("other", {"a": 1})]:
        with pytest.raises(IdempotencyConflict) as caught:
            await client.enqueue(task, args, idempotency_key="k")
        assert caught.value.job_id == first.id
    assert await _count(client) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"meta": {"model": "other"}},
        {"priority": 5},
        {"delay": 30},
        {"run_at": datetime(2031, 1, 1, tzinfo=UTC)},
        {"max_attempts": 9},
        {"queue": "elsewhere"},
        {"expires_at": datetime(2099, 1, 1, tzinfo=UTC)},
        {"timeout": 5.0},
    ],
)
async def test_same_key_with_any_other_field_conflicts(
    client: Client, change: dict[str, Any]
) -> None:
    """The whole request is compared, not only task and args: the same key with another meta,
    priority, delay, run_at, max_attempts, queue, expiry or timeout raises
    IdempotencyConflict and adds no row."""
    request: dict[str, Any] = {"meta": {"model": "m"}, "delay": 60}
    first = await client.enqueue("t", {"a": 1}, idempotency_key="k", **request)
    if "run_at" in change:
        request.pop("delay")
    with pytest.raises(IdempotencyConflict) as caught:
        await client.enqueue("t", {"a": 1}, idempotency_key="k", **{**request, **change})
    assert caught.value.job_id == first.id
    assert await _count(client) == 1


async def test_same_key_same_request_with_a_delay_returns_the_job(client: Client) -> None:
    """Two sends of one request with a delay (so another run_at each time) and the same
    args in another key order are the same request: the first job comes back."""
    expires = datetime.now(UTC) + timedelta(days=1)
    first = await client.enqueue(
        "t", {"a": 1, "b": 2}, idempotency_key="k", delay=60, expires_at=expires, timeout=3
    )
    again = await client.enqueue(
        "t",
        {"b": 2, "a": 1},
        idempotency_key="k",
        delay=timedelta(seconds=60),
        expires_at=expires.astimezone(timezone(timedelta(hours=2))),
        timeout=3.0,
    )
    assert again == first
    assert await _count(client) == 1


async def test_rows_from_before_the_fingerprint_compare_task_and_args(client: Client) -> None:
    """A job enqueued before migration 0006 has no request fingerprint: its key still
    conflicts on another task or args, and matches on the same ones, as before."""
    first = await client.enqueue("t", {"a": 1}, idempotency_key="k", meta={"m": 1})
    await client.pool.execute("UPDATE skiplock.jobs SET request_fingerprint = NULL")
    legacy = await client.get(first.id)
    assert legacy is not None
    assert await client.enqueue("t", {"a": 1}, idempotency_key="k", priority=3) == legacy
    with pytest.raises(IdempotencyConflict):
        await client.enqueue("t", {"a": 2}, idempotency_key="k")
    assert await _count(client) == 1


async def test_idempotency_key_is_per_tenant(client: Client) -> None:
    """The same key in another tenant makes that tenant its own job."""
    a = await client.enqueue("t", {"a": 1}, tenant="a", idempotency_key="k")
    b = await client.enqueue("t", {"a": 1}, tenant="b", idempotency_key="k")
    assert a.id != b.id
    assert (a.tenant, b.tenant) == ("a", "b")
    assert await _count(client) == 2


# -- get ---------------------------------------------------------------------------


async def test_get_with_wrong_tenant_returns_none(client: Client) -> None:
    """get scoped to another tenant does not see the job."""
    job = await client.enqueue("t", tenant="acme")
    assert await client.get(job.id, tenant="other") is None
    assert await client.get(job.id, tenant="acme") == job


async def test_get_accepts_string_id(client: Client) -> None:
    """get takes the id as text too."""
    job = await client.enqueue("t")
    assert await client.get(str(job.id)) == job


async def test_get_malformed_id_returns_none(client: Client) -> None:
    """get with a malformed id returns None instead of raising."""
    await client.enqueue("t")
    for job_id in ["not-a-uuid", "", "1234", "00000000-0000-0000-0000"]:
        assert await client.get(job_id) is None, job_id


async def test_get_unknown_id_returns_none(client: Client) -> None:
    """get of an id that does not exist returns None."""
    await client.enqueue("t")
    assert await client.get(uuid.uuid4()) is None


# -- list --------------------------------------------------------------------------


async def _ids(client: Client, **filters: Any) -> set[uuid.UUID]:
    page = await client.list(limit=1000, **filters)
    assert page.next_cursor is None
    return {j.id for j in page.jobs}


async def test_list_filters_by_state(client: Client) -> None:
    """list(states=…) keeps jobs in those states only."""
    queued = await client.enqueue("t")
    cancelled = await client.cancel((await client.enqueue("t")).id)
    running = await _running(client)
    assert await _ids(client, states=["cancelled", JobState.RUNNING]) == {cancelled.id, running.id}
    assert await _ids(client, states=[JobState.QUEUED]) == {queued.id}


async def test_list_filters_by_task(client: Client) -> None:
    """list(task=…) keeps that task's jobs only."""
    x = await client.enqueue("x")
    await client.enqueue("y")
    assert await _ids(client, task="x") == {x.id}


async def test_list_filters_by_queue(client: Client) -> None:
    """list(queue=…) keeps that queue's jobs only."""
    await client.enqueue("t", queue="a")
    b = await client.enqueue("t", queue="b")
    assert await _ids(client, queue="b") == {b.id}


async def test_list_filters_by_created_range(client: Client) -> None:
    """list(created_after=…, created_before=…) keeps jobs created in [after, before)."""
    jobs = [await client.enqueue("t", {"i": i}) for i in range(5)]
    assert [j.created_at for j in jobs] == sorted({j.created_at for j in jobs})
    found = await _ids(client, created_after=jobs[1].created_at, created_before=jobs[3].created_at)
    assert found == {jobs[1].id, jobs[2].id}


async def test_list_filters_by_meta_containment(client: Client) -> None:
    """list(meta=…) keeps jobs whose meta contains the given labels, nested ones too."""
    a = await client.enqueue("t", meta={"model": "a", "provider": "p", "tags": {"x": 1, "y": 2}})
    b = await client.enqueue("t", meta={"model": "b", "provider": "p"})
    await client.enqueue("t")
    assert await _ids(client, meta={"model": "a"}) == {a.id}
    assert await _ids(client, meta={"provider": "p"}) == {a.id, b.id}
    assert await _ids(client, meta={"tags": {"x": 1}}) == {a.id}
    assert await _ids(client, meta={"model": "c"}) == set()


async def test_list_filters_by_tenant(client: Client) -> None:
    """list(tenant=…) keeps that tenant's jobs only; no tenant means the tenant "default";
    every tenant only with ALL_TENANTS."""
    a = await client.enqueue("t", tenant="a")
    b = await client.enqueue("t", tenant="b")
    c = await client.enqueue("t")
    assert await _ids(client, tenant="a") == {a.id}
    assert await _ids(client) == {c.id}
    assert await _ids(client, tenant=ALL_TENANTS) == {a.id, b.id, c.id}


async def test_a_missing_tenant_is_refused_not_read_as_every_tenant(client: Client) -> None:
    """tenant=None (an app passing a missing user id) is refused by get, list, cancel and
    retry, before anything is read or written: another tenant's job stays unseen and
    untouched."""
    theirs = await client.enqueue("t", tenant="acme")
    failed = await _finished(client, "failed", tenant="acme")
    calls: dict[str, Callable[[Any], Awaitable[object]]] = {
        "get": lambda tenant: client.get(theirs.id, tenant=tenant),
        "list": lambda tenant: client.list(tenant=tenant),
        "cancel": lambda tenant: client.cancel(theirs.id, tenant=tenant),
        "retry": lambda tenant: client.retry(failed.id, tenant=tenant),
    }
    for name, call in calls.items():
        for tenant in (None, "", "x" * 257, 42):
            with pytest.raises(ValueError, match="tenant"):  # noqa: PT012 - names the call
                await call(tenant)
                pytest.fail(f"{name}(tenant={tenant!r}) was accepted")
    assert await client.get(theirs.id, tenant="acme") == theirs
    assert await client.get(failed.id, tenant="acme") == failed


async def test_default_tenant_does_not_reach_other_tenants(client: Client) -> None:
    """Without tenant=, get/cancel/retry act on the tenant "default" only."""
    theirs = await client.enqueue("t", tenant="acme")
    failed = await _finished(client, "failed", tenant="acme")
    assert await client.get(theirs.id) is None
    with pytest.raises(JobNotFound):
        await client.cancel(theirs.id)
    with pytest.raises(JobNotFound):
        await client.retry(failed.id)
    assert await client.get(theirs.id, tenant="acme") == theirs
    assert await client.get(failed.id, tenant="acme") == failed


async def test_all_tenants_reaches_every_tenant(client: Client) -> None:
    """ALL_TENANTS (operators) reads, cancels and retries a job of any tenant."""
    theirs = await client.enqueue("t", tenant="acme")
    failed = await _finished(client, "failed", tenant="acme")
    assert await client.get(theirs.id, tenant=ALL_TENANTS) == theirs
    cancelled = await client.cancel(theirs.id, tenant=ALL_TENANTS)
    assert (cancelled.tenant, cancelled.state) == ("acme", JobState.CANCELLED)
    retried = await client.retry(failed.id, tenant=ALL_TENANTS)
    assert (retried.tenant, retried.state) == ("acme", JobState.QUEUED)


async def test_list_combines_filters(client: Client) -> None:
    """Several filters keep only the jobs matching all of them."""
    match = await client.enqueue("x", tenant="a", queue="q")
    await client.enqueue("x", tenant="b", queue="q")
    await client.enqueue("y", tenant="a", queue="q")
    await client.enqueue("x", tenant="a", queue="other")
    await client.cancel((await client.enqueue("x", tenant="a", queue="q")).id, tenant="a")
    assert await _ids(client, tenant="a", task="x", queue="q", states=["queued"]) == {match.id}


async def _walk(client: Client, limit: int, **filters: Any) -> list[list[Job]]:
    pages: list[list[Job]] = []
    cursor: str | None = None
    while True:
        page = await client.list(cursor=cursor, limit=limit, **filters)
        pages.append(list(page.jobs))
        if page.next_cursor is None:
            return pages
        assert len(pages) < 1000, "pagination does not end"
        cursor = page.next_cursor


async def test_list_pages_through_everything_once(client: Client) -> None:
    """Keyset pages (ties on created_at included) cover every job once, newest first."""
    jobs: list[Job] = []
    for size in (40, 1, 62, 1, 3):  # a batch shares one created_at: ties broken by id
        jobs += await client.enqueue_many([JobSpec(task="t") for _ in range(size)])
    pages = await _walk(client, limit=7)
    seen = [j.id for page in pages for j in page]
    assert all(len(page) == 7 for page in pages[:-1])
    assert len(seen) == len(set(seen)) == len(jobs)
    newest_first = sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)
    assert seen == [j.id for j in newest_first]


async def test_list_full_last_page_has_no_cursor(client: Client) -> None:
    """When the jobs fill the last page exactly, it carries no cursor (no empty page follows)."""
    await client.enqueue_many([JobSpec(task="t") for _ in range(14)])
    pages = await _walk(client, limit=7)
    assert [len(p) for p in pages] == [7, 7]


async def test_list_pages_keep_filters(client: Client) -> None:
    """Paging a filtered listing yields exactly the matching jobs."""
    mine = await client.enqueue_many([JobSpec(task="t", tenant="a") for _ in range(23)])
    await client.enqueue_many([JobSpec(task="t", tenant="b") for _ in range(23)])
    pages = await _walk(client, limit=5, tenant="a")
    seen = [j.id for page in pages for j in page]
    assert len(seen) == len(set(seen))
    assert set(seen) == {j.id for j in mine}


async def test_list_refuses_bad_limit(client: Client) -> None:
    """list refuses a page size outside 1..1000."""
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="limit must be between 1 and 1000"):
            await client.list(limit=limit)


async def test_list_refuses_bad_cursor(client: Client) -> None:
    """list refuses a cursor it did not make."""
    with pytest.raises(ValueError, match="invalid cursor"):
        await client.list(cursor="bm90IGEgY3Vyc29y")


# -- cancel ------------------------------------------------------------------------


async def test_cancel_queued_job(client: Client) -> None:
    """Cancelling a queued job ends it cancelled at once, with finished_at."""
    job = await client.enqueue("t")
    cancelled = await client.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.finished_at >= job.created_at
    assert await client.get(job.id) == cancelled


async def test_cancel_running_job_requests_cancel(client: Client) -> None:
    """Cancelling a running job sets cancel_requested and leaves it running with its lease."""
    job = await _running(client)
    cancelled = await client.cancel(job.id)
    assert cancelled.state is JobState.RUNNING
    assert cancelled.cancel_requested is True
    assert cancelled.finished_at is None
    assert cancelled.lease_token == job.lease_token


async def test_cancel_finished_job_returns_it_unchanged(client: Client) -> None:
    """Cancelling a job that already ended (in any way) returns it exactly as it was."""
    outcomes: list[Outcome] = ["succeeded", "failed", "cancelled"]
    for outcome in outcomes:
        ended = await _finished(client, outcome)
        assert await client.cancel(ended.id) == ended
        assert await client.get(ended.id) == ended


async def test_cancel_unknown_job_not_found(client: Client) -> None:
    """Cancelling a job that does not exist (or a malformed id) raises JobNotFound."""
    for job_id in (uuid.UUID(int=1), "not-a-uuid"):
        with pytest.raises(JobNotFound, match=f"job {job_id} not found"):
            await client.cancel(job_id)


async def test_cancel_other_tenants_job_not_found(client: Client) -> None:
    """Cancelling another tenant's job raises JobNotFound and leaves it queued."""
    job = await client.enqueue("t", tenant="a")
    with pytest.raises(JobNotFound):
        await client.cancel(job.id, tenant="b")
    assert await client.get(job.id, tenant="a") == job


# -- retry -------------------------------------------------------------------------


async def test_retry_failed_job(client: Client) -> None:
    """Retrying a failed job queues it again, due now, with an attempt left and its history."""
    failed = await _finished(client, "failed", max_attempts=1)
    assert (failed.attempt, failed.max_attempts) == (1, 1)
    retried = await client.retry(failed.id)
    assert retried.state is JobState.QUEUED
    assert retried.finished_at is None
    assert retried.max_attempts > retried.attempt == 1
    assert retried.errors == failed.errors
    assert retried.run_at == retried.updated_at  # due at the database's now
    (again,) = await client.store.claim_jobs(client.pool, [failed.queue], 1, 30.0, "w")
    assert (again.id, again.attempt) == (failed.id, 2)


async def test_retry_cancelled_job(client: Client) -> None:
    """Retrying a cancelled job queues it again without its cancel request."""
    cancelled = await client.cancel((await client.enqueue("t")).id)
    retried = await client.retry(cancelled.id)
    assert retried.state is JobState.QUEUED
    assert retried.cancel_requested is False
    assert retried.finished_at is None
    assert retried.max_attempts == 3


async def test_retry_queued_job_conflicts(client: Client) -> None:
    """Retrying a queued job raises JobStateConflict and changes nothing."""
    job = await client.enqueue("t")
    with pytest.raises(JobStateConflict, match=r"cannot retry job .*: it is queued") as caught:
        await client.retry(job.id)
    assert caught.value.state == "queued"
    assert await client.get(job.id) == job


async def test_retry_running_job_conflicts(client: Client) -> None:
    """Retrying a running job raises JobStateConflict."""
    job = await _running(client)
    with pytest.raises(JobStateConflict, match="it is running"):
        await client.retry(job.id)


async def test_retry_succeeded_job_conflicts(client: Client) -> None:
    """Retrying a succeeded job raises JobStateConflict and keeps its result."""
    job = await _finished(client, "succeeded")
    with pytest.raises(JobStateConflict, match="it is succeeded"):
        await client.retry(job.id)
    assert await client.get(job.id) == job


async def test_retry_unknown_job_not_found(client: Client) -> None:
    """Retrying a job that does not exist (or a malformed id) raises JobNotFound."""
    for job_id in (uuid.UUID(int=1), "not-a-uuid"):
        with pytest.raises(JobNotFound, match=f"job {job_id} not found"):
            await client.retry(job_id)


async def test_retry_other_tenants_job_not_found(client: Client) -> None:
    """Retrying another tenant's failed job raises JobNotFound and leaves it failed."""
    failed = await _finished(client, "failed", tenant="a")
    with pytest.raises(JobNotFound):
        await client.retry(failed.id, tenant="b")
    assert await client.get(failed.id, tenant="a") == failed


# -- constraints and schemas ---------------------------------------------------------


async def test_finished_check_rejects_inconsistent_update(client: Client) -> None:
    """The CHECK tying terminal state and finished_at rejects a direct UPDATE that breaks it."""
    job = await client.enqueue("t")
    for assignment in ("state = 'succeeded'", "finished_at = now()"):
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            await client.pool.execute(
                f"UPDATE skiplock.jobs SET {assignment} WHERE id = $1",  # noqa: S608 - fixed test clauses
                job.id,
            )
        assert caught.value.constraint_name == "jobs_finished_check"
    assert await client.get(job.id) == job


async def test_lease_check_rejects_running_without_lease(client: Client) -> None:
    """The CHECK tying the running state to a lease rejects a running row without one."""
    job = await client.enqueue("t")
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await client.pool.execute(
            "UPDATE skiplock.jobs SET state = 'running' WHERE id = $1", job.id
        )
    assert caught.value.constraint_name in {"jobs_lease_token_check", "jobs_lease_expires_check"}


@pytest.mark.parametrize(
    ("assignment", "constraint"),
    [
        ("lease_token = gen_random_uuid()", "jobs_lease_token_check"),
        ("lease_expires_at = now()", "jobs_lease_expires_check"),
        (
            "state = 'succeeded', finished_at = now(), lease_token = gen_random_uuid()",
            "jobs_lease_token_check",
        ),
    ],
)
async def test_lease_columns_are_checked_one_by_one(
    client: Client, assignment: str, constraint: str
) -> None:
    """A lease token (or expiry) alone on a row that is not running is refused: the writes
    fenced by the token alone rely on "a token means running"."""
    job = await client.enqueue("t")
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await client.pool.execute(
            f"UPDATE skiplock.jobs SET {assignment} WHERE id = $1",  # noqa: S608 - fixed test clauses
            job.id,
        )
    assert caught.value.constraint_name == constraint
    assert await client.get(job.id) == job


async def test_running_row_names_its_worker(client: Client) -> None:
    """A running row without a worker id is refused."""
    job = await client.enqueue("t")
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await client.pool.execute(
            "UPDATE skiplock.jobs SET state = 'running', lease_token = gen_random_uuid(),"
            " lease_expires_at = now() + interval '1 minute' WHERE id = $1",
            job.id,
        )
    assert caught.value.constraint_name == "jobs_running_worker_check"


async def test_client_in_custom_schema(db_dsn: str, client: Client) -> None:
    """A client for another schema writes there and not in the default schema."""
    await skiplock.migrate(db_dsn, schema="jobs_alt")
    async with await Client.connect(db_dsn, schema="jobs_alt") as alt:
        job = await alt.enqueue("t")
        assert await alt.get(job.id) == job
        assert await alt.pool.fetchval("SELECT count(*) FROM jobs_alt.jobs") == 1
    assert await _count(client) == 0


async def test_sending_the_same_spec_twice_returns_the_same_job(client: Client) -> None:
    """Enqueueing one JobSpec again (a retry after a network error) returns the job it made."""
    spec = JobSpec(task="t", args={"a": 1})
    (first,) = await client.enqueue_many([spec])
    (again,) = await client.enqueue_many([spec])
    assert again.id == first.id == spec.id
    assert await _count(client) == 1


async def test_a_job_id_reused_for_another_request_is_refused(client: Client) -> None:
    """A spec whose id already belongs to a different job is refused and writes nothing."""
    spec = JobSpec(task="t", args={"a": 1})
    await client.enqueue_many([spec])
    other = JobSpec(task="t", args={"a": 2}, id=spec.id)
    with pytest.raises(InvalidJob, match="already used"):
        await client.enqueue_many([other, JobSpec(task="t")])
    assert await _count(client) == 1


# -- expiry and per-job timeout ------------------------------------------------------


async def test_enqueue_stores_expiry_and_timeout(client: Client) -> None:
    """expires_at and timeout are stored and read back, and a claimed job carries them."""
    expires = datetime.now(UTC) + timedelta(hours=1)
    job = await client.enqueue("t", expires_at=expires, timeout=2.5)
    assert (job.expires_at, job.timeout_seconds) == (expires, 2.5)
    assert await client.get(job.id) == job
    (claimed,) = await client.store.claim_jobs(client.pool, ["default"], 1, 30.0, "w1")
    assert (claimed.id, claimed.expires_at, claimed.timeout_seconds) == (job.id, expires, 2.5)
    plain = await client.enqueue("t")
    assert (plain.expires_at, plain.timeout_seconds) == (None, None)
    assert await client.get(plain.id) == plain


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"expires_at": datetime(2099, 1, 1)}, "expires_at must be a timezone-aware datetime"),
        ({"expires_at": "2099-01-01T00:00:00Z"}, "expires_at must be a timezone-aware datetime"),
        ({"expires_at": datetime(2001, 1, 1, tzinfo=UTC)}, "expires_at must be in the future"),
        (
            {
                "run_at": datetime(2099, 1, 2, tzinfo=UTC),
                "expires_at": datetime(2099, 1, 1, tzinfo=UTC),
            },
            "expires_at must be after run_at",
        ),
        (
            {"delay": 7200, "expires_at": datetime.now(UTC) + timedelta(hours=1)},
            "expires_at must be after",
        ),
        ({"timeout": 0}, "timeout must be a positive, finite number of seconds"),
        ({"timeout": -1.0}, "timeout must be a positive"),
        ({"timeout": float("inf")}, "timeout must be a positive"),
        ({"timeout": float("nan")}, "timeout must be a positive"),
        ({"timeout": True}, "timeout must be a positive"),
        ({"timeout": "5"}, "timeout must be a positive"),
    ],
)
async def test_invalid_expiry_or_timeout_refused(
    client: Client, fields: dict[str, Any], message: str
) -> None:
    """A naive, past or too-early expiry and a timeout that is not a positive finite number
    are refused before anything is written."""
    with pytest.raises(InvalidJob, match=message):
        await client.enqueue("t", **fields)
    assert await _count(client) == 0


# -- a connection killed mid-call ------------------------------------------------------


@pytest_asyncio.fixture
async def admin(db_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection outside the client's pool that holds locks and terminates backends."""
    c = await asyncpg.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()


_BLOCKED_SQL = (
    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    " AND query LIKE $1 AND pid <> pg_backend_pid() LIMIT 1"
)


async def _blocked(admin: asyncpg.Connection[Any], query: str) -> int | None:
    """The pid of a backend running ``query`` (its leading comment) that waits on a lock."""
    # pg_stat_activity is read once per transaction unless the snapshot is cleared.
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    pid = await admin.fetchval(_BLOCKED_SQL, f"-- {query}:%")
    assert pid is None or isinstance(pid, int)
    return pid


async def _terminate_when_blocked(admin: asyncpg.Connection[Any], query: str) -> None:
    """Wait until a backend running query ``query`` waits on a lock, then terminate it, as
    a server restart or a failover would."""
    pid = await wait_for(
        lambda: _blocked(admin, query),
        lambda p: p is not None,
        what=f"{query} to block on the lock",
    )
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)


@pytest.mark.parametrize(
    ("call", "query", "retry_safe"),
    [
        ("get", "get_job", True),
        ("list", "list_jobs", True),
        ("cancel", "cancel_job", True),
        ("retry", "retry_job", False),
    ],
)
async def test_a_killed_connection_raises_database_unavailable(
    client: Client, admin: asyncpg.Connection[Any], call: str, query: str, retry_safe: bool
) -> None:
    """A backend terminated mid-call raises DatabaseUnavailable (not asyncpg's own error),
    saying whether calling again is safe: reads and cancel are, retry is not (it may have
    put the job back already)."""
    failed = await _finished(client, "failed")
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: client.get(failed.id),
        "list": lambda: client.list(),
        "cancel": lambda: client.cancel(failed.id),
        "retry": lambda: client.retry(failed.id),
    }
    async with admin.transaction():
        await admin.execute("LOCK TABLE skiplock.jobs IN ACCESS EXCLUSIVE MODE")
        pending = asyncio.ensure_future(calls[call]())
        await _terminate_when_blocked(admin, query)
        with pytest.raises(DatabaseUnavailable) as caught:
            await pending
    assert caught.value.retry_safe is retry_safe
    assert isinstance(caught.value.__cause__, asyncpg.PostgresError | asyncpg.InterfaceError)
    assert not isinstance(caught.value, asyncpg.PostgresError | asyncpg.InterfaceError)
    assert await client.get(failed.id) == failed  # the pool works again


async def test_an_enqueue_whose_connection_is_killed_is_sent_again(
    client: Client, admin: asyncpg.Connection[Any]
) -> None:
    """An enqueue on the client's pool whose connection dies mid-call is sent again by
    itself (its client-made id makes that safe) and returns the one job it made."""
    async with admin.transaction():
        await admin.execute("LOCK TABLE skiplock.jobs IN SHARE MODE")  # blocks INSERT
        pending = asyncio.ensure_future(client.enqueue("t", {"a": 1}, idempotency_key="k"))
        await _terminate_when_blocked(admin, "enqueue_one")
    job = await pending
    assert (job.task, job.args, job.idempotency_key) == ("t", {"a": 1}, "k")
    assert await client.get(job.id) == job
    assert await _count(client) == 1


async def test_enqueue_resends_are_bounded(client: Client, admin: asyncpg.Connection[Any]) -> None:
    """An enqueue whose every attempt loses its connection gives up after a few attempts
    with DatabaseUnavailable(retry_safe=True): sending the same JobSpec again is safe."""
    spec = JobSpec(task="t")
    kills = 0
    async with admin.transaction():
        await admin.execute("LOCK TABLE skiplock.jobs IN SHARE MODE")
        pending = asyncio.ensure_future(client.enqueue_many([spec]))
        while not pending.done():
            blocked = await _blocked(admin, "enqueue_one")
            if blocked is not None and await admin.fetchval(
                "SELECT pg_terminate_backend($1)", blocked
            ):
                kills += 1
            await asyncio.wait([pending], timeout=0.01)
        with pytest.raises(DatabaseUnavailable) as caught:
            await pending
    assert caught.value.retry_safe is True
    assert kills == ENQUEUE_ATTEMPTS
    assert await _count(client) == 0
    assert await client.enqueue_many([spec]) == [await client.get(spec.id)]


async def test_a_killed_application_connection_is_not_retried(
    client: Client, admin: asyncpg.Connection[Any], app_conn: asyncpg.Connection[Any]
) -> None:
    """On the application's own connection its transaction is gone with it: the enqueue is
    not sent again, and DatabaseUnavailable says a plain retry is not safe."""
    async with admin.transaction():
        await admin.execute("LOCK TABLE skiplock.jobs IN SHARE MODE")
        tx = app_conn.transaction()
        await tx.start()
        pending = asyncio.ensure_future(client.enqueue("t", connection=app_conn))
        await _terminate_when_blocked(admin, "enqueue_one")
        with pytest.raises(DatabaseUnavailable) as caught:
            await pending
    assert caught.value.retry_safe is False
    assert "transaction" in str(caught.value)
    assert await _count(client) == 0


async def test_retry_at_the_attempt_ceiling_is_refused(client: Client) -> None:
    """A job that used all 1000 attempts a job may have cannot get another: retry refuses
    it, saying why, and leaves it failed (it used to go back queued with none left and be
    claimed as attempt 1001 of 1000)."""
    job = await client.enqueue("t", max_attempts=1000)
    await client.pool.execute(
        "UPDATE skiplock.jobs SET state = 'failed', attempt = 1000, started_at = now(),"
        " finished_at = now() WHERE id = $1",
        job.id,
    )
    with pytest.raises(JobStateConflict, match="used all 1000 attempts"):
        await client.retry(job.id)
    after = await client.get(job.id)
    assert after is not None
    assert (after.state, after.attempt, after.max_attempts) == (JobState.FAILED, 1000, 1000)
