"""Schedules on real PostgreSQL (issue 13): one job per tick whatever the number of
schedulers, catch-up, pause, resume, trigger, remove, redeclaration."""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import pytest
import pytest_asyncio

from skiplock import Client, JobState, ScheduleNotFound, TaskRegistry
from skiplock.queue.schedules import ScheduleDefinition
from skiplock.queue.store import open_pool
from skiplock.worker.scheduler import Scheduler
from tests.helpers import wait_for
from tests.integration.test_cli_flow import _json
from tests.integration.test_cli_flow import _run as _cli


def _definition(name: str = "tick", **kw: Any) -> ScheduleDefinition:
    base: dict[str, Any] = {"task": "cleanup", "every_seconds": 60.0, "args": {"scope": "tmp"}}
    base.update(kw)
    return ScheduleDefinition(name=name, **base)


@pytest_asyncio.fixture
async def pools(db_dsn: str) -> AsyncIterator[list[asyncpg.Pool[Any]]]:
    """Four pools, as four workers have."""
    made = [await open_pool(db_dsn, min_size=1, max_size=2) for _ in range(4)]
    try:
        yield made
    finally:
        for pool in made:
            await pool.close()


async def _jobs(client: Client, name: str) -> list[Any]:
    rows = await client.pool.fetch(
        "SELECT id, meta->>'tick' AS tick, meta->>'trigger' AS trigger, task, args::text AS args,"
        " state::text AS state FROM skiplock.jobs WHERE meta->>'schedule' = $1 ORDER BY tick",
        name,
    )
    return list(rows)


async def _set_last_tick(client: Client, name: str, seconds: float) -> None:
    """Move a schedule's last tick ``seconds`` into the past, as if no worker had run since."""
    await client.pool.execute(
        "UPDATE skiplock.schedules SET last_tick = now() - make_interval(secs => $2),"
        " next_tick = NULL WHERE name = $1",
        name,
        seconds,
    )


async def test_four_schedulers_enqueue_each_tick_exactly_once(
    client: Client, pools: list[asyncpg.Pool[Any]]
) -> None:
    """Four schedulers on four pools pass over a 0.05 s schedule as fast as they can
    until 40 ticks are in: every tick from the first to the last has exactly one job."""
    definition = _definition(every_seconds=0.05, catch_up="all")
    schedulers = [Scheduler(p, client.store, [definition], poll=0.001) for p in pools]
    await schedulers[0].declare()

    stop = anyio.Event()

    async def hammer(s: Scheduler) -> None:
        while not stop.is_set():  # between passes: no transaction is cut short
            await s.run_once()

    async with anyio.create_task_group() as tg:
        for s in schedulers:
            tg.start_soon(hammer, s)
        await wait_for(
            lambda: _jobs(client, "tick"),
            lambda jobs: len(jobs) >= 40,
            timeout=30,
            what="40 ticks",
        )
        stop.set()
    jobs = await _jobs(client, "tick")
    ticks = [datetime.fromisoformat(j["tick"]) for j in jobs]
    assert len(set(ticks)) == len(ticks), "a tick was enqueued twice"
    # Ticks are stored to the microsecond: count intervals, not seconds.
    steps = {round((b - a).total_seconds() / 0.05) for a, b in itertools.pairwise(ticks)}
    assert steps == {1}, "a tick was left out"
    assert sum(s.enqueued for s in schedulers) == len(ticks)
    assert sum(1 for s in schedulers if s.enqueued) >= 1


