"""Every rejection answers application/problem+json with a stable code, and writes nothing."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from skiplock.api import create_api_key, sign_share_token
from skiplock.queue import Store
from tests.integration.api.support import (
    JOB_ROUTES,
    MAX_BODY,
    SHARE_SECRET,
    Keys,
    LiveApi,
    assert_problem,
    bearer,
    count_jobs,
    create_job,
    fetchval,
    render_body,
)

KEYED_ROUTES = [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/stats"), *JOB_ROUTES]


async def _create(api: LiveApi, keys: Keys, video_id: str = "v1") -> str:
    return await create_job(api, keys.a_write, video_id)


async def _call(
    shared_api: LiveApi, method: str, path: str, headers: dict[str, str], **kwargs: Any
) -> Any:
    if method == "POST" and path == "/v1/jobs":
        kwargs.setdefault("json", render_body())
    return await shared_api.http.request(method, path, headers=headers, **kwargs)


# -- 401 ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "template"), KEYED_ROUTES)
async def test_missing_key_is_401(
    shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str, method: str, template: str
) -> None:
    """A request without Authorization is 401 with a Bearer challenge, and writes nothing."""
    job_id = await _create(shared_api, tenant_keys)
    response = await _call(shared_api, method, template.format(id=job_id), {})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="skiplock"'
    assert await count_jobs(shared_dsn, tenant_keys) == 1


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer skl_" + "A" * 43,
        "Bearer not-even-a-skiplock-key",
        "Bearer",
        "Basic dXNlcjpwYXNz",
    ],
    ids=["unknown-key", "foreign-format", "empty-bearer", "basic-scheme"],
)
async def test_wrong_key_is_401(shared_api: LiveApi, shared_dsn: str, authorization: str) -> None:
    """An unknown key or another scheme is 401, and the create writes nothing."""
    before = await fetchval(shared_dsn, "SELECT count(*) FROM skiplock.jobs")
    response = await shared_api.http.post(
        "/v1/jobs", json=render_body(), headers={"Authorization": authorization}
    )
    assert_problem(response, 401, "unauthorized")
    assert await fetchval(shared_dsn, "SELECT count(*) FROM skiplock.jobs") == before


async def test_revoked_key_is_401(shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str) -> None:
    """A key works until revoked with store.revoke_api_key, then answers 401."""
    assert (
        await shared_api.http.get("/v1/jobs", headers=bearer(tenant_keys.a_write))
    ).status_code == 200
    conn = await asyncpg.connect(shared_dsn)
    try:
        revoked = await Store().revoke_api_key(conn, tenant_keys.a_write_id)
    finally:
        await conn.close()
    assert revoked is not None
    assert revoked.revoked_at is not None
    response = await shared_api.http.post(
        "/v1/jobs", json=render_body(), headers=bearer(tenant_keys.a_write)
    )
    assert_problem(response, 401, "unauthorized")
    assert await count_jobs(shared_dsn, tenant_keys) == 0


async def test_expired_key_is_401(shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str) -> None:
    """A key past its expires_at answers 401."""
    conn = await asyncpg.connect(shared_dsn)
    try:
        key = await create_api_key(
            Store(),
            conn,
            tenant=tenant_keys.tenant_a,
            scopes=["read"],
            name="expired",
            expires_at=datetime.now(UTC) - timedelta(seconds=1),
        )
    finally:
        await conn.close()
    assert_problem(
        await shared_api.http.get("/v1/jobs", headers=bearer(key.secret)), 401, "unauthorized"
    )


@pytest.mark.parametrize("suffix", ["", "/events"])
async def test_expired_share_token_is_401(
    shared_api: LiveApi, tenant_keys: Keys, suffix: str
) -> None:
    """A share token past its expiry answers 401 on the shared job and its stream."""
    job_id = uuid.UUID(await _create(shared_api, tenant_keys))
    token = sign_share_token(job_id, tenant_keys.tenant_a, time.time() - 1, SHARE_SECRET)
    assert_problem(await shared_api.http.get(f"/v1/shared/{token}{suffix}"), 401, "unauthorized")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _tampered(token: str, job_id: uuid.UUID, tenant: str) -> str:
    _payload, mac = token.split(".")
    forged = {"j": str(job_id), "t": tenant, "e": int(time.time()) + 3600}
    return f"{_b64(orjson.dumps(forged))}.{mac}"


@pytest.mark.parametrize(
    "tamper",
    ["other-job", "other-tenant", "longer-expiry", "foreign-secret", "truncated", "garbage"],
)
@pytest.mark.parametrize("suffix", ["", "/events"])
async def test_tampered_share_token_is_401(
    shared_api: LiveApi, tenant_keys: Keys, tamper: str, suffix: str
) -> None:
    """A share token whose payload or signature was altered answers 401."""
    job_id = uuid.UUID(await _create(shared_api, tenant_keys))
    other_id = uuid.UUID(await _create(shared_api, tenant_keys, "v2"))
    shared = await shared_api.http.post(
        f"/v1/jobs/{job_id}/share", headers=bearer(tenant_keys.a_write)
    )
    token = shared.json()["token"]
    assert (await shared_api.http.get(f"/v1/shared/{token}")).status_code == 200
    forged = {
        "other-job": _tampered(token, other_id, tenant_keys.tenant_a),
        "other-tenant": _tampered(token, job_id, tenant_keys.tenant_b),
        "longer-expiry": _tampered(token, job_id, tenant_keys.tenant_a),
        "foreign-secret": sign_share_token(
            job_id, tenant_keys.tenant_a, time.time() + 60, "y" * 32
        ),
        "truncated": token[:-3],
        "garbage": "not-a-token",
    }[tamper]
    assert_problem(await shared_api.http.get(f"/v1/shared/{forged}{suffix}"), 401, "unauthorized")


async def test_share_token_is_not_an_api_key(shared_api: LiveApi, tenant_keys: Keys) -> None:
    """A share token sent as a Bearer key is refused with 401."""
    job_id = await _create(shared_api, tenant_keys)
    token = (
        await shared_api.http.post(f"/v1/jobs/{job_id}/share", headers=bearer(tenant_keys.a_write))
    ).json()["token"]
    response = await shared_api.http.get(f"/v1/jobs/{job_id}", headers=bearer(token))
    assert_problem(response, 401, "unauthorized")


# -- 403 ----------------------------------------------------------------------


async def test_read_only_key_cannot_create(
    shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str
) -> None:
    """A read-only key POSTing a job is 403 and nothing is written."""
    response = await shared_api.http.post(
        "/v1/jobs", json=render_body(), headers=bearer(tenant_keys.a_read)
    )
    assert_problem(response, 403, "forbidden")
    assert await count_jobs(shared_dsn, tenant_keys) == 0


@pytest.mark.parametrize("action", ["cancel", "retry"])
async def test_read_only_key_cannot_change_a_job(
    shared_api: LiveApi, tenant_keys: Keys, action: str
) -> None:
    """A read-only key POSTing cancel or retry is 403 and the job is unchanged."""
    job_id = await _create(shared_api, tenant_keys)
    before = (
        await shared_api.http.get(f"/v1/jobs/{job_id}", headers=bearer(tenant_keys.a_read))
    ).json()
    response = await shared_api.http.post(
        f"/v1/jobs/{job_id}/{action}", headers=bearer(tenant_keys.a_read)
    )
    assert_problem(response, 403, "forbidden")
    after = (
        await shared_api.http.get(f"/v1/jobs/{job_id}", headers=bearer(tenant_keys.a_read))
    ).json()
    assert after == before


# -- 404 ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "template"), JOB_ROUTES)
async def test_unknown_job_is_404(
    shared_api: LiveApi, tenant_keys: Keys, method: str, template: str
) -> None:
    """A well-formed id of no job answers 404 job-not-found naming the id."""
    missing = uuid.uuid4()
    response = await _call(
        shared_api, method, template.format(id=missing), bearer(tenant_keys.a_write)
    )
    body = assert_problem(response, 404, "job-not-found")
    assert str(missing) in body["detail"]


@pytest.mark.parametrize(("method", "template"), JOB_ROUTES)
async def test_malformed_job_id_is_404(
    shared_api: LiveApi, tenant_keys: Keys, method: str, template: str
) -> None:
    """An id that is not a UUID answers 404 job-not-found, like a missing job."""
    response = await _call(
        shared_api, method, template.format(id="not-a-uuid"), bearer(tenant_keys.a_write)
    )
    assert_problem(response, 404, "job-not-found")


async def test_unknown_route_is_404_problem(shared_api: LiveApi, tenant_keys: Keys) -> None:
    """A path the API does not have answers 404 as a problem document."""
    assert_problem(
        await shared_api.http.get("/v1/nothing-here", headers=bearer(tenant_keys.a_write)),
        404,
        "not-found",
    )


async def test_wrong_method_is_405_problem(shared_api: LiveApi, tenant_keys: Keys) -> None:
    """A known path with a method it does not take answers 405 as a problem document."""
    assert_problem(
        await shared_api.http.delete("/v1/jobs", headers=bearer(tenant_keys.a_write)),
        405,
        "method-not-allowed",
    )


# -- 409 ----------------------------------------------------------------------


async def test_idempotency_key_with_another_body_is_409(
    shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str
) -> None:
    """Reusing an Idempotency-Key with a different body is 409 and writes no second job."""
    headers = {**bearer(tenant_keys.a_write), "Idempotency-Key": "k-1"}
    first = await shared_api.http.post("/v1/jobs", json=render_body("v1"), headers=headers)
    assert first.status_code == 201
    response = await shared_api.http.post("/v1/jobs", json=render_body("v2"), headers=headers)
    assert_problem(response, 409, "idempotency-conflict")
    assert await count_jobs(shared_dsn, tenant_keys) == 1


async def test_retry_of_a_queued_job_is_409(shared_api: LiveApi, tenant_keys: Keys) -> None:
    """Retrying a job that is queued is 409 invalid-state naming its state."""
    job_id = await _create(shared_api, tenant_keys)
    response = await shared_api.http.post(
        f"/v1/jobs/{job_id}/retry", headers=bearer(tenant_keys.a_write)
    )
    body = assert_problem(response, 409, "invalid-state")
    assert body["state"] == "queued"


# -- 413, 415 -------------------------------------------------------------------


def _oversized_body() -> bytes:
    body = orjson.dumps(render_body(meta={"pad": "x" * MAX_BODY}))
    assert len(body) > MAX_BODY
    return body


async def test_body_over_the_limit_with_content_length_is_413(
    shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str
) -> None:
    """A body whose Content-Length is over max_body_bytes is 413, and nothing is written."""
    response = await shared_api.http.post(
        "/v1/jobs",
        content=_oversized_body(),
        headers={**bearer(tenant_keys.a_write), "Content-Type": "application/json"},
    )
    assert "content-length" in {k.lower() for k in response.request.headers}
    assert_problem(response, 413, "body-too-large")
    assert await count_jobs(shared_dsn, tenant_keys) == 0


async def test_chunked_body_over_the_limit_is_413(
    shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str
) -> None:
    """A chunked body without Content-Length that grows over max_body_bytes is 413."""
    body = _oversized_body()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    response = await shared_api.http.post(
        "/v1/jobs",
        content=chunks(),
        headers={**bearer(tenant_keys.a_write), "Content-Type": "application/json"},
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413, "body-too-large")
    assert await count_jobs(shared_dsn, tenant_keys) == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_body_that_is_not_json_is_415(
    shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str, content_type: str | None
) -> None:
    """A create whose Content-Type is not application/json is 415, and nothing is written."""
    headers = bearer(tenant_keys.a_write)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await shared_api.http.post(
        "/v1/jobs", content=orjson.dumps(render_body()), headers=headers
    )
    assert_problem(response, 415, "unsupported-media-type")
    assert await count_jobs(shared_dsn, tenant_keys) == 0


# -- 422 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "loc"),
    [
        (b'{"task": "render", "args": {', "invalid-body", None),
        (b"[1, 2, 3]", "invalid-body", None),
        (b'{"task": "transcode", "args": {}}', "unknown-task", None),
        (b'{"task": "render", "args": {}}', "invalid-args", "args"),
        (b'{"task": "render", "args": {"video_id": 7}}', "invalid-args", "args.video_id"),
        (b'{"task": "render", "args": {"video_id": "v", "fps": 30}}', "invalid-args", "args"),
        (
            b'{"task": "render", "args": {"video_id": "v"}, "colour": "red"}',
            "invalid-body",
            "colour",
        ),
        (b'{"task": "render", "priority": "high"}', "invalid-body", "priority"),
        (b'{"task": "render", "priority": 40000}', "invalid-body", "priority"),
        (b'{"task": "render", "delay_seconds": -1}', "invalid-body", "delay_seconds"),
        (b'{"args": {"video_id": "v"}}', "invalid-body", "task"),
        (
            b'{"task": "render", "args": {"video_id": "v"}, "expires_at": "2999-01-01T00:00:00"}',
            "invalid-body",
            "expires_at",
        ),
        (
            b'{"task": "render", "args": {"video_id": "v"}, "expires_at": "2001-01-01T00:00:00Z"}',
            "invalid-body",
            None,
        ),
        (
            b'{"task": "render", "args": {"video_id": "v"}, "timeout_seconds": 0}',
            "invalid-body",
            "timeout_seconds",
        ),
        (
            b'{"task": "render", "args": {"video_id": "v"}, "meta": {"a": "\\u0000"}}',
            "invalid-body",
            None,
        ),
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "unknown-task",
        "args-missing-required",
        "args-wrong-type",
        "args-unknown-field",
        "unknown-body-field",
        "priority-not-int",
        "priority-out-of-range",
        "negative-delay",
        "task-missing",
        "expiry-without-offset",
        "expiry-in-the-past",
        "timeout-zero",
        "nul-in-meta",
    ],
)
async def test_invalid_create_body_is_422(
    shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str, body: bytes, code: str, loc: str | None
) -> None:
    """A create body that is not valid JSON, names no exposed task, or fails a schema is 422."""
    response = await shared_api.http.post(
        "/v1/jobs",
        content=body,
        headers={**bearer(tenant_keys.a_write), "Content-Type": "application/json"},
    )
    problem = assert_problem(response, 422, code)
    if loc is not None:
        assert loc in [e["loc"] for e in problem["errors"]], problem
    assert await count_jobs(shared_dsn, tenant_keys) == 0


@pytest.mark.parametrize("key", ["", "k" * 257])
async def test_idempotency_key_of_bad_length_is_422(
    shared_api: LiveApi, tenant_keys: Keys, shared_dsn: str, key: str
) -> None:
    """An empty or over-long Idempotency-Key is 422, and nothing is written."""
    response = await shared_api.http.post(
        "/v1/jobs",
        json=render_body(),
        headers={**bearer(tenant_keys.a_write), "Idempotency-Key": key},
    )
    assert_problem(response, 422, "invalid-header")
    assert await count_jobs(shared_dsn, tenant_keys) == 0


@pytest.mark.parametrize("wait", ["soon", "-1", "61", "nan", "inf", ""])
async def test_bad_wait_is_422(shared_api: LiveApi, tenant_keys: Keys, wait: str) -> None:
    """A wait that is not a number of seconds between 0 and max_wait_seconds is 422."""
    job_id = await _create(shared_api, tenant_keys)
    response = await shared_api.http.get(
        f"/v1/jobs/{job_id}", params={"wait": wait}, headers=bearer(tenant_keys.a_write)
    )
    body = assert_problem(response, 422, "invalid-parameter")
    assert body["parameter"] == "wait"


BAD_LIST_FILTERS = {
    "state-unknown": {"state": "done"},
    "limit-zero": {"limit": "0"},
    "limit-over-200": {"limit": "201"},
    "limit-not-a-number": {"limit": "many"},
    "created-after-not-a-time": {"created_after": "yesterday"},
    "created-after-naive": {"created_after": "2024-01-01T00:00:00"},
    "created-before-bad-month": {"created_before": "2024-13-01T00:00:00Z"},
    "created-after-before-year-1-in-utc": {"created_after": "0001-01-01T00:00:00+14:00"},
    "created-before-after-year-9999-in-utc": {"created_before": "9999-12-31T23:59:59-14:00"},
    "cursor-garbage": {"cursor": "not-a-cursor"},
    "task-with-nul": {"task": "render\x00"},
    "queue-with-nul": {"queue": "a\x00b"},
    "meta-value-with-nul": {"meta.user": "\x00"},
    "meta-label-with-nul": {"meta.us\x00er": "u1"},
}


@pytest.mark.parametrize("params", BAD_LIST_FILTERS.values(), ids=BAD_LIST_FILTERS.keys())
async def test_bad_list_filter_is_422(
    shared_api: LiveApi, tenant_keys: Keys, params: dict[str, str]
) -> None:
    """A list filter that cannot be parsed is 422 invalid-parameter."""
    response = await shared_api.http.get(
        "/v1/jobs", params=params, headers=bearer(tenant_keys.a_read)
    )
    assert_problem(response, 422, "invalid-parameter")


@pytest.mark.parametrize("ttl", ["never", "-5"])
async def test_bad_share_ttl_is_422(shared_api: LiveApi, tenant_keys: Keys, ttl: str) -> None:
    """A share ttl that is not a number of seconds in range is 422."""
    job_id = await _create(shared_api, tenant_keys)
    response = await shared_api.http.post(
        f"/v1/jobs/{job_id}/share", params={"ttl": ttl}, headers=bearer(tenant_keys.a_write)
    )
    body = assert_problem(response, 422, "invalid-parameter")
    assert body["parameter"] == "ttl"
