"""Tenant isolation on every endpoint: another tenant's job is indistinguishable from none."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from skiplock import ALL_TENANTS, Client
from tests.integration.api.support import (
    JOB_ROUTES,
    Keys,
    LiveApi,
    assert_problem,
    bearer,
    create_job,
    render_body,
)

# Headers that legitimately differ between two answers.
_VOLATILE_HEADERS = {"date", "content-length"}


@pytest.mark.parametrize(("method", "template"), JOB_ROUTES)
async def test_other_tenants_job_answers_like_a_missing_one(
    shared_api: LiveApi, tenant_keys: Keys, method: str, template: str
) -> None:
    """Tenant B gets for A's job the very 404 a random missing id gets, only the id differs."""
    theirs = await create_job(shared_api, tenant_keys.a_write)
    missing = str(uuid.uuid4())
    b = bearer(tenant_keys.b_write)
    on_theirs = await shared_api.http.request(method, template.format(id=theirs), headers=b)
    on_missing = await shared_api.http.request(method, template.format(id=missing), headers=b)
    body_theirs = assert_problem(on_theirs, 404, "job-not-found")
    body_missing = assert_problem(on_missing, 404, "job-not-found")
    assert theirs in body_theirs["detail"]
    assert orjson.dumps(body_theirs) == orjson.dumps(body_missing).replace(
        missing.encode(), theirs.encode()
    )
    assert {k for k in on_theirs.headers if k not in _VOLATILE_HEADERS} == {
        k for k in on_missing.headers if k not in _VOLATILE_HEADERS
    }


async def test_other_tenant_cannot_cancel_a_job(
    shared_api: LiveApi, tenant_keys: Keys, client_on_shared: Client
) -> None:
    """Tenant B's cancel of A's queued job is 404 and leaves it queued, without a cancel flag."""
    theirs = await create_job(shared_api, tenant_keys.a_write)
    response = await shared_api.http.post(
        f"/v1/jobs/{theirs}/cancel", headers=bearer(tenant_keys.b_write)
    )
    assert_problem(response, 404, "job-not-found")
    job = await client_on_shared.get(theirs, tenant=ALL_TENANTS)
    assert job is not None
    assert job.state.value == "queued"
    assert job.cancel_requested is False


async def test_other_tenant_cannot_retry_a_job(
    shared_api: LiveApi, tenant_keys: Keys, client_on_shared: Client
) -> None:
    """Tenant B's retry of A's cancelled job is 404 and leaves it cancelled."""
    theirs = await create_job(shared_api, tenant_keys.a_write)
    cancelled = await shared_api.http.post(
        f"/v1/jobs/{theirs}/cancel", headers=bearer(tenant_keys.a_write)
    )
    assert cancelled.json()["state"] == "cancelled"
    response = await shared_api.http.post(
        f"/v1/jobs/{theirs}/retry", headers=bearer(tenant_keys.b_write)
    )
    assert_problem(response, 404, "job-not-found")
    job = await client_on_shared.get(theirs, tenant=ALL_TENANTS)
    assert job is not None
    assert job.state.value == "cancelled"


async def _list(api: LiveApi, secret: str, **params: str) -> list[str]:
    response = await api.http.get("/v1/jobs", params=params, headers=bearer(secret))
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["jobs"]]


@pytest.mark.parametrize(
    "params",
    [{}, {"task": "render"}, {"state": "queued"}, {"queue": "default"}, {"meta.team": "video"}],
    ids=["no-filter", "task", "state", "queue", "meta"],
)
async def test_list_never_shows_other_tenants_jobs(
    shared_api: LiveApi, tenant_keys: Keys, params: dict[str, str]
) -> None:
    """Each tenant's list holds exactly its own jobs, whatever the filter."""
    meta = {"team": "video"}
    a_jobs = [
        await create_job(shared_api, tenant_keys.a_write, f"a{i}", meta=meta) for i in range(3)
    ]
    b_jobs = [await create_job(shared_api, tenant_keys.b_write, "b0", meta=meta)]
    assert await _list(shared_api, tenant_keys.b_write, **params) == b_jobs
    assert await _list(shared_api, tenant_keys.a_read, **params) == list(reversed(a_jobs))


async def test_stats_never_count_other_tenants_jobs(shared_api: LiveApi, tenant_keys: Keys) -> None:
    """Tenant B's stats count only B's jobs, never A's queued or finished ones."""
    for i in range(3):
        await create_job(shared_api, tenant_keys.a_write, f"a{i}")
    finished = await create_job(shared_api, tenant_keys.a_write, "a-done")
    await shared_api.http.post(f"/v1/jobs/{finished}/cancel", headers=bearer(tenant_keys.a_write))
    await create_job(shared_api, tenant_keys.b_write, "b0")

    async def stats(secret: str) -> dict[str, Any]:
        response = await shared_api.http.get("/v1/stats", headers=bearer(secret))
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, dict)
        return body

    b_stats = await stats(tenant_keys.b_write)
    assert b_stats["counts"] == [
        {"queue": "default", "task": "render", "state": "queued", "count": 1}
    ]
    assert b_stats["windows"] == {"5m": [], "1h": [], "24h": []}
    a_stats = await stats(tenant_keys.a_read)
    assert {(c["state"], c["count"]) for c in a_stats["counts"]} == {
        ("queued", 3),
        ("cancelled", 1),
    }
    assert [(t["task"], t["cancelled"]) for t in a_stats["windows"]["5m"]] == [("render", 1)]


@pytest.mark.parametrize("same_body", [True, False], ids=["same-body", "other-body"])
async def test_other_tenant_reusing_an_idempotency_key_gets_its_own_job(
    shared_api: LiveApi, tenant_keys: Keys, client_on_shared: Client, same_body: bool
) -> None:
    """B reusing A's Idempotency-Key creates B's own job (201), never A's job nor a 409."""
    key = {"Idempotency-Key": "order-1"}
    a = await shared_api.http.post(
        "/v1/jobs", json=render_body("v1"), headers={**bearer(tenant_keys.a_write), **key}
    )
    assert a.status_code == 201
    b = await shared_api.http.post(
        "/v1/jobs",
        json=render_body("v1" if same_body else "v2"),
        headers={**bearer(tenant_keys.b_write), **key},
    )
    assert b.status_code == 201, b.text
    assert b.json()["id"] != a.json()["id"]
    b_again = await shared_api.http.post(
        "/v1/jobs",
        json=render_body("v1" if same_body else "v2"),
        headers={**bearer(tenant_keys.b_write), **key},
    )
    assert (b_again.status_code, b_again.json()["id"]) == (200, b.json()["id"])
    read = await shared_api.http.get(b.headers["location"], headers=bearer(tenant_keys.b_write))
    assert read.status_code == 200
    assert await _list(shared_api, tenant_keys.b_write) == [b.json()["id"]]
    b_job = await client_on_shared.get(b.json()["id"], tenant=ALL_TENANTS)
    a_job = await client_on_shared.get(a.json()["id"], tenant=ALL_TENANTS)
    assert b_job is not None
    assert a_job is not None
    assert (b_job.tenant, b_job.idempotency_key) == (tenant_keys.tenant_b, "order-1")
    assert (a_job.tenant, a_job.args) == (tenant_keys.tenant_a, {"video_id": "v1"})
