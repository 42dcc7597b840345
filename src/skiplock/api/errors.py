"""Exception handlers: every error becomes a problem document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from skiplock.api.problems import HTTPProblem, problem_response
from skiplock.queue import DatabaseUnavailable

__all__ = ["exception_handlers"]

log = structlog.get_logger("skiplock.api")


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    return problem_response(exc.status, exc.detail, code=exc.code, headers=exc.headers, **exc.extra)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    code = {404: "not-found", 405: "method-not-allowed"}.get(status, "http-error")
    return problem_response(status, str(detail), code=code, headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("request_failed", path=request.url.path, error=repr(exc), exc_info=exc)
    return problem_response(500, "an internal error occurred", code="internal-error")


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection while its body was being read: nobody gets this.
    log.info("client_disconnected", path=request.url.path)
    return problem_response(
        400, "the client disconnected before sending the whole body", code="client-disconnected"
    )


async def _db_down(request: Request, exc: Exception) -> Response:
    log.warning("request_failed_database_unavailable", error=repr(exc), path=request.url.path)
    return problem_response(
        503,
        "the database is unavailable; try again shortly",
        code="database-unavailable",
        headers={"Retry-After": "1"},
    )


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """The app's exception handlers: problem documents, 503 while the database is down."""
    return {
        HTTPProblem: _problem,
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
        OSError: _db_down,
        DatabaseUnavailable: _db_down,
        asyncpg.PostgresConnectionError: _db_down,
        asyncpg.InterfaceError: _db_down,
        asyncpg.CannotConnectNowError: _db_down,
        # The server going away or full: admin/crash shutdown (57P01-57P03) and
        # statement timeouts (57014), too many connections (53300), and asyncpg's
        # "another operation is in progress" on a connection that read the FATAL
        # while idle (see queue.listener.TRANSIENT_DB_ERRORS).
        asyncpg.exceptions.OperatorInterventionError: _db_down,
        asyncpg.exceptions.InsufficientResourcesError: _db_down,
        asyncpg.InternalClientError: _db_down,
        Exception: _internal_error,
    }
