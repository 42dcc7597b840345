"""Exceptions a handler raises to steer its job's outcome."""

from __future__ import annotations

from datetime import timedelta

__all__ = ["MAX_DELAY_SECONDS", "Cancelled", "Fail", "Retry"]

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


class Fail(Exception):  # read as a verb at the raise site: `raise Fail("bad input")`
    """End the job ``failed`` at once, without further attempts."""


class Cancelled(Exception):  # names the state the job is in
    """Raised by ``JobContext.raise_if_cancelled`` inside a sync handler being stopped."""
