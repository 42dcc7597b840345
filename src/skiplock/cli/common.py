"""What every command shares: exit codes, settings, error mapping, JSON output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import orjson

from skiplock.config import Settings
from skiplock.queue import (
    Client,
    DatabaseUnavailable,
    IdempotencyConflict,
    Job,
    JobNotFound,
    JobStateConflict,
    ScheduleNotFound,
    SchemaMismatch,
    check_schema,
)
from skiplock.queue.document import job_document
from skiplock.worker.retention import parse_duration

__all__ = [
    "DURATION",
    "ENQUEUE_CHUNK",
    "EXIT_CONFLICT",
    "EXIT_NOT_FOUND",
    "EXIT_SCHEMA",
    "EXIT_USAGE",
    "EXPIRY",
    "JSON_FAILURES",
    "STATS_WINDOW_SECONDS",
    "echo_json",
    "fail",
    "job_json",
    "leaves",
    "run_cli",
    "settings_of",
    "table",
    "ts",
    "with_client",
    "with_store",
]

EXIT_USAGE = 2
EXIT_SCHEMA = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5

ENQUEUE_CHUNK = 1000
STATS_WINDOW_SECONDS = 3600.0

_T = TypeVar("_T")


def settings_of(ctx: click.Context) -> Settings:
    """The Settings the ``skiplock`` group put on the click context."""
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


JSON_FAILURES = "skiplock.json_failures"
"""Key of ``click.Context.meta``: when true, :func:`fail` also prints the failure as JSON."""


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``skiplock: message`` on stderr and exit with ``code``.

    A command that promises JSON even on failure (``check --json``) sets
    ``ctx.meta[JSON_FAILURES]``: then ``{"ok": false, "error": …, "exit_code": …}``
    goes to stdout as well.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(JSON_FAILURES):
        click.echo(orjson.dumps({"ok": False, "error": message, "exit_code": code}).decode())
    click.echo(f"skiplock: {message}", err=True)
    sys.exit(code)


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


DURATION = _Duration()


if TYPE_CHECKING:
    _ExpiryBase = click.ParamType[datetime | None]
else:
    _ExpiryBase = click.ParamType


class _Expiry(_ExpiryBase):
    """A moment in the future: a duration from now (30d, 12h, 1d12h, seconds) or an ISO-8601 time.

    An ISO-8601 time without an offset is UTC. 'never' gives None (no expiry).
    """

    name = "expiry"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        text = str(value).strip()
        now = datetime.now(UTC)
        try:
            seconds = parse_duration(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                self.fail(
                    f"{text!r} is neither a duration (30d, 12h, 1d12h, 3600) nor an ISO-8601"
                    " time (2030-01-31T12:00:00Z)",
                    param,
                    ctx,
                )
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
        else:
            if seconds is None:
                return None
            if seconds <= 0:
                self.fail(f"{text!r}: the duration must be more than zero", param, ctx)
            try:
                moment = now + timedelta(seconds=seconds)
            except OverflowError:
                self.fail(f"{text!r} is too far in the future", param, ctx)
        if moment <= now:
            self.fail(f"{text!r} is in the past ({moment.isoformat()})", param, ctx)
        return moment


EXPIRY = _Expiry()


def run_cli(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run one CLI coroutine and turn the errors scripts care about into exit codes."""
    try:
        return asyncio.run(coro)
    except SchemaMismatch as exc:
        fail(str(exc), EXIT_SCHEMA)
    except (JobNotFound, ScheduleNotFound) as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except (JobStateConflict, IdempotencyConflict) as exc:
        fail(str(exc), EXIT_CONFLICT)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except (OSError, DatabaseUnavailable) as exc:
        fail(f"cannot reach the database: {exc}")


def with_store(settings: Settings, work: Any) -> Any:
    """Run ``work(store, conn)`` on one connection after the schema check; errors → exit codes."""

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

    return run_cli(run())


def with_client(settings: Settings, work: Callable[[Client], Awaitable[_T]]) -> _T:
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

    return run_cli(run())


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Print ``rows`` under ``header`` in aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def ts(value: datetime | None) -> str | None:
    """ISO 8601, or None."""
    return None if value is None else value.isoformat()


def job_json(job: Job) -> dict[str, Any]:
    """A job as a JSON-ready dict: the operator form of the one job document
    (:func:`skiplock.queue.document.job_document`), error history with tracebacks."""
    return job_document(job, now=datetime.now(UTC), operator=True)


def echo_json(value: Any) -> None:
    """Print ``value`` as one line of JSON."""
    click.echo(orjson.dumps(value).decode())


def leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    """The exceptions inside a (nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from leaves(exc)
        else:
            yield exc