@pytest.mark.parametrize("catch_up", ["all", "once", "skip"])
async def test_ticks_missed_while_no_worker_ran_follow_catch_up(
    client: Client, catch_up: str
) -> None:
    """A schedule every five minutes whose last tick was 50 minutes ago: ten ticks are
    due (their grid is the clock's, so the latest is 0 to 5 minutes old)."""
    definition = _definition(every_seconds=300.0, catch_up=catch_up)
    scheduler = Scheduler(client.pool, client.store, [definition], poll=1)
    await scheduler.declare()
    await scheduler.run_once()  # a new schedule starts from now: no job
    assert await _jobs(client, "tick") == []
    await _set_last_tick(client, "tick", 3000)
    (before,) = await client.schedules()
    assert before.last_tick is not None
    await scheduler.run_once()
    jobs = await _jobs(client, "tick")
    (schedule,) = await client.schedules()
    assert schedule.last_tick is not None
    assert schedule.next_tick is not None
    assert schedule.next_tick - schedule.last_tick == timedelta(minutes=5)
    passed_at = schedule.updated_at  # the pass's now(), written with the new last tick
    assert timedelta(0) <= passed_at - schedule.last_tick < timedelta(minutes=5)
    latest_is_recent = passed_at - schedule.last_tick <= timedelta(seconds=60)
    # Ten ticks, or eleven when a tick fell between setting last_tick and the pass.
    due = math.floor(passed_at.timestamp() / 300) - math.floor(before.last_tick.timestamp() / 300)
    assert due in (10, 11)
    expected = {"all": due, "once": 1, "skip": int(latest_is_recent)}[catch_up]
    assert len(jobs) == expected
    assert all(j["task"] == "cleanup" and j["args"] == '{"scope": "tmp"}' for j in jobs)
    if jobs:
        assert datetime.fromisoformat(jobs[-1]["tick"]) == schedule.last_tick
        assert schedule.last_job_id == jobs[-1]["id"]
    await scheduler.run_once()  # nothing new is due: nothing more
    assert len(await _jobs(client, "tick")) == len(jobs)


async def test_pause_resume_trigger_and_remove(client: Client) -> None:
    scheduler = Scheduler(client.pool, client.store, [_definition(catch_up="all")], poll=1)
    await scheduler.declare()
    await scheduler.run_once()
    paused = await client.pause_schedule("tick")
    assert paused.paused
    await _set_last_tick(client, "tick", 300)
    await scheduler.run_once()
    assert await _jobs(client, "tick") == []  # paused: nothing
    manual = await client.trigger_schedule("tick")  # a paused schedule can still be run by hand
    assert manual.meta == {"schedule": "tick", "trigger": "manual"}
    assert manual.args == {"scope": "tmp"}
    resumed = await client.resume_schedule("tick")
    assert not resumed.paused
    await scheduler.run_once()
    # The five minutes missed while paused are not caught up.
    assert [j["trigger"] for j in await _jobs(client, "tick")] == ["manual"]
    await client.remove_schedule("tick")
    assert await client.schedules() == []
    for call in (
        client.pause_schedule,
        client.resume_schedule,
        client.trigger_schedule,
        client.remove_schedule,
    ):
        with pytest.raises(ScheduleNotFound):
            await call("tick")


async def test_a_redeclared_schedule_keeps_its_state_and_takes_the_new_definition(
    client: Client,
) -> None:
    first = Scheduler(client.pool, client.store, [_definition()], poll=1)
    await first.declare()
    await first.run_once()
    await client.pause_schedule("tick")
    (before,) = await client.schedules()
    again = _definition(every_seconds=None, cron="*/5 * * * *", timezone="Europe/Paris")
    await Scheduler(client.pool, client.store, [again], poll=1).declare()
    (after,) = await client.schedules()
    assert after.paused
    assert after.last_tick == before.last_tick
    assert (after.cron, after.every_seconds, after.timezone) == (
        "*/5 * * * *",
        None,
        "Europe/Paris",
    )
    assert after.next_tick is None  # computed again from the new definition
    assert after.when == "*/5 * * * * (Europe/Paris)"


async def test_a_broken_stored_expression_is_logged_and_left_for_an_hour(client: Client) -> None:
    """A row another version wrote with an expression this one cannot read: the pass goes
    on with the other schedules, and that one is looked at again an hour later."""
    scheduler = Scheduler(
        client.pool, client.store, [_definition("good"), _definition("bad")], poll=1
    )
    await scheduler.declare()
    await client.pool.execute(
        "UPDATE skiplock.schedules SET cron = '99 * * * *', every_seconds = NULL WHERE name = 'bad'"
    )
    await _set_last_tick(client, "good", 90)
    await _set_last_tick(client, "bad", 90)
    await scheduler.run_once()
    assert len(await _jobs(client, "good")) == 1
    assert await _jobs(client, "bad") == []
    schedules = {s.name: s for s in await client.schedules()}
    bad = schedules["bad"]
    assert bad.next_tick is not None
    assert bad.next_tick - bad.updated_at > timedelta(minutes=59)


