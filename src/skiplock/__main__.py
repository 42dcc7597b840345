"""The ``skiplock`` command (also ``python -m skiplock``)."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import orjson

from skiplock.config import Settings
from skiplock.logs import configure_logging
from skiplock.queue import (
    Client,
    IdempotencyConflict,
    InvalidJob,
    Job,
    JobNotFound,
    JobSpec,
    JobState,
    JobStateConflict,
    SchemaMismatch,
    check_schema,
    migrate,
)
from skiplock.queue.store import (
    PURGE_CANCELLED_AFTER,
    PURGE_FAILED_AFTER,
    PURGE_SUCCEEDED_AFTER,
)
from skiplock.worker import TaskRegistry, Worker, WorkerSettings
from skiplock.worker.retention import RetentionPolicy, parse_duration, purge_sweep

__all__ = ["cli", "main"]

EXIT_USAGE = 2
EXIT_SCHEMA = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5

ENQUEUE_CHUNK = 1000
STATS_WINDOW_SECONDS = 3600.0

_T = TypeVar("_T")


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def _fail(message: str, code: int = 1) -> NoReturn:
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


if TYPE_CHECKING:
    _DurationBase = click.ParamType[float | None]
else:  # ParamType is generic from click 8.3 on; older versions cannot subscript it
    _DurationBase = click.ParamType


class _Duration(_DurationBase):
    """Seconds, or a number with a unit (90s, 15m, 12h, 1d, 2w, 1d12h); 'never' gives None."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration(str(value))  # defaults arrive as numbers of seconds
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_DURATION = _Duration()


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
@click.option(
    "--probe-port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="SKIPLOCK_PROBE_PORT",
    help="Serve /livez, /readyz and /metrics on this port (default: no probe server).",
)
@click.option(
    "--probe-host",
    default="0.0.0.0",  # noqa: S104 (the kubelet and Prometheus connect from outside the pod)
    show_default=True,
    envvar="SKIPLOCK_PROBE_HOST",
    help="Address the probe server listens on.",
)
@click.option(
    "--probe-file",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="SKIPLOCK_PROBE_FILE",
    help="Rewrite this file every few seconds while live, for exec probes; removed on exit.",
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    envvar="SKIPLOCK_WORKER_METRICS",
    help="Serve Prometheus metrics at /metrics on the probe port.",
)
@click.option(
    "--async-commit/--sync-commit",
    default=False,
    show_default=True,
    envvar="SKIPLOCK_ASYNC_COMMIT",
    help="The worker's own writes skip waiting for the WAL flush (a PostgreSQL crash "
    "may re-run the jobs of its last few hundred ms).",
)
@click.option(
    "--retention/--no-retention",
    default=True,
    show_default=True,
    envvar="SKIPLOCK_RETENTION",
    help="Delete old finished jobs from this worker (its role needs DELETE on the jobs table).",
)
@click.option(
    "--retain-succeeded",
    type=_DURATION,
    default=PURGE_SUCCEEDED_AFTER,
    show_default="1d",
    envvar="SKIPLOCK_RETAIN_SUCCEEDED",
    help="Keep succeeded jobs this long (seconds, or 90s/15m/12h/1d/2w; 'never').",
)
@click.option(
    "--retain-failed",
    type=_DURATION,
    default=PURGE_FAILED_AFTER,
    show_default="7d",
    envvar="SKIPLOCK_RETAIN_FAILED",
    help="Keep failed jobs this long.",
)
@click.option(
    "--retain-cancelled",
    type=_DURATION,
    default=PURGE_CANCELLED_AFTER,
    show_default="7d",
    envvar="SKIPLOCK_RETAIN_CANCELLED",
    help="Keep cancelled jobs this long.",
)
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
    probe_port: int | None,
    probe_host: str,
    probe_file: str | None,
    metrics: bool,
    async_commit: bool,
    retention: bool,
    retain_succeeded: float | None,
    retain_failed: float | None,
    retain_cancelled: float | None,
) -> None:
    """Run a worker until SIGTERM/SIGINT (drain) or a second signal (stop now)."""
    settings = _settings(ctx)
    sys.path.insert(0, "")
    registry = load_registry(app)
    try:
        dsn = settings.require_database_url()
        base: dict[str, Any] = {
            "queues": [q.strip() for q in queues.split(",") if q.strip()]
            if queues
            else settings.queues,
            "concurrency": concurrency or settings.concurrency,
            "lease": lease or settings.lease_seconds,
            "heartbeat": heartbeat or settings.heartbeat_seconds,
            "poll": poll or settings.poll_seconds,
            "rescue": rescue or settings.rescue_seconds,
            "shutdown_grace": settings.shutdown_grace_seconds
            if shutdown_grace is None
            else shutdown_grace,
            "progress_interval": settings.progress_interval_seconds,
            "schema": settings.schema_name,
            "worker_id": worker_id,
            "statement_cache_size": settings.statement_cache_size,
            "listen_url": settings.listen_url,
        }
        policy = (
            RetentionPolicy(
                succeeded_after=retain_succeeded,
                failed_after=retain_failed,
                cancelled_after=retain_cancelled,
            )
            if retention
            else None
        )
        ws = WorkerSettings(
            **base,
            probe_port=probe_port,
            probe_host=probe_host,
            probe_file=probe_file,
            metrics=metrics,
            retention=policy,
            async_commit=async_commit,
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
    except BaseExceptionGroup as group:
        # From the worker's task group: a probe port in use, a probe file it cannot write,
        # settings the server refuses (async_commit through PgBouncer).
        matched, rest = group.split((OSError, ValueError))
        if matched is None or rest is not None:
            raise
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        _fail(f"cannot start the worker: {leaf}")


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


def _run_cli(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run one CLI coroutine and turn the errors scripts care about into exit codes."""
    try:
        return asyncio.run(coro)
    except SchemaMismatch as exc:
        _fail(str(exc), EXIT_SCHEMA)
    except JobNotFound as exc:
        _fail(str(exc), EXIT_NOT_FOUND)
    except (JobStateConflict, IdempotencyConflict) as exc:
        _fail(str(exc), EXIT_CONFLICT)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot reach the database: {exc}")


def _with_store(settings: Settings, work: Any) -> Any:
    async def run() -> Any:
        import asyncpg

        from skiplock.queue import Store

        conn = await asyncpg.connect(
            settings.require_database_url(), statement_cache_size=settings.statement_cache_size
        )
        try:
            await check_schema(conn, schema=settings.schema_name)
            return await work(Store(settings.schema_name), conn)
        finally:
            await conn.close()

    return _run_cli(run())


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


def _unsized() -> Iterator[int]:
    """An iterator with no length: a progress bar over it counts instead of showing a percentage."""
    yield from ()


@cli.command("purge")
@click.option(
    "--succeeded-after",
    type=_DURATION,
    default=PURGE_SUCCEEDED_AFTER,
    show_default="1d",
    help="Delete succeeded jobs finished this long ago (seconds, or 90s/15m/12h/1d/2w; 'never').",
)
@click.option(
    "--failed-after",
    type=_DURATION,
    default=PURGE_FAILED_AFTER,
    show_default="7d",
    help="Delete failed jobs finished this long ago.",
)
@click.option(
    "--cancelled-after",
    type=_DURATION,
    default=PURGE_CANCELLED_AFTER,
    show_default="7d",
    help="Delete cancelled jobs finished this long ago.",
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
    succeeded_after: float | None,
    failed_after: float | None,
    cancelled_after: float | None,
    batch: int,
    as_json: bool,
) -> None:
    """Delete old finished jobs (and finished jobs past expires_at), batch by batch."""
    # The workers' retention sweep, run once: no pause between batches, a generous
    # statement limit since --batch may be large.
    policy = RetentionPolicy(
        succeeded_after=succeeded_after,
        failed_after=failed_after,
        cancelled_after=cancelled_after,
        batch_size=batch,
        batch_pause=0.0,
        timeout=600.0,
    )

    async def work(store: Any, conn: Any) -> int:
        if as_json:
            return await purge_sweep(conn, store, policy)
        with click.progressbar(_unsized(), label="purging", show_pos=True, file=sys.stderr) as bar:
            return await purge_sweep(conn, store, policy, on_deleted=bar.update)

    total = _with_store(_settings(ctx), work)
    if as_json:
        click.echo(orjson.dumps({"deleted": total}).decode())
    else:
        click.echo(f"deleted {total} finished jobs")


def _with_client(settings: Settings, work: Callable[[Client], Awaitable[_T]]) -> _T:
    """Run ``work(client)`` on a small pool after the schema check; map errors to exit codes."""

    async def run() -> _T:
        import asyncpg

        dsn = settings.require_database_url()
        try:
            client = await Client.connect(
                dsn,
                schema=settings.schema_name,
                max_size=2,
                statement_cache_size=settings.statement_cache_size,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise OSError(str(exc)) from exc
        try:
            await check_schema(client.pool, schema=settings.schema_name)
            return await work(client)
        finally:
            await client.close()

    return _run_cli(run())


def _ts(value: datetime | None) -> str | None:
    """ISO 8601, or None."""
    return None if value is None else value.isoformat()


def _job_json(job: Job) -> dict[str, Any]:
    """A job as a JSON-ready dict, error history included (the CLI is for operators)."""
    return {
        "id": str(job.id),
        "task": job.task,
        "queue": job.queue,
        "tenant": job.tenant,
        "state": job.state.value,
        "args": job.args,
        "meta": job.meta,
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "idempotency_key": job.idempotency_key,
        "progress": job.progress,
        "message": job.progress_message,
        "eta": _ts(job.eta),
        "result": job.result,
        "cancel_requested": job.cancel_requested,
        "worker_id": job.worker_id,
        "errors": [
            {
                "type": e.type,
                "message": e.message,
                "attempt": e.attempt,
                "worker": e.worker,
                "at": e.at,
                "traceback": e.traceback,
            }
            for e in job.errors
        ],
        "run_at": _ts(job.run_at),
        "created_at": _ts(job.created_at),
        "updated_at": _ts(job.updated_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
    }


def _echo_json(value: Any) -> None:
    """Print ``value`` as one line of JSON."""
    click.echo(orjson.dumps(value).decode())


def _parse_object(text: str | None, what: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line; exit 2 on anything else."""
    if text is None:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        _fail(f"{what} is not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(value, dict):
        _fail(f"{what} must be a JSON object", EXIT_USAGE)
    return value


_SPEC_KEYS = frozenset(
    {
        "task",
        "args",
        "queue",
        "priority",
        "delay",
        "max_attempts",
        "tenant",
        "idempotency_key",
        "meta",
    }
)


def _spec_from_line(line: str) -> JobSpec:
    """One JSONL line → JobSpec; ValueError (with the reason) on bad input."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(unknown)}")
    if "task" not in data:
        raise ValueError("missing 'task'")
    for key in ("args", "meta"):
        if data.get(key) is None:
            data.pop(key, None)
    return JobSpec(**data)


def _read_specs(path: str) -> list[JobSpec]:
    """Every job of a JSONL file (blank lines skipped); exit 2 at the first bad line."""
    specs: list[JobSpec] = []
    with click.open_file(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                specs.append(_spec_from_line(line))
            except (ValueError, TypeError) as exc:
                _fail(f"{path}:{number}: {exc}", EXIT_USAGE)
    return specs


def _chunks(specs: list[JobSpec], size: int) -> Iterator[list[JobSpec]]:
    """Consecutive slices of at most ``size``."""
    for start in range(0, len(specs), size):
        yield specs[start : start + size]


@cli.command("enqueue")
@click.argument("task", required=False)
@click.option("--args", "args_json", default=None, help="Arguments, a JSON object.")
@click.option("--queue", default="default", show_default=True)
@click.option("--priority", type=int, default=0, show_default=True, help="Smaller runs first.")
@click.option("--delay", type=click.FloatRange(0), default=None, help="Run after SECONDS.")
@click.option("--max-attempts", type=int, default=3, show_default=True)
@click.option("--tenant", default="default", show_default=True)
@click.option("--idempotency-key", default=None)
@click.option("--meta", "meta_json", default=None, help="Labels, a JSON object.")
@click.option(
    "--file",
    "file_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Bulk: a JSONL file, one job object per line ('-' for stdin).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def enqueue_cmd(
    ctx: click.Context,
    task: str | None,
    args_json: str | None,
    queue: str,
    priority: int,
    delay: float | None,
    max_attempts: int,
    tenant: str,
    idempotency_key: str | None,
    meta_json: str | None,
    file_path: str | None,
    as_json: bool,
) -> None:
    """Enqueue one job (TASK) or, with --file, every job of a JSONL file (all or none)."""
    settings = _settings(ctx)
    if (task is None) == (file_path is None):
        _fail("give a TASK or --file, not both", EXIT_USAGE)
    if file_path is not None:
        specs = _read_specs(file_path)
        _enqueue_file(settings, specs, as_json)
        return
    assert task is not None
    try:
        spec = JobSpec(
            task=task,
            args=_parse_object(args_json, "--args"),
            queue=queue,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            tenant=tenant,
            idempotency_key=idempotency_key,
            meta=_parse_object(meta_json, "--meta"),
        )
    except InvalidJob as exc:
        _fail(str(exc), EXIT_USAGE)

    async def work(client: Client) -> Job:
        (job,) = await client.enqueue_many([spec])
        return job

    job = _with_client(settings, work)
    if as_json:
        _echo_json(_job_json(job))
    else:
        click.echo(f"{job.id}  {job.task}  {job.state.value}  run_at {job.run_at.isoformat()}")


def _enqueue_file(settings: Settings, specs: list[JobSpec], as_json: bool) -> None:
    """Enqueue ``specs`` in one transaction, in chunks, with a progress bar unless --json."""

    async def work(client: Client) -> list[Job]:
        done: list[Job] = []
        async with client.pool.acquire() as conn, conn.transaction():
            if as_json:
                for chunk in _chunks(specs, ENQUEUE_CHUNK):
                    done.extend(await client.enqueue_many(chunk, connection=conn))
                return done
            with click.progressbar(length=len(specs), label="enqueueing", file=sys.stderr) as bar:
                for chunk in _chunks(specs, ENQUEUE_CHUNK):
                    done.extend(await client.enqueue_many(chunk, connection=conn))
                    bar.update(len(chunk))
        return done

    jobs = _with_client(settings, work) if specs else []
    if as_json:
        _echo_json({"enqueued": len(jobs), "ids": [str(j.id) for j in jobs]})
    else:
        click.echo(f"enqueued {len(jobs)} jobs")


@cli.group("jobs")
def jobs_group() -> None:
    """List, show, cancel and retry jobs."""


def _progress(job: Job) -> str:
    """Progress as a percentage, or '-'."""
    return "-" if job.progress is None else f"{job.progress:.0f}%"


@jobs_group.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in JobState]),
    help="Repeat for several states.",
)
@click.option("--task", default=None)
@click.option("--queue", default=None)
@click.option("--tenant", default=None, help="Default: every tenant.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_list(
    ctx: click.Context,
    states: tuple[str, ...],
    task: str | None,
    queue: str | None,
    tenant: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Jobs newest first, a page at a time."""
    page = _with_client(
        _settings(ctx),
        lambda client: client.list(
            tenant=tenant,
            states=list(states) or None,
            task=task,
            queue=queue,
            cursor=cursor,
            limit=limit,
        ),
    )
    if as_json:
        _echo_json({"jobs": [_job_json(j) for j in page.jobs], "next_cursor": page.next_cursor})
        return
    header = ("id", "task", "queue", "state", "progress", "attempt", "created")
    rows = [
        (
            str(j.id),
            j.task,
            j.queue,
            j.state.value,
            _progress(j),
            f"{j.attempt}/{j.max_attempts}",
            j.created_at.strftime("%Y-%m-%d %H:%M:%S%z"),
        )
        for j in page.jobs
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


async def _get_job(client: Client, job_id: str) -> Job:
    """The job, or JobNotFound."""
    job = await client.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


@jobs_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """One job, with its arguments, result and error history."""
    job = _with_client(_settings(ctx), lambda client: _get_job(client, job_id))
    doc = _job_json(job)
    if as_json:
        _echo_json(doc)
        return
    errors = doc.pop("errors")
    for key, value in doc.items():
        shown = orjson.dumps(value).decode() if isinstance(value, dict | list) else value
        click.echo(f"{key + ':':<17} {'-' if shown is None else shown}")
    for error in errors:
        click.echo(f"error (attempt {error['attempt']}): {error['type']}: {error['message']}")


@jobs_group.command("cancel")
@click.argument("job_id")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a queued job, or ask a running one's worker to stop it."""
    job = _with_client(_settings(ctx), lambda client: client.cancel(job_id))
    if job.state is JobState.RUNNING:
        click.echo(f"cancel requested for running job {job.id}")
    elif job.state is JobState.CANCELLED:
        click.echo(f"cancelled {job.id}")
    else:
        click.echo(f"job {job.id} already ended: {job.state.value}")


@jobs_group.command("retry")
@click.argument("job_id")
@click.pass_context
def jobs_retry(ctx: click.Context, job_id: str) -> None:
    """Put a failed or cancelled job back in the queue, due now."""
    job = _with_client(_settings(ctx), lambda client: client.retry(job_id))
    click.echo(f"retried {job.id}: {job.state.value}")


@cli.command("stats")
@click.option("--tenant", default=None, help="Default: every tenant.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats_cmd(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Job counts by queue, task and state, and the last hour's outcomes and timings."""

    async def work(client: Client) -> tuple[list[Any], list[Any]]:
        counts = await client.store.job_counts(client.pool, tenant)
        window = await client.store.job_window_stats(client.pool, tenant, STATS_WINDOW_SECONDS)
        return counts, window

    counts, window = _with_client(_settings(ctx), work)
    if as_json:
        _echo_json(
            {
                "counts": [
                    {"queue": c.queue, "task": c.task, "state": c.state.value, "count": c.count}
                    for c in counts
                ],
                "window_seconds": STATS_WINDOW_SECONDS,
                "window": [
                    {
                        "task": w.task,
                        "succeeded": w.succeeded,
                        "failed": w.failed,
                        "cancelled": w.cancelled,
                        "wait_p50": w.wait_p50,
                        "wait_p95": w.wait_p95,
                        "run_p50": w.run_p50,
                        "run_p95": w.run_p95,
                    }
                    for w in window
                ],
            }
        )
        return

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}s"

    click.echo(f"{'queue':<16} {'task':<32} {'state':<10} {'count':>8}")
    for c in counts:
        click.echo(f"{c.queue:<16} {c.task:<32} {c.state.value:<10} {c.count:>8}")
    click.echo("")
    click.echo("last hour:")
    click.echo(
        f"{'task':<32} {'ok':>6} {'failed':>6} {'cancel':>6}"
        f" {'wait p50':>9} {'wait p95':>9} {'run p50':>9} {'run p95':>9}"
    )
    for w in window:
        click.echo(
            f"{w.task:<32} {w.succeeded:>6} {w.failed:>6} {w.cancelled:>6}"
            f" {secs(w.wait_p50):>9} {secs(w.wait_p95):>9}"
            f" {secs(w.run_p50):>9} {secs(w.run_p95):>9}"
        )


@cli.command("check")
@click.pass_context
def check_cmd(ctx: click.Context) -> None:
    """Exit 0 when the database is reachable and the schema current (3: schema, 1: unreachable)."""
    settings = _settings(ctx)
    version = _with_client(
        settings, lambda client: check_schema(client.pool, schema=settings.schema_name)
    )
    click.echo(f"ok: schema version {version}")


@cli.command("demo")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API listens on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="API port (0: any free port; a taken port falls back to a free one).",
)
@click.option(
    "--exit-after",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop by itself after SECONDS, as on Ctrl-C (default: run until interrupted).",
)
@click.pass_context
def demo_cmd(ctx: click.Context, host: str, port: int, exit_after: float | None) -> None:
    """A worker, the status API with its dashboard, and sample jobs with live progress.

    Uses a throwaway PostgreSQL unless SKIPLOCK_DATABASE_URL is set. Prints the
    dashboard URL (with a demo API key) and curl lines; Ctrl-C or SIGTERM stops
    everything and removes what it made.
    """
    import os

    from skiplock.demo import run_demo  # keeps the other commands light

    settings = _settings(ctx)
    parent = ctx.parent.params if ctx.parent is not None else {}
    if parent.get("log_level") is None and "SKIPLOCK_LOG_LEVEL" not in os.environ:
        # The demo's own lines are the show: only warnings and errors from the log.
        configure_logging(settings.log_format, "warning")
    try:
        asyncio.run(
            run_demo(
                settings.database_url,
                click.echo,
                host=host,
                port=port,
                exit_after=exit_after,
                schema=settings.schema_name,
            )
        )
    except KeyboardInterrupt:  # before the demo's own signal handling was in place
        click.echo("interrupted; cleaned up", err=True)
        sys.exit(130)
    except SchemaMismatch as exc:
        _fail(str(exc), EXIT_SCHEMA)
    except (OSError, RuntimeError, ValueError) as exc:
        _fail(f"demo failed: {exc}")
    except ExceptionGroup as group:
        leaves = [str(e) or type(e).__name__ for e in _leaves(group)]
        _fail("demo failed: " + "; ".join(leaves))


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    """The exceptions inside a (nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def main() -> None:
    """Entry point of the ``skiplock`` script."""
    cli(prog_name="skiplock")


if __name__ == "__main__":
    main()
