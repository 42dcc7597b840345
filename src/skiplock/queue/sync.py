"""A synchronous client, for WSGI apps (Flask, Django) and scripts.

:class:`SyncClient` runs an ordinary :class:`~skiplock.Client` on an event loop
of its own, in a background thread, and waits for each call: any number of the
application's threads may call it at once (each call is a task on that loop,
sharing the client's pool).

It belongs to the process that created it. A pre-forking server (gunicorn,
uWSGI) must create it in each worker process, after the fork (for example on
first use): a call from another process raises :class:`RuntimeError` instead of
hanging on a thread that does not exist there.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any, Concatenate, Literal, ParamSpec, Self, TypeVar

from skiplock.queue.client import Client
from skiplock.queue.store import DEFAULT_STATEMENT_CACHE_SIZE

__all__ = ["SyncClient"]

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[Client, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncClient, P], T]:
    """``method`` of :class:`Client`, called from any thread and waited for."""

    @wraps(method)
    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        client = self._ready()
        return self._result(method(client, *args, **kwargs))

    return call


class SyncClient:
    """:class:`~skiplock.Client`'s enqueue, read and cancel calls, for code that is not async.

    >>> with SyncClient("postgresql://localhost/app") as jobs:  # doctest: +SKIP
    ...     job = jobs.enqueue("render", {"video_id": "v1"}, tenant="acme")
    ...     jobs.get(job.id, tenant="acme").state
    ...     jobs.wait(job.id, timeout=60, tenant="acme").result

    The arguments are :meth:`Client.connect`'s (a smaller pool by default);
    the methods are the client's, with the same arguments, answers and errors
    (``connection=`` excepted: an async connection is of no use here). Close it
    with :meth:`close` or a ``with`` block. The event loop runs in a daemon
    thread: a client never closed does not keep the process from exiting.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "skiplock",
        min_size: int = 1,
        max_size: int = 4,
        statement_cache_size: int = DEFAULT_STATEMENT_CACHE_SIZE,
        listen_dsn: str | Literal[False] | None = None,
        watch_poll_seconds: float = 1.0,
    ) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="skiplock-sync-client", daemon=True
        )
        self._thread.start()
        self._client: Client | None = None
        try:
            self._client = self._result(
                Client.connect(
                    dsn,
                    schema=schema,
                    min_size=min_size,
                    max_size=max_size,
                    statement_cache_size=statement_cache_size,
                    listen_dsn=listen_dsn,
                    watch_poll_seconds=watch_poll_seconds,
                )
            )
        except BaseException:
            self._stop_loop()
            raise

    def _result(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _ready(self) -> Client:
        if os.getpid() != self._pid:
            raise RuntimeError(
                "this SyncClient was created in another process (before a fork): "
                "create one in each worker process"
            )
        if self._client is None:
            raise RuntimeError("this SyncClient is closed")
        return self._client

    @property
    def client(self) -> Client:
        """The async client underneath (for calls this class does not wrap)."""
        return self._ready()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the client's event loop and return its result
        (``sync.run(sync.client.limits)``)."""
        self._ready()

        async def call() -> T:
            return await fn(*args)

        return self._result(call())

    enqueue = _blocking(Client.enqueue)
    enqueue_many = _blocking(Client.enqueue_many)
    get = _blocking(Client.get)
    list = _blocking(Client.list)
    cancel = _blocking(Client.cancel)
    retry = _blocking(Client.retry)
    wait = _blocking(Client.wait)

    def close(self) -> None:
        """Close the pool and stop the event loop thread; later calls raise RuntimeError."""
        with self._lock:
            client, self._client = self._client, None
        if client is None or os.getpid() != self._pid:
            return
        try:
            self._result(client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
