"""Retention: deleting old finished jobs, from a worker's loop or the ``skiplock purge`` command.

A :class:`RetentionPolicy` says how long finished jobs stay, per state
(``None``: never deleted by age). A job that finished before its own
``expires_at`` goes once that has passed, whatever its state's age
(``purge_finished`` checks that). Queued and running jobs are never deleted;
each sweep then ends the queued jobs past their ``expires_at`` as
``cancelled`` (``expire_jobs``), which are kept like any cancelled job.

:func:`purge_sweep` deletes everything due, in batches of ``batch_size``: each
batch is one short ``Store.purge_finished`` statement that locks only the rows
it deletes and skips rows someone else holds, and a batch smaller than
``batch_size`` ends the sweep. :func:`retention_loop` runs a sweep every
``interval`` seconds (jittered) until cancelled; ``skiplock purge`` runs one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import asyncpg

from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from skiplock.queue.store import (
    PURGE_CANCELLED_AFTER,
    PURGE_FAILED_AFTER,
    PURGE_SUCCEEDED_AFTER,
    Executor,
    Store,
)

__all__ = ["RetentionPolicy", "parse_duration", "purge_sweep", "retention_loop"]

_UNITS: Final = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}
_NEVER: Final = frozenset({"never", "off", "none"})
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?[wdhms])+")


def parse_duration(text: str) -> float | None:
    """Seconds from ``"3600"``, ``"90s"``, ``"15m"``, ``"12h"``, ``"1d"``, ``"2w"`` or ``"1d12h"``.

    ``"never"`` (or ``"off"``, ``"none"``) gives None. Anything else raises
    :class:`ValueError` saying what is accepted.
    """
    value = text.strip().lower()
    if value in _NEVER:
        return None
    try:
        seconds = float(value)
    except ValueError:
        if not _DURATION.fullmatch(value):
            raise ValueError(
                f"{text!r} is not a duration: give seconds (3600) or a number with a unit"
                " (90s, 15m, 12h, 1d, 2w, 1d12h), or 'never'"
            ) from None
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{text!r} is not a duration: it must be zero or more seconds")
    return seconds


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished jobs stay, and how the deleting is paced. Times are in seconds.

    ``succeeded_after`` / ``failed_after`` / ``cancelled_after``: age since
    ``finished_at`` after which a job in that state is deleted (None: never by
    age; a passed ``expires_at`` still deletes it). ``batch_size``: jobs per
    statement. ``interval``: time between sweeps of :func:`retention_loop`
    (jittered ±20 %). ``batch_pause``: pause between two batches of one sweep.
    ``timeout``: limit for one batch statement.
    """

    succeeded_after: float | None = PURGE_SUCCEEDED_AFTER
    failed_after: float | None = PURGE_FAILED_AFTER
    cancelled_after: float | None = PURGE_CANCELLED_AFTER
    batch_size: int = 500
    interval: float = 60.0
    batch_pause: float = 0.05
    timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("succeeded_after", "failed_after", "cancelled_after"):
            age = getattr(self, name)
            if age is not None and not 0 <= age < float("inf"):
                raise ValueError(f"{name} must be None or zero or more seconds, not {age!r}")
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError("batch_size must be between 1 and 100000")
        if not 0 < self.interval < float("inf"):
            raise ValueError("interval must be positive")
        if not 0 <= self.batch_pause < float("inf"):
            raise ValueError("batch_pause must be zero or more")
        if not 0 < self.timeout < float("inf"):
            raise ValueError("timeout must be positive")


async def purge_sweep(
    ex: Executor,
    store: Store,
    policy: RetentionPolicy,
    *,
    on_deleted: Callable[[int], None] | None = None,
) -> int:
    """Delete every finished job ``policy`` says is due, batch by batch; the total.

    ``on_deleted`` is called with each batch's count (when non-zero). Database
    errors propagate; what was deleted before them stays deleted.
    """
    total = 0
    while True:
        with anyio.fail_after(policy.timeout):
            deleted = await store.purge_finished(
                ex,
                policy.batch_size,
                succeeded_after=policy.succeeded_after,
                failed_after=policy.failed_after,
                cancelled_after=policy.cancelled_after,
            )
        total += deleted
        if deleted and on_deleted is not None:
            on_deleted(deleted)
        if deleted < policy.batch_size:
            break
        if policy.batch_pause:
            await anyio.sleep(policy.batch_pause)
    while True:  # then end the queued jobs past their expiry (kept, as cancelled)
        with anyio.fail_after(policy.timeout):
            if await store.expire_jobs(ex, policy.batch_size) < policy.batch_size:
                return total


async def retention_loop(
    pool: Executor,
    store: Store,
    policy: RetentionPolicy,
    *,
    log: Any,
    on_deleted: Callable[[int], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> None:
    """Run :func:`purge_sweep` every ``policy.interval`` seconds (jittered) until cancelled.

    The first sweep starts after a random part of the interval, so workers
    started together do not sweep together. A database error ends that sweep
    with a ``retention_failed`` log line (an error, with a hint, when the role
    may not delete) and a call to ``on_error``; the next sweep comes an interval
    later. ``on_deleted`` gets each batch's count.
    """
    await anyio.sleep(policy.interval * random.random())
    while True:
        try:
            total = await purge_sweep(pool, store, policy, on_deleted=on_deleted)
        except asyncpg.InsufficientPrivilegeError as exc:
            if on_error is not None:
                on_error(exc)
            log.error(
                "retention_failed",
                error=repr(exc),
                retry_in=policy.interval,
                hint="grant DELETE on the jobs table to this role, or run workers with"
                " --no-retention and purge from elsewhere",
            )
        except TRANSIENT_DB_ERRORS as exc:
            if on_error is not None:
                on_error(exc)
            log.warning("retention_failed", error=repr(exc), retry_in=policy.interval)
        else:
            if total:
                log.info("retention_purged", deleted=total)
        await anyio.sleep(policy.interval * random.uniform(0.8, 1.2))
