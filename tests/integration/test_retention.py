"""Retention on real PostgreSQL: purge_sweep, retention_loop, and the purge/worker CLI options."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import asyncpg
import orjson
import pytest
import pytest_asyncio
import structlog
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from skiplock import Client, JobSpec
from skiplock.cli import cli
from skiplock.queue.store import PURGE_SUCCEEDED_AFTER
from skiplock.worker.retention import (
    RetentionPolicy,
    parse_duration,
    purge_sweep,
    retention_loop,
)
from tests.helpers import wait_for, wait_until

DAY = 86_400.0


async def make_jobs(
    client: Client,
    count: int,
    state: str,
    *,
    age: float,
    expires_in: float | None = None,
) -> set[uuid.UUID]:
    """``count`` jobs in ``state``: finished, running or queued ``age`` seconds ago."""
    jobs = await client.enqueue_many([JobSpec(task="t") for _ in range(count)])
    ids = [j.id for j in jobs]
    if state == "queued":
        sql = """
            UPDATE skiplock.jobs SET
                created_at = now() - make_interval(secs => $2::float8),
                run_at = now() - make_interval(secs => $2::float8),
                expires_at = now() + make_interval(secs => $3::float8)
            WHERE id = ANY($1)
        """
        await client.pool.execute(sql, ids, age, expires_in)
    elif state == "running":
        sql = """
            UPDATE skiplock.jobs SET
                state = 'running', attempt = 1, worker_id = 'w1',
                lease_token = gen_random_uuid(), lease_expires_at = now() + interval '1 hour',
                started_at = now() - make_interval(secs => $2::float8),
                expires_at = now() + make_interval(secs => $3::float8)
            WHERE id = ANY($1)
        """
        await client.pool.execute(sql, ids, age, expires_in)
    else:
        sql = """
            UPDATE skiplock.jobs SET
                state = $4::skiplock.job_state, attempt = 1,
                started_at = now() - make_interval(secs => $2::float8 + 1),
                finished_at = now() - make_interval(secs => $2::float8),
                expires_at = now() + make_interval(secs => $3::float8)
            WHERE id = ANY($1)
        """
        await client.pool.execute(sql, ids, age, expires_in, state)
    return set(ids)


async def all_ids(client: Client) -> set[uuid.UUID]:
    """Every job id in the table."""
    return {r["id"] for r in await client.pool.fetch("SELECT id FROM skiplock.jobs")}


FAST = RetentionPolicy(batch_size=5, interval=0.05, batch_pause=0.0)


# -- purge_sweep ----------------------------------------------------------------


async def test_sweep_deletes_in_batches_and_stops_after_a_short_one(client: Client) -> None:
    """12 due jobs with batch_size 5 go in batches of 5, 5 and 2; the short batch ends it."""
    await make_jobs(client, 12, "succeeded", age=2 * DAY)
    young = await make_jobs(client, 2, "succeeded", age=60)
    batches: list[int] = []

    total = await purge_sweep(client.pool, client.store, FAST, on_deleted=batches.append)

    assert total == 12
    assert batches == [5, 5, 2]
    assert await all_ids(client) == young


async def test_sweep_of_an_exact_multiple_ends_on_an_empty_batch(client: Client) -> None:
    """10 due jobs with batch_size 5: two full batches, then one that finds nothing."""
    await make_jobs(client, 10, "failed", age=8 * DAY)
    batches: list[int] = []

    assert await purge_sweep(client.pool, client.store, FAST, on_deleted=batches.append) == 10
    assert batches == [5, 5]
    assert await all_ids(client) == set()


async def test_sweep_holds_no_lock_while_it_pauses_between_batches(client: Client) -> None:
    """During the pause after a batch, another session can lock every remaining row at once."""
    await make_jobs(client, 6, "succeeded", age=2 * DAY)
    policy = RetentionPolicy(batch_size=3, interval=1, batch_pause=600)  # pauses until cancelled
    batches: list[int] = []

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: purge_sweep(client.pool, client.store, policy, on_deleted=batches.append)
        )
        await wait_until(lambda: batches == [3], what="the first batch")
        async with client.pool.acquire() as other, other.transaction():
            # NOWAIT fails at once if the sweep still held any row or the table
            locked = await other.fetch("SELECT id FROM skiplock.jobs FOR UPDATE NOWAIT")
        tg.cancel_scope.cancel()
    assert len(locked) == 3
    assert batches == [3]


# -- retention_loop ---------------------------------------------------------------


async def test_loop_deletes_by_policy_and_keeps_the_rest(client: Client) -> None:
    """Old finished jobs go per state, expired ones at once; young, queued and running stay."""
    old_ok = await make_jobs(client, 7, "succeeded", age=2 * DAY)
    old_cancelled = await make_jobs(client, 3, "cancelled", age=8 * DAY)
    expired = await make_jobs(client, 2, "succeeded", age=60, expires_in=-1)
    expired_failed = await make_jobs(client, 1, "failed", age=60, expires_in=-1)
    kept = (
        await make_jobs(client, 2, "succeeded", age=60)
        | await make_jobs(client, 2, "succeeded", age=60, expires_in=3600)
        | await make_jobs(client, 2, "failed", age=30 * DAY)  # failed_after=None: kept by age
        | await make_jobs(client, 2, "cancelled", age=DAY)
        | await make_jobs(client, 2, "queued", age=365 * DAY, expires_in=-DAY)
        | await make_jobs(client, 2, "running", age=365 * DAY, expires_in=-DAY)
    )
    policy = RetentionPolicy(failed_after=None, batch_size=5, interval=0.05, batch_pause=0.0)
    deleted: list[int] = []

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: retention_loop(
                client.pool,
                client.store,
                policy,
                log=structlog.get_logger("test"),
                on_deleted=deleted.append,
            )
        )
        due = len(old_ok | old_cancelled | expired | expired_failed)
        await wait_until(lambda: sum(deleted) == due, within=30, what="old and expired purged")
        assert await all_ids(client) == kept
        # a later sweep still keeps them, and takes what has become due since
        await make_jobs(client, 1, "succeeded", age=2 * DAY)
        await wait_until(lambda: sum(deleted) == due + 1, within=30, what="a later sweep")
        tg.cancel_scope.cancel()

    assert await all_ids(client) == kept
    assert max(deleted) <= policy.batch_size


async def test_loop_stops_cleanly_when_cancelled_mid_statement(client: Client) -> None:
    """Cancelled while its statement waits on a lock, the loop ends at once and frees its conn."""
    await make_jobs(client, 3, "succeeded", age=2 * DAY)
    waiting_sql = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query LIKE '%purge_finished%'"
    )
    async with client.pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE skiplock.jobs IN ACCESS EXCLUSIVE MODE")
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: retention_loop(
                        client.pool, client.store, FAST, log=structlog.get_logger("test")
                    )
                )
                await wait_for(
                    lambda: client.pool.fetchval(waiting_sql),
                    lambda n: n >= 1,
                    timeout=30,
                    what="the purge waiting on the table lock",
                )
                tg.cancel_scope.cancel()
        await tx.rollback()

    await wait_for(
        lambda: client.pool.fetchval(waiting_sql), lambda n: n == 0, what="the purge cancelled"
    )
    assert await client.pool.fetchval("SELECT count(*) FROM skiplock.jobs") == 3


@pytest_asyncio.fixture
async def no_delete_dsn(db_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """A DSN for a fresh role that may read and update jobs but not delete them; (dsn, role)."""
    role = f"retention_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(db_dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        await admin.execute(f"GRANT USAGE ON SCHEMA skiplock TO {role}")
        await admin.execute(f"GRANT SELECT, UPDATE ON skiplock.jobs TO {role}")
        parts = urlsplit(db_dsn)
        netloc = f"{quote(role)}:pw@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        yield urlunsplit(parts._replace(netloc=netloc)), role
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_loop_survives_a_database_error(
    client: Client, no_delete_dsn: tuple[str, str]
) -> None:
    """A failing sweep is logged (with a hint) and retried next interval; it succeeds once fixed."""
    dsn, role = no_delete_dsn
    old = await make_jobs(client, 4, "succeeded", age=2 * DAY)
    young = await make_jobs(client, 1, "succeeded", age=60)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    errors: list[BaseException] = []
    try:
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: retention_loop(
                        pool,
                        client.store,
                        FAST,
                        log=structlog.get_logger("test"),
                        on_error=errors.append,
                    )
                )
                await wait_until(
                    lambda: sum(e["event"] == "retention_failed" for e in logs) >= 2,
                    within=30,
                    what="two failed sweeps",
                )
                await client.pool.execute(f"GRANT DELETE ON skiplock.jobs TO {role}")
                await wait_until(
                    lambda: any(e["event"] == "retention_purged" for e in logs),
                    within=30,
                    what="a sweep after the grant",
                )
                tg.cancel_scope.cancel()
    finally:
        await pool.close()

    assert await all_ids(client) == young

    failure = next(e for e in logs if e["event"] == "retention_failed")
    assert failure["log_level"] == "error"
    assert "InsufficientPrivilege" in failure["error"]
    assert "DELETE" in failure["hint"]
    assert len(errors) >= 2
    assert all(isinstance(e, asyncpg.InsufficientPrivilegeError) for e in errors)
    purged = [e for e in logs if e["event"] == "retention_purged"]
    assert sum(e["deleted"] for e in purged) == len(old)


# -- policy and durations -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("90s", 90.0),
        ("15m", 900.0),
        ("12h", 43_200.0),
        ("1d", 86_400.0),
        ("2w", 1_209_600.0),
        ("1d12h", 129_600.0),
        ("1.5h", 5400.0),
        (" 7D ", 604_800.0),
        ("never", None),
        ("Off", None),
        ("none", None),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float | None) -> None:
    """Seconds, unit suffixes (also combined) and never/off/none are understood."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "1x", "d", "1 d", "5m-", "nan", "inf", "1e400"])
