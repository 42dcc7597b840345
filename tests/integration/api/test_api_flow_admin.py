"""Flow control over HTTP for operators (admin keys), and its gauges on /metrics."""

from __future__ import annotations

from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families

from skiplock import Client
from tests.integration.api.conftest import StartApi
from tests.integration.api.support import Keys, LiveApi, assert_problem, bearer
from tests.integration.test_flow_views import claim, enqueue_keyed


def _path(pattern: str) -> str:
    return "/v1/admin/limits/" + quote(pattern, safe="")


async def test_admin_routes_need_an_admin_key(api: LiveApi, keys: Keys) -> None:
    """A write key gets 403 on every flow route, and changes nothing; no key gets 401."""
    for method, path in [
        ("GET", "/v1/admin/limits"),
        ("PUT", _path("user:*")),
        ("DELETE", _path("user:*")),
        ("GET", "/v1/admin/queues"),
        ("POST", "/v1/admin/queues/default/pause"),
        ("POST", "/v1/admin/queues/default/resume"),
    ]:
        body = {"max_running": 1} if method == "PUT" else None
        denied = await api.http.request(method, path, json=body, headers=bearer(keys.a_write))
        assert_problem(denied, 403, "forbidden")
        anonymous = await api.http.request(method, path, json=body)
        assert_problem(anonymous, 401, "unauthorized")
    listed = await api.http.get("/v1/admin/queues", headers=bearer(keys.a_write))
    assert listed.status_code == 403


async def test_set_list_and_remove_limits(api: LiveApi, admin_key: str, client: Client) -> None:
    """PUT creates or replaces (a pattern may hold / and *), GET shows usage and the keys at
    their limit, DELETE removes (then 404)."""
    made = await api.http.put(
        _path("tenant:a/task:*"),
        json={"max_starts": 5, "per_seconds": 60},
        headers=bearer(admin_key),
    )
    assert made.status_code == 200, made.text
    assert {k: made.json()[k] for k in ("pattern", "max_running", "max_starts", "per_seconds")} == {
        "pattern": "tenant:a/task:*",
        "max_running": None,
        "max_starts": 5,
        "per_seconds": 60.0,
    }
    user = await api.http.put(_path("user:*"), json={"max_running": 1}, headers=bearer(admin_key))
    assert user.status_code == 200, user.text
    assert [(x.pattern, x.max_running, x.max_starts) for x in await client.limits()] == [
        ("tenant:a/task:*", None, 5),
        ("user:*", 1, None),
    ]
    await enqueue_keyed(client, [["user:1"]] * 3 + [["user:2"]])
    assert len(await claim(client, 10)) == 2

    listed = await api.http.get("/v1/admin/limits", headers=bearer(admin_key))
    assert listed.status_code == 200, listed.text
    doc = listed.json()
    assert [(x["pattern"], x["usage"]) for x in doc["limits"]] == [
        (
            "tenant:a/task:*",
            {"keys": 0, "keys_at_limit": 0, "running": 0, "queued": 0, "throttled": 0},
        ),
        ("user:*", {"keys": 2, "keys_at_limit": 2, "running": 2, "queued": 2, "throttled": 2}),
    ]
    assert doc["at_limit"] == [
        {"pattern": "user:*", "key": "user:1", "running": 1, "starts": None, "queued": 2},
        {"pattern": "user:*", "key": "user:2", "running": 1, "starts": None, "queued": 0},
    ]
    assert doc["at_limit_truncated"] is False

    gone = await api.http.delete(_path("tenant:a/task:*"), headers=bearer(admin_key))
    assert gone.status_code == 204
    assert [x.pattern for x in await client.limits()] == ["user:*"]
    assert_problem(
        await api.http.delete(_path("tenant:a/task:*"), headers=bearer(admin_key)),
        404,
        "limit-not-found",
    )


async def test_invalid_limits_are_422_and_write_nothing(
    api: LiveApi, admin_key: str, client: Client
) -> None:
    for body, code in [
        ({"max_starts": 5}, "invalid-setting"),
        ({}, "invalid-setting"),
        ({"max_running": -1}, "invalid-body"),
        ({"max_running": "2"}, "invalid-body"),
        ({"max_running": 1, "burst": 3}, "invalid-body"),
    ]:
        answer = await api.http.put(_path("k"), json=body, headers=bearer(admin_key))
        assert_problem(answer, 422, code)
    too_long = await api.http.put(
        _path("k" * 257), json={"max_running": 1}, headers=bearer(admin_key)
    )
    assert_problem(too_long, 422, "invalid-setting")
    not_json = await api.http.put(_path("k"), content=b"max_running=1", headers=bearer(admin_key))
    assert_problem(not_json, 415, "unsupported-media-type")
    assert await client.limits() == []


async def test_pause_resume_and_list_queues(api: LiveApi, admin_key: str, client: Client) -> None:
    paused = await api.http.post("/v1/admin/queues/media/pause", headers=bearer(admin_key))
    assert paused.status_code == 200, paused.text
    assert {k: paused.json()[k] for k in ("name", "paused", "fair")} == {
        "name": "media",
        "paused": True,
        "fair": False,
    }
    assert [(q.name, q.paused) for q in await client.queues()] == [("media", True)]
    await client.set_fair_weight("media", "acme", 4)
    await enqueue_keyed(client, [None, None], queue="media")
    listed = await api.http.get("/v1/admin/queues", headers=bearer(admin_key))
    assert listed.status_code == 200, listed.text
    assert listed.json() == {
        "queues": [
            {
                "queue": "media",
                "paused": True,
                "fair": False,
                "queued": 2,
                "running": 0,
                "throttled": 0,
            }
        ],
        "fair_weights": [{"queue": "media", "fair_key": "acme", "weight": 4}],
    }
    resumed = await api.http.post("/v1/admin/queues/media/resume", headers=bearer(admin_key))
    assert resumed.json()["paused"] is False
    assert [(q.name, q.paused) for q in await client.queues()] == [("media", False)]
    bad = await api.http.post("/v1/admin/queues/" + "q" * 129 + "/pause", headers=bearer(admin_key))
    assert_problem(bad, 422, "invalid-setting")


