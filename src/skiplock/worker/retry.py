"""How long a failed attempt waits before the next one."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``base * factor**(attempt-1)``, capped at
    ``maximum``, then spread by ±``jitter`` (a fraction) so failed jobs do not
    come back in lockstep."""

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.maximum < 0 or not 0 <= self.jitter <= 1:
            raise ValueError(
                "RetryPolicy needs base >= 0, factor >= 1, maximum >= 0, 0 <= jitter <= 1"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        raw = min(self.maximum, self.base * self.factor ** max(0, attempt - 1))
        spread = raw * self.jitter
        return max(0.0, raw + random.uniform(-spread, spread))
