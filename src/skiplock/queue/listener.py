"""A dedicated LISTEN connection that stays up: the one way workers and the API listen.

:func:`listen_forever` connects, LISTENs on the given channels, calls
``on_connected`` (the caller catches up on anything missed while it was not
listening), pings the connection so a silently dead one is noticed, and on
any loss reconnects with exponential backoff — forever, until cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NoReturn

import anyio
import asyncpg
import structlog

# Defined once in queue.errors; still importable from here.
from skiplock.queue.errors import TRANSIENT_DB_ERRORS

__all__ = ["TRANSIENT_DB_ERRORS", "listen_forever"]

Handler = Callable[[str], None]


def _set(event: asyncio.Event, *_: object) -> None:
    event.set()


def _deliver(handler: Handler, _conn: object, _pid: int, _channel: str, payload: object) -> None:
    handler(str(payload))


async def listen_forever(
    dsn: str,
    handlers: Mapping[str, Handler],
    *,
    on_connected: Callable[[], None],
    on_disconnected: Callable[[], None] = lambda: None,
    ping_every: float = 5.0,
    db_timeout: float = 10.0,
    log: Any = None,
) -> NoReturn:
    """LISTEN on ``handlers``' channels, calling each with its payloads; never returns."""
    logger = log if log is not None else structlog.get_logger("skiplock.listener")
    backoff = 0.1
    while True:
        conn: asyncpg.Connection[Any] | None = None
        try:
            conn = await asyncpg.connect(dsn, timeout=db_timeout)
            lost = asyncio.Event()
            conn.add_termination_listener(partial(_set, lost))
            for channel, handler in handlers.items():
                await conn.add_listener(channel, partial(_deliver, handler))
            logger.info("listener_connected", channels=sorted(handlers))
            backoff = 0.1
            on_connected()
            while not lost.is_set():
                with anyio.move_on_after(ping_every):
                    await lost.wait()
                with anyio.fail_after(db_timeout):
                    await conn.fetchval("SELECT 1")
        except TRANSIENT_DB_ERRORS as exc:
            logger.warning("listener_lost", error=repr(exc), retry_in=round(backoff, 2))
        finally:
            on_disconnected()
            if conn is not None:
                conn.terminate()
        await anyio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
