"""Kubernetes probes for a worker: a tiny HTTP server, or a file for exec probes.

:class:`ProbeServer` answers three paths:

| path | 200 when | body |
| --- | --- | --- |
| ``/livez`` | ``liveness()`` says ok (and the event loop turns, or nothing answers) | JSON |
| ``/readyz`` | ``readiness()`` says ok | JSON |
| ``/metrics`` | a :class:`~skiplock.worker.metrics.WorkerMetrics` was given | Prometheus text |

A failing check answers 503. JSON bodies are ``{"status": "ok" | "unavailable",
"details": {...}}`` with the details the check returned.

It speaks just enough HTTP/1.x for probes and scrapers, with no framework:
``GET`` and ``HEAD`` only (405 otherwise), one request per connection
(``Connection: close``), a request head of at most ``max_request_bytes``
(431 beyond) that must arrive within ``read_timeout`` seconds (408 after), at
most ``max_connections`` connections at a time (more are closed at once), so
a slow or hostile client never blocks the others.

:class:`ProbeFile` is the alternative when no port can be opened: it rewrites
a file every ``interval`` seconds while the worker is live and removes it on
stop, for an exec probe such as::

    test $(( $(date +%s) - $(stat -c %Y /tmp/skiplock-live) )) -lt 30

:class:`WorkerHealth` turns what the worker's loops report (ticks, database
round trips, schema check, shutdown) into the two checks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeAlias

import anyio
import anyio.abc
import orjson
import structlog
from anyio.streams.buffered import BufferedByteReceiveStream

from skiplock.worker.metrics import WorkerMetrics

__all__ = ["Check", "ProbeFile", "ProbeServer", "WorkerHealth"]

Check: TypeAlias = Callable[[], tuple[bool, dict[str, Any]]]
"""A probe check: ``(ok, details)``; details must be JSON-friendly (others print as str)."""

MAX_REQUEST_BYTES: Final = 8192
READ_TIMEOUT: Final = 5.0
WRITE_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 64

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_PATHS: Final = frozenset({"/livez", "/readyz", "/metrics"})


def _json_body(ok: bool, details: dict[str, Any]) -> bytes:
    doc = {"status": "ok" if ok else "unavailable", "details": details}
    return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS)


class ProbeServer:
    """``/livez``, ``/readyz`` and ``/metrics`` over a minimal HTTP server.

    >>> server = ProbeServer(health.liveness, health.readiness, metrics)
    >>> port = await task_group.start(server.serve, "0.0.0.0", 9090)
    """

    def __init__(
        self,
        liveness: Check,
        readiness: Check,
        metrics: WorkerMetrics | None = None,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        read_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        log: Any = None,
    ) -> None:
        if max_request_bytes < 64 or max_connections < 1:
            raise ValueError("max_request_bytes must be at least 64, max_connections at least 1")
        if read_timeout <= 0 or write_timeout <= 0:
            raise ValueError("read_timeout and write_timeout must be positive")
        self.liveness = liveness
        self.readiness = readiness
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.port: int | None = None
        """The bound port once :meth:`serve` has started (useful with port 0)."""
        self.connections = 0
        """Connections being served now."""
        self._log = log if log is not None else structlog.get_logger("skiplock.worker.probes")

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: any free port) until cancelled; reports the bound port.

        Binding errors (port in use, bad address) raise :class:`OSError` before
        ``task_status.started`` is called, so ``await tg.start(server.serve, …)``
        raises them.
        """
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            attribute = anyio.abc.SocketAttribute.local_port
            bound: int = listener.listeners[0].extra(attribute)  # noqa: S610 (anyio, not Django)
            self.port = bound
            self._log.info("probe_server_started", host=host, port=bound)
            task_status.started(bound)
            async with anyio.create_task_group() as tg:
                await listener.serve(self._handle, task_group=tg)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        """Serve one connection; never lets a client's failure reach the listener."""
        if self.connections >= self.max_connections:
            await anyio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            await self._exchange(stream)
        except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client went away, or does not read its answer
        except Exception:
            self._log.warning("probe_request_failed", exc_info=True)
        finally:
            self.connections -= 1
            await anyio.aclose_forcefully(stream)

    async def _exchange(self, stream: anyio.abc.SocketStream) -> None:
        buffered = BufferedByteReceiveStream(stream)
        try:
            with anyio.fail_after(self.read_timeout):
                head = await buffered.receive_until(b"\r\n\r\n", self.max_request_bytes)
        except TimeoutError:
            await self._send(stream, 408, b"request not received in time\n", _TEXT)
            return
        except anyio.DelimiterNotFound:
            await self._send(stream, 431, b"request head too large\n", _TEXT)
            return
        except anyio.IncompleteRead:
            return  # closed before the request was complete: nobody to answer
        if len(head) + 4 > self.max_request_bytes:  # it all came in one read
            await self._send(stream, 431, b"request head too large\n", _TEXT)
            return

        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1]:
            await self._send(stream, 400, b"malformed request line\n", _TEXT)
            return
        method, target = parts[0], parts[1]
        path = target.split(b"?", 1)[0].decode("latin-1")
        if path not in _PATHS or (path == "/metrics" and self.metrics is None):
            await self._send(stream, 404, b"not found\n", _TEXT)
            return
        if method not in (b"GET", b"HEAD"):
            await self._send(
                stream, 405, b"GET or HEAD only\n", _TEXT, extra=b"Allow: GET, HEAD\r\n"
            )
            return
        status, body, content_type = self._answer(path)
        await self._send(stream, status, body, content_type, head_only=method == b"HEAD")

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            assert self.metrics is not None
            body, content_type = self.metrics.exposition()
            return 200, body, content_type
        check = self.liveness if path == "/livez" else self.readiness
        try:
            ok, details = check()
        except Exception as exc:
            self._log.warning("probe_check_failed", path=path, error=repr(exc))
            ok, details = False, {"error": f"the check raised {exc!r}"}
        return (200 if ok else 503), _json_body(ok, details), _JSON

    async def _send(
        self,
        stream: anyio.abc.SocketStream,
        status: int,
        body: bytes,
        content_type: str,
        *,
        head_only: bool = False,
        extra: bytes = b"",
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n"
        ).encode("latin-1")
        with anyio.fail_after(self.write_timeout):
            await stream.send(head + extra + b"\r\n" + (b"" if head_only else body))


