"""The ``skiplock`` command group: global options, and every command registered."""

from __future__ import annotations

from typing import Any

import click

from skiplock.cli.api import api_cmd
from skiplock.cli.apikey import apikey_group
from skiplock.cli.common import (
    EXIT_USAGE,
    fail,
)
from skiplock.cli.demo import demo_cmd
from skiplock.cli.enqueue import enqueue_cmd
from skiplock.cli.flow import limits_group, queues_group
from skiplock.cli.jobs import jobs_group
from skiplock.cli.purge import purge_cmd
from skiplock.cli.schedules import schedules_group
from skiplock.cli.schema import check_cmd, migrate_cmd
from skiplock.cli.stats import stats_cmd
from skiplock.cli.worker import worker_cmd
from skiplock.config import Settings
from skiplock.logs import configure_logging


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
        fail(str(exc).splitlines()[0] if "\n" not in str(exc) else str(exc), EXIT_USAGE)
    ctx.obj = settings


for _command in (
    migrate_cmd,
    check_cmd,
    worker_cmd,
    api_cmd,
    apikey_group,
    enqueue_cmd,
    jobs_group,
    stats_cmd,
    purge_cmd,
    limits_group,
    queues_group,
    schedules_group,
    demo_cmd,
):
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``skiplock`` script."""
    cli(prog_name="skiplock")
