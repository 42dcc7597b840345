"""The lean loop's figures, measured as :mod:`bench.jobs` measures skiplock's.

Each function creates the ``lean`` schema (:mod:`bench.lean`) in the fresh
database it is given, and runs the lean loop in a separate process
(``python -m bench.lean``), like :class:`bench.worker.WorkerProcess`: the same
sizes, the same clocks, the same CPU accounting (the worker process from
``/proc``, PostgreSQL's backends of the database from ``/proc``, the enqueuing
process by :func:`time.process_time`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench import lean
from bench.common import (
    backend_cpu_seconds,
    cpu_seconds,
    pickup_figures,
    spawn,
    stop,
    wait_ready,
)

PREFILL_CHUNK = 5000
POLL = 0.05  # how often a run looks whether the table is empty
PICKUP_WARMUP_JOBS = 10
BATCH = 1000  # jobs per claim, as skiplock's best max_claim_batch
LOOPS = 2  # connections claiming in turn


@dataclasses.dataclass
class LeanProcess:
    """A running ``python -m bench.lean`` subprocess; its stats file is read after the stop."""

    proc: subprocess.Popen[bytes]
    tmp: tempfile.TemporaryDirectory[str]

    @classmethod
    async def start(cls, dsn: str, batch: int = BATCH, loops: int = LOOPS) -> LeanProcess:
        """Start the lean loop on ``dsn`` and wait until it has connected."""
        tmp = tempfile.TemporaryDirectory(prefix="skiplock-bench-lean-")
        ready = Path(tmp.name) / "ready"
        argv = [sys.executable, "-m", "bench.lean", "--ready-file", str(ready)]
        argv += ["--stats-file", str(Path(tmp.name) / "stats.json")]
        argv += ["--batch", str(batch), "--loops", str(loops)]
        proc = spawn(argv, {"SKIPLOCK_DATABASE_URL": dsn})  # not in argv: ps shows argv

        async def is_ready() -> bool:
            return ready.exists()

        try:
            await wait_ready(proc, is_ready, "lean loop")
        except BaseException:
            tmp.cleanup()
            raise
        return cls(proc, tmp)

    @property
    def pid(self) -> int:
        """The loop's process id."""
        return self.proc.pid

    async def stop(self) -> dict[str, Any]:
        """SIGTERM, wait for the exit; the loop's stats (jobs, seconds, probe start times)."""
        try:
            await asyncio.to_thread(stop, self.proc)
            path = Path(self.tmp.name) / "stats.json"
            if self.proc.returncode != 0 or not path.exists():
                raise RuntimeError(f"the lean loop exited with {self.proc.returncode}")
            stats: dict[str, Any] = orjson.loads(path.read_bytes())
            return stats
        finally:
            self.tmp.cleanup()


