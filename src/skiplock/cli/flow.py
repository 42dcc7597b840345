"""``skiplock limits list|set|remove|usage`` and ``skiplock queues list|pause|resume|fair|weight``:
flow control (see docs/flow-control.md) from the command line."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from skiplock.cli.common import (
    DURATION,
    EXIT_NOT_FOUND,
    echo_json,
    fail,
    settings_of,
    table,
    ts,
    with_client,
)
from skiplock.queue import Client, Limit, QueueSettings

__all__ = ["limits_group", "queues_group"]


def _opt(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _limit_json(limit: Limit) -> dict[str, Any]:
    return {
        "pattern": limit.pattern,
        "max_running": limit.max_running,
        "max_starts": limit.max_starts,
        "per_seconds": limit.per_seconds,
        "updated_at": ts(limit.updated_at),
    }


def _queue_json(q: QueueSettings) -> dict[str, Any]:
    return {"name": q.name, "paused": q.paused, "fair": q.fair, "updated_at": ts(q.updated_at)}


# -- limits ----------------------------------------------------------------------


@click.group("limits")
def limits_group() -> None:
    """Concurrency and rate limits per key pattern (user:*, provider:openai, task:report)."""


@limits_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def limits_list(ctx: click.Context, as_json: bool) -> None:
    """Every limit, with its usage summed over the keys it matches."""

    async def work(client: Client) -> tuple[list[Any], dict[str, Any]]:
        limits = await client.limits()
        summary = {s.pattern: s for s in await client.limit_summary()}
        return limits, summary

    limits, summary = with_client(settings_of(ctx), work)
    if as_json:
        out = []
        for limit in limits:
            doc = _limit_json(limit)
            s = summary.get(limit.pattern)
            doc["usage"] = (
                None if s is None else {k: v for k, v in asdict(s).items() if k != "pattern"}
            )
            out.append(doc)
        echo_json({"limits": out})
        return
    if not limits:
        click.echo("no limits")
        return
    rows = []
    for limit in limits:
        s = summary.get(limit.pattern)
        rows.append(
            (
                limit.pattern,
                _opt(limit.max_running),
                "-" if limit.max_starts is None else f"{limit.max_starts}/{limit.per_seconds:g}s",
                _opt(s and s.keys),
                _opt(s and s.keys_at_limit),
                _opt(s and s.running),
                _opt(s and s.throttled),
            )
        )
    table(
        ("pattern", "max_running", "max_starts", "keys", "at_limit", "running", "throttled"), rows
    )


@limits_group.command("set")
@click.argument("pattern")
@click.option("--max-running", type=int, default=None, help="At most N jobs of a key running.")
@click.option("--max-starts", type=int, default=None, help="At most N starts per window (--per).")
@click.option(
    "--per", type=DURATION, default=None, help="The rate window: seconds, or 90s/15m/12h/1d."
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def limits_set(
    ctx: click.Context,
    pattern: str,
    max_running: int | None,
    max_starts: int | None,
    per: float | None,
    as_json: bool,
) -> None:
    """Create or replace the limit of PATTERN (each key it matches has its own budget).

    The limit is replaced as a whole: an option left out is no limit of that kind.
    """
    limit = with_client(
        settings_of(ctx),
        lambda client: client.set_limit(
            pattern, max_running=max_running, max_starts=max_starts, per=per
        ),
    )
    if as_json:
        echo_json(_limit_json(limit))
        return
    click.echo(
        f"limit {limit.pattern}: max_running {_opt(limit.max_running)}, max_starts"
        f" {_opt(limit.max_starts)} per {_opt(limit.per_seconds)}s"
    )


@limits_group.command("remove")
@click.argument("pattern")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def limits_remove(ctx: click.Context, pattern: str, as_json: bool) -> None:
    """Delete the limit of PATTERN (exit 4 when there is none); its jobs may start at once."""
    removed = with_client(settings_of(ctx), lambda client: client.remove_limit(pattern))
    if not removed:
        fail(f"no limit on {pattern!r}", EXIT_NOT_FOUND)
    if as_json:
        echo_json({"pattern": pattern, "removed": True})
    else:
        click.echo(f"removed the limit on {pattern}")


@limits_group.command("usage")
@click.option("--pattern", default=None, help="Only this limit's keys.")
@click.option("--at-limit", is_flag=True, help="Only keys with no room left (jobs wait on them).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def limits_usage(ctx: click.Context, pattern: str | None, at_limit: bool, as_json: bool) -> None:
    """Each key in use under each limit: running, starts in the window, queued, at limit."""
    usage = with_client(
        settings_of(ctx), lambda client: client.limit_usage(pattern, at_limit=at_limit)
    )
    if as_json:
        echo_json({"usage": [asdict(u) for u in usage]})
        return
    if not usage:
        click.echo("no keys in use")
        return
    table(
        ("pattern", "key", "running", "starts", "queued", "at_limit"),
        [
            (
                u.pattern,
                u.key,
                f"{u.running}/{_opt(u.max_running)}",
                "-" if u.starts is None else f"{u.starts}/{u.max_starts} per {u.per_seconds:g}s",
                str(u.queued),
                "yes" if u.at_limit else "no",
            )
            for u in usage
        ],
    )


# -- queues ----------------------------------------------------------------------


@click.group("queues")
def queues_group() -> None:
    """Queue switches: pause, resume, fair claiming and fair weights."""


@queues_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queues_list(ctx: click.Context, as_json: bool) -> None:
    """Each queue with jobs or switches: paused, fair, queued, running, throttled."""

    async def work(client: Client) -> tuple[list[Any], list[Any]]:
        return await client.queue_flow(), await client.fair_weights()

    flow, weights = with_client(settings_of(ctx), work)
    if as_json:
        echo_json(
            {"queues": [asdict(q) for q in flow], "fair_weights": [asdict(w) for w in weights]}
        )
        return
    if not flow:
        click.echo("no queues")
    else:
        table(
            ("queue", "paused", "fair", "queued", "running", "throttled"),
            [
                (
                    q.queue,
                    "yes" if q.paused else "no",
                    "yes" if q.fair else "no",
                    str(q.queued),
                    str(q.running),
                    str(q.throttled),
                )
                for q in flow
            ],
        )
    if weights:
        click.echo("")
        table(
            ("queue", "fair_key", "weight"),
            [(w.queue, w.fair_key, str(w.weight)) for w in weights],
        )


def _echo_queue(settings: QueueSettings, as_json: bool) -> None:
    if as_json:
        echo_json(_queue_json(settings))
        return
    click.echo(
        f"queue {settings.name}: {'paused' if settings.paused else 'running'},"
        f" {'fair' if settings.fair else 'claim order'}"
    )


@queues_group.command("pause")
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queues_pause(ctx: click.Context, queue: str, as_json: bool) -> None:
    """Pause QUEUE fleet-wide: none of its jobs starts; running ones finish."""
    _echo_queue(with_client(settings_of(ctx), lambda client: client.pause(queue)), as_json)


@queues_group.command("resume")
@click.argument("queue")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queues_resume(ctx: click.Context, queue: str, as_json: bool) -> None:
    """Resume a paused QUEUE."""
    _echo_queue(with_client(settings_of(ctx), lambda client: client.resume(queue)), as_json)


@queues_group.command("fair")
@click.argument("queue")
@click.option("--off", is_flag=True, help="Back to claim order.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queues_fair(ctx: click.Context, queue: str, off: bool, as_json: bool) -> None:
    """Claim QUEUE round-robin across fair keys (the tenant unless a job names one)."""
    _echo_queue(
        with_client(settings_of(ctx), lambda client: client.set_fair(queue, not off)), as_json
    )


@queues_group.command("weight")
@click.argument("queue")
@click.argument("fair_key")
@click.argument("weight")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queues_weight(
    ctx: click.Context, queue: str, fair_key: str, weight: str, as_json: bool
) -> None:
    """Give FAIR_KEY WEIGHT jobs per round in the fair QUEUE (1 to 1000; 'default': 1)."""
    value: int | None
    if weight == "default":
        value = None
    else:
        try:
            value = int(weight)
        except ValueError:
            raise click.BadParameter(
                f"{weight!r} is not an integer (1 to 1000) nor 'default'", param_hint="WEIGHT"
            ) from None
    with_client(settings_of(ctx), lambda client: client.set_fair_weight(queue, fair_key, value))
    if as_json:
        echo_json({"queue": queue, "fair_key": fair_key, "weight": 1 if value is None else value})
    else:
        click.echo(f"queue {queue}: fair key {fair_key} weight {1 if value is None else value}")
