"""The job commands of the CLI: enqueue, jobs list/show/cancel/retry, stats and check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import orjson
from click.testing import CliRunner, Result

from skiplock import ALL_TENANTS, Client
from skiplock.cli import cli


async def _run(dsn: str, *args: str) -> Result:
    """Invoke ``skiplock --database-url dsn ARGS`` in a thread (the commands call asyncio.run)."""
    runner = CliRunner()
    argv = ["--database-url", dsn, *args]
    return await anyio.to_thread.run_sync(lambda: runner.invoke(cli, argv))


def _json(result: Result) -> Any:
    """The last stdout line of ``result`` as JSON."""
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout.strip().splitlines()[-1])


async def _count(client: Client) -> int:
    """How many jobs the table holds."""
    count: int = await client.pool.fetchval("SELECT count(*) FROM skiplock.jobs")
    return count


async def _end(client: Client, job_id: uuid.UUID, state: str) -> None:
    """Force a job into a finished ``state``."""
    await client.pool.execute(
        """
        UPDATE skiplock.jobs SET state = $2::skiplock.job_state, attempt = 1,
            started_at = now() - interval '2 seconds', finished_at = now()
        WHERE id = $1
        """,
        job_id,
        state,
    )


async def test_enqueue_then_show_round_trip(db_dsn: str, client: Client) -> None:
    """`enqueue --json` returns the job that `jobs show --json` reads back."""
    made = _json(
        await _run(
            db_dsn,
            "enqueue",
            "send_email",
            "--args",
            '{"to": "a@example.com", "n": 2}',
            "--queue",
            "mail",
            "--priority",
            "-5",
            "--delay",
            "60",
            "--max-attempts",
            "7",
            "--tenant",
            "acme",
            "--idempotency-key",
            "k1",
            "--meta",
            '{"source": "cli"}',
            "--json",
        )
    )
    shown = _json(await _run(db_dsn, "jobs", "show", made["id"], "--json"))
    assert shown == made
    assert shown["args"] == {"to": "a@example.com", "n": 2}
    assert (shown["queue"], shown["priority"], shown["max_attempts"]) == ("mail", -5, 7)
    assert (shown["tenant"], shown["idempotency_key"]) == ("acme", "k1")
    assert shown["meta"] == {"source": "cli"}
    assert shown["state"] == "queued"
    job = await client.get(made["id"], tenant=ALL_TENANTS)
    assert job is not None
    assert job.run_at > job.created_at

    text = await _run(db_dsn, "jobs", "show", made["id"])
    assert text.exit_code == 0, text.output
    assert "send_email" in text.stdout


async def test_enqueue_with_expiry_and_timeout(db_dsn: str, client: Client, tmp_path: Path) -> None:
    """`enqueue --expires --timeout` (and the same keys in --file) set the job's expiry and
    its own attempt timeout; an expiry in the past is refused and writes nothing."""
    made = _json(
        await _run(db_dsn, "enqueue", "report", "--expires", "2h", "--timeout", "90", "--json")
    )
    job = await client.get(made["id"])
    assert job is not None
    assert job.timeout_seconds == 90
    assert job.expires_at is not None
    assert (
        timedelta(hours=1, minutes=59)
        < job.expires_at - job.created_at
        < timedelta(hours=2, minutes=1)
    )
    assert made["timeout_seconds"] == 90

    path = tmp_path / "jobs.jsonl"
    path.write_text('{"task": "a", "expires_at": "2999-01-01T00:00:00+00:00", "timeout": 5}\n')
    done = _json(await _run(db_dsn, "enqueue", "--file", str(path), "--json"))
    (listed,) = done["ids"]
    from_file = await client.get(listed)
    assert from_file is not None
    assert (from_file.expires_at, from_file.timeout_seconds) == (
        datetime(2999, 1, 1, tzinfo=UTC),
        5,
    )

    before = await _count(client)
    past = await _run(db_dsn, "enqueue", "report", "--expires", "2001-01-01T00:00:00Z")
    assert past.exit_code == 2, past.output
    zero = await _run(db_dsn, "enqueue", "report", "--timeout", "0")
    assert zero.exit_code == 2, zero.output
    assert await _count(client) == before


async def test_enqueue_file_in_bulk(db_dsn: str, client: Client, tmp_path: Path) -> None:
    """`enqueue --file` enqueues every line of a JSONL file, across chunks."""
    lines = [orjson.dumps({"task": "resize", "args": {"i": i}}).decode() for i in range(1203)]
    lines.insert(10, "")
    lines.append(orjson.dumps({"task": "other", "queue": "q2", "priority": 3}).decode())
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")

    done = _json(await _run(db_dsn, "enqueue", "--file", str(path), "--json"))
    assert done["enqueued"] == 1204
    assert len(set(done["ids"])) == 1204
    assert await _count(client) == 1204
    other = await client.get(done["ids"][-1], tenant=ALL_TENANTS)
    assert other is not None
    assert (other.task, other.queue, other.priority) == ("other", "q2", 3)

    small = tmp_path / "small.jsonl"
    small.write_text('{"task": "a"}\n{"task": "b"}\n')
    text = await _run(db_dsn, "enqueue", "--file", str(small))
    assert text.exit_code == 0, text.output
    assert text.stdout.strip().splitlines()[-1] == "enqueued 2 jobs"
    assert await _count(client) == 1206


async def test_bad_input_exits_2_and_writes_nothing(
    db_dsn: str, client: Client, tmp_path: Path
) -> None:
    """Bad JSON, a non-object, an invalid job or a bad file line: exit 2, one line, no row."""
    cases: list[tuple[str, ...]] = [
        ("enqueue", "t", "--args", "{not json"),
        ("enqueue", "t", "--args", "[1, 2]"),
        ("enqueue", "t", "--meta", "nope"),
        ("enqueue", "t", "--max-attempts", "0"),
        ("enqueue", "", "--args", "{}"),
        ("enqueue",),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "ok"}\n{"task": "x", "args": "no"}\n')
    cases.append(("enqueue", "--file", str(bad)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"task": "ok"}\n{"task": \n')
    cases.append(("enqueue", "--file", str(broken)))
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"task": "ok", "colour": "red"}\n')
    cases.append(("enqueue", "--file", str(unknown)))

    for args in cases:
        result = await _run(db_dsn, *args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert result.stderr.startswith("skiplock: "), (args, result.stderr)
    assert "--args is not valid JSON" in (await _run(db_dsn, *cases[0])).stderr
    assert "bad.jsonl:2" in (await _run(db_dsn, "enqueue", "--file", str(bad))).stderr
    assert await _count(client) == 0


async def test_jobs_list_filters_and_json(db_dsn: str, client: Client) -> None:
    """`jobs list` filters by state, task, queue and tenant, pages with a cursor, prints a table."""
    a = await client.enqueue("alpha", queue="q1", tenant="t1")
    b = await client.enqueue("beta", queue="q2", tenant="t2")
    c = await client.enqueue("alpha", queue="q2", tenant="t1")
    await _end(client, b.id, "failed")
    await client.cancel(c.id, tenant=ALL_TENANTS)

    def ids(result: Result) -> list[str]:
        return [j["id"] for j in _json(result)["jobs"]]

    every = await _run(db_dsn, "jobs", "list", "--json")
    assert ids(every) == [str(c.id), str(b.id), str(a.id)]
    assert _json(every)["next_cursor"] is None
    assert ids(await _run(db_dsn, "jobs", "list", "--task", "alpha", "--json")) == [
        str(c.id),
        str(a.id),
    ]
    assert ids(await _run(db_dsn, "jobs", "list", "--queue", "q2", "--json")) == [
        str(c.id),
        str(b.id),
    ]
    assert ids(await _run(db_dsn, "jobs", "list", "--tenant", "t2", "--json")) == [str(b.id)]
    both = await _run(db_dsn, "jobs", "list", "--state", "failed", "--state", "queued", "--json")
    assert ids(both) == [str(b.id), str(a.id)]

    first = _json(await _run(db_dsn, "jobs", "list", "--limit", "2", "--json"))
    assert [j["id"] for j in first["jobs"]] == [str(c.id), str(b.id)]
    rest = await _run(db_dsn, "jobs", "list", "--limit", "2", "--cursor", first["next_cursor"])
    assert rest.exit_code == 0, rest.output
    table = rest.stdout.strip().splitlines()
    assert table[0].split() == ["id", "task", "queue", "state", "progress", "attempt", "created"]
    assert len(table) == 2
    assert table[1].split()[:6] == [str(a.id), "alpha", "q1", "queued", "-", "0/3"]

    bad_state = await _run(db_dsn, "jobs", "list", "--state", "sleeping")
    assert bad_state.exit_code == 2
    bad_cursor = await _run(db_dsn, "jobs", "list", "--cursor", "garbage")
    assert bad_cursor.exit_code == 2
    assert "invalid cursor" in bad_cursor.stderr


async def test_cancel_and_retry_paths(db_dsn: str, client: Client) -> None:
    """cancel/retry succeed on the right states; unknown ids exit 4, a wrong state exits 5."""
    job = await client.enqueue("t")
    cancelled = await _run(db_dsn, "jobs", "cancel", str(job.id))
    assert cancelled.exit_code == 0, cancelled.output
    assert f"cancelled {job.id}" in cancelled.stdout
    again = await _run(db_dsn, "jobs", "cancel", str(job.id))
    assert again.exit_code == 0, again.output
    retried = await _run(db_dsn, "jobs", "retry", str(job.id))
    assert retried.exit_code == 0, retried.output
    assert f"retried {job.id}: queued" in retried.stdout

    failed = await client.enqueue("t")
    await _end(client, failed.id, "failed")
    assert (await _run(db_dsn, "jobs", "retry", str(failed.id))).exit_code == 0
    back = await client.get(failed.id, tenant=ALL_TENANTS)
    assert back is not None
    assert back.state.value == "queued"

    done = await client.enqueue("t")
    await _end(client, done.id, "succeeded")
    refused = await _run(db_dsn, "jobs", "retry", str(done.id))
    assert refused.exit_code == 5, refused.output
    assert f"cannot retry job {done.id}: it is succeeded" in refused.stderr
    queued = await _run(db_dsn, "jobs", "retry", str(job.id))
    assert queued.exit_code == 5
    assert "it is queued" in queued.stderr

    missing = str(uuid.uuid4())
    for command in ("show", "cancel", "retry"):
        for job_id in (missing, "not-a-uuid"):
            result = await _run(db_dsn, "jobs", command, job_id)
            assert result.exit_code == 4, (command, job_id, result.output)
            assert result.stderr.strip() == f"skiplock: job {job_id} not found"


async def test_stats_json(db_dsn: str, client: Client) -> None:
    """`stats --json` gives counts by queue/task/state and the last hour's window stats."""
    await client.enqueue("a", queue="q1")
    await client.enqueue("a", queue="q1")
    done = await client.enqueue("b", queue="q2", tenant="other")
    await _end(client, done.id, "succeeded")

    stats = _json(await _run(db_dsn, "stats", "--json"))
    counts = {(c["queue"], c["task"], c["state"]): c["count"] for c in stats["counts"]}
    assert counts == {("q1", "a", "queued"): 2, ("q2", "b", "succeeded"): 1}
    assert stats["window_seconds"] == 3600
    window = {w["task"]: w for w in stats["window"]}
    assert window["b"]["succeeded"] == 1
    assert window["b"]["run_p50"] is not None

    scoped = _json(await _run(db_dsn, "stats", "--tenant", "other", "--json"))
    assert [(c["task"], c["count"]) for c in scoped["counts"]] == [("b", 1)]

    text = await _run(db_dsn, "stats")
    assert text.exit_code == 0, text.output
    assert "last hour:" in text.stdout


