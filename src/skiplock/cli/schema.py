"""``skiplock migrate`` and ``skiplock check``: the schema."""

from __future__ import annotations

import asyncio

import click

from skiplock.cli.common import (
    EXIT_SCHEMA,
    EXIT_USAGE,
    JSON_FAILURES,
    echo_json,
    fail,
    settings_of,
    with_client,
)
from skiplock.queue import (
    DatabaseUnavailable,
    SchemaMismatch,
    check_schema,
    migrate,
)


@click.command("migrate")
@click.option("--json", "as_json", is_flag=True, help='Print {"applied": [versions]}.')
@click.pass_context
def migrate_cmd(ctx: click.Context, as_json: bool) -> None:
    """Apply pending schema migrations (safe to run concurrently)."""
    settings = settings_of(ctx)
    try:
        dsn = settings.require_database_url()
        applied = asyncio.run(migrate(dsn, schema=settings.schema_name))
    except (ValueError, SchemaMismatch) as exc:
        fail(str(exc), EXIT_SCHEMA if isinstance(exc, SchemaMismatch) else EXIT_USAGE)
        return
    except (OSError, DatabaseUnavailable) as exc:
        fail(f"cannot reach the database: {exc}")
        return
    if as_json:
        echo_json({"applied": list(applied)})
    elif applied:
        click.echo(f"applied migrations: {', '.join(str(v) for v in applied)}")
    else:
        click.echo("schema is up to date")


@click.command("check")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"ok": true, "schema_version": N}, or {"ok": false, "error": …, "exit_code": N}.',
)
@click.pass_context
def check_cmd(ctx: click.Context, as_json: bool) -> None:
    """Exit 0 when the database is reachable and the schema current (3: schema, 1: unreachable)."""
    settings = settings_of(ctx)
    ctx.meta[JSON_FAILURES] = as_json
    version = with_client(
        settings, lambda client: check_schema(client.pool, schema=settings.schema_name)
    )
    if as_json:
        echo_json({"ok": True, "schema_version": version})
    else:
        click.echo(f"ok: schema version {version}")
