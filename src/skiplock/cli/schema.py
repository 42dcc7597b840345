"""``skiplock migrate`` and ``skiplock check``: the schema."""

from __future__ import annotations

import asyncio

import click

from skiplock.cli.common import (
    EXIT_SCHEMA,
    EXIT_USAGE,
    fail,
    settings_of,
    with_client,
)
from skiplock.queue import (
    SchemaMismatch,
    check_schema,
    migrate,
)


@click.command("migrate")
@click.pass_context
def migrate_cmd(ctx: click.Context) -> None:
    """Apply pending schema migrations (safe to run concurrently)."""
    settings = settings_of(ctx)
    try:
        dsn = settings.require_database_url()
        applied = asyncio.run(migrate(dsn, schema=settings.schema_name))
    except (ValueError, SchemaMismatch) as exc:
        fail(str(exc), EXIT_SCHEMA if isinstance(exc, SchemaMismatch) else EXIT_USAGE)
        return
    except OSError as exc:
        fail(f"cannot reach the database: {exc}")
        return
    if applied:
        click.echo(f"applied migrations: {', '.join(str(v) for v in applied)}")
    else:
        click.echo("schema is up to date")


@click.command("check")
@click.pass_context
def check_cmd(ctx: click.Context) -> None:
    """Exit 0 when the database is reachable and the schema current (3: schema, 1: unreachable)."""
    settings = settings_of(ctx)
    version = with_client(
        settings, lambda client: check_schema(client.pool, schema=settings.schema_name)
    )
    click.echo(f"ok: schema version {version}")
