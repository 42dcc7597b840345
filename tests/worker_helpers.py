"""Helpers for worker tests: fast settings, in-process workers, notification and history taps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import anyio
import asyncpg
from anyio.abc import Process

from skiplock import Worker, WorkerSettings
from tests.helpers import wait_for

# How long a test waits for a stopped worker's run() to return before killing it.
STOP_TIMEOUT = 10.0


def fast_settings(**overrides: Any) -> WorkerSettings:
    """Worker settings with short timings so tests run in well under a second per job."""
    values: dict[str, Any] = {
        "queues": ("default",),
        "concurrency": 4,
        "lease": 3.0,
        "heartbeat": 0.3,
        "poll": 0.2,
        "rescue": 0.3,
        "shutdown_grace": 0.5,
    }
    values.update(overrides)
    return WorkerSettings(**values)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` in a task group until the block ends, then stop it (drain) and wait."""
    done = anyio.Event()

    async def run() -> None:
        try:
            await worker.run()
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(10):
            await worker.wait_started()
        try:
            yield worker
        finally:
            worker.stop()
            with anyio.move_on_after(STOP_TIMEOUT) as scope:
                await done.wait()
            if scope.cancelled_caught:
                worker.kill()


@dataclass
class Notifications:
    """Payloads received on one channel, in arrival order."""

    payloads: list[str] = field(default_factory=list)

    def job_entries(self, job_id: uuid.UUID) -> list[tuple[str, float | None]]:
        """(state, progress) of every ``<schema>.job`` entry about ``job_id``."""
        entries: list[tuple[str, float | None]] = []
        for payload in self.payloads:
            for entry_id, state, progress in json.loads(payload):
                if entry_id == str(job_id):
                    entries.append((state, progress))
        return entries


@asynccontextmanager
async def listening(dsn: str, channel: str) -> AsyncIterator[Notifications]:
    """LISTEN on ``channel`` with a dedicated connection for the duration of the block."""
    seen = Notifications()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        seen.payloads.append(str(payload))

    conn = await asyncpg.connect(dsn)
    try:
        await conn.add_listener(channel, on_notify)
        yield seen
    finally:
        await conn.close()


# Every insert and state change of a job, as the database saw it (now() is the statement's
# clock). Heartbeats and progress writes, which leave the state alone, are not recorded.
_HISTORY_SQL = """
CREATE TABLE job_history (
    seq        bigserial PRIMARY KEY,
    job_id     uuid NOT NULL,
    state      text NOT NULL,
    attempt    integer NOT NULL,
    worker_id  text,
    run_at     timestamptz NOT NULL,
    started_at timestamptz,
    changed_at timestamptz NOT NULL
);
CREATE FUNCTION record_job_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.state = NEW.state THEN
        RETURN NULL;
    END IF;
    INSERT INTO job_history (job_id, state, attempt, worker_id, run_at, started_at, changed_at)
    VALUES (NEW.id, NEW.state::text, NEW.attempt, NEW.worker_id, NEW.run_at, NEW.started_at,
            now());
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobs_history AFTER INSERT OR UPDATE ON skiplock.jobs
    FOR EACH ROW EXECUTE FUNCTION record_job_history();
"""


@dataclass(frozen=True)
class HistoryRow:
    """A job row as it was right after an insert or a state change."""

    state: str
    attempt: int
    worker_id: str | None
    run_at: datetime
    started_at: datetime | None
    changed_at: datetime


async def install_history(dsn: str) -> None:
    """Record every insert and state change of a job in ``job_history`` from now on."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_HISTORY_SQL)
    finally:
        await conn.close()


async def job_history(dsn: str, job_id: uuid.UUID) -> list[HistoryRow]:
    """The recorded insert and state changes of one job, oldest first."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT state, attempt, worker_id, run_at, started_at, changed_at FROM job_history"
            " WHERE job_id = $1 ORDER BY seq",
            job_id,
        )
    finally:
        await conn.close()
    return [
        HistoryRow(
            r["state"], r["attempt"], r["worker_id"], r["run_at"], r["started_at"], r["changed_at"]
        )
        for r in rows
    ]


async def execute(dsn: str, query: str, *args: object) -> str:
    """Run one statement on a short-lived connection."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.execute(query, *args)
    finally:
        await conn.close()


async def fetchval(dsn: str, query: str, *args: object) -> Any:
    """Fetch one value on a short-lived connection."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def wait_listening(dsn: str, count: int = 1) -> None:
    """Wait until ``count`` sessions of ``dsn``'s database LISTEN on the flow channel (a
    worker's LISTEN connection is up), read directly from ``dsn`` (not through a pooler)."""
    await wait_for(
        lambda: fetchval(
            dsn,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN %.flow%'",
        ),
        lambda n: n == count,
        what="the worker's LISTEN connection",
    )


# -- subprocess workers -----------------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


@dataclass
class WorkerProcess:
    """A ``python -m skiplock worker`` child process whose JSON log goes to a file."""

    name: str
    process: Process
    log_path: Path

    def log_events(self) -> list[str]:
        """The ``event`` of every JSON log line written so far."""
        events: list[str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("event"), str):
                events.append(record["event"])
        return events

    async def wait_for_log(self, event: str, *, within: float = 10.0) -> None:
        """Wait until the process has logged ``event``."""

        async def events() -> list[str]:
            return self.log_events()

        await wait_for(
            events,
            lambda seen: event in seen,
            timeout=within,
            what=f"worker {self.name} to log {event!r} (last: the events it logged)",
        )

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def send_signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the process."""
        self.process.send_signal(signum)

    async def wait_exit(self, *, within: float) -> int:
        """Wait for the process to exit and return its exit code."""
        with anyio.fail_after(within):
            return await self.process.wait()


async def start_worker_process(
    name: str,
    dsn: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    /,
    *,
    app: str,
    **options: float | str,
) -> WorkerProcess:
    """Start ``python -m skiplock worker --app APP --worker-id NAME --<option> <value>…``
    (``env``: more environment variables)."""
    command = [
        sys.executable,
        "-m",
        "skiplock",
        "--log-format",
        "json",
        "worker",
        "--app",
        app,
        "--worker-id",
        name,
    ]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    log_path = log_dir / f"worker-{name}.log"
    log = _open_log(log_path)
    try:
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            env={**os.environ, "SKIPLOCK_DATABASE_URL": dsn, **(env or {})},
        )
    finally:
        log.close()  # the child holds its own copy of the descriptor
    return WorkerProcess(name, process, log_path)
