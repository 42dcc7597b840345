"""POST /v1/jobs with flow-control options: limit keys, fairness key, unique jobs, debounce."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.integration.api.support import Keys, LiveApi, bearer, create_job, render_body


async def _post(api: LiveApi, keys: Keys, video: str = "v1", **extra: Any) -> Any:
    return await api.http.post(
        "/v1/jobs", json=render_body(video, **extra), headers=bearer(keys.a_write)
    )


async def test_flow_control_keys_are_taken_and_shown(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """limit_keys, fairness_key and unique_key are stored and shown in the job document."""
    response = await _post(
        shared_api,
        tenant_keys,
        "keys-1",
        limit_keys=["user:7", "gpu"],
        fairness_key="user:7",
        unique_key="render:keys-1",
    )
    assert response.status_code == 201, response.text
    doc = response.json()
    assert doc["limit_keys"] == ["user:7", "gpu"]
    assert doc["fair_key"] == "user:7"
    assert doc["unique_key"] == "render:keys-1"
    read = await shared_api.http.get(doc["links"]["self"], headers=bearer(tenant_keys.a_read))
    assert read.json()["limit_keys"] == ["user:7", "gpu"]
    plain = (await _post(shared_api, tenant_keys, "keys-2")).json()
    assert (plain["limit_keys"], plain["fair_key"], plain["unique_key"]) == (None, None, None)


async def test_a_share_link_hides_the_keys(shared_api: LiveApi, tenant_keys: Keys) -> None:
    """Keys may name the tenant: a share link's document leaves them out."""
    job_id = await create_job(
        shared_api, tenant_keys.a_write, "keys-3", limit_keys=["user:1"], unique=True
    )
    shared = await shared_api.http.post(
        f"/v1/jobs/{job_id}/share", headers=bearer(tenant_keys.a_write)
    )
    doc = (await shared_api.http.get(shared.json()["url"])).json()
    assert doc["id"] == job_id
    assert (doc["limit_keys"], doc["fair_key"], doc["unique_key"]) == (None, None, None)


async def test_a_duplicate_answers_200_with_the_holder(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """unique: the second create answers 200 with the first job; replace changes it."""
    first = await _post(shared_api, tenant_keys, "dup-1", unique=True, priority=1)
    again = await _post(shared_api, tenant_keys, "dup-1", unique=True, priority=5)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["priority"] == 1
    replaced = await _post(
        shared_api, tenant_keys, "dup-2", unique_key="k-dup", on_duplicate="replace"
    )
    replaced2 = await _post(
        shared_api, tenant_keys, "dup-3", unique_key="k-dup", on_duplicate="replace", priority=4
    )
    assert replaced2.status_code == 200
    assert replaced2.json()["id"] == replaced.json()["id"]
    assert replaced2.json()["priority"] == 4


async def test_debounce_moves_the_run_time(shared_api: LiveApi, tenant_keys: Keys) -> None:
    """debounce: the job runs that long after the last create of the burst."""
    first = (await _post(shared_api, tenant_keys, "deb-1", debounce=60)).json()
    last = await _post(shared_api, tenant_keys, "deb-1", debounce=120)
    assert last.status_code == 200
    doc = last.json()
    assert doc["id"] == first["id"]
    assert doc["scheduled"] is True
    moved = datetime.fromisoformat(doc["run_at"]) - datetime.fromisoformat(first["run_at"])
    assert moved > timedelta(seconds=59)


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"limit_keys": []}, "limit_keys"),
        ({"limit_keys": [""]}, "limit_keys.0"),
        ({"limit_keys": [f"k{i}" for i in range(17)]}, "limit_keys"),
        ({"limit_keys": "user:1"}, "limit_keys"),
        ({"fairness_key": ""}, "fairness_key"),
        ({"unique": "yes"}, "unique"),
        ({"unique_key": "x" * 257}, "unique_key"),
        ({"on_duplicate": "merge"}, "on_duplicate"),
        ({"debounce": -1}, "debounce"),
    ],
    ids=repr,
)
async def test_bad_flow_options_are_422_invalid_body(
    shared_api: LiveApi, tenant_keys: Keys, extra: dict[str, Any], loc: str
) -> None:
    """Malformed options: 422 problem+json naming the field."""
    response = await _post(shared_api, tenant_keys, **extra)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "invalid-body"
    assert loc in [e["loc"] for e in problem["errors"]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"limit_keys": ["tenant:other"]}, "reserved prefix"),
        ({"limit_keys": ["a", "a"]}, "must not repeat"),
        ({"on_duplicate": "replace"}, "on_duplicate is for unique jobs"),
        ({"debounce": 5, "delay_seconds": 5}, "debounce or run_at/delay"),
        ({"debounce": 5, "on_duplicate": "keep"}, "not 'keep'"),
    ],
    ids=repr,
)
async def test_refused_flow_options_are_422_with_the_reason(
    shared_api: LiveApi, tenant_keys: Keys, extra: dict[str, Any], message: str
) -> None:
    """Options that JobSpec refuses: 422 problem+json saying why; nothing created."""
    response = await _post(shared_api, tenant_keys, **extra)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert message in response.json()["detail"]
