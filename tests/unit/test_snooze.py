"""Snooze's delay: seconds or a timedelta, from 0 to MAX_DELAY_SECONDS, anything else refused."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

import skiplock
import skiplock.worker
from skiplock.worker.errors import MAX_DELAY_SECONDS, Snooze


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (0.25, 0.25),
        (timedelta(minutes=5), 300.0),
        (MAX_DELAY_SECONDS, float(MAX_DELAY_SECONDS)),
    ],
)
def test_snooze_takes_seconds_or_a_timedelta(given: float | timedelta, seconds: float) -> None:
    """The delay is kept in seconds as a float."""
    snooze = Snooze(given)
    assert snooze.delay == seconds
    assert isinstance(snooze.delay, float)
    assert str(snooze) == f"snoozed for {seconds} s"


@pytest.mark.parametrize(
    "given",
    [-1, -0.001, math.nan, math.inf, -math.inf, MAX_DELAY_SECONDS + 1, timedelta(days=-1)],
)
def test_snooze_refuses_a_delay_out_of_range(given: float | timedelta) -> None:
    """Negative, not finite, or over 366 days: ValueError naming the range."""
    with pytest.raises(ValueError, match=f"between 0 and {MAX_DELAY_SECONDS} seconds"):
        Snooze(given)


@pytest.mark.parametrize("given", ["30", None, True, [1]])
def test_snooze_refuses_a_delay_that_is_not_a_number(given: object) -> None:
    """A string, None, a bool or a list is refused with TypeError naming its type."""
    with pytest.raises(TypeError, match=f"not {type(given).__name__}$"):
        Snooze(given)  # type: ignore[arg-type]  # the bad value under test


def test_snooze_is_exported_like_retry() -> None:
    """skiplock.Snooze and skiplock.worker.Snooze are the class the worker judges."""
    assert skiplock.Snooze is Snooze
    assert skiplock.worker.Snooze is Snooze
    assert "Snooze" in skiplock.__all__
    assert "Snooze" in skiplock.worker.__all__
