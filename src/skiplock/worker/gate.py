"""The write gate: one multi-row write of a worker at a time, each with a deadline.

The planner locks an UPDATE's rows in its own order, not the array's, so two of
one worker's statements over the same rows (completions, progress, heartbeat)
could deadlock each other. Other workers hold other rows; claims and the
rescuer skip locked rows, so they do not pass through the gate.

A write holding the gate longer than a heartbeat interval would make the
heartbeat miss its turn: every write (retried by its caller anyway) gets at
most ``timeout`` seconds, waiting for the gate included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import asyncpg

__all__ = ["REFUSED_SQLSTATE_CLASSES", "WriteGate", "refused"]

T = TypeVar("T")

# SQLSTATE classes of a statement that can never succeed as written, however
# often it is retried: a data exception (22), an integrity violation (23), a
# program limit (54), a RAISE in a trigger or function (P0). Every other
# transient database error (deadlocks, too many connections, shutdowns,
# timeouts, lost connections) is worth retrying.
REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23", "54", "P0"})


def refused(exc: BaseException) -> bool:
    """Whether the database refused a statement for good (rather than could not run it now)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        isinstance(exc, asyncpg.PostgresError)
        and isinstance(sqlstate, str)
        and sqlstate[:2] in REFUSED_SQLSTATE_CLASSES
    )


class WriteGate:
    """Runs one write at a time; raises ``TimeoutError`` after ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = asyncio.Lock()

    async def write(
        self, statement: Callable[[], Awaitable[T]], *, within: float | None = None
    ) -> T:
        """Wait for the gate, then run ``statement()``; both ``within`` (default: ``timeout``)."""
        with anyio.fail_after(self.timeout if within is None else within):
            async with self._lock:
                return await statement()
