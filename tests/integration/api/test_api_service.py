"""Liveness, readiness and metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from skiplock import SchemaMismatch
from skiplock.api import create_app
from tests.integration.api.conftest import admin_execute, database_dsn
from tests.integration.api.support import (
    Keys,
    LiveApi,
    api_settings,
    assert_problem,
    bearer,
    create_job,
    sse,
)


async def test_healthz_is_200(shared_api: LiveApi) -> None:
    """GET /healthz answers 200 without a key."""
    response = await shared_api.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_with_the_database_up(shared_api: LiveApi) -> None:
    """GET /readyz answers 200 with the database and the listener checked."""
    response = await shared_api.http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "listener": "ok"}}


async def test_readyz_is_503_when_the_schema_is_missing(api: LiveApi, db_dsn: str) -> None:
    """GET /readyz answers 503 schema-mismatch once the schema is gone from the database."""
    assert (await api.http.get("/readyz")).status_code == 200
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("DROP SCHEMA skiplock CASCADE")
    finally:
        await conn.close()
    body = assert_problem(await api.http.get("/readyz"), 503, "schema-mismatch")
    assert "skiplock migrate" in body["detail"]


@pytest_asyncio.fixture
async def empty_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database without the skiplock schema."""
    name = f"skiplock_empty_{uuid.uuid4().hex[:12]}"
    await admin_execute(pg_admin_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield database_dsn(pg_admin_dsn, name)
    finally:
        await admin_execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_app_refuses_to_start_without_the_schema(empty_dsn: str) -> None:
    """On a database without the schema the lifespan fails, saying to run skiplock migrate."""
    app = create_app(api_settings(empty_dsn))
    with pytest.raises(SchemaMismatch, match="skiplock migrate"):
        async with app.router.lifespan_context(app):
            pass


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of metric ``name``, by their sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def _metrics(api: LiveApi) -> str:
    response = await api.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_metrics_count_requests_by_method_route_and_status(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """/metrics exposes skiplock_api_requests_total by route template, counting each request."""
    job_id = await create_job(shared_api, tenant_keys.a_write)
    before = _samples(await _metrics(shared_api), "skiplock_api_requests_total")
    for _ in range(2):
        await shared_api.http.get(f"/v1/jobs/{job_id}", headers=bearer(tenant_keys.a_read))
    await shared_api.http.get(f"/v1/jobs/{uuid.uuid4()}", headers=bearer(tenant_keys.a_read))
    after = _samples(await _metrics(shared_api), "skiplock_api_requests_total")

    def delta(status: str) -> float:
        labels = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", status))
        return after.get(labels, 0.0) - before.get(labels, 0.0)

    assert (delta("200"), delta("404")) == (2.0, 1.0)
    assert not any(dict(labels)["route"] == "unmatched" for labels in after if labels)


async def test_metrics_show_open_streams_and_the_listener(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """/metrics shows an open SSE stream in the subscriber gauge, and the listener as up."""
    job_id = await create_job(shared_api, tenant_keys.a_write)
    url = f"/v1/jobs/{job_id}/events"
    async with sse(shared_api.http, url, headers=bearer(tenant_keys.a_read)) as stream:
        assert await stream.next() is not None
        during = await _metrics(shared_api)
    assert _samples(during, "skiplock_api_sse_subscribers") == {(): 1.0}
    assert _samples(during, "skiplock_api_listener_connected") == {(): 1.0}
