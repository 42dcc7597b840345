"""Schedules (issue 13): which ticks are due, catch-up, time zones and DST, validation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from skiplock import InvalidSetting, TaskRegistry
from skiplock.queue.schedules import MAX_CATCH_UP, ScheduleDefinition
from skiplock.worker.scheduler import plan_ticks

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _every(seconds: float, catch_up: Any = "once") -> ScheduleDefinition:
    return ScheduleDefinition(name="s", task="t", every_seconds=seconds, catch_up=catch_up)


def _cron(expr: str, tz: str = "UTC", catch_up: Any = "once") -> ScheduleDefinition:
    return ScheduleDefinition(name="s", task="t", cron=expr, timezone=tz, catch_up=catch_up)


def test_a_new_schedule_starts_from_now() -> None:
    plan = plan_ticks(_every(60), None, T0 + timedelta(seconds=30))
    assert plan.enqueue == ()
    assert plan.last_tick == T0 + timedelta(seconds=30)
    assert plan.next_tick == T0 + timedelta(seconds=60)


def test_an_interval_ticks_on_its_multiples_since_the_epoch() -> None:
    plan = plan_ticks(_every(60), T0, T0 + timedelta(seconds=61))
    assert plan.enqueue == (T0 + timedelta(seconds=60),)
    assert plan.next_tick == T0 + timedelta(seconds=120)
    # Not due yet: nothing, and the next tick stays.
    plan = plan_ticks(_every(60), T0, T0 + timedelta(seconds=59))
    assert plan.enqueue == ()
    assert plan.last_tick == T0
    assert plan.next_tick == T0 + timedelta(seconds=60)


def test_fast_intervals_give_each_tick_once_whatever_the_rounding() -> None:
    """Ticks of 0.02 s stored to the microsecond and read back: walked one pass after
    another, every tick comes exactly once."""
    every = _every(0.02, "all")
    last = datetime.fromtimestamp(round(T0.timestamp() / 0.02) * 0.02, UTC)
    seen: list[datetime] = []
    now = last
    for step in range(500):
        now += timedelta(microseconds=7_001 + (step % 5) * 3_333)
        plan = plan_ticks(every, last, now)
        seen += plan.enqueue
        assert plan.last_tick is not None
        last = plan.last_tick
    gaps = {round((b - a).total_seconds() / 0.02) for a, b in itertools.pairwise(seen)}
    assert gaps == {1}
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("every", [0.01, 0.02, 0.05, 0.3, 7.0])
def test_a_stored_tick_is_never_due_again(every: float) -> None:
    """A tick read back to the microsecond (a little before or after its exact time) is
    the tick it was: just after it, nothing is due, and the next tick is the next one."""
    schedule = _every(every, "all")
    base = round(T0.timestamp() / every)
    for k in range(base, base + 2000):
        tick = datetime.fromtimestamp(k * every, UTC)
        plan = plan_ticks(schedule, tick, tick + timedelta(microseconds=1))
        assert plan.enqueue == (), k
        assert plan.next_tick == datetime.fromtimestamp((k + 1) * every, UTC), k


@pytest.mark.parametrize(
    ("catch_up", "ran"),
    [("all", 10), ("once", 1), ("skip", 0)],
)
def test_catch_up_after_downtime(catch_up: str, ran: int) -> None:
    """Ten ticks of five minutes passed while no worker ran, the latest 2 minutes ago:
    all of them, the latest, or none."""
    plan = plan_ticks(_every(300, catch_up), T0, T0 + timedelta(minutes=52))
    assert len(plan.enqueue) == ran
    if ran:
        assert plan.enqueue[-1] == T0 + timedelta(minutes=50)
    assert plan.last_tick == T0 + timedelta(minutes=50)
    assert plan.next_tick == T0 + timedelta(minutes=55)
    assert plan.missed == 10 - ran


def test_skip_still_runs_a_tick_that_is_only_a_little_late() -> None:
    plan = plan_ticks(_every(3600, "skip"), T0, T0 + timedelta(hours=1, seconds=20))
    assert plan.enqueue == (T0 + timedelta(hours=1),)
    plan = plan_ticks(_every(3600, "skip"), T0, T0 + timedelta(hours=1, seconds=61))
    assert plan.enqueue == ()


def test_all_catches_up_at_most_the_latest_thousand() -> None:
    plan = plan_ticks(_every(1, "all"), T0, T0 + timedelta(days=1))
    assert len(plan.enqueue) == MAX_CATCH_UP
    assert plan.enqueue[-1] == T0 + timedelta(days=1)
    assert plan.missed == 86_400 - MAX_CATCH_UP
    plan = plan_ticks(_cron("* * * * *", catch_up="all"), T0, T0 + timedelta(days=1))
    assert len(plan.enqueue) == MAX_CATCH_UP
    assert plan.enqueue[-1] == T0 + timedelta(days=1)


def _walk(s: ScheduleDefinition, start: datetime, end: datetime) -> list[datetime]:
    """Every tick between start and end, one pass per minute."""
    ticks: list[datetime] = []
    last = start
    now = start
    while now < end:
        now += timedelta(minutes=1)
        plan = plan_ticks(s, last, now)
        ticks += plan.enqueue
        assert plan.last_tick is not None
        last = plan.last_tick
    return ticks


def test_spring_forward_runs_a_missing_time_once_when_the_clocks_have_moved() -> None:
    """Paris, 29 March 2026: 02:00 becomes 03:00. A 02:30 job runs once, at 03:00."""
    ticks = _walk(
        _cron("30 2 * * *", "Europe/Paris"),
        datetime(2026, 3, 28, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 6, 0, tzinfo=UTC),
    )
    assert ticks == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 03:00 CEST, the missing 02:30
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST
    ]


def test_fall_back_runs_a_fixed_hour_once_and_every_hour_in_both() -> None:
    """Paris, 25 October 2026: 03:00 becomes 02:00 again."""
    start, end = datetime(2026, 10, 24, 22, 0, tzinfo=UTC), datetime(2026, 10, 25, 3, 0, tzinfo=UTC)
    fixed = _walk(_cron("30 2 * * *", "Europe/Paris"), start, end)
    assert fixed == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]  # 02:30 CEST only
    hourly = _walk(_cron("0 * * * *", "Europe/Paris"), start, end)
    assert [t.hour for t in hourly] == [23, 0, 1, 2, 3][: len(hourly)]
    assert datetime(2026, 10, 25, 0, 0, tzinfo=UTC) in hourly  # 02:00 CEST
    assert datetime(2026, 10, 25, 1, 0, tzinfo=UTC) in hourly  # 02:00 CET


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron"),
        ({"cron": "* * *"}, "bad cron"),
        ({"cron": "* * * * *", "every": 5}, "either cron or every"),
        ({}, "either cron or every"),
        ({"every": 0.001}, "every must be"),
        ({"every": float("nan")}, "every must be"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "* * * * *", "catch_up": "sometimes"}, "catch_up"),
        ({"cron": "* * * * *", "args": {"x": float("inf")}}, "args"),
        ({"cron": "* * * * *", "max_attempts": 0}, "max_attempts"),
    ],
)
def test_a_bad_schedule_is_refused_when_declared(kwargs: dict[str, Any], message: str) -> None:
    tasks = TaskRegistry()
    with pytest.raises(InvalidSetting, match=message):
        tasks.schedule("s", task="t", **kwargs)
    assert tasks.schedules == []


def test_a_schedule_is_declared_once() -> None:
    tasks = TaskRegistry()
    made = tasks.schedule("s", task="t", every=timedelta(minutes=5), args={"a": 1})
    assert made.every_seconds == 300
    with pytest.raises(ValueError, match="already declared"):
        tasks.schedule("s", task="t", cron="* * * * *")
    assert tasks.schedules == [made]
