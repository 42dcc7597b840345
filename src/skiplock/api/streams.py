"""Following a job: the long-poll read (``?wait=``) and the Server-Sent Events stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from skiplock.api.auth import Principal
from skiplock.api.common import (
    authorize,
    document,
    float_param,
    job_id_param,
    model_response,
    not_found,
    state_of,
    tenant_scope,
)
from skiplock.api.metrics import ApiMetrics
from skiplock.api.schemas import JobDocument, render
from skiplock.api.views import etag, event_id
from skiplock.queue import ALL_TENANTS, Job
from skiplock.queue.hub import JobGone
from skiplock.queue.listener import TRANSIENT_DB_ERRORS

__all__ = ["EventStream", "job_events", "read_job", "stream_job"]

log = structlog.get_logger("skiplock.api")


async def read_job(request: Request, principal: Principal, job_id: uuid.UUID) -> Response:
    """Answer one job for ``principal``: ETag/304, and the ``?wait=`` long-poll."""
    state = state_of(request)
    client, hub, _ = state.ready()
    wait = float_param(request, "wait", state.settings.max_wait_seconds)
    if_none_match = request.headers.get("if-none-match")
    tenant = await _job_tenant(request, principal, job_id)
    with hub.subscribe(job_id, tenant) as sub:
        job = await client.get(job_id, tenant=tenant)
        if job is None:
            raise not_found(job_id)
        tag = etag(job)
        unchanged = if_none_match is not None and if_none_match == tag
        if wait and not job.is_terminal and (unchanged or if_none_match is None):
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                try:
                    fresh = await sub.next(left)
                except EOFError:
                    fresh = None
                except JobGone:
                    raise not_found(job_id) from None  # deleted while waited for
                if fresh is None:
                    break
                if fresh.updated_at > job.updated_at:
                    job = fresh
                    break
        tag = etag(job)
    if if_none_match is not None and if_none_match == tag:
        return Response(status_code=304, headers={"ETag": tag})
    return model_response(
        JobDocument, document(request, job), headers={"ETag": tag, "Cache-Control": "no-cache"}
    )


async def job_events(request: Request) -> Response:
    """``GET /v1/jobs/{id}/events``: the job's changes as Server-Sent Events."""
    principal = await authorize(request, "read")
    return await stream_job(request, principal, job_id_param(request))


async def stream_job(request: Request, principal: Principal, job_id: uuid.UUID) -> Response:
    """Stream one job for ``principal`` until it ends or the credential does."""
    state = state_of(request)
    client, hub, _ = state.ready()
    keepalive = state.settings.sse_keepalive_seconds
    # Fail with a plain 404 before the stream starts.
    tenant = await _job_tenant(request, principal, job_id)
    if await client.get(job_id, tenant=tenant) is None:
        raise not_found(job_id)
    metrics = state.metrics

    async def events() -> AsyncIterator[dict[str, str]]:
        metrics.sse_subscribers.inc()
        try:
            with hub.subscribe(job_id, tenant) as sub:
                job = await client.get(job_id, tenant=tenant)
                if job is None:
                    return
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
                    except JobGone:
                        # Deleted (by retention) while watched: say so, and end.
                        yield {"event": "gone", "data": _gone_data(job_id)}
                        return
                    if fresh is None:
                        continue  # keepalive comments come from the response's ping
                    if fresh.updated_at > job.updated_at:
                        job = fresh
                        yield _event(request, job)
        finally:
            metrics.sse_subscribers.dec()

    return EventStream(
        events(),
        metrics=metrics,
        ping=int(max(1, keepalive)),
        send_timeout=state.settings.sse_send_timeout_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class EventStream(EventSourceResponse):
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
    auth = state_of(request).auth
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
    state = state_of(request)
    doc = document(request, job)
    if doc["result"] is not None and state.result_size(job) > state.settings.sse_max_result_bytes:
        # Each stream would hold its own copy of it: a big result is read with GET instead.
        doc["result"] = None
        doc["result_omitted"] = True
    return {"event": "job", "id": event_id(job), "data": render(JobDocument, doc).decode()}


def _gone_data(job_id: uuid.UUID) -> str:
    """The data of the ``gone`` event: the id of the job that no longer exists."""
    return orjson.dumps({"id": str(job_id)}).decode()


async def _job_tenant(request: Request, principal: Principal, job_id: uuid.UUID) -> str:
    """The tenant to watch ``job_id`` as: the caller's, or for an admin key the job's own."""
    tenant = tenant_scope(request, principal)
    if tenant is not ALL_TENANTS:
        return tenant
    client, _, _ = state_of(request).ready()
    job = await client.get(job_id, tenant=ALL_TENANTS)  # an admin key: any tenant's job
    if job is None:
        raise not_found(job_id)
    return job.tenant
