"""``skiplock api``: serve the status API."""

from __future__ import annotations

import click

from skiplock.cli.common import (
    EXIT_USAGE,
    fail,
    settings_of,
)


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.pass_context
def api_cmd(ctx: click.Context, host: str, port: int) -> None:
    """Serve the status API with uvicorn (settings from SKIPLOCK_* variables)."""
    import uvicorn  # keeps the other commands light

    from skiplock.api import ApiSettings, create_app

    settings = settings_of(ctx)
    try:
        api_settings = ApiSettings(
            database_url=settings.require_database_url(), SKIPLOCK_SCHEMA=settings.schema_name
        )
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
        return
    uvicorn.run(create_app(api_settings), host=host, port=port, log_config=None)
