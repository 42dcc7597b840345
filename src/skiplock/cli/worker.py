"""``skiplock worker``: run the tasks of a TaskRegistry."""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any

import click

from skiplock.cli.common import (
    DURATION,
    EXIT_SCHEMA,
    EXIT_USAGE,
    fail,
    settings_of,
)
from skiplock.queue import (
    DatabaseUnavailable,
    SchemaMismatch,
)
from skiplock.queue.store import (
    PURGE_CANCELLED_AFTER,
    PURGE_FAILED_AFTER,
    PURGE_SUCCEEDED_AFTER,
)
from skiplock.worker import TaskRegistry, Worker, WorkerSettings
from skiplock.worker.retention import RetentionPolicy


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


@click.command("worker")
@click.option("--app", "app", required=True, help="module:attribute of your TaskRegistry.")
@click.option(
    "--queues", default=None, help="Comma-separated queues (default: SKIPLOCK_QUEUES or 'default')."
)
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=None)
@click.option(
    "--max-leases",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Most leases held at once: claimed ahead, running, or awaiting their outcome "
    "write (default: SKIPLOCK_MAX_LEASES, else max(4 x concurrency, 1000)).",
)
@click.option(
    "--lease", type=click.FloatRange(0.5, min_open=True), default=None, help="Lease seconds."
)
@click.option("--heartbeat", type=click.FloatRange(0, min_open=True), default=None)
@click.option("--poll", type=click.FloatRange(0, min_open=True), default=None)
@click.option("--rescue", type=click.FloatRange(0, min_open=True), default=None)
@click.option(
    "--schedule-poll",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Seconds between looks for due ticks of periodic jobs "
    "(default: SKIPLOCK_SCHEDULE_POLL_SECONDS, else 1).",
)
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
    type=DURATION,
    default=PURGE_SUCCEEDED_AFTER,
    show_default="1d",
    envvar="SKIPLOCK_RETAIN_SUCCEEDED",
    help="Keep succeeded jobs this long (seconds, or 90s/15m/12h/1d/2w; 'never').",
)
@click.option(
    "--retain-failed",
    type=DURATION,
    default=PURGE_FAILED_AFTER,
    show_default="7d",
    envvar="SKIPLOCK_RETAIN_FAILED",
    help="Keep failed jobs this long.",
)
@click.option(
    "--retain-cancelled",
    type=DURATION,
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
    max_leases: int | None,
    lease: float | None,
    heartbeat: float | None,
    poll: float | None,
    rescue: float | None,
    schedule_poll: float | None,
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
    settings = settings_of(ctx)
    sys.path.insert(0, "")
    registry = load_registry(app)
    try:
        dsn = settings.require_database_url()
        base: dict[str, Any] = {
            "queues": [q.strip() for q in queues.split(",") if q.strip()]
            if queues
            else settings.queues,
            "concurrency": concurrency or settings.concurrency,
            "max_leases": max_leases or settings.max_leases,
            "lease": lease or settings.lease_seconds,
            "heartbeat": heartbeat or settings.heartbeat_seconds,
            "poll": poll or settings.poll_seconds,
            "rescue": rescue or settings.rescue_seconds,
            "schedule_poll": schedule_poll or settings.schedule_poll_seconds,
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
        fail(str(exc), EXIT_USAGE)
        return
    try:
        asyncio.run(Worker(registry, dsn, ws).run_until_signal())
    except SchemaMismatch as exc:
        fail(str(exc), EXIT_SCHEMA)
    except (OSError, DatabaseUnavailable) as exc:
        fail(f"cannot reach the database: {exc}")
    except BaseExceptionGroup as group:
        # From the worker's task group: a probe port in use, a probe file it cannot write,
        # settings the server refuses (async_commit through PgBouncer).
        matched, rest = group.split((OSError, ValueError))
        if matched is None or rest is not None:
            raise
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        fail(f"cannot start the worker: {leaf}")
