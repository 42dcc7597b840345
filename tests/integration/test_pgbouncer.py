"""skiplock through PgBouncer in transaction mode: client, worker, API, migrations."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import orjson
import pytest
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from skiplock import (
    Client,
    JobContext,
    JobSpec,
    JobState,
    TaskRegistry,
    Worker,
    check_schema,
    migrate,
    sql,
)
from skiplock.cli import cli
from skiplock.testing import admin_execute, database_url, drop_database, quote_ident
from tests.helpers import wait_for_state
from tests.integration.api.support import (
    WORKER_SETTINGS,
    RenderControl,
    RunningWorker,
    api_settings,
    bearer,
    create_job,
    make_keys,
    render_body,
    render_tasks,
    sse,
    start_api,
)
from tests.integration.pgbouncer import PgBouncer, bouncer_binary
from tests.worker_helpers import fast_settings, running, wait_listening

pytestmark = pytest.mark.skipif(
    bouncer_binary() is None,
    reason="pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def bouncer(pg_admin_dsn: str) -> Iterator[PgBouncer]:
    """One PgBouncer (transaction pooling, 4 server connections per database)."""
    with PgBouncer(pg_admin_dsn) as b:
        yield b


@pytest.fixture
def bouncer_dsn(bouncer: PgBouncer, db_dsn: str) -> str:
    """The test's fresh database, through PgBouncer."""
    return bouncer.dsn_for(db_dsn)


async def test_client_many_concurrent_calls(bouncer_dsn: str) -> None:
    async with await Client.connect(bouncer_dsn, max_size=20, statement_cache_size=0) as client:
        jobs = await asyncio.gather(*(client.enqueue("t", {"n": n}) for n in range(300)))
        got = await asyncio.gather(*(client.get(j.id) for j in jobs))
    assert [g.args["n"] for g in got if g is not None] == list(range(300))


async def test_migrate_through_pgbouncer_concurrently(
    bouncer: PgBouncer, pg_admin_dsn: str
) -> None:
    name = f"skiplock_pgb_{uuid.uuid4().hex[:12]}"
    await admin_execute(pg_admin_dsn, f"CREATE DATABASE {quote_ident(name)}")
    try:
        url = bouncer.dsn_for(database_url(pg_admin_dsn, name))
        with anyio.fail_after(60):
            applied = await asyncio.gather(*(migrate(url) for _ in range(4)))
            # every migration applied once, by one of them; and no lock is left behind
            assert sorted(v for done in applied for v in done) == [
                m.version for m in sql.migrations()
            ]
            assert await migrate(url) == []
        conn = await asyncpg.connect(database_url(pg_admin_dsn, name))
        try:
            assert await check_schema(conn) == sql.migrations()[-1].version
        finally:
            await conn.close()
    finally:
        await drop_database(pg_admin_dsn, name)


# -- worker -------------------------------------------------------------------


def _tasks(started: anyio.Event, reasons: list[str | None]) -> TaskRegistry:
    tasks = TaskRegistry()

    @tasks.task()
    async def square(ctx: JobContext, *, n: int) -> int:
        await ctx.progress(50, "half way")
        return n * n

    @tasks.task()
    async def stuck(ctx: JobContext) -> None:
        started.set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            reasons.append(ctx.cancel_reason)
            raise

    return tasks


async def _run_jobs_and_cancel(worker: Worker, client: Client, started: anyio.Event) -> None:
    """60 jobs with progress succeed, then a running job is cancelled: all through PgBouncer."""
    async with running(worker):
        jobs = await client.enqueue_many(JobSpec("square", {"n": n}) for n in range(60))
        for job in jobs:
            done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=30)
            assert done.result == job.args["n"] ** 2
            assert done.progress == 100
        stuck = await client.enqueue("stuck")
        with anyio.fail_after(10):
            await started.wait()
        await client.cancel(stuck.id)
        await wait_for_state(client, stuck.id, JobState.CANCELLED, timeout=10)


