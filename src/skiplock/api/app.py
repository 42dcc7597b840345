"""The Starlette application: ``create_app(settings)``.

Routes (JSON under ``/v1``; errors are ``application/problem+json``):

- ``POST /v1/jobs`` create (``Idempotency-Key``), ``GET /v1/jobs`` list,
  ``GET /v1/jobs/{id}`` read (ETag, ``?wait=`` long-poll),
  ``GET /v1/jobs/{id}/events`` Server-Sent Events,
  ``POST /v1/jobs/{id}/cancel``, ``POST /v1/jobs/{id}/retry``,
  ``POST /v1/jobs/{id}/share`` a signed read-only link,
  ``GET /v1/shared/{token}`` and ``GET /v1/shared/{token}/events``;
- ``GET /v1/stats``; ``GET /healthz``, ``GET /readyz``, ``GET /metrics``,
  ``GET /openapi.json``.

Tenancy is enforced in SQL: every read and write passes the caller's tenant,
and another tenant's job answers exactly like a missing one.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import jsonschema
import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skiplock.api.auth import Authenticator, Principal, sign_share_token, verify_share_token
from skiplock.api.dashboard import dashboard_mount
from skiplock.api.hub import EventHub
from skiplock.api.metrics import ApiMetrics
from skiplock.api.openapi import openapi_document
from skiplock.api.problems import HTTPProblem, problem_response
from skiplock.api.settings import ApiSettings
from skiplock.api.views import CreateJobBody, etag, event_id, job_document
from skiplock.queue import (
    Client,
    IdempotencyConflict,
    InvalidJob,
    Job,
    JobNotFound,
    JobSpec,
    JobState,
    JobStateConflict,
    SchemaMismatch,
    check_schema,
)
from skiplock.queue.client import decode_cursor
from skiplock.queue.listener import TRANSIENT_DB_ERRORS, listen_dsn
from skiplock.queue.store import open_pool

__all__ = ["create_app"]

log = structlog.get_logger("skiplock.api")

WINDOWS = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0}


class _State:
    """What the routes share, built by the lifespan."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.metrics = ApiMetrics(CollectorRegistry())
        self.pool: asyncpg.Pool[Any] | None = None
        self.client: Client | None = None
        self.hub: EventHub | None = None
        self.auth: Authenticator | None = None
        self._result_sizes: dict[tuple[uuid.UUID, datetime], int] = {}
        self.validators = {
            name: jsonschema.Draft202012Validator(task.args_schema)
            for name, task in settings.exposed_tasks.items()
        }

    def result_size(self, job: Job) -> int:
        """Bytes of the job's result as JSON, measured once per version (streams share it)."""
        key = (job.id, job.updated_at)
        size = self._result_sizes.get(key)
        if size is None:
            size = self._result_sizes[key] = len(orjson.dumps(job.result))
            if len(self._result_sizes) > 1024:
                self._result_sizes.pop(next(iter(self._result_sizes)))
        return size

    def ready(self) -> tuple[Client, EventHub, Authenticator]:
        if self.client is None or self.hub is None or self.auth is None:
            raise HTTPProblem(503, "the service is starting", code="unavailable")
        return self.client, self.hub, self.auth


# -- request plumbing -------------------------------------------------------


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


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def _state(request: Request) -> _State:
    state = request.app.state.skiplock
    assert isinstance(state, _State)
    return state


async def _principal(request: Request, scope: str) -> Principal:
    _, _, auth = _state(request).ready()
    header = request.headers.get("authorization", "")
    kind, _, secret = header.partition(" ")
    principal = None
    if kind.lower() == "bearer" and secret:
        principal = await auth.authenticate(secret.strip())
    if principal is None:
        raise HTTPProblem(
            401,
            "a valid API key is required (Authorization: Bearer <key>)",
            code="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="skiplock"'},
        )
    if not principal.can(scope):
        raise HTTPProblem(403, f"this API key lacks the {scope!r} scope", code="forbidden")
    return principal


