"""skiplock through PgBouncer in transaction mode: client, worker, API, migrations."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import anyio
import asyncpg
import pytest

from skiplock import Client, check_schema, migrate, sql
from skiplock.testing import admin_execute, database_url, drop_database, quote_ident
from tests.integration.pgbouncer import PgBouncer, bouncer_binary

pytestmark = pytest.mark.skipif(
    bouncer_binary() is None,
    reason="pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def bouncer(pg_admin_dsn: str) -> Iterator[PgBouncer]:
    """One PgBouncer (transaction pooling, 4 server connections per database)."""
    with PgBouncer(pg_admin_dsn) as b:
        yield b


@pytest.fixture
def bouncer_dsn(bouncer: PgBouncer, db_dsn: str) -> str:
    """The test's fresh database, through PgBouncer."""
    return bouncer.dsn_for(db_dsn)


async def test_client_many_concurrent_calls(bouncer_dsn: str) -> None:
    async with await Client.connect(bouncer_dsn, max_size=20, statement_cache_size=0) as client:
        jobs = await asyncio.gather(*(client.enqueue("t", {"n": n}) for n in range(300)))
        got = await asyncio.gather(*(client.get(j.id) for j in jobs))
    assert [g.args["n"] for g in got if g is not None] == list(range(300))


async def test_migrate_through_pgbouncer_concurrently(
    bouncer: PgBouncer, pg_admin_dsn: str
) -> None:
    name = f"skiplock_pgb_{uuid.uuid4().hex[:12]}"
    await admin_execute(pg_admin_dsn, f"CREATE DATABASE {quote_ident(name)}")
    try:
        url = bouncer.dsn_for(database_url(pg_admin_dsn, name))
        with anyio.fail_after(60):
            applied = await asyncio.gather(*(migrate(url) for _ in range(4)))
            # every migration applied once, by one of them; and no lock is left behind
            assert sorted(v for done in applied for v in done) == [
                m.version for m in sql.migrations()
            ]
            assert await migrate(url) == []
        conn = await asyncpg.connect(database_url(pg_admin_dsn, name))
        try:
            assert await check_schema(conn) == sql.migrations()[-1].version
        finally:
            await conn.close()
    finally:
        await drop_database(pg_admin_dsn, name)
