"""Share links: a signed, expiring, read-only view of one job for pages without a key."""

from __future__ import annotations

from datetime import datetime

from skiplock.api import verify_share_token
from tests.integration.api.support import (
    SHARE_SECRET,
    Keys,
    LiveApi,
    assert_problem,
    bearer,
    create_job,
    sse,
)


async def test_shared_link_shows_the_job_without_a_key(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """POST /share answers a link; GET on it without any key shows the job."""
    job_id = await create_job(shared_api, tenant_keys.a_write, meta={"page": "status"})
    shared = await shared_api.http.post(
        f"/v1/jobs/{job_id}/share", headers=bearer(tenant_keys.a_write)
    )
    assert shared.status_code == 201, shared.text
    link = shared.json()
    assert link["url"] == f"/v1/shared/{link['token']}"
    assert link["events"] == f"/v1/shared/{link['token']}/events"
    response = await shared_api.http.get(link["url"])
    assert response.status_code == 200, response.text
    doc = response.json()
    assert (doc["id"], doc["state"], doc["meta"]) == (job_id, "queued", {"page": "status"})
    assert response.headers["etag"]


async def test_read_only_key_can_share(shared_api: LiveApi, tenant_keys: Keys) -> None:
    """Sharing needs only the read scope: a read-only key gets a working link."""
    job_id = await create_job(shared_api, tenant_keys.a_write)
    shared = await shared_api.http.post(
        f"/v1/jobs/{job_id}/share", headers=bearer(tenant_keys.a_read)
    )
    assert shared.status_code == 201, shared.text
    assert (await shared_api.http.get(shared.json()["url"])).json()["id"] == job_id


async def test_share_link_lasts_until_the_expiry_it_reports(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """The token is valid up to the expires_at the share answer states, and not after."""
    job_id = await create_job(shared_api, tenant_keys.a_write)
    shared = await shared_api.http.post(
        f"/v1/jobs/{job_id}/share", params={"ttl": "30.5"}, headers=bearer(tenant_keys.a_write)
    )
    link = shared.json()
    expires = datetime.fromisoformat(link["expires_at"]).timestamp()
    assert verify_share_token(link["token"], SHARE_SECRET, now=expires - 0.001) is not None
    assert verify_share_token(link["token"], SHARE_SECRET, now=expires) is None


async def test_shared_stream_ends_with_expired_event_when_the_link_expires(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """An SSE stream on a shared link sends the job, then `expired` when the link expires."""
    job_id = await create_job(shared_api, tenant_keys.a_write)
    shared = await shared_api.http.post(
        f"/v1/jobs/{job_id}/share", params={"ttl": "1"}, headers=bearer(tenant_keys.a_write)
    )
    link = shared.json()
    async with sse(shared_api.http, link["events"]) as stream:
        assert stream.response.status_code == 200
        first = await stream.next()
        assert first is not None
        assert (first.event, first.json()["id"]) == ("job", job_id)
        rest = await stream.rest(within=10)
    assert [e.event for e in rest] == ["expired"]
    assert stream.ended
    assert_problem(await shared_api.http.get(link["url"]), 401, "unauthorized")


async def test_shared_link_follows_the_job_to_its_end(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """The shared stream carries the job's changes: a cancel ends it with the terminal event."""
    job_id = await create_job(shared_api, tenant_keys.a_write)
    link = (
        await shared_api.http.post(f"/v1/jobs/{job_id}/share", headers=bearer(tenant_keys.a_write))
    ).json()
    async with sse(shared_api.http, link["events"]) as stream:
        first = await stream.next()
        assert first is not None
        assert first.json()["state"] == "queued"
        cancelled = await shared_api.http.post(
            f"/v1/jobs/{job_id}/cancel", headers=bearer(tenant_keys.a_write)
        )
        assert cancelled.status_code == 200
        rest = await stream.rest()
    assert [(e.event, e.json()["state"]) for e in rest] == [("job", "cancelled")]


async def test_shared_document_links_point_at_the_share_routes(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """A job read through a share token links to the share routes, which work without a key."""
    job_id = await create_job(shared_api, tenant_keys.a_write)
    shared = await shared_api.http.post(
        f"/v1/jobs/{job_id}/share", headers=bearer(tenant_keys.a_write)
    )
    link = shared.json()
    doc = (await shared_api.http.get(link["url"])).json()
    assert doc["links"] == {"self": link["url"], "events": link["events"]}
    async with sse(shared_api.http, link["events"]) as stream:
        event = await stream.next()
    assert event is not None
    assert event.json()["links"] == doc["links"]
    followed = await shared_api.http.get(doc["links"]["self"])
    assert followed.status_code == 200
    assert followed.json()["id"] == job_id
