"""The migration runner and the schema check that guards workers and the API."""

from __future__ import annotations

import asyncpg
import structlog

from skiplock import sql
from skiplock.queue.errors import SchemaMismatch
from skiplock.queue.store import AppliedMigration, Executor, Store

__all__ = ["check_schema", "migrate"]

log = structlog.get_logger("skiplock.migrate")


async def migrate(dsn: str, *, schema: str = "skiplock") -> list[int]:
    """Apply every pending migration to ``schema``; return the versions applied.

    Safe to run from many processes at once, and through PgBouncer in
    transaction mode: each step is one transaction that first takes a
    transaction-level advisory lock (no session state), then reads the ledger
    and applies the next migration with its ledger row only if nobody else
    has. An applied migration whose file has changed since is refused.
    """
    store = Store(schema)
    # No prepared-statement cache: a handful of statements, and a pooler in
    # transaction mode would lose named ones between transactions.
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        async with conn.transaction():
            await store.lock_migrations(conn)
            await store.create_schema(conn)
            await store.create_migrations_table(conn)
            _refuse_changed_or_unknown(await _applied(conn, store), store.schema)
        done: list[int] = []
        for migration in sql.migrations():
            async with conn.transaction():
                await store.lock_migrations(conn)
                if migration.version in await _applied(conn, store):
                    continue  # applied by another migrator meanwhile
                await conn.execute(migration.sql(store.schema))
                await store.record_migration(
                    conn, migration.version, migration.name, migration.checksum
                )
            log.info(
                "migration_applied",
                schema=store.schema,
                version=migration.version,
                name=migration.name,
            )
            done.append(migration.version)
        return done
    finally:
        await conn.close()


async def _applied(
    conn: asyncpg.Connection[asyncpg.Record], store: Store
) -> dict[int, AppliedMigration]:
    return {m.version: m for m in await store.applied_migrations(conn)}


def _refuse_changed_or_unknown(applied: dict[int, AppliedMigration], schema: str) -> None:
    shipped = {m.version: m for m in sql.migrations()}
    for version, row in applied.items():
        known = shipped.get(version)
        if known is None:
            raise SchemaMismatch(
                f"schema {schema!r} has migration {version}, which this version of skiplock "
                "does not know: upgrade skiplock"
            )
        if row.checksum != known.checksum:
            raise SchemaMismatch(
                f"migration {version:04d}_{known.name} applied to schema {schema!r} differs "
                "from the file shipped now (checksum mismatch): migrations are forward-only, "
                "add a new one instead of editing an applied one"
            )


async def check_schema(ex: Executor, *, schema: str = "skiplock") -> int:
    """Raise :class:`SchemaMismatch` unless ``schema`` is exactly at this version's migrations.

    Returns the schema version. The message says what to run.
    """
    store = Store(schema)
    shipped = sql.migrations()
    expected = shipped[-1].version
    if not await store.migrations_table_exists(ex):
        raise SchemaMismatch(
            f"schema {schema!r} is not installed in this database: run `skiplock migrate` "
            "(or `await skiplock.migrate(dsn)`)"
        )
    applied = {m.version: m for m in await store.applied_migrations(ex)}
    _refuse_changed_or_unknown(applied, schema)
    missing = [m for m in shipped if m.version not in applied]
    if missing:
        current = max(applied, default=0)
        raise SchemaMismatch(
            f"schema {schema!r} is at version {current}, this skiplock needs {expected}: "
            "run `skiplock migrate`"
        )
    return expected
