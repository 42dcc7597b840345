"""Retention (purge_finished, `skiplock purge`) and the monitoring views of 0003_operations."""

from __future__ import annotations

import uuid

import anyio
import orjson
from click.testing import CliRunner

from skiplock import Client
from skiplock.cli import cli

DAY = 86_400.0
VIEWS = (
    "queue_overview",
    "throughput_per_minute",
    "task_stats",
    "jobs_per_tenant",
    "stuck_jobs",
    "worker_presence",  # migration 0007
    "limit_usage",  # migration 0011
    "queue_flow",  # migration 0011
)


async def _finished(
    client: Client,
    state: str,
    *,
    age: float,
    expires_in: float | None = None,
    task: str = "t",
    run_seconds: float = 1.0,
) -> uuid.UUID:
    """A job that ended in ``state`` ``age`` seconds ago, expiring ``expires_in`` from now."""
    job = await client.enqueue(task, {})
    await client.pool.execute(
        """
        UPDATE skiplock.jobs SET
            state = $2::skiplock.job_state,
            attempt = 1,
            started_at = now() - make_interval(secs => $3::float8 + $5::float8),
            finished_at = now() - make_interval(secs => $3::float8),
            expires_at = now() + make_interval(secs => $4::float8)
        WHERE id = $1
        """,
        job.id,
        state,
        age,
        expires_in,
        run_seconds,
    )
    return job.id


async def _running(
    client: Client,
    *,
    age: float,
    lease_in: float = 30.0,
    expires_in: float | None = None,
    task: str = "t",
) -> uuid.UUID:
    """A job running for ``age`` seconds whose lease ends ``lease_in`` seconds from now."""
    job = await client.enqueue(task, {})
    await client.pool.execute(
        """
        UPDATE skiplock.jobs SET
            state = 'running', attempt = 1, worker_id = 'w1',
            lease_token = gen_random_uuid(),
            lease_expires_at = now() + make_interval(secs => $3::float8),
            started_at = now() - make_interval(secs => $2::float8),
            expires_at = now() + make_interval(secs => $4::float8)
        WHERE id = $1
        """,
        job.id,
        age,
        lease_in,
        expires_in,
    )
    return job.id


async def _queued(client: Client, *, age: float, expires_in: float | None = None) -> uuid.UUID:
    """A queued job created and due ``age`` seconds ago."""
    job = await client.enqueue("t", {})
    await client.pool.execute(
        """
        UPDATE skiplock.jobs SET
            created_at = now() - make_interval(secs => $2::float8),
            run_at = now() - make_interval(secs => $2::float8),
            expires_at = now() + make_interval(secs => $3::float8)
        WHERE id = $1
        """,
        job.id,
        age,
        expires_in,
    )
    return job.id


async def _ids(client: Client) -> set[uuid.UUID]:
    return {r["id"] for r in await client.pool.fetch("SELECT id FROM skiplock.jobs")}


async def test_purge_deletes_only_old_enough_finished_jobs(client: Client) -> None:
    """Succeeded jobs go after a day, failed and cancelled after seven; younger ones stay."""
    old_ok = await _finished(client, "succeeded", age=DAY + 60)
    young_ok = await _finished(client, "succeeded", age=DAY - 60)
    old_failed = await _finished(client, "failed", age=7 * DAY + 60)
    young_failed = await _finished(client, "failed", age=2 * DAY)
    old_cancelled = await _finished(client, "cancelled", age=7 * DAY + 60)
    young_cancelled = await _finished(client, "cancelled", age=2 * DAY)

    assert await client.store.purge_finished(client.pool, 100) == 3

    assert await _ids(client) == {young_ok, young_failed, young_cancelled}
    assert not {old_ok, old_failed, old_cancelled} & await _ids(client)


async def test_purge_uses_the_given_ages(client: Client) -> None:
    """Per-state ages are parameters; None turns age-based deletion off for that state."""
    ok = await _finished(client, "succeeded", age=120)
    failed = await _finished(client, "failed", age=120)
    cancelled = await _finished(client, "cancelled", age=120)

    deleted = await client.store.purge_finished(
        client.pool, 100, succeeded_after=60, failed_after=None, cancelled_after=600
    )

    assert deleted == 1
    assert await _ids(client) == {failed, cancelled}
    assert ok not in await _ids(client)