def test_parse_duration_refuses(text: str) -> None:
    """Anything else is a ValueError that says what is accepted."""
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_policy_defaults_are_the_purge_defaults() -> None:
    """The default policy keeps succeeded jobs a day, failed and cancelled ones seven."""
    policy = RetentionPolicy()
    assert policy.succeeded_after == PURGE_SUCCEEDED_AFTER == DAY
    assert (policy.failed_after, policy.cancelled_after) == (7 * DAY, 7 * DAY)
    assert policy.batch_size == 500


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("succeeded_after", -1.0, "succeeded_after"),
        ("failed_after", float("nan"), "failed_after"),
        ("batch_size", 0, "batch_size"),
        ("interval", 0.0, "interval"),
        ("batch_pause", -0.1, "batch_pause"),
        ("timeout", 0.0, "timeout"),
    ],
)
def test_policy_refuses_bad_values(field: str, value: Any, message: str) -> None:
    """Out-of-range settings raise ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        RetentionPolicy(**{field: value})


# -- the CLI ------------------------------------------------------------------


async def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in a thread (its commands call asyncio.run)."""
    runner = CliRunner()
    return await anyio.to_thread.run_sync(lambda: runner.invoke(cli, list(args), env=env))


async def test_purge_takes_durations_and_never(db_dsn: str, client: Client) -> None:
    """`purge --succeeded-after 1h --failed-after never` deletes by those ages only."""
    old_ok = await make_jobs(client, 2, "succeeded", age=2 * 3600)
    young_ok = await make_jobs(client, 1, "succeeded", age=1800)
    ancient_failed = await make_jobs(client, 1, "failed", age=365 * DAY)

    result = await invoke(
        "--database-url", db_dsn, "purge", "--succeeded-after", "1h",
        "--failed-after", "never", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout.strip().splitlines()[-1]) == {"deleted": len(old_ok)}
    assert await all_ids(client) == young_ok | ancient_failed