def _job_id(request: Request) -> uuid.UUID:
    raw = request.path_params["job_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _not_found(raw) from None


def _not_found(job_id: object) -> HTTPProblem:
    return HTTPProblem(404, f"job {job_id} not found", code="job-not-found")


def _base(request: Request) -> str:
    configured = _state(request).settings.public_url
    return configured.rstrip("/") if configured else ""


def _doc(request: Request, job: Job) -> dict[str, Any]:
    return job_document(job, base=_base(request), now=datetime.now(UTC))


def _float_param(request: Request, name: str, maximum: float) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= maximum:
        raise HTTPProblem(
            422,
            f"{name} must be a number of seconds between 0 and {maximum:g}",
            code="invalid-parameter",
            parameter=name,
        )
    return value


# -- jobs ---------------------------------------------------------------------


async def create_job(request: Request) -> Response:
    principal = await _principal(request, "write")
    state = _state(request)
    client, _, _ = state.ready()
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPProblem(415, "send the body as application/json", code="unsupported-media-type")
    raw = await request.body()
    try:
        body = CreateJobBody.model_validate_json(raw)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise HTTPProblem(
            422, "the request body is invalid", code="invalid-body", errors=errors
        ) from None
    exposed = state.settings.exposed_tasks.get(body.task)
    validator = state.validators.get(body.task)
    if exposed is None or validator is None:
        raise HTTPProblem(
            422, f"task {body.task!r} cannot be created over HTTP", code="unknown-task"
        )
    problems = sorted(validator.iter_errors(body.args), key=lambda e: [str(p) for p in e.path])
    if problems:
        errors = [
            {"loc": ".".join(["args", *(str(p) for p in e.path)]), "msg": e.message[:500]}
            for e in problems[:20]
        ]
        raise HTTPProblem(
            422, "the task's arguments are invalid", code="invalid-args", errors=errors
        )
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 256:
        raise HTTPProblem(422, "Idempotency-Key must be 1 to 256 characters", code="invalid-header")
    try:
        spec = JobSpec(
            task=body.task,
            args=body.args,
            queue=exposed.queue,
            priority=body.priority,
            delay=body.delay_seconds,
            max_attempts=exposed.max_attempts,
            tenant=principal.tenant,
            idempotency_key=key,
            meta=body.meta,
        )
        (job,) = await client.enqueue_many([spec])
    except IdempotencyConflict:
        raise HTTPProblem(
            409,
            "this Idempotency-Key was already used with a different request body",
            code="idempotency-conflict",
        ) from None
    except InvalidJob as exc:
        raise HTTPProblem(422, str(exc), code="invalid-body") from None
    created = job.id == spec.id  # ids are made client-side: ours means we inserted it
    doc = _doc(request, job)
    headers = {"Location": doc["links"]["self"], "ETag": etag(job)}
    return _json(doc, 201 if created else 200, headers)


async def get_job(request: Request) -> Response:
    principal = await _principal(request, "read")
    return await _read_job(request, principal, _job_id(request))


async def _read_job(request: Request, principal: Principal, job_id: uuid.UUID) -> Response:
    state = _state(request)
    client, hub, _ = state.ready()
    wait = _float_param(request, "wait", state.settings.max_wait_seconds)
    if_none_match = request.headers.get("if-none-match")
    with hub.subscribe(job_id, principal.tenant) as sub:
        job = await client.get(job_id, tenant=principal.tenant)
        if job is None:
            raise _not_found(job_id)
        tag = etag(job)
        unchanged = if_none_match is not None and if_none_match == tag
        if wait and not job.is_terminal and (unchanged or if_none_match is None):
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                try:
                    fresh = await sub.next(left)
                except EOFError:
                    fresh = None
                if fresh is None:
                    break
                if etag(fresh) != tag:
                    job = fresh
                    break
        tag = etag(job)
    if if_none_match is not None and if_none_match == tag:
        return Response(status_code=304, headers={"ETag": tag})
    return _json(_doc(request, job), headers={"ETag": tag, "Cache-Control": "no-cache"})


async def list_jobs(request: Request) -> Response:
    principal = await _principal(request, "read")
    client, _, _ = _state(request).ready()
    q = request.query_params
    states = q.getlist("state") or None
    try:
        if any("\x00" in k or "\x00" in v for k, v in q.multi_items()):
            raise ValueError("query parameters must not contain NUL characters")
        if states is not None:
            states = [JobState(s).value for s in states]
        created_after = _parse_time(q.get("created_after"), "created_after")
        created_before = _parse_time(q.get("created_before"), "created_before")
        limit = int(q.get("limit", "50"))
        if not 1 <= limit <= 200:
            raise ValueError("limit must be between 1 and 200")
        cursor = q.get("cursor")
        if cursor is not None:
            decode_cursor(cursor)
    except ValueError as exc:
        raise HTTPProblem(422, str(exc), code="invalid-parameter") from None
    meta = {k[5:]: v for k, v in q.items() if k.startswith("meta.") and len(k) > 5} or None
    page = await client.list(
        tenant=principal.tenant,
        states=states,
        task=q.get("task"),
        queue=q.get("queue"),
        created_after=created_after,
        created_before=created_before,
        meta=meta,
        cursor=cursor,
        limit=limit,
    )
    return _json({"jobs": [_doc(request, j) for j in page.jobs], "next_cursor": page.next_cursor})


def _parse_time(raw: str | None, name: str) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 timestamp with a time zone") from None
    if value.tzinfo is None:
        raise ValueError(f"{name} must include a time zone")
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name} is out of range") from None
    return value


