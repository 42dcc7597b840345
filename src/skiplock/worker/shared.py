"""What every unit of one worker uses: settings, identity, database, metrics, health, log."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from skiplock.queue.store import Store
from skiplock.worker.metrics import WorkerMetrics
from skiplock.worker.probes import WorkerHealth
from skiplock.worker.settings import WorkerSettings

__all__ = ["Shared"]


def _enabled_for(logger: Any, level: int) -> bool:
    """Whether ``logger`` emits ``level`` (True when it cannot tell)."""
    check = getattr(logger, "is_enabled_for", None)
    return True if check is None else bool(check(level))


@dataclass(eq=False, slots=True)
class Shared:
    """The read-mostly context the worker's units share (one per :class:`Worker`).

    ``pool`` and ``loop`` exist while the worker runs; ``tracing`` is decided
    when it starts (whether a tracer provider is configured).
    """

    settings: WorkerSettings
    worker_id: str
    store: Store
    metrics: WorkerMetrics
    health: WorkerHealth
    log: structlog.typing.FilteringBoundLogger
    debug: bool = field(init=False)
    tracing: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    _pool: asyncpg.Pool[Any] | None = None

    def __post_init__(self) -> None:
        self.debug = _enabled_for(self.log, logging.DEBUG)

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        """The worker's connection pool (open while running)."""
        if self._pool is None:
            raise RuntimeError("the worker is not running")
        return self._pool

    def attach(self, pool: asyncpg.Pool[Any] | None) -> None:
        """Set (or, with None, clear) the pool the units run their statements on."""
        self._pool = pool