class ProbeFile:
    """Rewrites ``path`` every ``interval`` seconds while ``liveness()`` says ok.

    The file holds one JSON object (``time``: Unix seconds, ``pid``,
    ``details``) and is replaced atomically, so its modification time is the
    last beat. It is removed when :meth:`run` ends (cancelled or failed). An
    exec probe then checks its age, e.g. under 3 × ``interval``::

        test $(( $(date +%s) - $(stat -c %Y /tmp/skiplock-live) )) -lt 30
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        liveness: Check,
        *,
        interval: float = 10.0,
        log: Any = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.path = Path(path)
        self.liveness = liveness
        self.interval = interval
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._log = log if log is not None else structlog.get_logger("skiplock.worker.probes")

    def beat(self) -> bool:
        """Rewrite the file if ``liveness()`` says ok; whether it was written.

        Raises :class:`OSError` when the file cannot be written.
        """
        try:
            ok, details = self.liveness()
        except Exception as exc:
            self._log.warning("probe_check_failed", path=str(self.path), error=repr(exc))
            return False
        if not ok:
            return False
        doc = {"time": time.time(), "pid": os.getpid(), "details": details}
        self._tmp.write_bytes(orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS))
        os.replace(self._tmp, self.path)
        return True

    def remove(self) -> None:
        """Delete the file (and any half-written temporary one), if present."""
        for p in (self._tmp, self.path):
            p.unlink(missing_ok=True)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat every ``interval`` seconds until cancelled, then remove the file.

        The first beat happens before ``task_status.started()``: a directory
        that does not exist or cannot be written raises :class:`OSError` at
        once. Later write errors are logged, and the file goes stale.
        """
        if not self.path.parent.is_dir():
            raise FileNotFoundError(
                f"probe file directory {str(self.path.parent)!r} does not exist"
            )
        try:
            await anyio.to_thread.run_sync(self.beat)
            self._log.info("probe_file_started", path=str(self.path), interval=self.interval)
            task_status.started()
            while True:
                await anyio.sleep(self.interval)
                try:
                    await anyio.to_thread.run_sync(self.beat)
                except OSError as exc:
                    self._log.warning(
                        "probe_file_write_failed", path=str(self.path), error=repr(exc)
                    )
        finally:
            self.remove()


