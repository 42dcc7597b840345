"""``skiplock demo``: worker, API and sample jobs in one process."""

from __future__ import annotations

import asyncio
import sys

import click

from skiplock.cli.common import (
    EXIT_SCHEMA,
    fail,
    leaves,
    settings_of,
)
from skiplock.logs import configure_logging
from skiplock.queue import (
    SchemaMismatch,
)


@click.command("demo")
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

    from skiplock.demo import demo_log_level, live_display, run_demo  # keeps the others light

    settings = settings_of(ctx)
    parent = ctx.parent.params if ctx.parent is not None else {}
    live = live_display(sys.stdout)
    if parent.get("log_level") is None and "SKIPLOCK_LOG_LEVEL" not in os.environ:
        configure_logging(settings.log_format, demo_log_level(live))
    try:
        asyncio.run(
            run_demo(
                settings.database_url,
                click.echo,
                host=host,
                port=port,
                exit_after=exit_after,
                schema=settings.schema_name,
                live=live,
            )
        )
    except KeyboardInterrupt:  # before the demo's own signal handling was in place
        click.echo("interrupted; cleaned up", err=True)
        sys.exit(130)
    except SchemaMismatch as exc:
        fail(str(exc), EXIT_SCHEMA)
    except (OSError, RuntimeError, ValueError) as exc:
        fail(f"demo failed: {exc}")
    except ExceptionGroup as group:
        messages = [str(e) or type(e).__name__ for e in leaves(group)]
        fail("demo failed: " + "; ".join(messages))
