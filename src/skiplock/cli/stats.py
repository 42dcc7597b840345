"""``skiplock stats``: counts and the last hour's outcomes."""

from __future__ import annotations

from typing import Any

import click

from skiplock.cli.common import (
    STATS_WINDOW_SECONDS,
    echo_json,
    settings_of,
    with_client,
)
from skiplock.queue import (
    Client,
)


@click.command("stats")
@click.option("--tenant", default=None, help="Default: every tenant.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats_cmd(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Job counts by queue, task and state, and the last hour's outcomes and timings."""

    async def work(client: Client) -> tuple[list[Any], list[Any]]:
        counts = await client.store.job_counts(client.pool, tenant)
        window = await client.store.job_window_stats(client.pool, tenant, STATS_WINDOW_SECONDS)
        return counts, window

    counts, window = with_client(settings_of(ctx), work)
    if as_json:
        echo_json(
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
