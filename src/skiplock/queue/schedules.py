"""Periodic jobs (migration 0013): what a schedule is, as stored and as declared.

A schedule enqueues one job of ``task`` per tick: the ticks of a cron
expression in a time zone (five fields, Debian cron's meaning, daylight saving
time included: see :mod:`skiplock.worker.scheduler`), or every
``every_seconds`` seconds (ticks at the multiples of the interval since the
Unix epoch, so every worker agrees on them). Workers declare schedules from
code (:meth:`skiplock.TaskRegistry.schedule`) and enqueue their ticks; the
client lists, pauses, resumes, triggers and removes them.

``catch_up`` says what happens to ticks that passed while no worker ran:
``"skip"`` enqueues none of them (only a tick less than a minute late, or one
interval for shorter ones, still runs), ``"once"`` (the default) enqueues the
latest one, ``"all"`` every one of them (at most :data:`MAX_CATCH_UP`, the
latest).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from skiplock.queue.errors import InvalidSetting
from skiplock.queue.jsoncodec import dumps, loads

__all__ = ["MAX_CATCH_UP", "CatchUp", "Schedule", "ScheduleDefinition"]

CatchUp = Literal["skip", "once", "all"]
MAX_CATCH_UP = 1000
_NAME_MAX = 128


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """A schedule as code declares it (validated here, except the cron expression
    itself, which the worker's scheduler checks: it needs ``skiplock[worker]``)."""

    name: str
    task: str
    cron: str | None = None
    every_seconds: float | None = None
    timezone: str = "UTC"
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    tenant: str = "default"
    priority: int = 0
    max_attempts: int = 3
    catch_up: CatchUp = "once"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= _NAME_MAX:
            raise InvalidSetting(f"schedule name must be 1 to {_NAME_MAX} characters")
        if not isinstance(self.task, str) or not 1 <= len(self.task) <= 200:
            raise InvalidSetting("schedule task must be a task name (1 to 200 characters)")
        if (self.cron is None) == (self.every_seconds is None):
            raise InvalidSetting(f"schedule {self.name!r}: give either cron or every, not both")
        cron = self.cron
        if cron is not None and not (isinstance(cron, str) and 1 <= len(cron) <= 256):
            raise InvalidSetting(f"schedule {self.name!r}: cron must be a cron expression")
        if self.every_seconds is not None and not (
            isinstance(self.every_seconds, int | float)
            and math.isfinite(self.every_seconds)
            and 0.01 <= self.every_seconds <= 366 * 86400
        ):
            raise InvalidSetting(
                f"schedule {self.name!r}: every must be 0.01 s to 366 days,"
                f" not {self.every_seconds!r}"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise InvalidSetting(
                f"schedule {self.name!r}: unknown time zone {self.timezone!r}"
            ) from None
        if self.catch_up not in get_args(CatchUp):
            raise InvalidSetting(
                f"schedule {self.name!r}: catch_up must be skip, once or all, not {self.catch_up!r}"
            )
        if not isinstance(self.args, Mapping):
            raise InvalidSetting(f"schedule {self.name!r}: args must be a JSON object")
        try:
            dumps(dict(self.args), what=f"schedule {self.name!r} args")
        except ValueError as exc:
            raise InvalidSetting(str(exc)) from None
        if not -32768 <= self.priority <= 32767:
            raise InvalidSetting(f"schedule {self.name!r}: priority must fit a smallint")
        if not 1 <= self.max_attempts <= 1000:
            raise InvalidSetting(f"schedule {self.name!r}: max_attempts must be 1 to 1000")

    @property
    def args_json(self) -> str:
        return dumps(dict(self.args), what=f"schedule {self.name!r} args")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule as stored: its definition and where it is (``skiplock.schedules``).

    ``last_tick``: the last tick handled (its job enqueued, or passed over by
    ``catch_up``); ``next_tick``: the next one due, as the workers computed it
    (None until a worker has looked at it). ``last_job_id``: the job of the
    last tick enqueued.
    """

    name: str
    task: str
    cron: str | None
    every_seconds: float | None
    timezone: str
    args: dict[str, Any]
    queue: str
    tenant: str
    priority: int
    max_attempts: int
    catch_up: CatchUp
    paused: bool
    last_tick: datetime | None
    next_tick: datetime | None
    last_job_id: uuid.UUID | None
    declared_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Schedule:
        return cls(
            name=row["name"],
            task=row["task"],
            cron=row["cron"],
            every_seconds=row["every_seconds"],
            timezone=row["timezone"],
            args=loads(row["args"]),
            queue=row["queue"],
            tenant=row["tenant"],
            priority=row["priority"],
            max_attempts=row["max_attempts"],
            catch_up=row["catch_up"],
            paused=row["paused"],
            last_tick=row["last_tick"],
            next_tick=row["next_tick"],
            last_job_id=row["last_job_id"],
            declared_at=row["declared_at"],
            updated_at=row["updated_at"],
        )

    @property
    def when(self) -> str:
        """The cron expression and its time zone, or ``every N s``."""
        if self.cron is not None:
            return f"{self.cron} ({self.timezone})"
        return f"every {self.every_seconds:g} s"