async def test_worker_through_pgbouncer_polls_without_listen_url(bouncer_dsn: str) -> None:
    """listen_url="none": jobs are claimed by the poll timer, cancels seen by the heartbeat."""
    started = anyio.Event()
    reasons: list[str | None] = []
    settings = fast_settings(statement_cache_size=0, listen_url="none")
    async with await Client.connect(bouncer_dsn, statement_cache_size=0) as client:
        with capture_logs() as logs:
            worker = Worker(_tasks(started, reasons), bouncer_dsn, settings)
            await _run_jobs_and_cancel(worker, client, started)
    events = [e["event"] for e in logs]
    assert "listener_connected" not in events  # the worker never LISTENed
    [start] = [e for e in logs if e["event"] == "worker_started"]
    assert start["notifications"] == "off: poll only"
    assert reasons == ["cancel_requested"]
    assert not [e for e in logs if "prepared statement" in str(e)]


async def test_worker_through_pgbouncer_listens_on_the_direct_url(
    bouncer_dsn: str, db_dsn: str
) -> None:
    """listen_url direct: with a 30 s poll and a 10 s heartbeat, NOTIFYs start jobs and cancel."""
    started = anyio.Event()
    reasons: list[str | None] = []
    settings = fast_settings(
        statement_cache_size=0, listen_url=db_dsn, poll=30.0, lease=30.0, heartbeat=10.0
    )
    async with await Client.connect(bouncer_dsn, statement_cache_size=0) as client:
        with capture_logs() as logs:
            worker = Worker(_tasks(started, reasons), bouncer_dsn, settings)
            async with running(worker):
                # the LISTEN session is a direct one: PgBouncer would not keep it
                await wait_listening(db_dsn)
                warm = await client.enqueue(
                    "square", {"n": 1}
                )  # absorbs a claim pending from start
                await wait_for_state(client, warm.id, JobState.SUCCEEDED, timeout=5)
                job = await client.enqueue("square", {"n": 3})
                done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=5)
                assert done.result == 9
                stuck = await client.enqueue("stuck")
                with anyio.fail_after(5):
                    await started.wait()
                await client.cancel(stuck.id)
                await wait_for_state(client, stuck.id, JobState.CANCELLED, timeout=5)
    assert reasons == ["cancel_requested"]
    assert [e["event"] for e in logs].count("listener_connected") == 1
    assert not [e for e in logs if "prepared statement" in str(e)]


# -- the status API -------------------------------------------------------------


async def test_api_serves_v1_through_pgbouncer_without_listening(
    bouncer_dsn: str, db_dsn: str
) -> None:
    """listen_url="none": many concurrent /v1 calls through PgBouncer; the hub does not LISTEN."""
    keys = await make_keys(db_dsn)
    settings = api_settings(bouncer_dsn, statement_cache_size=0, listen_url="none")
    api = await start_api(settings)
    try:
        assert not api.hub.listens
        auth = bearer(keys.a_write)
        created = await asyncio.gather(
            *(api.http.post("/v1/jobs", json=render_body(f"v{n}"), headers=auth) for n in range(40))
        )
        assert [r.status_code for r in created] == [201] * 40, [r.text for r in created]
        ids = [r.json()["id"] for r in created]
        got, cancelled = await asyncio.gather(
            asyncio.gather(*(api.http.get(f"/v1/jobs/{i}", headers=auth) for i in ids)),
            asyncio.gather(
                *(api.http.post(f"/v1/jobs/{i}/cancel", headers=auth) for i in ids[:10])
            ),
        )
        assert [(r.status_code, r.json()["id"]) for r in got] == [(200, i) for i in ids]
        assert [r.json()["state"] for r in cancelled] == ["cancelled"] * 10
        listing, stats, other_tenant = await asyncio.gather(
            api.http.get("/v1/jobs", params={"limit": 100}, headers=auth),
            api.http.get("/v1/stats", headers=auth),
            api.http.get(f"/v1/jobs/{ids[0]}", headers=bearer(keys.b_write)),
        )
        assert sorted(j["id"] for j in listing.json()["jobs"]) == sorted(ids)
        assert stats.status_code == 200, stats.text
        assert other_tenant.status_code == 404
        ready = await api.http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "listener": "off"}
        assert api.hub.stats.reconnects == 0  # never tried to connect a listener
    finally:
        await api.close()


