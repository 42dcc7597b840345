"""Fixtures of the status API tests: keys, a scripted worker, live apps.

Two kinds of app:

- ``api`` (with ``keys``, ``db_dsn``): a fresh database and server per test, for
  tests that run a worker, watch the hub, or change the database;
- ``shared_api`` (with ``tenant_keys``, ``shared_dsn``): one database and server
  per module, for plain request/response tests. Each test gets two tenants of
  its own, so tenancy keeps the tests apart and row counts are per tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from skiplock import Client, Worker
from skiplock.api import create_api_key
from skiplock.queue import Store
from tests.integration.api.support import (
    WORKER_SETTINGS,
    Keys,
    LiveApi,
    RenderControl,
    RunningWorker,
    api_settings,
    make_keys,
    render_tasks,
    start_api,
)

StartApi = Callable[..., Awaitable[LiveApi]]


def database_dsn(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database on the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def admin_execute(admin_dsn: str, statement: str) -> None:
    """Run one statement on a short-lived admin connection."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def admin_key(db_dsn: str) -> str:
    """An admin key of a third tenant, "ops"."""
    conn = await asyncpg.connect(db_dsn)
    try:
        made = await create_api_key(Store(), conn, tenant="ops", scopes=["admin"], name="ops")
    finally:
        await conn.close()
    return made.secret


@pytest_asyncio.fixture
async def keys(db_dsn: str) -> Keys:
    """API keys of two tenants in the test database."""
    return await make_keys(db_dsn)


@pytest.fixture
def control() -> RenderControl:
    """Drives the ``render`` jobs the worker runs."""
    return RenderControl()


@pytest_asyncio.fixture
async def worker(db_dsn: str, control: RenderControl) -> AsyncIterator[Worker]:
    """An in-process worker running ``render`` with short timings."""
    running = RunningWorker(Worker(render_tasks(control), db_dsn, WORKER_SETTINGS))
    await running.start()
    try:
        yield running.worker
    finally:
        await running.stop()


@pytest_asyncio.fixture
async def start_api_with(db_dsn: str) -> AsyncIterator[StartApi]:
    """Start a live app on the test database with settings overrides; stopped after the test."""
    started: list[LiveApi] = []

    async def start(*, send_buffer: int | None = None, **overrides: Any) -> LiveApi:
        api = await start_api(api_settings(db_dsn, **overrides), send_buffer=send_buffer)
        started.append(api)
        return api

    try:
        yield start
    finally:
        for api in reversed(started):
            await api.close()


@pytest_asyncio.fixture
async def api(start_api_with: StartApi) -> LiveApi:
    """A live app with the default test settings on a fresh database."""
    return await start_api_with()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared_dsn(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[str]:
    """A migrated database shared by the tests of one module."""
    name = f"skiplock_api_{uuid.uuid4().hex[:12]}"
    await admin_execute(pg_admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield database_dsn(pg_admin_dsn, name)
    finally:
        await admin_execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared_api(shared_dsn: str) -> AsyncIterator[LiveApi]:
    """A live app with the default test settings, shared by the tests of one module."""
    api = await start_api(api_settings(shared_dsn))
    try:
        yield api
    finally:
        await api.close()


@pytest_asyncio.fixture
async def tenant_keys(shared_dsn: str) -> Keys:
    """Keys of two tenants of this test's own, in the shared database."""
    suffix = uuid.uuid4().hex[:10]
    return await make_keys(shared_dsn, f"acme-{suffix}", f"globex-{suffix}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client_on_shared(shared_dsn: str) -> AsyncIterator[Client]:
    """A library client on the shared database (tenant-blind reads for assertions)."""
    async with await Client.connect(shared_dsn, max_size=2) as client:
        yield client