async def test_a_row_that_makes_no_valid_job_is_passed_over_not_retried(client: Client) -> None:
    """A schedule row edited by hand into one whose job would be refused (a tenant name
    too long): its tick is logged and passed over, the other schedules' ticks go in."""
    scheduler = Scheduler(
        client.pool, client.store, [_definition("good"), _definition("bad")], poll=1
    )
    await scheduler.declare()
    await client.pool.execute(
        "UPDATE skiplock.schedules SET tenant = repeat('x', 500) WHERE name = 'bad'"
    )
    await _set_last_tick(client, "good", 90)
    await _set_last_tick(client, "bad", 90)
    await scheduler.run_once()
    assert len(await _jobs(client, "good")) == 1
    assert await _jobs(client, "bad") == []
    bad = {s.name: s for s in await client.schedules()}["bad"]
    assert bad.next_tick is not None
    assert bad.last_tick is not None
    assert bad.updated_at - bad.last_tick <= timedelta(minutes=1)  # moved on to the pass's tick


async def test_a_worker_runs_its_schedule(db_dsn: str, client: Client) -> None:
    """End to end: a worker declares a 0.2 s schedule and runs its jobs."""
    from skiplock import Worker, WorkerSettings

    tasks = TaskRegistry()
    ran: list[str] = []

    @tasks.task()
    async def cleanup(ctx: Any, *, scope: str) -> str:
        ran.append(scope)
        return scope

    tasks.schedule("fast", task="cleanup", every=0.2, args={"scope": "tmp"})
    worker = Worker(tasks, db_dsn, WorkerSettings(schedule_poll=0.05, poll=0.1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await wait_for(
            lambda: _jobs(client, "fast"),
            lambda jobs: sum(j["state"] == JobState.SUCCEEDED for j in jobs) >= 3,
            timeout=30,
            what="three ticks of the schedule to run",
        )
        worker.stop()
    assert ran[:3] == ["tmp"] * 3
    (schedule,) = await client.schedules()
    assert schedule.name == "fast"
    assert schedule.when == "every 0.2 s"
    assert isinstance(schedule.last_job_id, uuid.UUID)


# -- the command line --------------------------------------------------------------


async def test_schedules_from_the_command_line(db_dsn: str, client: Client) -> None:
    definition = _definition(every_seconds=None, cron="0 3 * * *", timezone="Europe/Paris")
    scheduler = Scheduler(client.pool, client.store, [definition], poll=1)
    await scheduler.declare()
    await scheduler.run_once()
    (listed,) = _json(await _cli(db_dsn, "schedules", "list", "--json"))["schedules"]
    assert (listed["name"], listed["cron"], listed["timezone"], listed["paused"]) == (
        "tick",
        "0 3 * * *",
        "Europe/Paris",
        False,
    )
    assert (
        datetime.fromisoformat(listed["next_tick"]).astimezone(ZoneInfo("Europe/Paris")).hour == 3
    )
    text = await _cli(db_dsn, "schedules", "list")
    assert "0 3 * * * (Europe/Paris)" in text.stdout
    assert _json(await _cli(db_dsn, "schedules", "pause", "tick", "--json"))["paused"] is True
    assert "running" in (await _cli(db_dsn, "schedules", "resume", "tick")).stdout
    made = _json(await _cli(db_dsn, "schedules", "trigger", "tick", "--json"))
    job = await client.get(made["job_id"])
    assert job is not None
    assert job.meta == {"schedule": "tick", "trigger": "manual"}
    assert _json(await _cli(db_dsn, "schedules", "remove", "tick", "--json"))["removed"] is True
    for command in ("pause", "resume", "trigger", "remove"):
        missing = await _cli(db_dsn, "schedules", command, "tick")
        assert missing.exit_code == 4, missing.output
        assert "schedule 'tick' not found" in missing.stderr
    assert (await _cli(db_dsn, "schedules", "list")).stdout.strip() == "no schedules"