async def test_api_streams_through_pgbouncer_with_a_direct_listen_url(
    bouncer_dsn: str, db_dsn: str
) -> None:
    """listen_url direct: a job run by a worker through PgBouncer streams every change."""
    keys = await make_keys(db_dsn)
    control = RenderControl()
    worker_settings = dataclasses.replace(
        WORKER_SETTINGS, statement_cache_size=0, listen_url=db_dsn
    )
    running_worker = RunningWorker(Worker(render_tasks(control), bouncer_dsn, worker_settings))
    await running_worker.start()
    api = await start_api(api_settings(bouncer_dsn, statement_cache_size=0, listen_url=db_dsn))
    try:
        assert api.hub.listens
        assert api.hub.connected
        job_id = await create_job(api, keys.a_write)
        await control.wait_started(uuid.UUID(job_id))
        url = f"/v1/jobs/{job_id}/events"
        async with sse(api.http, url, headers=bearer(keys.a_write)) as stream:
            first = await stream.next()
            assert first is not None
            assert first.json()["state"] == "running"
            for percent in (25.0, 50.0, 75.0):
                control.step(uuid.UUID(job_id), percent, f"at {percent}")
                event = await stream.next()
                assert event is not None
                assert event.json()["progress"] == percent
            control.finish(uuid.UUID(job_id), {"frames": 3})
            rest = await stream.rest()
        assert rest[-1].json()["state"] == "succeeded"
        assert rest[-1].json()["result"] == {"frames": 3}
        ready = await api.http.get("/readyz")
        assert ready.json()["checks"] == {"database": "ok", "listener": "ok"}
    finally:
        await api.close()
        await running_worker.stop()


# -- the CLI --------------------------------------------------------------------


async def test_cli_through_pgbouncer(bouncer_dsn: str, tmp_path: Path) -> None:
    """SKIPLOCK_STATEMENT_CACHE_SIZE=0 reaches the CLI's connections: commands in a row work."""
    runner = CliRunner()
    env = {"SKIPLOCK_STATEMENT_CACHE_SIZE": "0"}

    async def run(*args: str) -> Result:
        argv = ["--database-url", bouncer_dsn, *args]
        result = await anyio.to_thread.run_sync(lambda: runner.invoke(cli, argv, env=env))
        assert result.exit_code == 0, result.output
        return result

    async def load(client: Client, stop: anyio.Event) -> None:
        # other clients' transactions, so the CLI's land on changing server connections
        while not stop.is_set():
            await asyncio.gather(*(client.list(limit=5) for _ in range(8)))

    specs = tmp_path / "jobs.jsonl"
    specs.write_text("".join(f'{{"task": "t", "args": {{"n": {n}}}}}\n' for n in range(50)))
    async with (
        await Client.connect(bouncer_dsn, max_size=8, statement_cache_size=0) as client,
        anyio.create_task_group() as tg,
    ):
        stop = anyio.Event()
        tg.start_soon(load, client, stop)
        for _ in range(3):  # several rounds: each command opens new connections
            await run("enqueue", "--file", str(specs), "--json")
            await run("jobs", "list", "--json")
            await run("stats", "--json")
            await run("apikey", "list", "--tenant", "acme")
            await run("check")
        stop.set()
    listed = orjson.loads((await run("jobs", "list", "--limit", "500", "--json")).stdout)
    assert len(listed["jobs"]) == 150


async def test_worker_async_commit_through_pgbouncer_is_a_clear_error(bouncer_dsn: str) -> None:
    """PgBouncer refuses synchronous_commit as a startup parameter: the error says what to do."""
    settings = fast_settings(statement_cache_size=0, listen_url="none", async_commit=True)
    worker = Worker(TaskRegistry(), bouncer_dsn, settings)
    with (
        anyio.fail_after(30),
        pytest.raises(ValueError, match=r"ALTER ROLE .* SET synchronous_commit"),
    ):
        await worker.run()
