"""Exceptions a handler raises to steer its job's outcome."""

from __future__ import annotations

from datetime import timedelta

__all__ = ["MAX_DELAY_SECONDS", "Cancelled", "Fail", "Retry", "Snooze"]

MAX_DELAY_SECONDS = 366 * 24 * 3600


class Retry(Exception):  # read as a verb at the raise site: `raise Retry(30)`
    """Ask for another attempt after ``delay`` (seconds or a timedelta).

    Counts as an attempt: when none is left the job ends ``failed``.
    """

    def __init__(self, delay: float | timedelta = 0.0, reason: str = "retry requested") -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not 0 <= seconds <= MAX_DELAY_SECONDS:  # also refuses NaN and infinity
            raise ValueError(f"Retry delay must be between 0 and {MAX_DELAY_SECONDS} seconds")
        super().__init__(reason)
        self.delay = seconds
        self.reason = reason


class Snooze(Exception):  # read as a verb at the raise site: `raise Snooze(60)`
    """Put the job back in the queue to run again after ``delay`` (seconds or a timedelta).

    Not an attempt: the attempt is given back (a job with ``max_attempts=1`` can
    snooze any number of times), the error history gets no entry, and the
    job's progress and message are kept. The job's ``meta`` counts the snoozes
    under ``"_snoozed"``. A job whose cancel was requested ends ``cancelled``
    instead. ``JobContext.snooze(delay)`` raises it.

    ``delay`` must be a number of seconds or a timedelta, from 0 to
    :data:`MAX_DELAY_SECONDS` (366 days): anything else raises ``TypeError`` or
    ``ValueError`` at the raise site, which fails the attempt like any
    other exception.
    """

    def __init__(self, delay: float | timedelta) -> None:
        if isinstance(delay, timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, int | float) and not isinstance(delay, bool):
            seconds = float(delay)
        else:
            raise TypeError(
                "Snooze delay must be a number of seconds or a timedelta,"
                f" not {type(delay).__name__}"
            )
        if not 0 <= seconds <= MAX_DELAY_SECONDS:  # also refuses NaN and infinity
            raise ValueError(
                f"Snooze delay must be between 0 and {MAX_DELAY_SECONDS} seconds (366 days),"
                f" not {seconds!r}"
            )
        super().__init__(f"snoozed for {seconds} s")
        self.delay = seconds


class Fail(Exception):  # read as a verb at the raise site: `raise Fail("bad input")`
    """End the job ``failed`` at once, without further attempts."""


class Cancelled(Exception):  # names the state the job is in
    """Raised by ``JobContext.raise_if_cancelled`` inside a sync handler being stopped."""