async def test_purge_never_deletes_queued_or_running_jobs(client: Client) -> None:
    """Queued and running jobs stay however old they are, even past their expires_at."""
    queued = await _queued(client, age=365 * DAY, expires_in=-DAY)
    running = await _running(client, age=365 * DAY, expires_in=-DAY)
    lost = await _running(client, age=365 * DAY, lease_in=-DAY, expires_in=-DAY)
    old = await _finished(client, "succeeded", age=365 * DAY)

    deleted = await client.store.purge_finished(
        client.pool, 100, succeeded_after=0, failed_after=0, cancelled_after=0
    )

    assert deleted == 1
    assert await _ids(client) == {queued, running, lost}
    assert old not in await _ids(client)


async def test_purge_honours_expires_at(client: Client) -> None:
    """A finished job past its expires_at goes at once; one not yet expired waits for its age."""
    expired = await _finished(client, "failed", age=60, expires_in=-1)
    not_yet = await _finished(client, "succeeded", age=60, expires_in=3600)
    no_deadline = await _finished(client, "cancelled", age=60)

    assert await client.store.purge_finished(client.pool, 100) == 1

    assert await _ids(client) == {not_yet, no_deadline}
    assert expired not in await _ids(client)


async def test_purge_batches_are_bounded(client: Client) -> None:
    """Each call deletes at most `limit` jobs; repeated calls finish the work."""
    for _ in range(5):
        await _finished(client, "succeeded", age=2 * DAY)
    young = await _finished(client, "succeeded", age=60)

    counts = [await client.store.purge_finished(client.pool, 2) for _ in range(4)]

    assert counts == [2, 2, 1, 0]
    assert await _ids(client) == {young}


async def test_purge_skips_locked_rows(client: Client) -> None:
    """A row another transaction holds locked is skipped without waiting, and purged later."""
    held = await _finished(client, "succeeded", age=2 * DAY)
    free = await _finished(client, "succeeded", age=2 * DAY)

    async with client.pool.acquire() as other, other.transaction():
        await other.execute("SELECT 1 FROM skiplock.jobs WHERE id = $1 FOR UPDATE", held)
        with anyio.fail_after(5):
            assert await client.store.purge_finished(client.pool, 100) == 1
        assert free not in await _ids(client)

    assert await client.store.purge_finished(client.pool, 100) == 1
    assert await _ids(client) == set()


async def test_purge_command_loops_batches_and_prints_total(db_dsn: str, client: Client) -> None:
    """`skiplock purge --batch 2 --json` deletes every old finished job and prints the total."""
    for _ in range(5):
        await _finished(client, "succeeded", age=2 * DAY)
    await _finished(client, "failed", age=120)
    kept_queued = await _queued(client, age=365 * DAY, expires_in=-DAY)
    kept_failed = await _finished(client, "failed", age=3 * DAY)

    runner = CliRunner()
    args = ["--database-url", db_dsn, "purge", "--batch", "2", "--failed-after", "60", "--json"]
    result = await anyio.to_thread.run_sync(lambda: runner.invoke(cli, args))

    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout.strip().splitlines()[-1]) == {"deleted": 7}
    assert await _ids(client) == {kept_queued}
    assert kept_failed not in await _ids(client)

    text_args = ["--database-url", db_dsn, "purge"]
    again = await anyio.to_thread.run_sync(lambda: runner.invoke(cli, text_args))
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().splitlines()[-1] == "deleted 0 finished jobs"


async def test_every_view_has_a_comment(client: Client) -> None:
    """Each monitoring view exists and carries a COMMENT ON VIEW."""
    rows = await client.pool.fetch(
        """
        SELECT c.relname, obj_description(c.oid, 'pg_class') AS comment
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'skiplock' AND c.relkind = 'v'
        """
    )
    comments = {r["relname"]: r["comment"] for r in rows}
    assert set(comments) == set(VIEWS)
    assert all(comments[v] for v in VIEWS)


