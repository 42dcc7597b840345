"""The ``skiplock`` command (also ``python -m skiplock``)."""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any

import click
import orjson

from skiplock.config import Settings
from skiplock.logs import configure_logging
from skiplock.queue import SchemaMismatch, migrate
from skiplock.queue.store import (
    PURGE_CANCELLED_AFTER,
    PURGE_FAILED_AFTER,
    PURGE_SUCCEEDED_AFTER,
)
from skiplock.worker import TaskRegistry, Worker, WorkerSettings

__all__ = ["cli", "main"]

EXIT_USAGE = 2
EXIT_SCHEMA = 3


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"skiplock: {message}", err=True)
    sys.exit(code)


@click.group()
@click.option("--database-url", envvar="SKIPLOCK_DATABASE_URL", help="PostgreSQL DSN.")
@click.option("--schema", envvar="SKIPLOCK_SCHEMA", default="skiplock", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default=None,
    help="Log output (default: JSON unless on a terminal).",
)
@click.option("--log-level", default=None, help="debug, info, warning or error.")
@click.pass_context
def cli(
    ctx: click.Context,
    database_url: str | None,
    schema: str,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """skiplock: durable jobs on PostgreSQL."""
    try:
        overrides: dict[str, Any] = {"SKIPLOCK_SCHEMA": schema}
        if database_url:
            overrides["database_url"] = database_url
        if log_format:
            overrides["log_format"] = log_format
        if log_level:
            overrides["log_level"] = log_level
        settings = Settings(**overrides)
        configure_logging(settings.log_format, settings.log_level)
    except ValueError as exc:
        _fail(str(exc).splitlines()[0] if "\n" not in str(exc) else str(exc), EXIT_USAGE)
    ctx.obj = settings


@cli.command("migrate")
@click.pass_context
def migrate_cmd(ctx: click.Context) -> None:
    """Apply pending schema migrations (safe to run concurrently)."""
    settings = _settings(ctx)
    try:
        dsn = settings.require_database_url()
        applied = asyncio.run(migrate(dsn, schema=settings.schema_name))
    except (ValueError, SchemaMismatch) as exc:
        _fail(str(exc), EXIT_SCHEMA if isinstance(exc, SchemaMismatch) else EXIT_USAGE)
        return
    except OSError as exc:
        _fail(f"cannot reach the database: {exc}")
        return
    if applied:
        click.echo(f"applied migrations: {', '.join(str(v) for v in applied)}")
    else:
        click.echo("schema is up to date")


def load_registry(spec: str) -> TaskRegistry:
    """Import ``module:attribute`` and return the TaskRegistry it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter("expected module:attribute, e.g. myapp.jobs:tasks")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    registry = getattr(module, attr, None)
    if not isinstance(registry, TaskRegistry):
        raise click.BadParameter(f"{spec!r} is not a skiplock TaskRegistry")
    return registry


@cli.command("worker")
@click.option("--app", "app", required=True, help="module:attribute of your TaskRegistry.")
@click.option(
    "--queues", default=None, help="Comma-separated queues (default: SKIPLOCK_QUEUES or 'default')."
)
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=None)
@click.option(
    "--lease", type=click.FloatRange(0.5, min_open=True), default=None, help="Lease seconds."
)
@click.option("--heartbeat", type=click.FloatRange(0, min_open=True), default=None)
@click.option("--poll", type=click.FloatRange(0, min_open=True), default=None)
@click.option("--rescue", type=click.FloatRange(0, min_open=True), default=None)
@click.option("--shutdown-grace", type=click.FloatRange(0), default=None)
@click.option("--worker-id", default=None)
@click.pass_context
def worker_cmd(
    ctx: click.Context,
    app: str,
    queues: str | None,
    concurrency: int | None,
    lease: float | None,
    heartbeat: float | None,
    poll: float | None,
    rescue: float | None,
    shutdown_grace: float | None,
    worker_id: str | None,
) -> None:
    """Run a worker until SIGTERM/SIGINT (drain) or a second signal (stop now)."""
    settings = _settings(ctx)
    sys.path.insert(0, "")
    registry = load_registry(app)
    try:
        dsn = settings.require_database_url()
        ws = WorkerSettings(
            queues=[q.strip() for q in queues.split(",") if q.strip()]
            if queues
            else settings.queues,
            concurrency=concurrency or settings.concurrency,
            lease=lease or settings.lease_seconds,
            heartbeat=heartbeat or settings.heartbeat_seconds,
            poll=poll or settings.poll_seconds,
            rescue=rescue or settings.rescue_seconds,
            shutdown_grace=settings.shutdown_grace_seconds
            if shutdown_grace is None
            else shutdown_grace,
            progress_interval=settings.progress_interval_seconds,
            schema=settings.schema_name,
            worker_id=worker_id,
        )
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
        return
    try:
        asyncio.run(Worker(registry, dsn, ws).run_until_signal())
    except SchemaMismatch as exc:
        _fail(str(exc), EXIT_SCHEMA)
    except OSError as exc:
        _fail(f"cannot reach the database: {exc}")


@cli.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.pass_context
def api_cmd(ctx: click.Context, host: str, port: int) -> None:
    """Serve the status API with uvicorn (settings from SKIPLOCK_* variables)."""
    import uvicorn  # keeps the other commands light

    from skiplock.api import ApiSettings, create_app

    settings = _settings(ctx)
    try:
        api_settings = ApiSettings(
            database_url=settings.require_database_url(), SKIPLOCK_SCHEMA=settings.schema_name
        )
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
        return
    uvicorn.run(create_app(api_settings), host=host, port=port, log_config=None)


@cli.group("apikey")
def apikey_group() -> None:
    """Create, list and revoke status-API keys."""


def _with_store(settings: Settings, work: Any) -> Any:
    async def run() -> Any:
        import asyncpg

        from skiplock.queue import Store, check_schema

        conn = await asyncpg.connect(settings.require_database_url())
        try:
            await check_schema(conn, schema=settings.schema_name)
            return await work(Store(settings.schema_name), conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except SchemaMismatch as exc:
        _fail(str(exc), EXIT_SCHEMA)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot reach the database: {exc}")


@apikey_group.command("create")
@click.option("--tenant", required=True)
@click.option("--scopes", default="read,write", show_default=True, help="read, write, admin")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def apikey_create(ctx: click.Context, tenant: str, scopes: str, name: str, as_json: bool) -> None:
    """Make a key; its secret is printed once and never stored."""
    from skiplock.api.auth import create_api_key

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    made = _with_store(
        _settings(ctx),
        lambda store, conn: create_api_key(
            store, conn, tenant=tenant, scopes=wanted, name=name or f"{tenant} key"
        ),
    )
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "id": str(made.key.id),
                    "tenant": tenant,
                    "scopes": list(made.key.scopes),
                    "secret": made.secret,
                }
            ).decode()
        )
    else:
        click.echo(f"key {made.key.id} for tenant {tenant!r} ({', '.join(made.key.scopes)})")
        click.echo(f"secret (shown once): {made.secret}")


@apikey_group.command("list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def apikey_list(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    keys = _with_store(_settings(ctx), lambda store, conn: store.list_api_keys(conn, tenant))
    rows = [
        {
            "id": str(k.id),
            "name": k.name,
            "tenant": k.tenant,
            "scopes": list(k.scopes),
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in keys
    ]
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    for r in rows:
        status = "revoked" if r["revoked_at"] else "active"
        click.echo(
            f"{r['id']}  {r['tenant']:<20} {','.join(r['scopes']):<18} {status:<8} {r['name']}"
        )


@apikey_group.command("revoke")
@click.argument("key_id")
@click.pass_context
def apikey_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by id (effective within the API's key cache time)."""
    import uuid

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        _fail(f"not a key id: {key_id!r}", EXIT_USAGE)
        return
    key = _with_store(_settings(ctx), lambda store, conn: store.revoke_api_key(conn, parsed))
    if key is None:
        _fail(f"no key {key_id}", 4)
    click.echo(f"revoked {key_id}")


@cli.command("purge")
@click.option(
    "--succeeded-after",
    type=click.FloatRange(0),
    default=PURGE_SUCCEEDED_AFTER,
    show_default=True,
    help="Delete succeeded jobs finished this many seconds ago.",
)
@click.option(
    "--failed-after",
    type=click.FloatRange(0),
    default=PURGE_FAILED_AFTER,
    show_default=True,
    help="Delete failed jobs finished this many seconds ago.",
)
@click.option(
    "--cancelled-after",
    type=click.FloatRange(0),
    default=PURGE_CANCELLED_AFTER,
    show_default=True,
    help="Delete cancelled jobs finished this many seconds ago.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Jobs deleted per statement.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def purge_cmd(
    ctx: click.Context,
    succeeded_after: float,
    failed_after: float,
    cancelled_after: float,
    batch: int,
    as_json: bool,
) -> None:
    """Delete old finished jobs (and finished jobs past expires_at), batch by batch."""

    async def work(store: Any, conn: Any) -> int:
        total = 0
        while True:
            deleted: int = await store.purge_finished(
                conn,
                batch,
                succeeded_after=succeeded_after,
                failed_after=failed_after,
                cancelled_after=cancelled_after,
            )
            total += deleted
            if deleted < batch:
                return total

    total = _with_store(_settings(ctx), work)
    if as_json:
        click.echo(orjson.dumps({"deleted": total}).decode())
    else:
        click.echo(f"deleted {total} finished jobs")


@cli.command("demo")
@click.pass_context
def demo_cmd(ctx: click.Context) -> None:
    """Run sample jobs with live progress (throwaway PostgreSQL unless one is configured)."""
    from skiplock.demo import run_demo  # keeps the other commands light

    settings = _settings(ctx)
    try:
        asyncio.run(run_demo(settings.database_url, click.echo))
    except KeyboardInterrupt:
        click.echo("interrupted; cleaned up", err=True)
        sys.exit(130)


def main() -> None:
    """Entry point of the ``skiplock`` script."""
    cli(prog_name="skiplock")


if __name__ == "__main__":
    main()
