"""What a handler sees of its job: args, identity, progress, cancellation, a logger."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Generator
from datetime import timedelta
from typing import Any, NoReturn

import structlog

from skiplock.queue.models import Job
from skiplock.worker.errors import MAX_DELAY_SECONDS, Cancelled, Snooze

__all__ = ["JobContext", "ProgressReport", "clean_text"]

MAX_MESSAGE_CHARS = 1000


def clean_text(text: str) -> str:
    """Text PostgreSQL accepts in ``text`` and ``jsonb``: no NUL, no lone surrogates."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


class ProgressReport:
    """The latest progress a handler reported (replaced, never mutated)."""

    __slots__ = ("eta_seconds", "message", "percent")

    def __init__(self, percent: float, message: str | None, eta_seconds: float | None) -> None:
        self.percent = percent
        self.message = message
        self.eta_seconds = eta_seconds


class _Done:
    """An awaitable that is already complete: ``progress()`` works with or without ``await``."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_DONE = _Done()


class JobContext:
    """Handed to every handler as its first argument.

    - ``job``, ``id``, ``attempt``, ``meta``, ``tenant``: who this is.
    - ``progress(pct, message=, eta=)``: report progress. Cheap: the worker
      coalesces reports so the database sees a bounded rate per job, and the
      last one is always written. Works with ``await`` in async handlers and
      without it in sync ones.
    - ``cancelled`` / ``raise_if_cancelled()``: async handlers are cancelled
      for you; sync handlers (running in threads) should check these.
    - ``snooze(delay)``: put the job back in the queue to run again after
      ``delay``, without spending an attempt (raises :class:`Snooze`).
    - ``log``: a structlog logger bound to the job id, task, attempt and tenant.
    """

    __slots__ = ("_base_log", "_cancelled", "_log", "_report", "cancel_reason", "job")

    def __init__(
        self,
        job: Job,
        *,
        report: Callable[[ProgressReport], None],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.job = job
        self._base_log = log
        self._log: structlog.typing.FilteringBoundLogger | None = None
        self._report = report
        # A plain flag: set once on the event loop, read by handler threads
        # (attribute reads and writes are atomic in CPython).
        self._cancelled = False
        self.cancel_reason: str | None = None

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A logger bound to this job's id, task, attempt, tenant and queue."""
        if self._log is None:  # bound on first use: most jobs never log
            job = self.job
            self._log = self._base_log.bind(
                job_id=str(job.id),
                task=job.task,
                attempt=job.attempt,
                tenant=job.tenant,
                queue=job.queue,
            )
        return self._log

    @property
    def id(self) -> uuid.UUID:
        """The job's id."""
        return self.job.id

    @property
    def attempt(self) -> int:
        """This attempt's number, starting at 1."""
        return self.job.attempt

    @property
    def meta(self) -> dict[str, Any]:
        """The job's metadata labels (``"_snoozed"``: how often the job snoozed, once it has)."""
        return self.job.meta

    @property
    def tenant(self) -> str:
        """The tenant the job belongs to."""
        return self.job.tenant

    @property
    def cancelled(self) -> bool:
        """True once the job must stop (cancelled, timed out, lease lost, shutdown)."""
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` when the job must stop (for sync handlers)."""
        if self._cancelled:
            raise Cancelled(self.cancel_reason or "cancelled")

    def snooze(self, delay: float | timedelta) -> NoReturn:
        """Put the job back in the queue to run again after ``delay`` (seconds or a
        timedelta), without spending an attempt: raises :class:`Snooze`, so nothing
        after the call runs. A bad ``delay`` raises ``TypeError`` or ``ValueError``
        instead, which fails the attempt like any other exception."""
        raise Snooze(delay)

    def progress(
        self,
        percent: float,
        message: str | None = None,
        eta: timedelta | float | None = None,
    ) -> _Done:
        """Report ``percent`` (0–100) done, an optional message and time left."""
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise TypeError("progress percent must be a number")
        if not math.isfinite(percent) or not 0 <= percent <= 100:
            raise ValueError("progress percent must be between 0 and 100")
        if message is not None:
            message = clean_text(str(message))
            if len(message) > MAX_MESSAGE_CHARS:
                message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        eta_seconds: float | None = None
        if eta is not None:
            eta_seconds = eta.total_seconds() if isinstance(eta, timedelta) else float(eta)
            if not 0 <= eta_seconds <= MAX_DELAY_SECONDS:  # also refuses NaN and infinity
                raise ValueError(f"eta must be between 0 and {MAX_DELAY_SECONDS} seconds")
        self._report(ProgressReport(float(percent), message, eta_seconds))
        return _DONE

    def _cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._cancelled = True