async def test_purge_shows_progress_on_stderr(db_dsn: str, client: Client) -> None:
    """Without --json the purge draws its progress on stderr and prints the total on stdout."""
    await make_jobs(client, 3, "succeeded", age=2 * DAY)

    result = await invoke("--database-url", db_dsn, "purge", "--batch", "2")

    assert result.exit_code == 0, result.output
    assert "purging" in result.stderr
    assert result.stdout.strip().splitlines() == ["deleted 3 finished jobs"]


async def test_purge_refuses_a_bad_duration_and_deletes_nothing(
    db_dsn: str, client: Client
) -> None:
    """A duration it cannot read exits 2 with the reason, before touching the database."""
    old = await make_jobs(client, 2, "succeeded", age=2 * DAY)

    result = await invoke("--database-url", db_dsn, "purge", "--succeeded-after", "1 day")

    assert result.exit_code == 2
    assert "'1 day' is not a duration" in result.stderr
    assert await all_ids(client) == old


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--retain-failed", "3x"], {}, "'3x' is not a duration"),
        (["--retain-succeeded", "-1d"], {}, "is not a duration"),
        ([], {"SKIPLOCK_RETAIN_CANCELLED": "soon"}, "'soon' is not a duration"),
        ([], {"SKIPLOCK_PROBE_PORT": "http"}, "'http' is not a valid integer"),
        (["--probe-port", "70000"], {}, "70000 is not in the range"),
    ],
)
async def test_worker_command_refuses_bad_ops_options(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """Bad retention durations or probe ports (flags or environment) exit 2 with the reason."""
    result = await invoke(
        "--database-url", "postgresql://nobody@127.0.0.1:1/none", "worker",
        "--app", "tests.apps.slow:tasks", *args, env=env,
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr
