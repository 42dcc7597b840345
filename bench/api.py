"""Benchmark of the status API: ``python -m bench.api [--duration S] [--connections N]
[--samples N] [--json]``.

Two figures, printed as a table (or as JSON with ``--json``) together with the
machine, the PostgreSQL version and its durability settings:

1. ``GET /v1/jobs/{id}`` requests per second from one ``skiplock api`` process,
   next to a bare Starlette endpoint (:mod:`bench.bare_app`) running the same
   primary-key SELECT with an asyncpg pool; the ratio api/bare is the headline.
   Load comes from ``wrk`` when it is on PATH, else from :mod:`bench.loadgen`,
   always in a process of its own, after a one-second warm-up.
2. progress → SSE latency: a ``skiplock worker`` subprocess runs
   ``bench.tasks:progress_probe``, which reports progress every 50 ms with the
   send time as message, while this process follows ``GET /v1/jobs/{id}/events``
   and takes receive time − send time for every ``job`` event.

The database is ``SKIPLOCK_BENCH_DATABASE_URL`` (a fresh database is created on
it and dropped afterwards) or a throwaway server with fsync on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

import skiplock
import skiplock.api
import skiplock.queue
from skiplock.logs import configure_logging
from skiplock.pgserver import ThrowawayPostgres

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench"
PROGRESS_INTERVAL = 0.05
WARMUP = 1.0
READY_TIMEOUT = 30.0

_procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []


# -- subprocesses -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the repository root; its stderr goes to a temp file."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _kill_all
    proc = subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log
    )
    _procs.append((proc, log))
    return proc


def _stderr_of(proc: subprocess.Popen[bytes]) -> str:
    for p, log in _procs:
        if p is proc:
            log.seek(0)
            return log.read().decode(errors="replace")[-3000:]
    return ""


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_all() -> None:
    while _procs:
        proc, log = _procs.pop()
        _stop(proc)
        log.close()


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


async def _wait_ready(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    """Poll ``/healthz`` until it answers 200, the process dies, or the timeout."""
    deadline = time.monotonic() + READY_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_stderr_of(proc)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {READY_TIMEOUT} s:\n{_stderr_of(proc)}")
            await asyncio.sleep(0.05)


# -- load -------------------------------------------------------------------


def _generator() -> str:
    return "wrk" if shutil.which("wrk") else "python-asyncio"


def _load(port: int, path: str, key: str, connections: int, duration: float) -> dict[str, Any]:
    """Requests per second on ``path`` from a separate load-generator process."""
    auth = f"Authorization: Bearer {key}"
    url = f"http://127.0.0.1:{port}{path}"
    if _generator() == "wrk":
        seconds = max(1, round(duration))
        base = ["wrk", "-t1", f"-c{connections}", "-H", auth]
        subprocess.run([*base, "-d1s", url], check=True, capture_output=True, timeout=60)
        out = subprocess.run(
            [*base, f"-d{seconds}s", url],
            check=True,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
        rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
        total = re.search(r"(\d+) requests in", out)
        bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
        errors = re.search(r"Socket errors:.*", out)
        if rps is None or total is None:
            raise RuntimeError(f"cannot parse wrk output:\n{out}")
        return {
            "rps": float(rps.group(1)),
            "requests": int(total.group(1)),
            "non_2xx": int(bad.group(1)) if bad else 0,
            "errors": errors.group(0) if errors else 0,
            "seconds": seconds,
        }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--path",
            path,
            "--header",
            auth,
            "--connections",
            str(connections),
            "--duration",
            str(duration),
            "--warmup",
            str(WARMUP),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=duration + WARMUP + 60,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


# -- SSE latency --------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def _sse_latency(
    client: skiplock.Client, api_port: int, key: str, dsn: str, samples: int
) -> list[float]:
    """Latencies (ms) from ``ctx.progress`` in a worker to the event arriving here."""
    job = await client.enqueue(
        "progress_probe",
        {"steps": samples, "interval": PROGRESS_INTERVAL},
        tenant=TENANT,
        max_attempts=1,
    )
    latencies: list[float] = []
    url = f"http://127.0.0.1:{api_port}/v1/jobs/{job.id}/events"
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    worker: subprocess.Popen[bytes] | None = None
    async with (
        asyncio.timeout(samples * PROGRESS_INTERVAL * 3 + 30),
        httpx.AsyncClient(timeout=30.0) as http,
        http.stream("GET", url, headers=headers) as response,
    ):
        response.raise_for_status()
        event, data = "", ""
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data = value
                continue
            if event != "job":
                event, data = "", ""
                continue
            received = time.time()
            doc = json.loads(data)
            event, data = "", ""
            with contextlib.suppress(TypeError, ValueError):
                latencies.append((received - float(doc["message"])) * 1000)
            if worker is None:  # the stream is open: now let the job run
                worker = _spawn(
                    [
                        sys.executable,
                        "-m",
                        "skiplock",
                        "--log-level",
                        "warning",
                        "worker",
                        "--app",
                        "bench.tasks:tasks",
                    ],
                    {"SKIPLOCK_DATABASE_URL": dsn},
                )
            if doc["state"] not in ("queued", "running"):
                if doc["state"] != "succeeded":
                    raise RuntimeError(f"probe job ended {doc['state']}: {doc.get('error')}")
                break
    if worker is not None:
        _stop(worker)
    return latencies


# -- the run ----------------------------------------------------------------


def _machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model}


async def _run(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    await skiplock.migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        postgres = {
            "version": await conn.fetchval("SHOW server_version"),
            "fsync": await conn.fetchval("SHOW fsync"),
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
        }
        new_key = await skiplock.api.create_api_key(
            skiplock.queue.Store(), conn, tenant=TENANT, scopes=["read", "write"], name="bench"
        )
        key = new_key.secret
    finally:
        await conn.close()

    async with await skiplock.Client.connect(dsn, max_size=2) as client:
        job = await client.enqueue("bench_read", {"n": 1}, queue="bench-idle", tenant=TENANT)
        path = f"/v1/jobs/{job.id}"

        api_port, bare_port = _free_port(), _free_port()
        api = _spawn(
            [
                sys.executable,
                "-m",
                "skiplock",
                "--log-level",
                "warning",
                "api",
                "--port",
                str(api_port),
            ],
            {"SKIPLOCK_DATABASE_URL": dsn},
        )
        bare = _spawn(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.bare_app:app",
                "--port",
                str(bare_port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            {"BENCH_BARE_DATABASE_URL": dsn, "BENCH_BARE_TENANT": TENANT},
        )
        await _wait_ready(api, api_port, "skiplock api")
        await _wait_ready(bare, bare_port, "bare app")

        # Both must serve the job before they are measured.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
            for port in (api_port, bare_port):
                (await http.get(f"http://127.0.0.1:{port}{path}")).raise_for_status()

        api_load = _load(api_port, path, key, args.connections, args.duration)
        bare_load = _load(bare_port, path, key, args.connections, args.duration)
        _stop(bare)

        latencies = await _sse_latency(client, api_port, key, dsn, args.samples)
    if not latencies:
        raise RuntimeError("no progress events were received")

    return {
        "machine": _machine(),
        "postgres": postgres,
        "load_generator": _generator(),
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": WARMUP,
        "get_job": {
            "api": api_load,
            "bare": bare_load,
            "ratio_api_over_bare": api_load["rps"] / bare_load["rps"] if bare_load["rps"] else None,
        },
        "sse_progress_latency_ms": {
            "samples": len(latencies),
            "requested": args.samples,
            "p50": _percentile(latencies, 50),
            "p99": _percentile(latencies, 99),
            "interval_ms": PROGRESS_INTERVAL * 1000,
        },
    }


def _table(r: dict[str, Any]) -> str:
    g, s, m, pg = r["get_job"], r["sse_progress_latency_ms"], r["machine"], r["postgres"]
    ratio = g["ratio_api_over_bare"]
    probe = f"{s['requested']} reports {s['interval_ms']:g} ms apart"
    rows = [
        "skiplock status API benchmark",
        f"  machine      {m['nproc']} CPUs, {m['cpu_model']}",
        f"  postgres     {pg['version']}, fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']}",
        f"  load         {r['load_generator']}, {r['connections']} connections, "
        f"{r['duration_s']:g} s after {r['warmup_s']:g} s warm-up, one server process",
        "",
        f"  {'GET /v1/jobs/{id}':<34}{'req/s':>10}{'requests':>10}{'non-2xx':>9}",
        f"  {'skiplock API':<34}{g['api']['rps']:>10.0f}{g['api']['requests']:>10}"
        f"{g['api']['non_2xx']:>9}",
        f"  {'bare Starlette + asyncpg':<34}{g['bare']['rps']:>10.0f}{g['bare']['requests']:>10}"
        f"{g['bare']['non_2xx']:>9}",
        f"  {'ratio api/bare':<34}{'n/a' if ratio is None else f'{ratio:.2f}':>10}",
        "",
        f"  {'progress → SSE latency':<34}{'samples':>10}{'p50 ms':>10}{'p99 ms':>9}",
        f"  {probe:<34}{s['samples']:>10}{s['p50']:>10.1f}{s['p99']:>9.1f}",
        "  (the worker writes progress at most every 0.1 s per job, its default;",
        "   latency counts from the ctx.progress call, so it includes that wait)",
    ]
    return "\n".join(rows)


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def main() -> None:
    """Run the benchmark and print its table (or JSON)."""
    parser = argparse.ArgumentParser(description="Benchmark the skiplock status API.")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per app")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--samples", type=int, default=100, help="progress reports to time")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.duration <= 0 or args.connections < 1 or args.samples < 1:
        parser.error("--duration, --connections and --samples must be positive")

    configure_logging("console", "warning")  # stdout carries only the table or the JSON
    signal.signal(signal.SIGTERM, _sigterm)
    server_url = os.environ.get("SKIPLOCK_BENCH_DATABASE_URL")
    database: str | None = None
    pg: ThrowawayPostgres | None = None
    try:
        if server_url:
            database = f"skiplock_bench_{uuid.uuid4().hex[:12]}"
            asyncio.run(_admin(server_url, f'CREATE DATABASE "{database}"'))
            dsn = _with_database(server_url, database)
        else:
            pg = ThrowawayPostgres(fast=False).start()
            dsn = pg.dsn
        result = asyncio.run(_run(args, dsn))
    finally:
        _kill_all()
        if server_url and database:
            asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        if pg is not None:
            pg.stop()
    print(json.dumps(result, indent=2) if args.json else _table(result))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
