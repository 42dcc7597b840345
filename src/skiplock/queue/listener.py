"""A dedicated LISTEN connection that stays up: the one way workers and the API listen.

:func:`listen_forever` connects, LISTENs on the given channels, calls
``on_connected`` (the caller catches up on anything missed while it was not
listening), pings the connection so a silently dead one is noticed, and on
any loss reconnects with exponential backoff — forever, until cancelled.

:func:`listen_dsn` decides where a process listens: LISTEN needs a session of
its own, which a pooler in transaction mode (PgBouncer) does not keep, so the
listening connection may go to a direct URL (``listen_url``), or nowhere at
all (``listen_url="none"``: poll only).
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

__all__ = ["POLL_ONLY", "TRANSIENT_DB_ERRORS", "check_listen_url", "listen_dsn", "listen_forever"]


Handler = Callable[[str], None]

POLL_ONLY = "none"
"""The ``listen_url`` that turns LISTEN off: workers poll, the API re-reads."""

_URL_SCHEMES = ("postgresql://", "postgres://")


def check_listen_url(listen_url: str | None) -> str | None:
    """``listen_url`` normalised (stripped; None when empty), or ValueError saying what fits.

    Accepted: None or empty (LISTEN on the main URL), ``"none"`` (poll only,
    any case), or a ``postgresql://`` / ``postgres://`` URL.
    """
    if listen_url is None or not listen_url.strip():
        return None
    value = listen_url.strip()
    if value.lower() == POLL_ONLY:
        return POLL_ONLY
    if not value.startswith(_URL_SCHEMES):
        raise ValueError(
            "listen_url must be a postgresql:// URL (a direct connection for LISTEN), "
            f"{POLL_ONLY!r} (no LISTEN: poll only) or empty (LISTEN on the main URL); "
            f"got {value[:40]!r}"
        )
    return value


def listen_dsn(dsn: str, listen_url: str | None) -> str | None:
    """Where to LISTEN: ``listen_url``; ``dsn`` when it is unset; None when it is ``"none"``."""
    checked = check_listen_url(listen_url)
    if checked is None:
        return dsn
    return None if checked == POLL_ONLY else checked


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
