"""The adaptive claim size (no database, no clock: the sizer is told every figure)."""

from __future__ import annotations

import pytest

from skiplock.worker.settings import WorkerSettings
from skiplock.worker.sizer import ClaimSizer


def _run_jobs(sizer: ClaimSizer, count: int, seconds: float) -> None:
    for _ in range(count):
        sizer.handler_ended(seconds)


def test_no_prefetch_before_any_handler_has_ended() -> None:
    """Nothing is known of the handlers yet: claim for the free slots only."""
    sizer = ClaimSizer(10, 1000)
    sizer.claimed(10, 10, 0.002)
    assert sizer.prefetch == 0
    assert sizer.threshold == 1


def test_prefetch_doubles_while_claims_come_back_full_and_jobs_are_short() -> None:
    """Short jobs and full claims: concurrency, then doubling, up to the lease cap."""
    sizer = ClaimSizer(10, 1000)
    seen = []
    for _ in range(9):
        _run_jobs(sizer, 10, 0.00001)  # 10 µs handlers, 2 ms claims: thousands per round trip
        sizer.claimed(sizer.prefetch + 10, sizer.prefetch + 10, 0.002)
        seen.append(sizer.prefetch)
    assert seen == [10, 20, 40, 80, 160, 320, 640, 990, 990]
    assert sizer.threshold == 495


def test_prefetch_is_bounded_by_what_handlers_finish_in_one_round_trip() -> None:
    """1 ms handlers, 10 slots, 2 ms claims: 20 jobs cover one round trip, no more."""
    sizer = ClaimSizer(10, 1000)
    for _ in range(10):
        _run_jobs(sizer, 10, 0.001)
        sizer.claimed(10, 10, 0.002)
    assert sizer.prefetch == 20


def test_no_prefetch_for_jobs_longer_than_a_claim_round_trip() -> None:
    """Jobs of a second: a prefetched one would wait for a second; claim for free slots."""
    sizer = ClaimSizer(10, 1000)
    for _ in range(10):
        _run_jobs(sizer, 1, 1.0)
        sizer.claimed(1, 1, 0.002)
        assert sizer.prefetch == 0
        assert sizer.threshold == 1


def test_prefetch_halves_when_a_claim_comes_back_short() -> None:
    """A drained queue: the prefetch halves at each short claim, down to zero."""
    sizer = ClaimSizer(10, 1000)
    for _ in range(5):
        _run_jobs(sizer, 10, 0.00001)
        sizer.claimed(10, 10, 0.002)
    assert sizer.prefetch == 160
    seen = []
    for _ in range(9):
        sizer.claimed(170, 3, 0.002)
        seen.append(sizer.prefetch)
    assert seen == [80, 40, 20, 10, 5, 2, 1, 0, 0]


def test_prefetch_shrinks_when_jobs_get_slower() -> None:
    """The bound follows the handlers' run time: slower jobs cut the prefetch at once."""
    sizer = ClaimSizer(10, 1000)
    for _ in range(8):
        _run_jobs(sizer, 10, 0.00001)
        sizer.claimed(10, 10, 0.002)
    assert sizer.prefetch == 990
    for _ in range(20):  # the average moves towards 0.5 s jobs
        _run_jobs(sizer, 10, 0.5)
        sizer.claimed(10, 10, 0.002)
    assert sizer.prefetch == 0


def test_prefetch_never_passes_the_lease_cap() -> None:
    """concurrency + prefetch stays within max_leases whatever the measurements."""
    sizer = ClaimSizer(4, 6)
    for _ in range(10):
        _run_jobs(sizer, 4, 0.0)
        sizer.claimed(6, 6, 0.01)
        assert sizer.prefetch <= 2
    assert sizer.prefetch == 2


def test_default_lease_cap_and_its_validation() -> None:
    """max_leases defaults to max(4 × concurrency, 1000) and may not be below concurrency."""
    assert WorkerSettings().lease_cap == 1000
    assert WorkerSettings(concurrency=500).lease_cap == 2000
    assert WorkerSettings(concurrency=10, max_leases=10).lease_cap == 10
    with pytest.raises(ValueError, match="max_leases must be at least concurrency"):
        WorkerSettings(concurrency=10, max_leases=9)


def test_max_leases_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """SKIPLOCK_MAX_LEASES reaches the CLI's settings; unset, the worker's default applies."""
    from skiplock.config import Settings

    assert Settings().max_leases is None
    monkeypatch.setenv("SKIPLOCK_MAX_LEASES", "64")
    assert Settings().max_leases == 64
