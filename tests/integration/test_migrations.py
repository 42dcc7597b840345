"""Migrations: from zero to the committed snapshot, once, concurrently, forward-only."""

from __future__ import annotations

import difflib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import orjson
import pytest
import pytest_asyncio

import skiplock
from skiplock import SchemaMismatch, check_schema, sql
from skiplock.queue.store import Store
from tests.helpers import wait_until
from tests.integration.schemadump import render_schema

SNAPSHOT = Path(__file__).with_name("schema_snapshot.txt")
LATEST = sql.migrations()[-1].version


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest_asyncio.fixture
async def empty_db_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A brand-new database without any skiplock objects, dropped afterwards."""
    name = f"skiplock_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        try:
            yield _with_database(pg_admin_dsn, name)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def conn(empty_db_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to the empty database."""
    c = await asyncpg.connect(empty_db_dsn)
    try:
        yield c
    finally:
        await c.close()


async def _ledger(conn: asyncpg.Connection[Any]) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT * FROM skiplock.migrations ORDER BY version")
    return [tuple(r.values()) for r in rows]


async def test_migrations_from_zero_match_snapshot(
    empty_db_dsn: str, conn: asyncpg.Connection[Any]
) -> None:
    """Migrating an empty database yields exactly the committed schema_snapshot.txt.

    A deliberate schema change (a new migration) changes the snapshot: rewrite it
    with ``SKIPLOCK_UPDATE_SNAPSHOT=1 pytest tests/integration/test_migrations.py``
    and commit the diff with the migration.
    """
    await skiplock.migrate(empty_db_dsn)
    rendered = await render_schema(conn, "skiplock")
    if os.environ.get("SKIPLOCK_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(rendered, encoding="utf-8")
        pytest.skip(f"rewrote {SNAPSHOT.name}")
    expected = SNAPSHOT.read_text(encoding="utf-8")
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            fromfile=f"{SNAPSHOT.name} (committed)",
            tofile="migrated schema",
        )
    )
    assert rendered == expected, (
        "the migrated schema differs from the snapshot; if intended, rerun with "
        f"SKIPLOCK_UPDATE_SNAPSHOT=1 and commit the diff:\n{diff}"
    )


async def test_concurrent_migrations_apply_each_once(
    empty_db_dsn: str, conn: asyncpg.Connection[Any]
) -> None:
    """Ten concurrent migrate calls apply every migration exactly once, in order, without errors.

    Each migration is its own locked transaction, so the work may be shared
    among the callers; each returns the versions it applied, ascending.
    """
    results: list[list[int]] = []

    async def run() -> None:
        results.append(await skiplock.migrate(empty_db_dsn))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(run)

    all_versions = [m.version for m in sql.migrations()]
    assert sorted(v for applied in results for v in applied) == all_versions
    assert all(applied == sorted(applied) for applied in results)
    versions = await conn.fetch("SELECT version FROM skiplock.migrations ORDER BY version")
    assert [r["version"] for r in versions] == all_versions


async def test_second_migrate_changes_nothing(
    empty_db_dsn: str, conn: asyncpg.Connection[Any]
) -> None:
    """Migrating an up-to-date database returns [] and leaves schema and ledger as they were."""
    await skiplock.migrate(empty_db_dsn)
    schema_before = await render_schema(conn, "skiplock")
    ledger_before = await _ledger(conn)

    assert await skiplock.migrate(empty_db_dsn) == []

    assert await render_schema(conn, "skiplock") == schema_before
    assert await _ledger(conn) == ledger_before


async def test_changed_migration_refused(empty_db_dsn: str, conn: asyncpg.Connection[Any]) -> None:
    """An applied migration whose recorded checksum differs makes migrate raise SchemaMismatch."""
    await skiplock.migrate(empty_db_dsn)
    await conn.execute("UPDATE skiplock.migrations SET checksum = 'edited' WHERE version = 1")
    ledger_before = await _ledger(conn)

    with pytest.raises(SchemaMismatch, match=r"migration 0001_jobs .*checksum mismatch"):
        await skiplock.migrate(empty_db_dsn)
    assert await _ledger(conn) == ledger_before


