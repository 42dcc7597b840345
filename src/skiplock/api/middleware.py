"""ASGI middleware: request-body limits (size and time) and request metrics."""

from __future__ import annotations

import math
import time

import anyio
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skiplock.api.metrics import ApiMetrics
from skiplock.api.problems import problem_response

__all__ = ["BodyLimitMiddleware", "MetricsMiddleware"]

log = structlog.get_logger("skiplock.api")


class _BodyTooLarge(Exception):
    pass


class _BodyTimedOut(Exception):  # not an OSError: that one means "database down"
    pass


class BodyLimitMiddleware:
    """Guards request bodies before the app reads them.

    Answers 413 before reading more than ``limit`` bytes, and 408 when the body
    has not fully arrived ``timeout`` seconds after the app began to read it (a
    client that trickles its body, or stops half-way, cannot hold a request open).
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float | None = None) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(scope, receive, send)
            return
        seen = 0
        complete = False
        deadline: float | None = None

        async def limited() -> Message:
            nonlocal seen, complete, deadline
            if complete:  # the body is in: later calls only wait for a disconnect
                return await receive()
            if deadline is None:
                timeout = math.inf if self.timeout is None else self.timeout
                deadline = anyio.current_time() + timeout
            with anyio.CancelScope(deadline=deadline) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                raise _BodyTimedOut
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
                complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)
        except _BodyTimedOut:
            response = problem_response(
                408,
                f"the request body did not arrive within {self.timeout:g} s",
                code="body-timeout",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413, f"the request body is over {self.limit} bytes", code="body-too-large"
        )
        await response(scope, receive, send)


class MetricsMiddleware:
    """Counts requests and their durations by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - started)
