"""The report app's rule over HTTP: per user, 2 reports running and 10 started per hour.

Users are the API's tenants. The operator sets one limit in code,
``tenant:*/task:render`` (each tenant's own budget for the task); clients
just ``POST /v1/jobs``: they name no key, and cannot spend another tenant's.
A job over the limit is accepted (201) and waits queued; it starts as soon
as a slot frees.
"""

from __future__ import annotations

import uuid

from skiplock import Client, JobState, Worker
from tests.helpers import wait_for, wait_for_state
from tests.integration.api.support import Keys, LiveApi, RenderControl, bearer, create_job


async def _state(api: LiveApi, secret: str, job_id: uuid.UUID) -> str:
    response = await api.http.get(f"/v1/jobs/{job_id}", headers=bearer(secret))
    assert response.status_code == 200, response.text
    state = response.json()["state"]
    assert isinstance(state, str)
    return state


async def _create(api: LiveApi, secret: str, name: str) -> uuid.UUID:
    return uuid.UUID(await create_job(api, secret, name))


async def test_two_running_and_ten_an_hour_per_user_end_to_end(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    await client.set_limit("tenant:*/task:render", max_running=2, max_starts=10, per=3600)

    # A's third report is accepted and waits; B is not held back by A.
    a = [await _create(api, keys.a_write, f"a{i}") for i in range(3)]
    b0 = await _create(api, keys.b_write, "b0")
    for job_id in (a[0], a[1], b0):
        await control.wait_started(job_id)
    marker = await _create(api, keys.b_write, "b-marker")  # proves a later claim ran
    await control.wait_started(marker)
    assert await _state(api, keys.a_write, a[2]) == "queued"
    assert a[2] not in control.started
    for job_id in (b0, marker):  # B's own two slots, free again for its next marker
        control.finish(job_id, {"pages": 1})
        await wait_for_state(client, job_id, JobState.SUCCEEDED)

    # A slot frees: the third starts.
    control.finish(a[0], {"pages": 1})
    await control.wait_started(a[2])
    assert await _state(api, keys.a_write, a[0]) == "succeeded"

    # Seven more: ten have started within the hour, the eleventh waits although
    # nothing of A's runs.
    more = [await _create(api, keys.a_write, f"a{i}") for i in range(3, 11)]
    for job_id in [a[1], a[2], *more[:7]]:
        await control.wait_started(job_id)
        control.finish(job_id, {"pages": 1})
        await wait_for_state(client, job_id, JobState.SUCCEEDED)
    eleventh = more[7]
    marker = await _create(api, keys.b_write, "b-marker-2")
    await control.wait_started(marker)
    assert await _state(api, keys.a_write, eleventh) == "queued"
    started = await client.pool.fetchval(
        "SELECT count(*) FROM skiplock.limit_starts WHERE key = $1",
        f"tenant:{keys.tenant_a}/task:render",
    )
    assert started == 10

    # The hour passes (the log is moved back rather than waited for): it starts.
    await client.pool.execute(
        "UPDATE skiplock.limit_starts SET started_at = started_at - interval '1 hour'"
    )
    await control.wait_started(eleventh)
    doc = await wait_for(
        lambda: api.http.get(f"/v1/jobs/{eleventh}", headers=bearer(keys.a_write)),
        lambda r: r.json()["state"] == "running",
        what="the eleventh report running",
    )
    assert doc.json()["limit_keys"] == [f"tenant:{keys.tenant_a}/task:render"]