async def _setup(dsn: str) -> asyncpg.Connection[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await lean.create_schema(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _wait_empty(conn: asyncpg.Connection[Any], loop: LeanProcess, patience: float) -> None:
    """Wait until the loop has deleted every job (finished jobs are deleted)."""
    deadline = time.monotonic() + patience
    while await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {lean.SCHEMA}.jobs)"):  # noqa: S608
        if loop.proc.poll() is not None:
            raise RuntimeError(f"the lean loop exited with {loop.proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"lean jobs still pending after {patience:.0f} s")
        await asyncio.sleep(POLL)


async def throughput(dsn: str, jobs: int) -> dict[str, Any]:
    """``jobs`` queued no-op jobs run by one lean loop process; jobs/s and CPU per job.

    The time runs from just before the first claim that returned jobs to just
    after the last delete, by the loop's clock (it deletes finished jobs, so
    the table keeps no timestamps to read).
    """
    conn = await _setup(dsn)
    try:
        for start in range(0, jobs, PREFILL_CHUNK):
            await lean.enqueue_many(conn, "noop", [{}] * min(PREFILL_CHUNK, jobs - start))
        await conn.execute(f"VACUUM ANALYZE {lean.SCHEMA}.jobs")
        loop = await LeanProcess.start(dsn)
        try:
            worker_cpu = cpu_seconds(loop.pid)
            server_cpu = await backend_cpu_seconds(conn)
            await _wait_empty(conn, loop, patience=max(300.0, jobs / 200))
            worker_cpu = cpu_seconds(loop.pid) - worker_cpu
            server_cpu = await backend_cpu_seconds(conn) - server_cpu
        finally:
            stats = await loop.stop()
    finally:
        await conn.close()
    if stats["jobs"] != jobs:
        raise RuntimeError(f"the lean loop ran {stats['jobs']} of {jobs} jobs")
    seconds = float(stats["seconds"])
    return {
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds if seconds > 0 else float("inf"),
        "worker_cpu_us_per_job": worker_cpu / jobs * 1e6,
        "server_cpu_us_per_job": server_cpu / jobs * 1e6,
    }


async def _enqueue_rate(dsn: str, jobs: int, chunk: int | None) -> dict[str, Any]:
    """Enqueue ``jobs`` in chunks (``None``: one at a time); jobs/s and CPU per job."""
    conn = await _setup(dsn)
    try:
        client = await asyncpg.connect(dsn)
        try:
            server_cpu = await backend_cpu_seconds(conn)
            client_cpu = time.process_time()
            started = time.perf_counter()
            if chunk is None:
                for _ in range(jobs):
                    await lean.enqueue(client, "noop", {})
            else:
                for start in range(0, jobs, chunk):
                    payloads: list[Any] = [{} for _ in range(min(chunk, jobs - start))]
                    await lean.enqueue_many(client, "noop", payloads)
            seconds = time.perf_counter() - started
            client_cpu = time.process_time() - client_cpu
            server_cpu = await backend_cpu_seconds(conn) - server_cpu
        finally:
            await client.close()
        count = await conn.fetchval(f"SELECT count(*) FROM {lean.SCHEMA}.jobs")  # noqa: S608
    finally:
        await conn.close()
    if count != jobs:
        raise RuntimeError(f"{count} of {jobs} lean jobs were enqueued")
    return {
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "client_cpu_us_per_job": client_cpu / jobs * 1e6,
        "server_cpu_us_per_job": server_cpu / jobs * 1e6,
    }


async def bulk_enqueue(dsn: str, jobs: int, chunk: int) -> dict[str, Any]:
    """``lean.enqueue_many`` of ``jobs`` jobs in chunks of ``chunk``, one after another."""
    return {"chunk": chunk, **await _enqueue_rate(dsn, jobs, chunk)}


async def single_enqueue(dsn: str, jobs: int) -> dict[str, Any]:
    """``lean.enqueue`` ``jobs`` times, one after another (each its own commit)."""
    return await _enqueue_rate(dsn, jobs, None)


async def _send_spaced(conn: asyncpg.Connection[Any], count: int, gap: float) -> dict[int, float]:
    returned: dict[int, float] = {}
    due = time.monotonic()
    for _ in range(count):
        job_id = await lean.enqueue(conn, "pickup_probe", {})
        returned[job_id] = time.time()
        due += gap
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    return returned


async def pickup(dsn: str, jobs: int, gap: float) -> dict[str, Any]:
    """An idle lean loop; probes enqueued ``gap`` apart; enqueue return → handler start, ms.

    As :func:`bench.jobs.pickup`: both processes read the wall clock, warm-up
    probes first (not counted); CPU per probe over the measured ones.
    """
    conn = await _setup(dsn)
    try:
        client = await asyncpg.connect(dsn)
        try:
            loop = await LeanProcess.start(dsn)
            try:
                await _send_spaced(client, PICKUP_WARMUP_JOBS, gap)
                await _wait_empty(conn, loop, patience=120.0)
                worker_cpu = cpu_seconds(loop.pid)
                server_cpu = await backend_cpu_seconds(conn)
                sent = await _send_spaced(client, jobs, gap)
                await _wait_empty(conn, loop, patience=120.0)
                worker_cpu = cpu_seconds(loop.pid) - worker_cpu
                server_cpu = await backend_cpu_seconds(conn) - server_cpu
            finally:
                stats = await loop.stop()
        finally:
            await client.close()
    finally:
        await conn.close()
    starts = {int(k): float(v) for k, v in stats["starts"].items()}
    missing = [job_id for job_id in sent if job_id not in starts]
    if missing:
        raise RuntimeError(f"{len(missing)} of {jobs} lean pickup probes did not start")
    latencies = [(starts[job_id] - at) * 1000 for job_id, at in sent.items()]
    return pickup_figures(latencies, gap, worker_cpu, server_cpu)
