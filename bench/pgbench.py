"""The database's own limit: ``pgbench`` claiming and completing jobs with plain SQL.

Two clients run :file:`bench/claim_complete.pgbench` (a claim of up to 100 jobs
and, as a second transaction, the completion of exactly those) in prepared
mode against the real migrated schema (same table and indexes as a
worker sees), pre-filled with queued jobs (10 % more than the run consumes,
so every claim finds 100). The figure is the rows that ended ``succeeded``
divided by the run's time as pgbench reports it (transactions / tps, without
connection time): jobs per second with no Python anywhere.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from bench.common import SCHEMA
from skiplock.testing import admin_execute

SCRIPT = Path(__file__).with_name("claim_complete.pgbench")
BATCH = 100  # rows per claim in SCRIPT
CLIENTS = 2

_FILL_QUEUED = f"""
INSERT INTO {SCHEMA}.jobs (id, queue, task, args, max_attempts)
SELECT gen_random_uuid(), 'default', 'noop', '{{}}', 1 FROM generate_series(1, $1)
"""  # noqa: S608 - the schema is a constant


def pgbench_path() -> str:
    """``pgbench`` on PATH, else the Debian location; FileNotFoundError when neither exists."""
    for candidate in (shutil.which("pgbench"), "/usr/bin/pgbench"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError("pgbench is not installed (it comes with the PostgreSQL client)")


def connection_args(dsn: str) -> tuple[list[str], dict[str, str]]:
    """pgbench options and environment (the password) for ``dsn``."""
    url = urlsplit(dsn)
    args: list[str] = []
    if url.hostname:
        args += ["-h", url.hostname]
    if url.port:
        args += ["-p", str(url.port)]
    if url.username:
        args += ["-U", unquote(url.username)]
    env = {"PGPASSWORD": unquote(url.password)} if url.password else {}
    return [*args, url.path.lstrip("/")], env


def _parse(out: str) -> tuple[int, float]:
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if done is None or tps is None:
        raise RuntimeError(f"cannot parse pgbench output:\n{out}")
    return int(done.group(1)), float(tps.group(1))


async def run_script(dsn: str, script: Path, *limit: str) -> tuple[int, float]:
    """Run ``script`` on :data:`CLIENTS` clients in prepared mode for ``limit`` (``-t N``
    scripts per client, or ``-T S`` seconds); the scripts run, and their rate per second
    as pgbench reports it (without connection time)."""
    connection, env = connection_args(dsn)
    argv = [pgbench_path(), "-n", "-M", "prepared", "-c", str(CLIENTS), "-j", str(CLIENTS)]
    argv += [*limit, "-f", str(script), *connection]
    proc = await asyncio.to_thread(
        subprocess.run,
        argv,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return _parse(proc.stdout)


async def claim_complete(dsn: str, transactions: int) -> dict[str, Any]:
    """``transactions`` claim+complete scripts per client; rows per second."""
    rows_wanted = CLIENTS * transactions * BATCH
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_FILL_QUEUED, rows_wanted + rows_wanted // 10)
    finally:
        await conn.close()
    await admin_execute(dsn, f"VACUUM ANALYZE {SCHEMA}.jobs")
    scripts, tps = await run_script(dsn, SCRIPT, "-t", str(transactions))
    conn = await asyncpg.connect(dsn)
    try:
        succeeded = await conn.fetchval(
            f"SELECT count(*) FROM {SCHEMA}.jobs WHERE state = 'succeeded'"  # noqa: S608
        )
    finally:
        await conn.close()
    seconds = scripts / tps
    return {
        "clients": CLIENTS,
        "scripts": scripts,
        "rows": succeeded,
        "seconds": seconds,
        "rows_per_s": succeeded / seconds,
    }