# -- /metrics ------------------------------------------------------------------


def _samples(text: str, name: str) -> dict[str, float]:
    """The samples of ``name`` by their one label's value ("" without a label)."""
    return {
        ",".join(sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_metrics_show_limits_per_pattern_and_paused_queues(
    start_api_with: StartApi, client: Client
) -> None:
    """Per limit pattern (never per key): keys at their limit, running and throttled jobs;
    per queue: paused. A removed limit disappears from the next reading."""
    api = await start_api_with(flow_metrics_seconds=0)
    await client.set_limit("user:*", max_running=1)
    await client.set_limit("idle", max_running=3)
    await enqueue_keyed(client, [["user:1"]] * 3 + [["user:2"]] * 2 + [["user:3"]])
    assert len(await claim(client, 10)) == 3
    await client.pause("media")

    text = (await api.http.get("/metrics")).text
    assert _samples(text, "skiplock_limit_keys_at_limit") == {"user:*": 3.0, "idle": 0.0}
    assert _samples(text, "skiplock_limit_keys") == {"user:*": 3.0, "idle": 0.0}
    assert _samples(text, "skiplock_limit_running_jobs") == {"user:*": 3.0, "idle": 0.0}
    assert _samples(text, "skiplock_limit_throttled_jobs") == {"user:*": 3.0, "idle": 0.0}
    assert _samples(text, "skiplock_queue_paused") == {"default": 0.0, "media": 1.0}
    assert _samples(text, "skiplock_queue_throttled_jobs") == {"default": 3.0, "media": 0.0}
    assert _samples(text, "skiplock_api_flow_metrics_up") == {"": 1.0}

    await client.remove_limit("idle")
    await client.resume("media")
    text = (await api.http.get("/metrics")).text
    assert set(_samples(text, "skiplock_limit_keys_at_limit")) == {"user:*"}
    assert _samples(text, "skiplock_queue_paused")["media"] == 0.0


async def test_metrics_read_the_database_at_most_once_per_period(
    start_api_with: StartApi, client: Client
) -> None:
    """Scrapes within flow_metrics_seconds get the last reading (no query per scrape)."""
    api = await start_api_with(flow_metrics_seconds=3600)
    await client.set_limit("user:*", max_running=1)
    first = (await api.http.get("/metrics")).text
    assert _samples(first, "skiplock_limit_keys") == {"user:*": 0.0}
    await client.set_limit("other", max_running=1)
    again = (await api.http.get("/metrics")).text
    assert _samples(again, "skiplock_limit_keys") == {"user:*": 0.0}


async def test_a_failed_reading_keeps_the_scrape_and_says_so(
    start_api_with: StartApi, client: Client
) -> None:
    """When the flow gauges cannot be read, /metrics still answers, with up at 0; the next
    reading that works sets it back to 1."""
    api = await start_api_with(flow_metrics_seconds=0)
    await client.set_limit("user:*", max_running=1)
    await client.pool.execute("ALTER VIEW skiplock.limit_usage RENAME TO limit_usage_away")
    try:
        broken = await api.http.get("/metrics")
        assert broken.status_code == 200
        assert _samples(broken.text, "skiplock_api_flow_metrics_up") == {"": 0.0}
        assert "skiplock_api_requests_total" in broken.text
    finally:
        await client.pool.execute("ALTER VIEW skiplock.limit_usage_away RENAME TO limit_usage")
    fixed = (await api.http.get("/metrics")).text
    assert _samples(fixed, "skiplock_api_flow_metrics_up") == {"": 1.0}
    assert _samples(fixed, "skiplock_limit_keys") == {"user:*": 0.0}


async def test_a_pattern_may_hold_any_character_but_nul(
    api: LiveApi, admin_key: str, client: Client
) -> None:
    """Slashes, line breaks and non-ASCII reach the handler (percent-encoded); NUL is 422."""
    pattern = "tenant:a/b\nc é/*"
    made = await api.http.put(_path(pattern), json={"max_running": 2}, headers=bearer(admin_key))
    assert made.status_code == 200, made.text
    assert [x.pattern for x in await client.limits()] == [pattern]
    nul = await api.http.put(_path("a\x00b"), json={"max_running": 2}, headers=bearer(admin_key))
    assert_problem(nul, 422, "invalid-setting")
    gone = await api.http.delete(_path(pattern), headers=bearer(admin_key))
    assert gone.status_code == 204


async def test_keys_at_their_limit_are_listed_up_to_a_hundred(
    api: LiveApi, admin_key: str, client: Client
) -> None:
    """101 keys at their limit: the first 100 (by pattern, key) and at_limit_truncated."""
    await client.set_limit("user:*", max_running=0)
    await enqueue_keyed(client, [[f"user:{i:03}"] for i in range(101)])
    doc = (await api.http.get("/v1/admin/limits", headers=bearer(admin_key))).json()
    assert [k["key"] for k in doc["at_limit"]] == [f"user:{i:03}" for i in range(100)]
    assert doc["at_limit_truncated"] is True
    assert doc["limits"][0]["usage"]["keys_at_limit"] == 101