async def test_check(db_dsn: str, pg_admin_dsn: str) -> None:
    """`check`: 0 on a current schema, 3 on an empty database, 1 when unreachable."""
    ok = await _run(db_dsn, "check")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("ok: schema version ")

    name = f"skiplock_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            empty_dsn = urlunsplit(urlsplit(pg_admin_dsn)._replace(path=f"/{name}"))
            empty = await _run(empty_dsn, "check")
            assert empty.exit_code == 3, empty.output
            assert "is not installed" in empty.stderr
            assert "skiplock migrate" in empty.stderr
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()

    unreachable = await _run("postgresql://nobody@127.0.0.1:1/none", "check")
    assert unreachable.exit_code == 1, unreachable.output
    assert "cannot reach the database" in unreachable.stderr


async def test_check_json(db_dsn: str, pg_admin_dsn: str) -> None:
    """`check --json`: an object on stdout whether it passes or not, and the same exit codes."""
    ok = _json(await _run(db_dsn, "check", "--json"))
    assert ok["ok"] is True
    assert isinstance(ok["schema_version"], int)
    assert ok["schema_version"] >= 1

    name = f"skiplock_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            empty_dsn = urlunsplit(urlsplit(pg_admin_dsn)._replace(path=f"/{name}"))
            empty = await _run(empty_dsn, "check", "--json")
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    assert empty.exit_code == 3, empty.output
    failed = orjson.loads(empty.stdout)
    assert failed["ok"] is False
    assert failed["exit_code"] == 3
    assert "is not installed" in failed["error"]

    unreachable = await _run("postgresql://nobody@127.0.0.1:1/none", "check", "--json")
    assert unreachable.exit_code == 1, unreachable.output
    down = orjson.loads(unreachable.stdout)
    assert (down["ok"], down["exit_code"]) == (False, 1)
    assert "cannot reach the database" in down["error"]


