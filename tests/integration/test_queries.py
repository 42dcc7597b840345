"""Every named query parses and type-checks against the migrated schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest_asyncio

import skiplock
from skiplock import sql
from tests.integration.schemadump import render_schema


@pytest_asyncio.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to a fresh, migrated database."""
    c = await asyncpg.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()


async def _prepare_failures(conn: asyncpg.Connection[Any], schema: str) -> dict[str, str]:
    failures: dict[str, str] = {}
    for name in sql.query_names():
        try:
            await conn.prepare(sql.query(name, schema))
        except asyncpg.PostgresError as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
    return failures


async def test_every_query_prepares(conn: asyncpg.Connection[Any]) -> None:
    """PREPARE succeeds for every query in sql.query_names() on the default schema."""
    assert sql.query_names()
    assert await _prepare_failures(conn, "skiplock") == {}


async def test_custom_schema_gets_every_object(db_dsn: str, conn: asyncpg.Connection[Any]) -> None:
    """Migrating into another schema creates the same objects there as in the default one."""
    assert await skiplock.migrate(db_dsn, schema="jobs_alt") == [
        m.version for m in sql.migrations()
    ]
    alt = await render_schema(conn, "jobs_alt")
    assert "table jobs_alt.jobs" in alt
    assert alt.replace("jobs_alt", "skiplock") == await render_schema(conn, "skiplock")


async def test_every_query_prepares_in_custom_schema(
    db_dsn: str, conn: asyncpg.Connection[Any]
) -> None:
    """PREPARE succeeds for every query rewritten for a custom schema."""
    await skiplock.migrate(db_dsn, schema="jobs_alt")
    # No skiplock objects are reachable: an unsubstituted name would fail to prepare.
    await conn.execute("DROP SCHEMA skiplock CASCADE")
    assert await _prepare_failures(conn, "jobs_alt") == {}
