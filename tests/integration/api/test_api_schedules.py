"""Schedules over HTTP for operators (admin keys): list, pause, resume, trigger (issue 13)."""

from __future__ import annotations

from skiplock import Client
from skiplock.queue.schedules import ScheduleDefinition
from skiplock.worker.scheduler import Scheduler
from tests.integration.api.support import Keys, LiveApi, assert_problem, bearer


async def _declare(client: Client) -> None:
    definition = ScheduleDefinition(
        name="nightly", task="cleanup", cron="0 3 * * *", timezone="Europe/Paris"
    )
    scheduler = Scheduler(client.pool, client.store, [definition], poll=1)
    await scheduler.declare()
    await scheduler.run_once()


ROUTES = [
    ("GET", "/v1/admin/schedules"),
    ("POST", "/v1/admin/schedules/nightly/pause"),
    ("POST", "/v1/admin/schedules/nightly/resume"),
    ("POST", "/v1/admin/schedules/nightly/trigger"),
]


async def test_schedule_routes_need_an_admin_key(api: LiveApi, keys: Keys, client: Client) -> None:
    """A write key gets 403 on every schedule route and changes nothing; no key gets 401."""
    await _declare(client)
    for method, path in ROUTES:
        denied = await api.http.request(method, path, headers=bearer(keys.a_write))
        assert_problem(denied, 403, "forbidden")
        assert_problem(await api.http.request(method, path), 401, "unauthorized")
    (schedule,) = await client.schedules()
    assert not schedule.paused
    assert await client.pool.fetchval("SELECT count(*) FROM skiplock.jobs") == 0


async def test_list_pause_resume_and_trigger(api: LiveApi, admin_key: str, client: Client) -> None:
    await _declare(client)
    listed = await api.http.get("/v1/admin/schedules", headers=bearer(admin_key))
    assert listed.status_code == 200, listed.text
    (doc,) = listed.json()["schedules"]
    assert {k: doc[k] for k in ("name", "cron", "every_seconds", "timezone", "paused")} == {
        "name": "nightly",
        "cron": "0 3 * * *",
        "every_seconds": None,
        "timezone": "Europe/Paris",
        "paused": False,
    }
    assert doc["next_tick"] is not None
    paused = await api.http.post("/v1/admin/schedules/nightly/pause", headers=bearer(admin_key))
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True
    assert (await client.schedules())[0].paused
    resumed = await api.http.post("/v1/admin/schedules/nightly/resume", headers=bearer(admin_key))
    assert resumed.json()["paused"] is False
    made = await api.http.post("/v1/admin/schedules/nightly/trigger", headers=bearer(admin_key))
    assert made.status_code == 202, made.text
    job = await client.get(made.json()["job_id"])
    assert job is not None
    assert (job.task, job.meta) == ("cleanup", {"schedule": "nightly", "trigger": "manual"})
    for _, path in ROUTES[1:]:
        missing = await api.http.post(path.replace("nightly", "nope"), headers=bearer(admin_key))
        assert_problem(missing, 404, "schedule-not-found")
