"""What every benchmark shares: subprocesses, the PostgreSQL server, fresh databases,
percentiles, and the header describing the machine and the server.

The server is the ``--dsn`` given to ``python -m bench`` (or
``SKIPLOCK_BENCH_DATABASE_URL``, else ``SKIPLOCK_DATABASE_URL``): each run gets
a database of its own there, cloned from a migrated template and dropped
afterwards. Without one, a throwaway server is started from the PostgreSQL
binaries on the machine (:class:`skiplock.testing.ThrowawayPostgres`), durable
(``fsync`` and ``synchronous_commit`` on) unless ``fast`` is asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

import asyncpg

import skiplock
from skiplock.testing import ThrowawayPostgres, clone_database, create_template, drop_database

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0
SCHEMA = "skiplock"

# Server settings printed in every header: the ones that move the figures.
SERVER_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "shared_buffers",
    "max_connections",
)


def note(message: str) -> None:
    """Progress for the person waiting: stderr, so stdout holds only the result."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- subprocesses -------------------------------------------------------------

_procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the repository root; its stderr goes to a temp file.

    Every process started here is stopped by :func:`kill_all` (at the latest
    when the benchmark exits).
    """
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by kill_all
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    _procs.append((proc, log))
    return proc


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    """The last few thousand characters a spawned process wrote to stderr."""
    for p, log in _procs:
        if p is proc:
            log.seek(0)
            return log.read().decode(errors="replace")[-3000:]
    return ""


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (a graceful stop for workers and servers), SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_all() -> None:
    """Stop every process :func:`spawn` started."""
    while _procs:
        proc, log = _procs.pop()
        stop(proc, 5.0)
        log.close()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop children and servers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


async def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], Awaitable[bool]],
    what: str,
    patience: float = READY_TIMEOUT,
) -> None:
    """Poll ``ready()`` until it is true; fail when ``proc`` dies or after ``patience`` s."""
    deadline = time.monotonic() + patience
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{stderr_of(proc)}")
        if await ready():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {patience} s:\n{stderr_of(proc)}")
        await asyncio.sleep(0.05)


def proc_status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (VmRSS, VmHWM, ...) in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) * 1024
    return fields


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far (from ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backend_cpu_seconds(conn: asyncpg.Connection[Any]) -> float:
    """CPU time of every other server process connected to ``conn``'s database.

    Reads ``/proc``: meaningful only when PostgreSQL runs on this machine (the
    benchmark's own or a local server); 0 for processes it cannot read.
    """
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    total = 0.0
    for (pid,) in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            continue
    return total


# -- numbers ------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def pickup_figures(
    latencies: list[float], gap: float, worker_cpu: float, server_cpu: float
) -> dict[str, float]:
    """The pickup benchmark's figures from its latencies (ms, one per job), the gap between
    jobs (s) and the CPU seconds the worker and the server spent, for skiplock and the lean
    reference alike."""
    jobs = len(latencies)
    return {
        "jobs": jobs,
        "gap_ms": gap * 1000,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "negative": sum(1 for v in latencies if v < 0),
        "worker_cpu_us_per_job": worker_cpu / jobs * 1e6,
        "server_cpu_us_per_job": server_cpu / jobs * 1e6,
    }


# -- the server and its databases ---------------------------------------------


def default_dsn(given: str | None) -> str | None:
    """The server to run on: ``given`` (``--dsn``), else ``SKIPLOCK_BENCH_DATABASE_URL``,
    else ``SKIPLOCK_DATABASE_URL``; ``None`` (a throwaway server) when none is set."""
    return (
        given
        or os.environ.get("SKIPLOCK_BENCH_DATABASE_URL")
        or os.environ.get("SKIPLOCK_DATABASE_URL")
    )


class Server:
    """The PostgreSQL server the benchmarks run on, and the databases made on it.

    ``async with Server.open(dsn, fast=...) as server`` uses the server ``dsn``
    points at, or starts a throwaway one when ``dsn`` is ``None``.
    """

    def __init__(self, url: str, throwaway: ThrowawayPostgres | None) -> None:
        self.url = url
        self.throwaway = throwaway
        self._databases: list[str] = []
        self._templates: dict[str, str] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, dsn: str | None, *, fast: bool) -> AsyncIterator[Server]:
        """The server at ``dsn``, or a throwaway one; every database made is dropped at the end."""
        throwaway: ThrowawayPostgres | None = None
        if dsn is None:
            note("starting a throwaway PostgreSQL (no --dsn given)")
            throwaway = ThrowawayPostgres(fast=fast, settings={"shared_buffers": "512MB"})
            await asyncio.to_thread(throwaway.start)
            dsn = throwaway.dsn
        server = cls(dsn, throwaway)
        try:
            yield server
        finally:
            try:
                for name in reversed(server._databases):
                    await server._drop(name)
            finally:
                if throwaway is not None:
                    await asyncio.to_thread(throwaway.stop)

    async def _drop(self, name: str) -> None:
        await drop_database(self.url, name)
        with contextlib.suppress(ValueError):
            self._databases.remove(name)

    async def template(
        self, key: str, prepare: Callable[[str], Awaitable[None]] | None = None
    ) -> str:
        """A migrated template database (made once per ``key``, then reused).

        ``prepare(dsn)`` runs on it after the migration, e.g. to fill the table.
        """
        if key in self._templates:
            return self._templates[key]
        name = f"skiplock_bench_tpl_{key}_{uuid.uuid4().hex[:8]}"
        self._databases.append(name)
        await create_template(self.url, name, schema=SCHEMA, prepare=prepare)
        self._templates[key] = name
        return name

    @contextlib.asynccontextmanager
    async def fresh_database(self, template: str) -> AsyncIterator[str]:
        """A new database cloned from ``template`` for one run; its DSN. Dropped afterwards."""
        name = f"skiplock_bench_{uuid.uuid4().hex[:12]}"
        dsn = await clone_database(self.url, template, name)
        self._databases.append(name)
        try:
            yield dsn
        finally:
            await self._drop(name)


# -- the header ---------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _ram_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def git_revision() -> str:
    """``git describe --always --dirty`` of the repository, or ``unknown``."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


async def header(server: Server) -> dict[str, Any]:
    """Machine, Python, PostgreSQL with its settings, and the skiplock revision."""
    conn = await asyncpg.connect(server.url)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {name: await conn.fetchval(f"SHOW {name}") for name in SERVER_SETTINGS}
    finally:
        await conn.close()
    return {
        "machine": {
            "cpu_model": _cpu_model(),
            "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)),
            "ram_bytes": _ram_bytes(),
            "load_average": list(os.getloadavg()),
        },
        "python": platform.python_version(),
        "postgres": {
            "version": version,
            "server": "throwaway" if server.throwaway is not None else "given",
            **settings,
        },
        "skiplock": {"version": skiplock.__version__, "revision": git_revision()},
    }


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value
