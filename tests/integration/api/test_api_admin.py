"""The `admin` scope: all tenants (or one named with ?tenant=); other keys see their own."""

from __future__ import annotations

from tests.integration.api.support import Keys, LiveApi, assert_problem, bearer, create_job, sse


async def test_admin_lists_every_tenant_or_the_one_it_names(
    api: LiveApi, keys: Keys, admin_key: str
) -> None:
    """Without ?tenant= an admin key lists all tenants' jobs; with it, that tenant's only."""
    a = await create_job(api, keys.a_write, "a")
    b = await create_job(api, keys.b_write, "b")
    everything = await api.http.get("/v1/jobs", headers=bearer(admin_key))
    assert {(d["id"], d["tenant"]) for d in everything.json()["jobs"]} == {
        (a, keys.tenant_a),
        (b, keys.tenant_b),
    }
    only_b = await api.http.get(
        "/v1/jobs", params={"tenant": keys.tenant_b}, headers=bearer(admin_key)
    )
    assert [d["id"] for d in only_b.json()["jobs"]] == [b]


async def test_admin_reads_streams_and_cancels_another_tenants_job(
    api: LiveApi, keys: Keys, admin_key: str
) -> None:
    """An admin key acts on any tenant's job: read, stream, cancel."""
    b = await create_job(api, keys.b_write, "b")
    read = await api.http.get(f"/v1/jobs/{b}", headers=bearer(admin_key))
    assert read.status_code == 200, read.text
    assert read.json()["tenant"] == keys.tenant_b
    async with sse(api.http, f"/v1/jobs/{b}/events", headers=bearer(admin_key)) as stream:
        first = await stream.next()
        assert first is not None
        assert first.json()["state"] == "queued"
        cancelled = await api.http.post(f"/v1/jobs/{b}/cancel", headers=bearer(admin_key))
        assert cancelled.status_code == 200, cancelled.text
        rest = await stream.rest()
    assert rest[-1].json()["state"] == "cancelled"


async def test_admin_creates_a_job_for_the_tenant_it_names(
    api: LiveApi, keys: Keys, admin_key: str
) -> None:
    """POST /v1/jobs?tenant=B with an admin key makes a job of B, which B's key then sees."""
    made = await api.http.post(
        "/v1/jobs",
        params={"tenant": keys.tenant_b},
        json={"task": "render", "args": {"video_id": "v"}},
        headers=bearer(admin_key),
    )
    assert made.status_code == 201, made.text
    seen = await api.http.get(f"/v1/jobs/{made.json()['id']}", headers=bearer(keys.b_write))
    assert seen.status_code == 200


async def test_a_tenant_key_cannot_name_another_tenant(api: LiveApi, keys: Keys) -> None:
    """A read/write key naming another tenant gets 403; naming its own changes nothing."""
    a = await create_job(api, keys.a_write, "a")
    other = await api.http.get(
        "/v1/jobs", params={"tenant": keys.tenant_b}, headers=bearer(keys.a_write)
    )
    assert_problem(other, 403, "forbidden")
    own = await api.http.get(
        "/v1/jobs", params={"tenant": keys.tenant_a}, headers=bearer(keys.a_write)
    )
    assert [d["id"] for d in own.json()["jobs"]] == [a]
    assert "tenant" not in own.json()["jobs"][0]
