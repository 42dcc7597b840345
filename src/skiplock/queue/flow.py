"""Flow control settings: per-key limits, paused and fair queues (migration 0010).

A **limit** applies to a key pattern: a key (``provider:openai``) or a key
with ``*`` wildcards (``user:*``), each distinct key it matches having its own
budget. ``max_running``: at most that many jobs with the key run at once,
fleet-wide. ``max_starts`` per ``per`` seconds: at most that many of them
start in any window of that length (a sliding window, logged apart from the
jobs so retention cannot reopen it). Every limit matching a key applies.

Keys come from the job (``JobSpec.limit_keys``) and, implicitly, from its
queue, task and tenant: ``queue:<queue>``, ``task:<task>``,
``tenant:<tenant>`` and ``tenant:<tenant>/task:<task>``, stored with the job
when a limit matches them (and given to the queued and running jobs when such
a limit is set). A job over a limit stays queued and starts when the limit
has room again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from skiplock.queue.errors import InvalidSetting

__all__ = [
    "IMPLICIT_PREFIXES",
    "FairWeight",
    "Limit",
    "LimitSummary",
    "LimitUsage",
    "QueueFlow",
    "QueueSettings",
    "check_limit",
    "check_queue_name",
    "may_match_implicit_key",
]

IMPLICIT_PREFIXES = ("queue:", "task:", "tenant:")
"""Keys with these prefixes are given by the database (from the job's queue, task and
tenant), never by the job itself."""

MAX_PER_SECONDS = 31 * 86_400.0
"""The longest rate window: 31 days."""
MAX_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class Limit:
    """A concurrency and/or rate limit on the keys a pattern matches."""

    pattern: str
    max_running: int | None = None
    """At most this many jobs with the key run at once (0: none starts). None: no such limit."""
    max_starts: int | None = None
    """At most this many jobs with the key start in any ``per_seconds`` window."""
    per_seconds: float | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """A queue's switches: paused (no job of it starts), fair (claimed round-robin
    across fair keys, the tenant unless a job names its own)."""

    name: str
    paused: bool
    fair: bool
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FairWeight:
    """A fair key's weight in a fair queue: jobs per round (default 1)."""

    queue: str
    fair_key: str
    weight: int


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """One key in use under one limit (a row of the ``skiplock.limit_usage`` view).

    A key is in use when a due queued job or a running job carries it, or when it
    has starts in the rate window. ``at_limit``: the key has no room left, so its
    ``queued`` jobs wait (they are throttled).
    """

    pattern: str
    key: str
    max_running: int | None
    running: int
    """Jobs in state 'running' carrying the key."""
    max_starts: int | None
    per_seconds: float | None
    starts: int | None
    """Starts of jobs with the key in the current window (None: no rate limit)."""
    queued: int
    """Due queued jobs carrying the key."""
    at_limit: bool


@dataclass(frozen=True, slots=True)
class LimitSummary:
    """One limit's usage summed over its keys (what the metrics export: a pattern such
    as ``user:*`` may match many keys)."""

    pattern: str
    keys: int
    """Keys in use under the limit."""
    keys_at_limit: int
    running: int
    """Running jobs, summed over its keys."""
    queued: int
    """Due queued jobs, summed over its keys."""
    throttled: int
    """Due queued jobs waiting on one of its keys at its limit, summed over those keys."""


@dataclass(frozen=True, slots=True)
class QueueFlow:
    """A queue's switches and flow (a row of the ``skiplock.queue_flow`` view): every
    queue with jobs queued or running, or with a switch set."""

    queue: str
    paused: bool
    fair: bool
    queued: int
    """Due queued jobs."""
    running: int
    throttled: int
    """Due queued jobs carrying a key at its limit (see :class:`LimitUsage`)."""


def _count(value: object, what: str, lowest: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSetting(f"{what} must be an integer")
    if not lowest <= value <= MAX_LIMIT:
        raise InvalidSetting(f"{what} must be between {lowest} and {MAX_LIMIT:,}")
    return value


def check_limit(
    pattern: str,
    max_running: int | None,
    max_starts: int | None,
    per: timedelta | float | None,
) -> tuple[str, int | None, int | None, float | None]:
    """Validate a limit; returns (pattern, max_running, max_starts, per_seconds)."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= 256 or "\x00" in pattern:
        raise InvalidSetting("pattern must be a non-empty string of at most 256 characters")
    running = _count(max_running, "max_running", 0)
    starts = _count(max_starts, "max_starts", 0)
    seconds: float | None = None
    if per is not None:
        if isinstance(per, timedelta):
            seconds = per.total_seconds()
        elif isinstance(per, bool) or not isinstance(per, int | float):
            raise InvalidSetting("per must be a number of seconds or a timedelta")
        else:
            seconds = float(per)
        if not math.isfinite(seconds) or not 0 < seconds <= MAX_PER_SECONDS:
            raise InvalidSetting(f"per must be more than 0 and at most {MAX_PER_SECONDS:,.0f} s")
    if (starts is None) != (seconds is None):
        raise InvalidSetting("max_starts and per go together")
    if running is None and starts is None:
        raise InvalidSetting("give max_running, or max_starts and per, or both")
    return pattern, running, starts, seconds


def check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 128 or "\x00" in name:
        raise InvalidSetting("queue must be a non-empty string of at most 128 characters")
    return name


def may_match_implicit_key(pattern: str) -> bool:
    """Whether ``pattern`` can match an implicit key (``queue:…``, ``task:…``, ``tenant:…``)."""
    head = pattern.split("*", 1)[0]
    return any(p.startswith(head) or head.startswith(p) for p in IMPLICIT_PREFIXES)
