"""The Starlette application: ``create_app(settings)``.

Routes (JSON under ``/v1``; errors are ``application/problem+json``):

- ``POST /v1/jobs`` create (``Idempotency-Key``), ``GET /v1/jobs`` list,
  ``GET /v1/jobs/{id}`` read (ETag, ``?wait=`` long-poll),
  ``GET /v1/jobs/{id}/events`` Server-Sent Events,
  ``POST /v1/jobs/{id}/cancel``, ``POST /v1/jobs/{id}/retry``,
  ``POST /v1/jobs/{id}/share`` a signed read-only link,
  ``GET /v1/shared/{token}`` and ``GET /v1/shared/{token}/events``;
- ``GET /v1/stats``;
- for ``admin`` keys, flow control (:mod:`skiplock.api.flow`): ``GET /v1/admin/limits``,
  ``PUT`` and ``DELETE /v1/admin/limits/{pattern}``, ``GET /v1/admin/queues``,
  ``POST /v1/admin/queues/{queue}/pause`` and ``/resume``; schedules
  (:mod:`skiplock.api.schedules`): ``GET /v1/admin/schedules``,
  ``POST /v1/admin/schedules/{name}/pause``, ``/resume`` and ``/trigger``;
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics``,
  ``GET /openapi.json``.

Tenancy is enforced in SQL: every read and write passes the caller's tenant,
and another tenant's job answers exactly like a missing one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from skiplock.api.auth import Authenticator
from skiplock.api.common import ApiState
from skiplock.api.dashboard import dashboard_mount
from skiplock.api.errors import exception_handlers
from skiplock.api.flow import (
    delete_limit,
    list_flow_queues,
    list_limits,
    pause_queue,
    put_limit,
    resume_queue,
)
from skiplock.api.jobs import cancel_job, create_job, get_job, list_jobs, retry_job
from skiplock.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from skiplock.api.schedules import (
    list_schedules,
    pause_schedule,
    resume_schedule,
    trigger_schedule,
)
from skiplock.api.service import healthz, metrics_endpoint, openapi, readyz, stats
from skiplock.api.settings import ApiSettings
from skiplock.api.sharing import share_job, shared_events, shared_job
from skiplock.api.streams import job_events
from skiplock.queue import Client, check_schema
from skiplock.queue.hub import EventHub
from skiplock.queue.listener import listen_dsn
from skiplock.queue.store import open_pool

log = structlog.get_logger("skiplock.api")


def create_app(settings: ApiSettings | None = None) -> Starlette:
    """Build the status API. The lifespan opens the pool and the event hub."""
    settings = settings or ApiSettings()
    state = ApiState(settings)

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
            if settings.statement_cache_size == 0 and settings.listen_url is None:
                log.warning(
                    "listen_url_unset",
                    reason="statement_cache_size=0 (a transaction-mode pooler?) but no "
                    "listen_url: the event hub LISTENs through the main URL, where a pooler "
                    "loses notifications (streams then move only at each re-read)",
                    fix="set listen_url (SKIPLOCK_LISTEN_URL) to a direct postgresql:// URL, "
                    "or 'none'",
                )
            hub = EventHub(
                listen_dsn(dsn, settings.listen_url),  # None: the hub does not LISTEN
                client.store,
                pool,
                buffer=settings.subscriber_buffer,
                poll_seconds=settings.hub_poll_seconds,
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
        Route("/v1/admin/limits", list_limits, methods=["GET"]),
        Route("/v1/admin/limits/{pattern:pattern}", put_limit, methods=["PUT"]),
        Route("/v1/admin/limits/{pattern:pattern}", delete_limit, methods=["DELETE"]),
        Route("/v1/admin/queues", list_flow_queues, methods=["GET"]),
        Route("/v1/admin/queues/{queue}/pause", pause_queue, methods=["POST"]),
        Route("/v1/admin/queues/{queue}/resume", resume_queue, methods=["POST"]),
        Route("/v1/admin/schedules", list_schedules, methods=["GET"]),
        Route("/v1/admin/schedules/{name}/pause", pause_schedule, methods=["POST"]),
        Route("/v1/admin/schedules/{name}/resume", resume_schedule, methods=["POST"]),
        Route("/v1/admin/schedules/{name}/trigger", trigger_schedule, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        dashboard_mount(),
    ]
    middleware = [Middleware(MetricsMiddleware, metrics=state.metrics)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PUT", "DELETE"],
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
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.skiplock = state
    return app
