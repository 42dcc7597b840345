"""Following a job over HTTP: create, stream its progress, long-poll, conditional reads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from skiplock import ALL_TENANTS, Client, JobState, Worker
from tests.helpers import wait_for_state, wait_until
from tests.integration.api.support import (
    Keys,
    LiveApi,
    RenderControl,
    bearer,
    render_body,
    sse,
)


async def _create(api: LiveApi, keys: Keys, **body: Any) -> dict[str, Any]:
    response = await api.http.post(
        "/v1/jobs", json=render_body(**body), headers=bearer(keys.a_write)
    )
    assert response.status_code == 201, response.text
    doc = response.json()
    assert isinstance(doc, dict)
    return doc


async def _running_job(
    api: LiveApi, keys: Keys, control: RenderControl, client: Client
) -> uuid.UUID:
    """A job created over HTTP whose handler is now running and waiting for commands."""
    job_id = uuid.UUID((await _create(api, keys))["id"])
    await control.wait_started(job_id)
    await wait_for_state(client, job_id, JobState.RUNNING)
    return job_id


async def test_create_then_stream_progress_to_the_result(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """Create (201, Location), then the stream: current state, progress in order, result, end."""
    created = await api.http.post(
        "/v1/jobs",
        json=render_body("clip-7", meta={"user": "u1"}),
        headers={**bearer(keys.a_write), "Idempotency-Key": "render-clip-7"},
    )
    assert created.status_code == 201, created.text
    job = created.json()
    job_id = uuid.UUID(job["id"])
    assert created.headers["location"] == f"/v1/jobs/{job_id}"
    assert created.headers["etag"]
    assert job["task"] == "render"
    assert job["state"] == "queued"
    assert job["meta"] == {"user": "u1"}

    await control.wait_started(job_id)
    current = await wait_for_state(client, job_id, JobState.RUNNING)
    url = f"/v1/jobs/{job_id}/events"
    async with sse(api.http, url, headers=bearer(keys.a_write)) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        first = await stream.next()
        assert first is not None
        assert first.event == "job"
        assert first.json()["state"] == "running"
        assert first.json()["progress"] is None
        assert first.id == str(int(current.updated_at.timestamp() * 1_000_000))
        ids = [int(first.id)]
        for percent in (10.0, 35.5, 70.0, 99.0):
            control.step(job_id, percent, f"frame {percent}")
            event = await stream.next()
            assert event is not None
            assert event.event == "job"
            doc = event.json()
            assert (doc["state"], doc["progress"]) == ("running", percent)
            assert doc["message"] == f"frame {percent}"
            assert event.id is not None
            ids.append(int(event.id))
        control.finish(job_id, {"url": "s3://videos/clip-7.mp4"})
        last = await stream.next()
        assert last is not None
        assert last.event == "job"
        done = last.json()
        assert done["state"] == "succeeded"
        assert done["result"] == {"url": "s3://videos/clip-7.mp4"}
        assert done["progress"] == 100
        assert last.id is not None
        ids.append(int(last.id))
        assert await stream.next() is None  # the stream ends after the terminal event
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_reconnect_after_the_job_finished_gets_the_terminal_event(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """Reconnecting with Last-Event-ID after the job ended delivers the terminal event."""
    job_id = await _running_job(api, keys, control, client)
    url = f"/v1/jobs/{job_id}/events"
    async with sse(api.http, url, headers=bearer(keys.a_write)) as stream:
        first = await stream.next()
    assert first is not None
    assert first.id is not None
    control.step(job_id, 50.0)
    control.finish(job_id, {"frames": 24})
    await wait_for_state(client, job_id, JobState.SUCCEEDED)

    headers = {**bearer(keys.a_write), "Last-Event-ID": first.id}
    async with sse(api.http, url, headers=headers) as stream:
        assert stream.response.status_code == 200
        events = await stream.rest()
    assert [e.event for e in events] == ["job"]
    assert events[0].json()["state"] == "succeeded"
    assert events[0].json()["result"] == {"frames": 24}
    assert events[0].id is not None
    assert int(events[0].id) > int(first.id)


async def test_long_poll_wakes_when_the_job_changes(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """GET ?wait= returns the changed job when a NOTIFY wakes it (a timeout returns the old one)."""
    job_id = await _running_job(api, keys, control, client)
    before = await api.http.get(f"/v1/jobs/{job_id}", headers=bearer(keys.a_write))
    assert before.json()["progress"] is None
    results: list[Any] = []

    async def poll() -> None:
        response = await api.http.get(
            f"/v1/jobs/{job_id}", params={"wait": "10"}, headers=bearer(keys.a_write)
        )
        results.append(response)

    subscribers = api.hub.stats.subscribers
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await wait_until(
            lambda: api.hub.stats.subscribers > subscribers, what="the long-poll to subscribe"
        )
        assert results == []  # still waiting
        control.step(job_id, 42.0, "half way")
    (response,) = results
    assert response.status_code == 200
    assert response.json()["progress"] == 42.0
    assert response.json()["message"] == "half way"
    assert response.headers["etag"] != before.headers["etag"]


async def test_long_poll_with_current_etag_returns_the_next_version(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """GET ?wait= with If-None-Match of the current version answers 200 with the next one."""
    job_id = await _running_job(api, keys, control, client)
    before = await api.http.get(f"/v1/jobs/{job_id}", headers=bearer(keys.a_write))
    tag = before.headers["etag"]
    results: list[Any] = []

    async def poll() -> None:
        response = await api.http.get(
            f"/v1/jobs/{job_id}",
            params={"wait": "10"},
            headers={**bearer(keys.a_write), "If-None-Match": tag},
        )
        results.append(response)

    subscribers = api.hub.stats.subscribers
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await wait_until(
            lambda: api.hub.stats.subscribers > subscribers, what="the long-poll to subscribe"
        )
        control.step(job_id, 7.0)
    (response,) = results
    assert response.status_code == 200
    assert response.json()["progress"] == 7.0
    assert response.headers["etag"] != tag


async def test_cancel_of_a_running_job_is_202_and_its_stream_ends_cancelled(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """Cancelling a running job answers 202 (requested); the worker stops it; the stream ends."""
    job_id = await _running_job(api, keys, control, client)
    url = f"/v1/jobs/{job_id}/events"
    async with sse(api.http, url, headers=bearer(keys.a_read)) as stream:
        first = await stream.next()
        assert first is not None
        cancel = await api.http.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(keys.a_write))
        assert cancel.status_code == 202
        assert (cancel.json()["state"], cancel.json()["cancel_requested"]) == ("running", True)
        rest = await stream.rest()
    assert [e.json()["state"] for e in rest] == ["running"] * (len(rest) - 1) + ["cancelled"]
    assert rest[0].json()["cancel_requested"] is True


async def test_retry_of_a_failed_job_runs_it_again(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """Retrying a failed job answers 200 queued, and a worker runs a second attempt."""
    job_id = await _running_job(api, keys, control, client)
    control.fail(job_id, "bad frame")
    failed = await wait_for_state(client, job_id, JobState.FAILED)
    assert failed.error is not None
    control.started.discard(job_id)
    response = await api.http.post(f"/v1/jobs/{job_id}/retry", headers=bearer(keys.a_write))
    assert response.status_code == 200
    assert response.json()["state"] == "queued"
    assert response.json()["error"] is None  # queued again; the failure stays in the history
    assert response.json()["errors"][-1]["message"] == "bad frame"
    await control.wait_started(job_id)
    control.finish(job_id, "second time lucky")
    done = await wait_for_state(client, job_id, JobState.SUCCEEDED)
    assert (done.attempt, done.result) == (2, "second time lucky")


async def test_if_none_match_with_the_current_etag_is_304(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """If-None-Match with the current ETag and no wait answers 304 with the same ETag."""
    job = await _create(shared_api, tenant_keys)
    first = await shared_api.http.get(f"/v1/jobs/{job['id']}", headers=bearer(tenant_keys.a_write))
    assert first.status_code == 200
    tag = first.headers["etag"]
    again = await shared_api.http.get(
        f"/v1/jobs/{job['id']}", headers={**bearer(tenant_keys.a_write), "If-None-Match": tag}
    )
    assert again.status_code == 304
    assert again.headers["etag"] == tag
    assert again.content == b""


async def test_if_none_match_with_a_stale_etag_is_200(
    shared_api: LiveApi, tenant_keys: Keys, client_on_shared: Client
) -> None:
    """If-None-Match with an ETag of an older version answers 200 with the current job."""
    job = await _create(shared_api, tenant_keys)
    first = await shared_api.http.get(f"/v1/jobs/{job['id']}", headers=bearer(tenant_keys.a_write))
    await client_on_shared.cancel(uuid.UUID(job["id"]), tenant=ALL_TENANTS)
    again = await shared_api.http.get(
        f"/v1/jobs/{job['id']}",
        headers={**bearer(tenant_keys.a_write), "If-None-Match": first.headers["etag"]},
    )
    assert again.status_code == 200
    assert again.json()["state"] == "cancelled"
    assert again.headers["etag"] != first.headers["etag"]


async def test_same_idempotency_key_and_body_returns_the_same_job(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """Repeating a create with the same Idempotency-Key and body answers 200 with the first job."""
    headers = {**bearer(tenant_keys.a_write), "Idempotency-Key": "once"}
    first = await shared_api.http.post("/v1/jobs", json=render_body("v9"), headers=headers)
    second = await shared_api.http.post("/v1/jobs", json=render_body("v9"), headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]


async def test_list_pages_newest_first_with_a_cursor(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """GET /v1/jobs pages through the tenant's jobs newest first with next_cursor."""
    made = [(await _create(shared_api, tenant_keys, video_id=f"v{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params = {"limit": "2"} if cursor is None else {"limit": "2", "cursor": cursor}
        page = (
            await shared_api.http.get("/v1/jobs", params=params, headers=bearer(tenant_keys.a_read))
        ).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))


async def test_list_filters_by_state(
    shared_api: LiveApi, tenant_keys: Keys, client_on_shared: Client
) -> None:
    """GET /v1/jobs?state= keeps only jobs in the given states."""
    kept = await _create(shared_api, tenant_keys, video_id="a")
    other = await _create(shared_api, tenant_keys, video_id="b")
    await client_on_shared.cancel(uuid.UUID(kept["id"]), tenant=ALL_TENANTS)
    response = await shared_api.http.get(
        "/v1/jobs", params={"state": "cancelled"}, headers=bearer(tenant_keys.a_read)
    )
    assert response.status_code == 200
    ids = [j["id"] for j in response.json()["jobs"]]
    assert ids == [kept["id"]]
    assert other["id"] not in ids


async def test_a_job_that_succeeds_after_a_failure_shows_no_error(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """`error` is only the error of a failed job; the failed attempt stays in `errors`."""
    job_id = await _running_job(api, keys, control, client)
    control.fail(job_id, "bad frame")
    await wait_for_state(client, job_id, JobState.FAILED)
    control.started.discard(job_id)
    retried = await api.http.post(f"/v1/jobs/{job_id}/retry", headers=bearer(keys.a_write))
    assert retried.json()["error"] is None
    await control.wait_started(job_id)
    control.finish(job_id, "second time lucky")
    await wait_for_state(client, job_id, JobState.SUCCEEDED)
    doc = (await api.http.get(f"/v1/jobs/{job_id}", headers=bearer(keys.a_write))).json()
    assert (doc["state"], doc["error"]) == ("succeeded", None)
    assert [(e["type"], e["message"], e["attempt"]) for e in doc["errors"]] == [
        ("Fail", "bad frame", 1)
    ]
    assert "traceback" not in doc["errors"][0]


async def test_create_with_expiry_and_timeout(api: LiveApi, keys: Keys, client: Client) -> None:
    """POST /v1/jobs takes the job's expiry and its own attempt timeout, and shows them."""
    expires = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    doc = await _create(api, keys, expires_at=expires.isoformat(), timeout_seconds=90)
    assert datetime.fromisoformat(doc["expires_at"]) == expires
    assert doc["timeout_seconds"] == 90
    job = await client.get(doc["id"], tenant=ALL_TENANTS)
    assert job is not None
    assert (job.expires_at, job.timeout_seconds) == (expires, 90)
