"""A TCP proxy that can cut a process off from PostgreSQL the nasty way: silence, not a reset.

>>> proxy = await BlackholeProxy.start("127.0.0.1", 5432)   # doctest: +SKIP
>>> dsn = proxy.dsn(real_dsn)          # point a worker at the proxy
>>> proxy.blackhole()                  # stop forwarding; connections stay open
>>> proxy.heal()                       # forward again, held bytes first

While black-holing, nothing is forwarded in either direction and nothing is
closed: queries hang as they would behind a dead router, new connections are
accepted but their startup packets go nowhere. What was read meanwhile is
held, and :meth:`heal` delivers it late, so whatever a cut-off process sent
while it was cut off (a stale completion, say) reaches the database after all.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 * 1024


class BlackholeProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def start(cls, target_host: str, target_port: int) -> BlackholeProxy:
        """Listen on a free 127.0.0.1 port and forward to the target."""
        proxy = cls(target_host, target_port)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    @classmethod
    async def in_front_of(cls, dsn: str) -> BlackholeProxy:
        """A proxy in front of the server ``dsn`` names."""
        parts = urlsplit(dsn)
        return await cls.start(parts.hostname or "127.0.0.1", parts.port or 5432)

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by the proxy's."""
        parts = urlsplit(dsn)
        userinfo, _, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def blackholed(self) -> bool:
        """Whether traffic is being held."""
        return not self._flowing.is_set()

    def blackhole(self) -> None:
        """Stop forwarding in both directions, keeping every connection open."""
        self._flowing.clear()

    def heal(self) -> None:
        """Forward again, starting with what was held."""
        self._flowing.set()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # read while flowing, black-holed since: hold it
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                sink.close()
            self._writers.discard(sink)