async def test_json_of_migrate_cancel_retry_and_revoke(db_dsn: str, client: Client) -> None:
    """The commands that used to print only a sentence print JSON with --json."""
    migrated = _json(await _run(db_dsn, "migrate", "--json"))
    assert migrated == {"applied": []}  # the test database is migrated already

    made = _json(await _run(db_dsn, "enqueue", "t", "--json"))
    cancelled = _json(await _run(db_dsn, "jobs", "cancel", made["id"], "--json"))
    assert (cancelled["id"], cancelled["state"]) == (made["id"], "cancelled")
    retried = _json(await _run(db_dsn, "jobs", "retry", made["id"], "--json"))
    assert (retried["id"], retried["state"]) == (made["id"], "queued")

    key = await _new_key(db_dsn, "t1")
    revoked = _json(await _run(db_dsn, "apikey", "revoke", key["id"], "--json"))
    assert revoked["id"] == key["id"]
    assert revoked["revoked_at"] is not None


async def _new_key(dsn: str, tenant: str, *args: str) -> Any:
    """`apikey create --tenant TENANT ARGS --json`, parsed."""
    return _json(await _run(dsn, "apikey", "create", "--tenant", tenant, *args, "--json"))


async def test_apikey_create_with_expiry(db_dsn: str, client: Client) -> None:
    """`apikey create --expires` takes a duration or an ISO-8601 time and stores it."""
    before = datetime.now(UTC)
    made = await _new_key(db_dsn, "t1", "--expires", "30d")
    after = datetime.now(UTC)
    expires = datetime.fromisoformat(made["expires_at"])
    assert before + timedelta(days=30) <= expires <= after + timedelta(days=30)
    stored = await client.pool.fetchval(
        "SELECT expires_at FROM skiplock.api_keys WHERE id = $1", uuid.UUID(made["id"])
    )
    assert stored == expires

    fixed = await _new_key(db_dsn, "t2", "--expires", "2099-01-31T12:00:00Z")
    assert datetime.fromisoformat(fixed["expires_at"]) == datetime(2099, 1, 31, 12, tzinfo=UTC)
    naive = await _new_key(db_dsn, "t3", "--expires", "2099-02-01")
    assert datetime.fromisoformat(naive["expires_at"]) == datetime(2099, 2, 1, tzinfo=UTC)
    endless = await _new_key(db_dsn, "t4")
    assert endless["expires_at"] is None

    listed = _json(await _run(db_dsn, "apikey", "list", "--json"))
    by_id = {row["id"]: row for row in listed}
    assert by_id[fixed["id"]]["expires_at"] == fixed["expires_at"]
    assert by_id[endless["id"]]["expires_at"] is None

    # An expired key shows as such in the listing.
    await client.pool.execute(
        "UPDATE skiplock.api_keys SET expires_at = now() - interval '1 hour' WHERE id = $1",
        uuid.UUID(made["id"]),
    )
    text = await _run(db_dsn, "apikey", "list", "--tenant", "t1")
    assert text.exit_code == 0, text.output
    assert "expired" in text.stdout


