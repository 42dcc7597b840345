"""``skiplock schedules list|pause|resume|trigger|remove``: periodic jobs (issue 13)."""

from __future__ import annotations

import click

from skiplock.cli.common import echo_json, settings_of, table, ts, with_client
from skiplock.queue import Client, Job, Schedule
from skiplock.queue.document import schedule_document

__all__ = ["schedules_group"]


@click.group("schedules")
def schedules_group() -> None:
    """Periodic jobs, as the workers' code declares them (TaskRegistry.schedule)."""


@schedules_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedules_list(ctx: click.Context, as_json: bool) -> None:
    """Every schedule: when it ticks, its task, paused or not, its last and next tick."""
    schedules = with_client(settings_of(ctx), lambda client: client.schedules())
    if as_json:
        echo_json({"schedules": [schedule_document(s) for s in schedules]})
        return
    if not schedules:
        click.echo("no schedules")
        return
    table(
        ("name", "when", "task", "catch_up", "paused", "last_tick", "next_tick"),
        [
            (
                s.name,
                s.when,
                s.task,
                s.catch_up,
                "yes" if s.paused else "no",
                ts(s.last_tick) or "-",
                ts(s.next_tick) or "-",
            )
            for s in schedules
        ],
    )


def _echo(schedule: Schedule, as_json: bool) -> None:
    if as_json:
        echo_json(schedule_document(schedule))
    else:
        state = "paused" if schedule.paused else "running"
        click.echo(f"schedule {schedule.name} ({schedule.when}): {state}")


@schedules_group.command("pause")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedules_pause(ctx: click.Context, name: str, as_json: bool) -> None:
    """Enqueue no tick of NAME until it is resumed (exit 4: no such schedule)."""
    _echo(with_client(settings_of(ctx), lambda client: client.pause_schedule(name)), as_json)


@schedules_group.command("resume")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedules_resume(ctx: click.Context, name: str, as_json: bool) -> None:
    """Enqueue NAME's ticks again from the next one (the missed ones are not caught up)."""
    _echo(with_client(settings_of(ctx), lambda client: client.resume_schedule(name)), as_json)


@schedules_group.command("trigger")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedules_trigger(ctx: click.Context, name: str, as_json: bool) -> None:
    """Enqueue NAME's job now, outside its ticks (paused or not)."""

    async def work(client: Client) -> Job:
        return await client.trigger_schedule(name)

    job = with_client(settings_of(ctx), work)
    if as_json:
        echo_json({"schedule": name, "job_id": str(job.id), "queue": job.queue})
    else:
        click.echo(f"schedule {name}: enqueued job {job.id}")


@schedules_group.command("remove")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedules_remove(ctx: click.Context, name: str, as_json: bool) -> None:
    """Delete NAME (its jobs stay; a worker whose code declares it writes it again)."""
    with_client(settings_of(ctx), lambda client: client.remove_schedule(name))
    if as_json:
        echo_json({"schedule": name, "removed": True})
    else:
        click.echo(f"schedule {name}: removed")
