"""``skiplock enqueue``: one job, or every job of a JSONL file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import click
import orjson

from skiplock.cli.common import (
    ENQUEUE_CHUNK,
    EXIT_USAGE,
    EXPIRY,
    echo_json,
    fail,
    job_json,
    settings_of,
    with_client,
)
from skiplock.config import Settings
from skiplock.queue import (
    Client,
    InvalidJob,
    Job,
    JobSpec,
    OnDuplicate,
)


def _parse_object(text: str | None, what: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line; exit 2 on anything else."""
    if text is None:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(value, dict):
        fail(f"{what} must be a JSON object", EXIT_USAGE)
    return value


_SPEC_KEYS = frozenset(
    {
        "task",
        "args",
        "queue",
        "priority",
        "delay",
        "max_attempts",
        "tenant",
        "idempotency_key",
        "meta",
        "expires_at",
        "timeout",
        "limit_keys",
        "fairness_key",
        "unique",
        "unique_key",
        "on_duplicate",
        "debounce",
    }
)


def _spec_from_line(line: str) -> JobSpec:
    """One JSONL line → JobSpec; ValueError (with the reason) on bad input."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(unknown)}")
    if "task" not in data:
        raise ValueError("missing 'task'")
    for key in ("args", "meta", "expires_at", "timeout"):
        if data.get(key) is None:
            data.pop(key, None)
    if "expires_at" in data:
        if not isinstance(data["expires_at"], str):
            raise ValueError("expires_at must be an ISO-8601 time with an offset")
        data["expires_at"] = datetime.fromisoformat(data["expires_at"])
    return JobSpec(**data)


def _read_specs(path: str) -> list[JobSpec]:
    """Every job of a JSONL file (blank lines skipped); exit 2 at the first bad line."""
    specs: list[JobSpec] = []
    with click.open_file(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                specs.append(_spec_from_line(line))
            except (ValueError, TypeError) as exc:
                fail(f"{path}:{number}: {exc}", EXIT_USAGE)
    return specs


def _chunks(specs: list[JobSpec], size: int) -> Iterator[list[JobSpec]]:
    """Consecutive slices of at most ``size``."""
    for start in range(0, len(specs), size):
        yield specs[start : start + size]


@click.command("enqueue")
@click.argument("task", required=False)
@click.option("--args", "args_json", default=None, help="Arguments, a JSON object.")
@click.option("--queue", default="default", show_default=True)
@click.option("--priority", type=int, default=0, show_default=True, help="Smaller runs first.")
@click.option("--delay", type=click.FloatRange(0), default=None, help="Run after SECONDS.")
@click.option("--max-attempts", type=int, default=3, show_default=True)
@click.option("--tenant", default="default", show_default=True)
@click.option("--idempotency-key", default=None)
@click.option("--meta", "meta_json", default=None, help="Labels, a JSON object.")
@click.option(
    "--expires",
    type=EXPIRY,
    default=None,
    help="A job not started by then never starts (ends cancelled): a duration from now"
    " (30m, 12h, 1d) or an ISO-8601 time (UTC without an offset).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Seconds one attempt may run, instead of the task's own timeout.",
)
@click.option(
    "--limit-key",
    "limit_keys",
    multiple=True,
    help="A key whose limits apply to the job (e.g. user:42); repeat for more (up to 16).",
)
@click.option("--fairness-key", default=None, help="The group a fair queue claims round-robin.")
@click.option(
    "--unique", is_flag=True, help="At most one queued or running job with this task and args."
)
@click.option(
    "--unique-key", default=None, help="At most one queued or running job holds this key."
)
@click.option(
    "--on-duplicate",
    type=click.Choice(["keep", "replace", "extend"]),
    default=None,
    help="When the unique key is held: keep that job (default), replace its args, meta,"
    " priority and run time, or extend (move) its run time.",
)
@click.option(
    "--debounce",
    type=click.FloatRange(0),
    default=None,
    help="Unique, and run SECONDS after the last enqueue of a burst.",
)
@click.option(
    "--file",
    "file_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Bulk: a JSONL file, one job object per line ('-' for stdin).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def enqueue_cmd(
    ctx: click.Context,
    task: str | None,
    args_json: str | None,
    queue: str,
    priority: int,
    delay: float | None,
    max_attempts: int,
    tenant: str,
    idempotency_key: str | None,
    meta_json: str | None,
    expires: datetime | None,
    timeout: float | None,
    limit_keys: tuple[str, ...],
    fairness_key: str | None,
    unique: bool,
    unique_key: str | None,
    on_duplicate: OnDuplicate | None,
    debounce: float | None,
    file_path: str | None,
    as_json: bool,
) -> None:
    """Enqueue one job (TASK) or, with --file, every job of a JSONL file (all or none)."""
    settings = settings_of(ctx)
    if (task is None) == (file_path is None):
        fail("give a TASK or --file, not both", EXIT_USAGE)
    if file_path is not None:
        if (
            expires is not None
            or timeout is not None
            or limit_keys
            or fairness_key is not None
            or unique
            or unique_key is not None
            or on_duplicate is not None
            or debounce is not None
        ):
            fail(
                "--expires, --timeout and the flow-control options are for one TASK; give"
                " them per line in --file",
                EXIT_USAGE,
            )
        specs = _read_specs(file_path)
        _enqueue_file(settings, specs, as_json)
        return
    assert task is not None
    try:
        spec = JobSpec(
            task=task,
            args=_parse_object(args_json, "--args"),
            queue=queue,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            tenant=tenant,
            idempotency_key=idempotency_key,
            meta=_parse_object(meta_json, "--meta"),
            expires_at=expires,
            timeout=timeout,
            limit_keys=limit_keys or None,
            fairness_key=fairness_key,
            unique=unique,
            unique_key=unique_key,
            on_duplicate=on_duplicate,
            debounce=debounce,
        )
    except InvalidJob as exc:
        fail(str(exc), EXIT_USAGE)

    async def work(client: Client) -> Job:
        (job,) = await client.enqueue_many([spec])
        return job

    job = with_client(settings, work)
    if as_json:
        echo_json(job_json(job))
    else:
        found = "  (duplicate: already held the unique key)" if job.duplicate else ""
        click.echo(
            f"{job.id}  {job.task}  {job.state.value}  run_at {job.run_at.isoformat()}{found}"
        )


def _enqueue_file(settings: Settings, specs: list[JobSpec], as_json: bool) -> None:
    """Enqueue ``specs`` in one transaction, in chunks, with a progress bar unless --json."""

    async def work(client: Client) -> list[Job]:
        done: list[Job] = []
        async with client.pool.acquire() as conn, conn.transaction():
            if as_json:
                for chunk in _chunks(specs, ENQUEUE_CHUNK):
                    done.extend(await client.enqueue_many(chunk, connection=conn))
                return done
            with click.progressbar(length=len(specs), label="enqueueing", file=sys.stderr) as bar:
                for chunk in _chunks(specs, ENQUEUE_CHUNK):
                    done.extend(await client.enqueue_many(chunk, connection=conn))
                    bar.update(len(chunk))
        return done

    jobs = with_client(settings, work) if specs else []
    if as_json:
        echo_json({"enqueued": len(jobs), "ids": [str(j.id) for j in jobs]})
    else:
        click.echo(f"enqueued {len(jobs)} jobs")