async def test_apikey_create_refuses_a_bad_expiry(db_dsn: str, client: Client) -> None:
    """A past time, zero, or no duration at all: exit 2, a clear message, no key stored."""
    for bad, says in [
        ("2001-01-01T00:00:00Z", "in the past"),
        ("0", "more than zero"),
        ("soon", "neither a duration"),
        ("12x", "neither a duration"),
    ]:
        result = await _run(db_dsn, "apikey", "create", "--tenant", "t", "--expires", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert says in result.output, (bad, result.output)
    assert await client.pool.fetchval("SELECT count(*) FROM skiplock.api_keys") == 0


async def test_enqueue_with_flow_control_options(
    db_dsn: str, client: Client, tmp_path: Path
) -> None:
    """`enqueue --limit-key --fairness-key --unique-key --on-duplicate --debounce` (and the
    same keys in --file); a duplicate returns the job holding the key; bad keys exit 2."""
    made = _json(
        await _run(
            db_dsn,
            "enqueue",
            "report",
            "--limit-key",
            "user:1",
            "--limit-key",
            "gpu",
            "--fairness-key",
            "f",
            "--unique-key",
            "u",
            "--json",
        )
    )
    assert made["limit_keys"] == ["user:1", "gpu"]
    assert (made["fair_key"], made["unique_key"]) == ("f", "u")
    again = await _run(
        db_dsn,
        "enqueue",
        "report",
        "--unique-key",
        "u",
        "--on-duplicate",
        "extend",
        "--delay",
        "60",
    )
    assert again.exit_code == 0, again.output
    assert made["id"] in again.output
    assert "duplicate" in again.output
    job = await client.get(made["id"])
    assert job is not None
    assert job.run_at > job.created_at + timedelta(seconds=59)

    debounced = [
        _json(await _run(db_dsn, "enqueue", "digest", "--debounce", "30", "--json"))
        for _ in range(2)
    ]
    assert debounced[0]["id"] == debounced[1]["id"]

    path = tmp_path / "jobs.jsonl"
    path.write_text('{"task": "a", "limit_keys": ["k"], "unique": true}\n')
    done = _json(await _run(db_dsn, "enqueue", "--file", str(path), "--json"))
    (listed,) = done["ids"]
    from_file = await client.get(listed)
    assert from_file is not None
    assert from_file.limit_keys == ("k",)
    assert from_file.unique_key is not None

    before = await _count(client)
    reserved = await _run(db_dsn, "enqueue", "report", "--limit-key", "tenant:other")
    assert reserved.exit_code == 2, reserved.output
    assert "reserved prefix" in reserved.output
    assert await _count(client) == before