async def test_check_schema_refuses_changed_migration(
    empty_db_dsn: str, conn: asyncpg.Connection[Any]
) -> None:
    """check_schema raises SchemaMismatch when an applied migration's checksum differs."""
    await skiplock.migrate(empty_db_dsn)
    await conn.execute("UPDATE skiplock.migrations SET checksum = 'edited' WHERE version = 1")

    with pytest.raises(SchemaMismatch, match="checksum mismatch"):
        await check_schema(conn)


async def test_unknown_migration_refused(empty_db_dsn: str, conn: asyncpg.Connection[Any]) -> None:
    """A ledger holding a migration this version does not ship makes migrate ask for an upgrade."""
    await skiplock.migrate(empty_db_dsn)
    await conn.execute(
        "INSERT INTO skiplock.migrations (version, name, checksum) VALUES ($1, 'future', 'x')",
        LATEST + 1,
    )

    with pytest.raises(SchemaMismatch, match=r"does not know: upgrade skiplock"):
        await skiplock.migrate(empty_db_dsn)


async def test_failed_migration_leaves_nothing(
    empty_db_dsn: str, conn: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails midway leaves neither its objects nor its ledger row."""
    shipped = sql.migrations()
    broken = sql.Migration(
        LATEST + 1, "broken", "CREATE TABLE skiplock.half_done (x int);\nSELECT 1 / 0;\n"
    )
    monkeypatch.setattr(sql, "migrations", lambda: (*shipped, broken))

    with pytest.raises(asyncpg.DivisionByZeroError):
        await skiplock.migrate(empty_db_dsn)

    assert await conn.fetchval("SELECT to_regclass('skiplock.half_done')") is None
    versions = await conn.fetch("SELECT version FROM skiplock.migrations ORDER BY version")
    assert [r["version"] for r in versions] == [m.version for m in shipped]


async def test_migration_commits_with_its_ledger_row(
    empty_db_dsn: str, conn: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration whose ledger row cannot be written leaves none of its objects behind."""

    async def refuse(*args: object) -> None:
        raise RuntimeError("ledger write failed")

    monkeypatch.setattr(Store, "record_migration", refuse)
    with pytest.raises(RuntimeError, match="ledger write failed"):
        await skiplock.migrate(empty_db_dsn)
    assert await conn.fetchval("SELECT to_regclass('skiplock.jobs')") is None


async def test_invalid_schema_name_refused_before_connecting() -> None:
    """migrate refuses an invalid schema name without touching any database."""
    with pytest.raises(ValueError, match="invalid schema name"):
        await skiplock.migrate("postgresql://nobody@unreachable.invalid/x", schema="Jobs-Alt")


async def test_check_schema_on_empty_database(conn: asyncpg.Connection[Any]) -> None:
    """check_schema on a database without skiplock says to run `skiplock migrate`."""
    with pytest.raises(SchemaMismatch, match=r"not installed in this database.*skiplock migrate"):
        await check_schema(conn)


async def test_check_schema_missing_latest_migration(
    empty_db_dsn: str, conn: asyncpg.Connection[Any]
) -> None:
    """check_schema on a ledger lacking the latest migration says to run `skiplock migrate`."""
    await skiplock.migrate(empty_db_dsn)
    await conn.execute("DELETE FROM skiplock.migrations WHERE version = $1", LATEST)

    with pytest.raises(
        SchemaMismatch,
        match=rf"at version {LATEST - 1}, this skiplock needs {LATEST}.*skiplock migrate",
    ):
        await check_schema(conn)


async def test_check_schema_returns_version(
    empty_db_dsn: str, conn: asyncpg.Connection[Any]
) -> None:
    """check_schema returns the schema version when every migration is applied."""
    await skiplock.migrate(empty_db_dsn)
    assert await check_schema(conn) == LATEST


async def test_check_schema_looks_at_the_given_schema(
    empty_db_dsn: str, conn: asyncpg.Connection[Any]
) -> None:
    """check_schema for another schema name does not accept the default schema's install."""
    await skiplock.migrate(empty_db_dsn)
    with pytest.raises(SchemaMismatch, match="'jobs_alt' is not installed"):
        await check_schema(conn, schema="jobs_alt")


async def _insert_jobs_in_every_state(conn: asyncpg.Connection[Any], more: str = "") -> None:
    """One job per state, task named after it (a retrying one queued with an error, a running
    one under a live lease), written with SQL as an older schema allows; ``more``: further
    rows of the same VALUES list, starting with a comma."""
    await conn.execute(
        """
        INSERT INTO skiplock.jobs (id, queue, task, args, state, attempt, lease_token,
                                   lease_expires_at, worker_id, finished_at, errors)
        VALUES
          (gen_random_uuid(), 'q', 'queued', '{}', 'queued', 0, NULL, NULL, NULL, NULL, '[]'),
          (gen_random_uuid(), 'q', 'retrying', '{}', 'queued', 1, NULL, NULL, 'w1', NULL,
           '[{"type": "E", "message": "m", "attempt": 1}]'),
          (gen_random_uuid(), 'q', 'running', '{}', 'running', 1, gen_random_uuid(),
           now() + interval '1 minute', 'w1', NULL, '[]'),
          (gen_random_uuid(), 'q', 'succeeded', '{}', 'succeeded', 1, NULL, NULL, 'w1', now(),
           '[]'),
          (gen_random_uuid(), 'q', 'failed', '{}', 'failed', 3, NULL, NULL, 'w1', now(), '[]'),
          (gen_random_uuid(), 'q', 'cancelled', '{}', 'cancelled', 0, NULL, NULL, NULL, now(),
           '[]')"""
        + more
    )


async def test_0006_applies_on_jobs_in_every_state(
    empty_db_dsn: str, conn: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """0006 applies to a database holding jobs in every state, including rows 0005 allowed
    and the new checks refuse: a queued job with a stray token (its stray lease is cleared)
    and a running job without a worker id (named '?'); every other row is unchanged."""
    shipped = sql.migrations()
    monkeypatch.setattr(sql, "migrations", lambda: shipped[:5])
    await skiplock.migrate(empty_db_dsn)
    await _insert_jobs_in_every_state(
        conn,
        """,
          (gen_random_uuid(), 'q', 'stray', '{}', 'queued', 0, gen_random_uuid(), NULL, NULL,
           NULL, '[]'),
          (gen_random_uuid(), 'q', 'nameless', '{}', 'running', 1, gen_random_uuid(),
           now() + interval '1 minute', NULL, NULL, '[]')""",
    )
    before = {
        r["task"]: dict(r)
        for r in await conn.fetch(
            "SELECT * FROM skiplock.jobs WHERE task NOT IN ('stray', 'nameless')"
        )
    }

    monkeypatch.setattr(sql, "migrations", lambda: shipped)
    assert await skiplock.migrate(empty_db_dsn) == [m.version for m in shipped[5:]]

    after = {r["task"]: dict(r) for r in await conn.fetch("SELECT * FROM skiplock.jobs")}
    nameless = after.pop("nameless")
    assert (nameless["state"], nameless["worker_id"]) == ("running", "?")
    stray = after.pop("stray")
    assert (stray["state"], stray["lease_token"], stray["lease_expires_at"]) == (
        "queued",
        None,
        None,
    )
    for task, row in before.items():
        assert {k: after[task][k] for k in row} == row, task
    assert await check_schema(conn) == LATEST


async def _listen_to_announcements(conn: asyncpg.Connection[Any]) -> list[tuple[str, Any]]:
    """LISTEN on the three channels; the list (channel, payload) pairs arrive in, in order
    (a job payload decoded from JSON)."""
    notes: list[tuple[str, Any]] = []

    def heard(_c: Any, _pid: int, channel: str, payload: object) -> None:
        text = str(payload)
        notes.append((channel, orjson.loads(text) if channel == "skiplock.job" else text))

    for channel in ("skiplock.job", "skiplock.queue", "skiplock.cancel"):
        await conn.add_listener(channel, heard)
    return notes


async def test_0008_applies_on_jobs_in_every_state(
    empty_db_dsn: str, conn: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """0008 (the update trigger without the plan hazard) applies to a database holding jobs in
    every state, one running under a live lease: every row is unchanged, and afterwards the
    trigger announces the running job's cancel request and a failed job put back in the
    queue on the same channels, with the same payloads, in the same order as before."""
    shipped = sql.migrations()
    monkeypatch.setattr(sql, "migrations", lambda: shipped[:7])
    await skiplock.migrate(empty_db_dsn)
    await _insert_jobs_in_every_state(conn)
    before = {r["task"]: dict(r) for r in await conn.fetch("SELECT * FROM skiplock.jobs")}

    monkeypatch.setattr(sql, "migrations", lambda: shipped[:8])
    assert await skiplock.migrate(empty_db_dsn) == [8]
    assert await check_schema(conn) == 8
    after = {r["task"]: dict(r) for r in await conn.fetch("SELECT * FROM skiplock.jobs")}
    assert after == before

    notes = await _listen_to_announcements(conn)
    running, failed = str(before["running"]["id"]), str(before["failed"]["id"])
    await conn.execute("UPDATE skiplock.jobs SET cancel_requested = true WHERE task = 'running'")
    await conn.execute(
        "UPDATE skiplock.jobs SET state = 'queued', finished_at = NULL WHERE task = 'failed'"
    )
    expected = [
        ("skiplock.job", [[running, "running", None]]),
        ("skiplock.cancel", running),
        ("skiplock.job", [[failed, "queued", None]]),
        ("skiplock.queue", "q"),
    ]
    await wait_until(lambda: len(notes) >= len(expected), what="the announcements")
    assert notes == expected


async def test_0009_applies_on_jobs_in_every_state_with_one_running(
    empty_db_dsn: str, conn: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """0009 (announcements made by the statements, no trigger) applies to a database holding
    jobs in every state: every row is unchanged; the job running under a live lease across
    the migration completes afterwards with its old lease token, and the statements announce
    what the trigger did (its new state; a failed job put back in the queue, and its queue)."""
    shipped = sql.migrations()
    monkeypatch.setattr(sql, "migrations", lambda: shipped[:8])
    await skiplock.migrate(empty_db_dsn)
    await _insert_jobs_in_every_state(conn)
    before = {r["task"]: dict(r) for r in await conn.fetch("SELECT * FROM skiplock.jobs")}

    monkeypatch.setattr(sql, "migrations", lambda: shipped[:9])
    assert await skiplock.migrate(empty_db_dsn) == [9]
    assert await check_schema(conn) == 9
    after = {r["task"]: dict(r) for r in await conn.fetch("SELECT * FROM skiplock.jobs")}
    assert after == before

    # Today's statements (complete_jobs, retry_job) need the latest schema.
    monkeypatch.setattr(sql, "migrations", lambda: shipped)
    await skiplock.migrate(empty_db_dsn)
    notes = await _listen_to_announcements(conn)
    running = before["running"]
    done = await conn.fetch(
        sql.query("complete_jobs"),
        [running["id"]],
        [running["lease_token"]],
        ["succeeded"],
        ['"ok"'],
        [None],
        [None],
        [None],
        [None],
        [None],
    )
    assert [r["id"] for r in done] == [running["id"]]
    retried = await conn.fetch(sql.query("retry_job"), before["failed"]["id"], None)
    assert [r["state"] for r in retried] == ["queued"]
    expected = [
        ("skiplock.job", [[str(running["id"]), "succeeded", 100]]),
        ("skiplock.job", [[str(before["failed"]["id"]), "queued", None]]),
        ("skiplock.queue", "q"),
    ]
    await wait_until(lambda: len(notes) >= len(expected), what="the announcements")
    assert notes == expected
    row = await conn.fetchrow("SELECT * FROM skiplock.jobs WHERE id = $1", running["id"])
    assert row is not None
    assert (row["state"], row["result"], row["lease_token"]) == ("succeeded", '"ok"', None)


async def test_0010_applies_on_jobs_in_every_state_with_one_running(
    empty_db_dsn: str, conn: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """0010 (flow control: limit keys, fair keys, unique keys, the claim function) applies to a
    database holding jobs in every state: every row keeps its values (the new columns NULL);
    the running job completes with its old lease token, and the queued ones are claimed
    through the new claim."""
    shipped = sql.migrations()
    monkeypatch.setattr(sql, "migrations", lambda: shipped[:9])
    await skiplock.migrate(empty_db_dsn)
    await _insert_jobs_in_every_state(conn)
    before = {r["task"]: dict(r) for r in await conn.fetch("SELECT * FROM skiplock.jobs")}

    monkeypatch.setattr(sql, "migrations", lambda: shipped)
    assert await skiplock.migrate(empty_db_dsn) == [m.version for m in shipped[9:]]
    assert await check_schema(conn) == LATEST
    after = {r["task"]: dict(r) for r in await conn.fetch("SELECT * FROM skiplock.jobs")}
    for task, row in after.items():
        assert (row.pop("limit_keys"), row.pop("fair_key"), row.pop("unique_key")) == (
            None,
            None,
            None,
        )
        assert row == before[task]

    running = before["running"]
    done = await conn.fetch(
        sql.query("complete_jobs"),
        [running["id"]],
        [running["lease_token"]],
        ["succeeded"],
        ['"ok"'],
        [None],
        [None],
        [None],
        [None],
        [None],
    )
    assert [r["id"] for r in done] == [running["id"]]
    claimed = await conn.fetch(sql.query("claim_jobs"), ["q"], 10, 30.0, "w2", None)
    assert sorted(r["task"] for r in claimed) == ["queued", "retrying"]
    assert all(r["state"] == "running" and r["worker_id"] == "w2" for r in claimed)


@pytest.mark.parametrize(
    ("fingerprint", "accepted"),
    [
        ("0123456789abcdef" * 4, True),
        (None, True),
        ("0123456789ABCDEF" * 4, False),
        ("0123456789abcdef" * 4 + "0", False),
        (("0123456789abcdef" * 4)[:-1], False),
        (("0123456789abcdef" * 4)[:-1] + "g", False),
        (("0123456789abcdef" * 4)[:-1] + "é", False),
        ("", False),
    ],
)
async def test_the_fingerprint_check_of_0009_refuses_what_the_old_one_did(
    empty_db_dsn: str, conn: asyncpg.Connection[Any], fingerprint: str | None, accepted: bool
) -> None:
    """0009's cheaper check on request_fingerprint (a length and a one-class expression
    instead of '^[0-9a-f]{64}$') accepts and refuses exactly what 0006's did."""
    await skiplock.migrate(empty_db_dsn)
    old = await conn.fetchval("SELECT $1::text ~ '^[0-9a-f]{64}$'", fingerprint)
    assert (old is not False) == accepted
    insert = conn.execute(
        "INSERT INTO skiplock.jobs (id, queue, task, args, request_fingerprint)"
        " VALUES (gen_random_uuid(), 'q', 't', '{}', $1)",
        fingerprint,
    )
    if accepted:
        assert await insert == "INSERT 0 1"
    else:
        with pytest.raises(asyncpg.CheckViolationError, match="jobs_request_fingerprint_check"):
            await insert
