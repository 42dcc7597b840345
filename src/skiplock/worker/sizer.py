"""The claim size: how many jobs a claim asks for beyond the free handler slots.

A worker claims for its free handler slots plus a *prefetch*: jobs that wait,
leased, for a handler slot, so that the handlers have work while the next
claim is on its way. The prefetch is sized to what the handlers get through
in one claim round trip (Little's law: ``concurrency × round trip ÷ handler
time``), so a prefetched job waits for about one round trip, no more:

- it grows, doubling from ``concurrency``, after each claim that came back
  full, up to that bound;
- it halves after a claim that came back short (the queue is drained: there
  is nothing to prefetch, and another worker may be idle);
- it is 0 while no handler has finished yet, and stays 0 for jobs that take
  longer than a claim round trip (a prefetched job would wait that long);
- it never takes the leases held beyond ``max_leases`` (``lease_cap``).

:class:`ClaimSizer` is plain arithmetic on what it is told (no clock of its
own), so it is tested without a database.
"""

from __future__ import annotations

__all__ = ["ClaimSizer"]

_WEIGHT = 0.3  # of a new measurement in the running averages


class ClaimSizer:
    """The prefetch, from claim round trips and handler run times."""

    __slots__ = ("_busy", "_ended", "_per_job", "_rtt", "concurrency", "max_prefetch", "prefetch")

    def __init__(self, concurrency: int, lease_cap: int) -> None:
        self.concurrency = concurrency
        self.max_prefetch = max(0, lease_cap - concurrency)
        self.prefetch = 0
        """Jobs to claim beyond the free handler slots."""
        self._rtt: float | None = None  # average claim round trip, seconds
        self._per_job: float | None = None  # average handler run time, seconds
        self._busy = 0.0  # handler seconds since the last claim
        self._ended = 0  # handlers ended since the last claim

    @property
    def threshold(self) -> int:
        """Claim once this many jobs can be claimed (half the prefetch, at least 1)."""
        return max(1, self.prefetch // 2)

    def handler_ended(self, seconds: float) -> None:
        """A handler ran for ``seconds``."""
        self._busy += seconds
        self._ended += 1

    def target(self) -> int:
        """The largest useful prefetch: what the handlers get through in one round trip."""
        per_job, rtt = self._per_job, self._rtt
        if per_job is None or rtt is None:
            return 0
        if per_job <= 0:
            return self.max_prefetch
        return min(self.max_prefetch, round(self.concurrency * rtt / per_job))

    def claimed(self, asked: int, got: int, seconds: float) -> None:
        """A claim asked for ``asked`` jobs, got ``got``, and took ``seconds``."""
        self._rtt = seconds if self._rtt is None else self._rtt + _WEIGHT * (seconds - self._rtt)
        if self._ended:
            per_job = self._busy / self._ended
            old = self._per_job
            self._per_job = per_job if old is None else old + _WEIGHT * (per_job - old)
            self._busy = 0.0
            self._ended = 0
        target = self.target()
        if got < asked:
            self.prefetch = min(self.prefetch // 2, target)
        else:
            self.prefetch = min(max(self.concurrency, 2 * self.prefetch), target)