class WorkerHealth:
    """What the worker's loops report, as ``liveness`` and ``readiness`` checks.

    The worker calls the recorders (cheap: one clock read and a store):
    :meth:`alive` from each loop registered with :meth:`expect`,
    :meth:`db_ok` after each successful database round trip, :meth:`db_failed`
    on errors, :meth:`schema_checked` once at start and :meth:`stopping` when
    it drains.

    - live: every expected loop ticked within its allowance;
    - ready: live, the schema was checked, not stopping, and a database round
      trip succeeded within ``db_fresh_for`` seconds.
    """

    def __init__(self, *, db_fresh_for: float, clock: Callable[[], float] = time.monotonic) -> None:
        if db_fresh_for <= 0:
            raise ValueError("db_fresh_for must be positive")
        self.db_fresh_for = db_fresh_for
        self._clock = clock
        self._within: dict[str, float] = {}
        self._ticks: dict[str, float] = {}
        self._schema_checked = False
        self._stopping = False
        self._last_db_ok: float | None = None
        self._last_db_error: str | None = None

    def expect(self, loop: str, *, within: float) -> None:
        """Count the worker live only while ``loop`` calls :meth:`alive` every ``within`` s."""
        if within <= 0:
            raise ValueError("within must be positive")
        self._within[loop] = within
        self._ticks[loop] = self._clock()

    def alive(self, loop: str) -> None:
        """``loop`` has come round once more."""
        self._ticks[loop] = self._clock()

    def schema_checked(self) -> None:
        """The worker has checked the schema and will claim."""
        self._schema_checked = True

    def stopping(self) -> None:
        """The worker drains: no longer ready for new work."""
        self._stopping = True

    def db_ok(self) -> None:
        """A database round trip succeeded."""
        self._last_db_ok = self._clock()

    def db_failed(self, error: BaseException) -> None:
        """A database round trip failed (kept for the details)."""
        self._last_db_error = repr(error)[:500]

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Live while every expected loop ticked within its allowance."""
        now = self._clock()
        ages = {name: round(now - self._ticks[name], 3) for name in self._within}
        stale = sorted(name for name, age in ages.items() if age > self._within[name])
        return not stale, {"loops_seconds_since_tick": ages, "stale_loops": stale}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when live, checked, not stopping, and the database answered recently."""
        now = self._clock()
        live, _ = self.liveness()
        since = None if self._last_db_ok is None else round(now - self._last_db_ok, 3)
        reasons: list[str] = []
        if not self._schema_checked:
            reasons.append("schema not checked yet")
        if self._stopping:
            reasons.append("stopping")
        if not live:
            reasons.append("a worker loop is stuck")
        if since is None or since > self.db_fresh_for:
            reasons.append(f"no successful database round trip in {self.db_fresh_for:g} s")
        return not reasons, {
            "reasons": reasons,
            "schema_checked": self._schema_checked,
            "stopping": self._stopping,
            "db_ok_seconds_ago": since,
            "last_db_error": self._last_db_error,
        }
