"""``skiplock purge``: delete old finished jobs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import click
import orjson

from skiplock.cli.common import (
    DURATION,
    settings_of,
    with_store,
)
from skiplock.queue.store import (
    PURGE_CANCELLED_AFTER,
    PURGE_FAILED_AFTER,
    PURGE_SUCCEEDED_AFTER,
)
from skiplock.worker.retention import RetentionPolicy, purge_sweep


def _unsized() -> Iterator[int]:
    """An iterator with no length: a progress bar over it counts instead of showing a percentage."""
    yield from ()


@click.command("purge")
@click.option(
    "--succeeded-after",
    type=DURATION,
    default=PURGE_SUCCEEDED_AFTER,
    show_default="1d",
    help="Delete succeeded jobs finished this long ago (seconds, or 90s/15m/12h/1d/2w; 'never').",
)
@click.option(
    "--failed-after",
    type=DURATION,
    default=PURGE_FAILED_AFTER,
    show_default="7d",
    help="Delete failed jobs finished this long ago.",
)
@click.option(
    "--cancelled-after",
    type=DURATION,
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

    total = with_store(settings_of(ctx), work)
    if as_json:
        click.echo(orjson.dumps({"deleted": total}).decode())
    else:
        click.echo(f"deleted {total} finished jobs")
