"""``skiplock jobs list|show|cancel|retry``."""

from __future__ import annotations

import click
import orjson

from skiplock.cli.common import (
    echo_json,
    job_json,
    settings_of,
    with_client,
)
from skiplock.queue import (
    ALL_TENANTS,
    Client,
    Job,
    JobNotFound,
    JobState,
)


@click.group("jobs")
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
    page = with_client(
        settings_of(ctx),
        lambda client: client.list(
            tenant=ALL_TENANTS if tenant is None else tenant,
            states=list(states) or None,
            task=task,
            queue=queue,
            cursor=cursor,
            limit=limit,
        ),
    )
    if as_json:
        echo_json({"jobs": [job_json(j) for j in page.jobs], "next_cursor": page.next_cursor})
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
    job = await client.get(job_id, tenant=ALL_TENANTS)
    if job is None:
        raise JobNotFound(job_id)
    return job


@jobs_group.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """One job, with its arguments, result and error history."""
    job = with_client(settings_of(ctx), lambda client: _get_job(client, job_id))
    doc = job_json(job)
    if as_json:
        echo_json(doc)
        return
    errors = doc.pop("errors")
    for key, value in doc.items():
        shown = orjson.dumps(value).decode() if isinstance(value, dict | list) else value
        click.echo(f"{key + ':':<17} {'-' if shown is None else shown}")
    for error in errors:
        click.echo(f"error (attempt {error['attempt']}): {error['type']}: {error['message']}")


@jobs_group.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as `jobs show --json` does.")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a queued job, or ask a running one's worker to stop it."""
    job = with_client(settings_of(ctx), lambda client: client.cancel(job_id, tenant=ALL_TENANTS))
    if as_json:
        echo_json(job_json(job))
    elif job.state is JobState.RUNNING:
        click.echo(f"cancel requested for running job {job.id}")
    elif job.state is JobState.CANCELLED:
        click.echo(f"cancelled {job.id}")
    else:
        click.echo(f"job {job.id} already ended: {job.state.value}")


@jobs_group.command("retry")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as `jobs show --json` does.")
@click.pass_context
def jobs_retry(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Put a failed or cancelled job back in the queue, due now."""
    job = with_client(settings_of(ctx), lambda client: client.retry(job_id, tenant=ALL_TENANTS))
    if as_json:
        echo_json(job_json(job))
        return
    click.echo(f"retried {job.id}: {job.state.value}")
