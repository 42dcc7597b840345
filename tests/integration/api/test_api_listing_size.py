"""Listings stay small: big results are left out (in SQL), and a page is bounded in bytes."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from skiplock import Client, sql
from skiplock.queue import Store
from skiplock.queue.store import Completion
from tests.integration.api.conftest import StartApi
from tests.integration.api.support import Keys, LiveApi, bearer


async def _succeeded(client: Client, tenant: str, result: Any, **meta: Any) -> uuid.UUID:
    """A job of ``tenant`` that succeeded with ``result``, written as a worker would."""
    store = Store()
    job = await client.enqueue("render", {"video_id": "x"}, queue="sizes", tenant=tenant, meta=meta)
    (claimed,) = await store.claim_jobs(client.pool, ["sizes"], 1, 30.0, "size-worker")
    assert claimed.lease_token is not None
    written = await store.complete_jobs(
        client.pool,
        [
            Completion(
                job.id, claimed.lease_token, "succeeded", result_json=orjson.dumps(result).decode()
            )
        ],
    )
    assert written == {job.id}
    return job.id


async def _list(api: LiveApi, keys: Keys, **params: Any) -> dict[str, Any]:
    response = await api.http.get("/v1/jobs", params=params, headers=bearer(keys.a_write))
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def test_listing_leaves_out_big_results(
    start_api_with: StartApi, keys: Keys, client: Client
) -> None:
    """A result over list_max_result_bytes is null with result_omitted; a small one is kept."""
    api = await start_api_with(list_max_result_bytes=1000)
    # Incompressible enough and compressible: both are measured as JSON text.
    big_random = {"blob": uuid.uuid4().hex * 100}
    big_repeated = {"blob": "a" * 100_000}
    small = {"frames": 3}
    ids = {
        await _succeeded(client, keys.tenant_a, big_random): "random",
        await _succeeded(client, keys.tenant_a, big_repeated): "repeated",
        await _succeeded(client, keys.tenant_a, small): "small",
    }
    listed = {ids[uuid.UUID(d["id"])]: d for d in (await _list(api, keys))["jobs"]}
    assert (listed["random"]["result"], listed["random"]["result_omitted"]) == (None, True)
    assert (listed["repeated"]["result"], listed["repeated"]["result_omitted"]) == (None, True)
    assert (listed["small"]["result"], listed["small"]["result_omitted"]) == (small, False)
    # The job itself still has it.
    (big_id,) = [i for i, name in ids.items() if name == "repeated"]
    one = await api.http.get(f"/v1/jobs/{big_id}", headers=bearer(keys.a_write))
    assert one.json()["result"] == big_repeated


async def test_a_listing_page_is_bounded_in_bytes_and_the_cursor_continues(
    start_api_with: StartApi, keys: Keys, client: Client
) -> None:
    """Past list_max_response_bytes a page ends early; its cursor leads to every other job."""
    api = await start_api_with(list_max_response_bytes=6000)
    made = {await _succeeded(client, keys.tenant_a, None, note="n" * 2000) for _ in range(5)}
    first = await _list(api, keys, limit=50)
    assert 1 <= len(first["jobs"]) < 5
    assert first["next_cursor"] is not None
    seen = [uuid.UUID(d["id"]) for d in first["jobs"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = await _list(api, keys, limit=50, cursor=cursor)
        seen.extend(uuid.UUID(d["id"]) for d in page["jobs"])
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(made)


async def test_list_jobs_returns_every_column_of_the_table(client: Client) -> None:
    """list_jobs names its columns (to leave big results out): they stay those of jobs.*."""
    async with client.pool.acquire() as conn:
        listed = await conn.prepare(sql.query("list_jobs", "skiplock"))
        whole = await conn.prepare(sql.query("get_job", "skiplock"))
        columns = [a.name for a in listed.get_attributes()]
        expected = [*(a.name for a in whole.get_attributes()), "result_omitted"]
    assert columns == expected
