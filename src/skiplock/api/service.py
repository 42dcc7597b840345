"""Service routes: statistics, health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from skiplock.api.common import (
    ApiState,
    authorize,
    json_response,
    model_response,
    state_of,
    tenant_scope,
)
from skiplock.api.openapi import openapi_document
from skiplock.api.problems import problem_response
from skiplock.api.schemas import Health, Readiness, Stats
from skiplock.queue import SchemaMismatch, check_schema
from skiplock.queue.errors import TRANSIENT_DB_ERRORS
from skiplock.queue.models import tenant_filter

__all__ = ["WINDOWS", "healthz", "metrics_endpoint", "openapi", "readyz", "stats"]

log = structlog.get_logger("skiplock.api")

WINDOWS = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0}

_FLOW_READ_TIMEOUT = 2.0
"""Longest wait for the flow-control gauges' reading at scrape time."""


async def stats(request: Request) -> Response:
    """``GET /v1/stats``: counts per queue/task/state and per-window task statistics."""
    principal = await authorize(request, "read")
    client, _, _ = state_of(request).ready()
    store, pool = client.store, client.pool
    tenant = tenant_filter(tenant_scope(request, principal))
    counts = await store.job_counts(pool, tenant)
    windows: dict[str, Any] = {}
    for name, seconds in WINDOWS.items():
        rows = await store.job_window_stats(pool, tenant, seconds)
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
    return model_response(
        Stats,
        {
            "counts": [
                {"queue": c.queue, "task": c.task, "state": c.state.value, "count": c.count}
                for c in counts
            ],
            "windows": windows,
        },
    )


async def healthz(request: Request) -> Response:
    """``GET /healthz``: the process is alive."""
    return model_response(Health, {"status": "ok"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: the database answers with the expected schema."""
    state = state_of(request)
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
    except TRANSIENT_DB_ERRORS as exc:
        return problem_response(503, f"database unreachable: {exc!r}", code="database-down")
    checks["listener"] = "off" if not hub.listens else "ok" if hub.connected else "reconnecting"
    return model_response(Readiness, {"status": "ready", "checks": checks})


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus metrics of this process, and the flow-control gauges
    (read from the database at most once per ``flow_metrics_seconds``)."""
    state = state_of(request)
    if state.hub is not None:
        state.metrics.hub_connected.set(1 if state.hub.connected else 0)
    await _read_flow(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _read_flow(state: ApiState) -> None:
    """Refresh the flow gauges when stale; a slow or failing database never fails a scrape."""
    flow, client = state.metrics.flow, state.client
    if client is None or not flow.stale(state.settings.flow_metrics_seconds):
        return
    async with flow.lock:
        if not flow.stale(state.settings.flow_metrics_seconds):
            return  # another scrape read them while this one waited
        try:
            with anyio.fail_after(_FLOW_READ_TIMEOUT):
                limits = await client.limit_summary()
                queues = await client.queue_flow()
        except TRANSIENT_DB_ERRORS as exc:  # timeouts, connection errors, PostgresError
            flow.failed(exc)
        else:
            flow.set(limits, queues)


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the OpenAPI document of this app."""
    return json_response(openapi_document(state_of(request).settings))