async def test_queue_overview(client: Client) -> None:
    """Per queue: due, scheduled and running counts, and the oldest due job's wait."""
    await _queued(client, age=600)
    await _queued(client, age=5)
    await client.enqueue("t", {}, delay=3600)
    await _running(client, age=10)
    await client.enqueue("t", {}, queue="other", delay=60)

    rows = await client.pool.fetch("SELECT * FROM skiplock.queue_overview ORDER BY queue")

    assert [(r["queue"], r["queued_due"], r["scheduled"], r["running"]) for r in rows] == [
        ("default", 2, 1, 1),
        ("other", 0, 1, 0),
    ]
    assert 600 <= rows[0]["oldest_wait_seconds"] < 700
    assert rows[1]["oldest_wait_seconds"] is None


async def test_throughput_per_minute(client: Client) -> None:
    """Finished jobs of the last 24 hours are counted per minute, task and outcome."""
    await _finished(client, "succeeded", age=1)
    await _finished(client, "succeeded", age=1)
    await _finished(client, "failed", age=1)
    await _finished(client, "succeeded", age=2 * DAY)

    rows = await client.pool.fetch(
        "SELECT task, outcome, sum(jobs) AS jobs FROM skiplock.throughput_per_minute"
        " GROUP BY task, outcome ORDER BY outcome"
    )

    assert [(r["task"], r["outcome"], r["jobs"]) for r in rows] == [
        ("t", "failed", 1),
        ("t", "succeeded", 2),
    ]


async def test_task_stats(client: Client) -> None:
    """Per task and period: counts, failure rate and run-time percentiles."""
    await _finished(client, "succeeded", age=60, task="a", run_seconds=2)
    await _finished(client, "failed", age=60, task="a", run_seconds=4)
    await _finished(client, "succeeded", age=2 * 3600, task="a", run_seconds=2)
    await _finished(client, "succeeded", age=3 * DAY, task="a", run_seconds=2)
    await _finished(client, "succeeded", age=8 * DAY, task="a", run_seconds=2)

    rows = await client.pool.fetch("SELECT * FROM skiplock.task_stats WHERE task = 'a'")
    by_period = {r["period"]: r for r in rows}

    assert {p: (r["finished"], r["failed"]) for p, r in by_period.items()} == {
        "1h": (2, 1),
        "24h": (3, 1),
        "7d": (4, 1),
    }
    assert by_period["1h"]["failure_rate"] == 0.5
    assert by_period["7d"]["failure_rate"] == 0.25
    assert abs(by_period["1h"]["run_p50"] - 3.0) < 0.01
    assert abs(by_period["7d"]["run_p50"] - 2.0) < 0.01


async def test_jobs_per_tenant(client: Client) -> None:
    """Per tenant: counts by state and in all."""
    await client.enqueue("t", {}, tenant="acme")
    await client.enqueue("t", {}, tenant="acme")
    await client.enqueue("t", {}, tenant="beta")

    rows = await client.pool.fetch("SELECT * FROM skiplock.jobs_per_tenant ORDER BY tenant")

    assert [(r["tenant"], r["queued"], r["running"], r["total"]) for r in rows] == [
        ("acme", 2, 0, 2),
        ("beta", 1, 0, 1),
    ]


async def test_stuck_jobs(client: Client) -> None:
    """Running jobs with an expired lease, or far past their task's p95 run time, are listed."""
    for _ in range(5):
        await _finished(client, "succeeded", age=60, task="slowish", run_seconds=10)
    lost = await _running(client, age=5, lease_in=-1, task="slowish")
    slow = await _running(client, age=600, task="slowish")
    await _running(client, age=20, task="slowish")  # within 3 × p95 and p95 + 60 s
    await _running(client, age=10 * DAY, task="no_history")  # no p95 to compare with

    rows = await client.pool.fetch("SELECT * FROM skiplock.stuck_jobs")

    assert {r["id"]: r["reason"] for r in rows} == {lost: "lease_expired", slow: "slow"}
    assert all(abs(r["task_run_p95"] - 10.0) < 0.01 for r in rows)
