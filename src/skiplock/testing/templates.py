"""Throwaway databases for tests and benchmarks: a migrated template, cloned per run.

Creating a database from a template is a file copy, far faster than migrating
each time. skiplock's own test suite and ``bench/`` use these; so can your
tests::

    admin = "postgresql://postgres@localhost/postgres"
    template = await create_template(admin, "myapp_tpl")
    dsn = await clone_database(admin, template, "myapp_test_1")
    ...
    await drop_database(admin, "myapp_test_1")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from skiplock.queue.migrate import migrate

__all__ = [
    "admin_execute",
    "clone_database",
    "create_template",
    "database_url",
    "drop_database",
    "quote_ident",
]


def database_url(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


async def admin_execute(url: str, statement: str, *args: object) -> None:
    """Run one ``statement`` on a connection of its own to ``url`` (outside any transaction)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def create_template(
    admin_url: str,
    name: str,
    *,
    schema: str = "skiplock",
    prepare: Callable[[str], Awaitable[None]] | None = None,
) -> str:
    """Create database ``name``, migrate it, run ``prepare(dsn)``, and close it to connections.

    Returns ``name``. On failure the half-made database is dropped.
    """
    await admin_execute(admin_url, f"CREATE DATABASE {quote_ident(name)}")
    try:
        dsn = database_url(admin_url, name)
        await migrate(dsn, schema=schema)
        if prepare is not None:
            await prepare(dsn)
        # CREATE DATABASE … TEMPLATE refuses a template anybody (autovacuum too) is on.
        await admin_execute(
            admin_url, f"ALTER DATABASE {quote_ident(name)} ALLOW_CONNECTIONS false"
        )
        await admin_execute(
            admin_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    except BaseException:
        await drop_database(admin_url, name)
        raise
    return name


async def clone_database(admin_url: str, template: str, name: str) -> str:
    """Create database ``name`` as a copy of ``template``; its DSN."""
    await admin_execute(
        admin_url, f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}"
    )
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting whoever is on it."""
    await admin_execute(admin_url, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