async def cancel_job(request: Request) -> Response:
    principal = await _principal(request, "write")
    client, _, _ = _state(request).ready()
    job_id = _job_id(request)
    try:
        job = await client.cancel(job_id, tenant=principal.tenant)
    except JobNotFound:
        raise _not_found(job_id) from None
    return _json(_doc(request, job), 202 if job.state is JobState.RUNNING else 200)


async def retry_job(request: Request) -> Response:
    principal = await _principal(request, "write")
    client, _, _ = _state(request).ready()
    job_id = _job_id(request)
    try:
        job = await client.retry(job_id, tenant=principal.tenant)
    except JobNotFound:
        raise _not_found(job_id) from None
    except JobStateConflict as exc:
        raise HTTPProblem(
            409,
            f"only failed or cancelled jobs can be retried; this one is {exc.state}",
            code="invalid-state",
            state=exc.state,
        ) from None
    return _json(_doc(request, job))


async def job_events(request: Request) -> Response:
    principal = await _principal(request, "read")
    return await _stream(request, principal, _job_id(request))


async def _stream(request: Request, principal: Principal, job_id: uuid.UUID) -> Response:
    state = _state(request)
    client, hub, _ = state.ready()
    keepalive = state.settings.sse_keepalive_seconds
    # Fail with a plain 404 before the stream starts.
    if await client.get(job_id, tenant=principal.tenant) is None:
        raise _not_found(job_id)
    metrics = state.metrics

    async def events() -> AsyncIterator[dict[str, str]]:
        metrics.sse_subscribers.inc()
        try:
            with hub.subscribe(job_id, principal.tenant) as sub:
                job = await client.get(job_id, tenant=principal.tenant)
                if job is None:
                    return
                last = event_id(job)
                yield _event(request, job)
                check_at = time.monotonic() + keepalive
                while not job.is_terminal:
                    timeout = keepalive
                    if principal.expires_at is not None:
                        timeout = min(timeout, principal.expires_at - time.time())
                        if timeout <= 0:
                            yield {"event": "expired", "data": "{}"}
                            return
                    if principal.key_id is not None:
                        # A key is checked again on every keepalive: revoked, it ends the stream.
                        if time.monotonic() >= check_at:
                            if not await _key_still_valid(request, principal):
                                yield {"event": "expired", "data": "{}"}
                                return
                            check_at = time.monotonic() + keepalive
                        timeout = min(timeout, check_at - time.monotonic())
                    try:
                        fresh = await sub.next(timeout)
                    except EOFError:
                        metrics.sse_dropped.inc()
                        return
                    if fresh is None:
                        continue  # keepalive comments come from the response's ping
                    if event_id(fresh) != last:
                        job, last = fresh, event_id(fresh)
                        yield _event(request, job)
        finally:
            metrics.sse_subscribers.dec()

    return _EventStream(
        events(),
        metrics=metrics,
        ping=int(max(1, keepalive)),
        send_timeout=state.settings.sse_send_timeout_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _EventStream(EventSourceResponse):
    """An event stream whose client stopped reading ends quietly: counted, logged at info.

    A send that cannot complete within ``send_timeout`` raises ``SendTimeoutError``,
    a ``TimeoutError`` (an ``OSError``): without this it would reach the error
    handlers after the response started, and be logged as a failed request.
    """

    def __init__(self, *args: Any, metrics: ApiMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            self._metrics.sse_dropped.inc()
            log.info("sse_client_stalled", path=scope.get("path"), timeout=self.send_timeout)


async def _key_still_valid(request: Request, principal: Principal) -> bool:
    """Whether the stream's API key still authenticates (a database outage is not a no)."""
    auth = _state(request).auth
    if auth is None:
        return True  # shutting down: the stream ends anyway
    _, _, secret = request.headers.get("authorization", "").partition(" ")
    try:
        current = await auth.authenticate(secret.strip())
    except TRANSIENT_DB_ERRORS as exc:
        log.warning("key_recheck_failed", error=repr(exc))
        return True
    return current is not None and current.key_id == principal.key_id


def _event(request: Request, job: Job) -> dict[str, str]:
    state = _state(request)
    doc = _doc(request, job)
    if doc["result"] is not None and state.result_size(job) > state.settings.sse_max_result_bytes:
        # Each stream would hold its own copy of it: a big result is read with GET instead.
        doc["result"] = None
        doc["result_omitted"] = True
    return {"event": "job", "id": event_id(job), "data": orjson.dumps(doc).decode()}


async def share_job(request: Request) -> Response:
    principal = await _principal(request, "read")
    state = _state(request)
    client, _, _ = state.ready()
    secret = state.settings.share_secret
    job_id = _job_id(request)
    if await client.get(job_id, tenant=principal.tenant) is None:
        raise _not_found(job_id)
    if not secret:
        raise HTTPProblem(
            409, "share links are disabled: set SKIPLOCK_SHARE_SECRET", code="sharing-disabled"
        )
    ttl = _float_param(request, "ttl", state.settings.share_ttl_seconds)
    if ttl == 0:
        raise HTTPProblem(422, "ttl must be more than 0 seconds", code="invalid-parameter")
    # Whole seconds, as the token carries them: the link lives until exactly expires_at.
    expires = math.ceil(
        time.time() + (ttl if ttl is not None else state.settings.share_ttl_seconds)
    )
    token = sign_share_token(job_id, principal.tenant, expires, secret)
    base = _base(request)
    return _json(
        {
            "token": token,
            "url": f"{base}/v1/shared/{token}",
            "events": f"{base}/v1/shared/{token}/events",
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
        },
        201,
    )


def _share_principal(request: Request) -> Principal:
    secret = _state(request).settings.share_secret
    principal = verify_share_token(request.path_params["token"], secret) if secret else None
    if principal is None or principal.share_job is None:
        raise HTTPProblem(401, "this share link is invalid or has expired", code="unauthorized")
    return principal


async def shared_job(request: Request) -> Response:
    principal = _share_principal(request)
    assert principal.share_job is not None
    return await _read_job(request, principal, principal.share_job)


async def shared_events(request: Request) -> Response:
    principal = _share_principal(request)
    assert principal.share_job is not None
    return await _stream(request, principal, principal.share_job)


# -- service ------------------------------------------------------------------


async def stats(request: Request) -> Response:
    principal = await _principal(request, "read")
    client, _, _ = _state(request).ready()
    store, pool = client.store, client.pool
    counts = await store.job_counts(pool, principal.tenant)
    windows: dict[str, Any] = {}
    for name, seconds in WINDOWS.items():
        rows = await store.job_window_stats(pool, principal.tenant, seconds)
        tasks = []
        for r in rows:
            finished = r.succeeded + r.failed + r.cancelled
            decided = r.succeeded + r.failed
            tasks.append(
                {
                    "task": r.task,
                    "succeeded": r.succeeded,
                    "failed": r.failed,
                    "cancelled": r.cancelled,
                    "throughput_per_minute": round(finished / seconds * 60, 4),
                    "failure_rate": round(r.failed / decided, 4) if decided else None,
                    "wait_seconds": {"p50": r.wait_p50, "p95": r.wait_p95},
                    "run_seconds": {"p50": r.run_p50, "p95": r.run_p95},
                }
            )
        windows[name] = tasks
    return _json(
        {
            "counts": [
                {"queue": c.queue, "task": c.task, "state": c.state.value, "count": c.count}
                for c in counts
            ],
            "windows": windows,
        }
    )


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = _state(request)
    checks: dict[str, str] = {}
    client, hub = state.client, state.hub
    if client is None or hub is None:
        return problem_response(503, "the service is starting", code="not-ready")
    try:
        with anyio.fail_after(2):
            await check_schema(client.pool, schema=client.schema)
        checks["database"] = "ok"
    except SchemaMismatch as exc:
        return problem_response(503, str(exc), code="schema-mismatch")
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return problem_response(503, f"database unreachable: {exc!r}", code="database-down")
    checks["listener"] = "off" if not hub.listens else "ok" if hub.connected else "reconnecting"
    return _json({"status": "ready", "checks": checks})


async def metrics_endpoint(request: Request) -> Response:
    state = _state(request)
    if state.hub is not None:
        state.metrics.hub_connected.set(1 if state.hub.connected else 0)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return _json(openapi_document(_state(request).settings))


# -- errors -------------------------------------------------------------------


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


class _MetricsMiddleware:
    def __init__(self, app: ASGIApp, state: _State) -> None:
        self.app = app
        self.state = state

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
            self.state.metrics.observe(scope["method"], path, status, time.perf_counter() - started)


def create_app(settings: ApiSettings | None = None) -> Starlette:
    """Build the status API. The lifespan opens the pool and the event hub."""
    settings = settings or ApiSettings()
    state = _State(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dsn = settings.require_database_url()
        pool = await open_pool(
            dsn,
            min_size=1,
            max_size=settings.pool_max_size,
            statement_cache_size=settings.statement_cache_size,
        )
        try:
            await check_schema(pool, schema=settings.schema_name)
            client = Client(pool, schema=settings.schema_name)
            hub = EventHub(
                listen_dsn(dsn, settings.listen_url),  # None: the hub does not LISTEN
                client.store,
                pool,
                buffer=settings.subscriber_buffer,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                state.pool, state.client, state.hub = pool, client, hub
                state.auth = Authenticator(
                    client.store, pool, cache_seconds=settings.key_cache_seconds
                )
                log.info("api_started", schema=settings.schema_name)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            state.client = state.hub = state.auth = None
            await pool.close()

    routes = [
        Route("/v1/jobs", create_job, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/retry", retry_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/share", share_job, methods=["POST"]),
        Route("/v1/shared/{token}", shared_job, methods=["GET"]),
        Route("/v1/shared/{token}/events", shared_events, methods=["GET"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        dashboard_mount(),
    ]
    middleware = [Middleware(_MetricsMiddleware, state=state)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "Idempotency-Key",
                    "If-None-Match",
                    "Last-Event-ID",
                ],
                expose_headers=["ETag", "Location"],
            )
        )
    middleware.append(
        Middleware(
            BodyLimitMiddleware,
            limit=settings.max_body_bytes,
            timeout=settings.body_timeout_seconds,
        )
    )
    from starlette.exceptions import HTTPException  # local: only for the handler map

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPProblem: _problem,
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
        OSError: _db_down,
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
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.skiplock = state
    return app
