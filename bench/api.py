"""The status API's figures, run by ``python -m bench`` (``--only api`` and ``--only progress``).

1. ``GET /v1/jobs/{id}`` requests per second from one ``skiplock api`` process,
   next to a bare Starlette endpoint (:mod:`bench.bare_app`) running the same
   primary-key SELECT with an asyncpg pool; the ratio api/bare is the figure.
   Load comes from ``wrk`` when it is on PATH, else from :mod:`bench.loadgen`,
   always in a process of its own, after a one-second warm-up.
2. progress → SSE latency: a worker subprocess (:mod:`bench.worker`) runs
   ``bench.tasks:progress_probe``, which reports progress ``interval`` seconds
   apart with the send time as message, while this process follows
   ``GET /v1/jobs/{id}/events`` and takes receive time − send time for every
   ``job`` event. The interval is longer than the worker's
   ``progress_interval`` (0.1 s) so that no report waits for the coalescing
   timer: the figure is the pipeline's latency (write, NOTIFY, the hub's
   re-read, the SSE send).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

import skiplock
import skiplock.api
import skiplock.queue
from bench.common import ROOT, free_port, percentile, spawn, stop, wait_ready
from bench.worker import WorkerProcess

TENANT = "bench"
WARMUP = 1.0


async def _healthy(port: int) -> bool:
    async with httpx.AsyncClient(timeout=2.0) as http:
        with contextlib.suppress(httpx.HTTPError):
            return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    return False


async def _serve(
    argv: list[str], env: dict[str, str], port: int, what: str
) -> subprocess.Popen[bytes]:
    proc = spawn(argv, env)
    await wait_ready(proc, lambda: _healthy(port), what)
    return proc


@dataclass(frozen=True)
class _Api:
    port: int
    key: str
    proc: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def _api(dsn: str) -> AsyncIterator[_Api]:
    """One ``skiplock api`` process on a free port, and a read/write key for it."""
    conn = await asyncpg.connect(dsn)
    try:
        new_key = await skiplock.api.create_api_key(
            skiplock.queue.Store(), conn, tenant=TENANT, scopes=["read", "write"], name="bench"
        )
    finally:
        await conn.close()
    port = free_port()
    argv = [sys.executable, "-m", "skiplock", "--log-level", "warning", "api", "--port", str(port)]
    proc = await _serve(argv, {"SKIPLOCK_DATABASE_URL": dsn}, port, "skiplock api")
    try:
        yield _Api(port, new_key.secret, proc)
    finally:
        stop(proc)


# -- load -------------------------------------------------------------------


def generator() -> str:
    """The load generator in use: ``wrk`` when on PATH, else :mod:`bench.loadgen`."""
    return "wrk" if shutil.which("wrk") else "python-asyncio"


def _wrk(url: str, auth: str, connections: int, duration: float) -> dict[str, Any]:
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


def _load(port: int, path: str, key: str, connections: int, duration: float) -> dict[str, Any]:
    """Requests per second on ``path`` from a separate load-generator process."""
    auth = f"Authorization: Bearer {key}"
    if generator() == "wrk":
        return _wrk(f"http://127.0.0.1:{port}{path}", auth, connections, duration)
    argv = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--path", path]
    argv += ["--header", auth, "--connections", str(connections)]
    argv += ["--duration", str(duration), "--warmup", str(WARMUP)]
    out = subprocess.run(
        argv,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=duration + WARMUP + 60,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


async def get_job_ratio(dsn: str, *, duration: float, connections: int) -> dict[str, Any]:
    """``GET /v1/jobs/{id}`` req/s of the API and of the bare app, and their ratio."""
    async with await skiplock.Client.connect(dsn, max_size=2) as client:
        job = await client.enqueue("bench_read", {"n": 1}, queue="bench-idle", tenant=TENANT)
    path = f"/v1/jobs/{job.id}"
    async with _api(dsn) as api:
        bare_port = free_port()
        bare = await _serve(
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
            bare_port,
            "bare app",
        )
        try:
            # Both must serve the job before they are measured.
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {api.key}"}) as http:
                for port in (api.port, bare_port):
                    (await http.get(f"http://127.0.0.1:{port}{path}")).raise_for_status()
            api_load = await asyncio.to_thread(
                _load, api.port, path, api.key, connections, duration
            )
            bare_load = await asyncio.to_thread(
                _load, bare_port, path, api.key, connections, duration
            )
        finally:
            stop(bare)
    return {
        "generator": generator(),
        "connections": connections,
        "duration_s": duration,
        "api": api_load,
        "bare": bare_load,
        "ratio": api_load["rps"] / bare_load["rps"] if bare_load["rps"] else None,
    }


# -- SSE latency --------------------------------------------------------------


async def _follow(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], dsn: str
) -> list[float]:
    latencies: list[float] = []
    seen: set[object] = set()
    worker: asyncio.Task[WorkerProcess] | None = None
    try:
        async with http.stream("GET", url, headers=headers) as response:
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
                # Time each report once: the completion carries the last message again.
                message = doc.get("message")
                if message not in seen:
                    seen.add(message)
                    with contextlib.suppress(TypeError, ValueError):
                        latencies.append((received - float(message)) * 1000)
                if worker is None:  # the stream is open: now let the job run (reading on)
                    worker = asyncio.create_task(WorkerProcess.start(dsn))
                if doc["state"] not in ("queued", "running"):
                    if doc["state"] != "succeeded":
                        raise RuntimeError(f"probe job ended {doc['state']}: {doc.get('error')}")
                    break
    finally:
        if worker is not None:
            await (await worker).stop()
    return latencies


async def sse_latency(dsn: str, *, samples: int, interval: float) -> dict[str, Any]:
    """Latencies (ms) from ``ctx.progress`` in a worker to the SSE event arriving here."""
    async with _api(dsn) as api, await skiplock.Client.connect(dsn, max_size=2) as client:
        job = await client.enqueue(
            "progress_probe",
            {"steps": samples, "interval": interval},
            tenant=TENANT,
            max_attempts=1,
        )
        url = f"http://127.0.0.1:{api.port}/v1/jobs/{job.id}/events"
        headers = {"Authorization": f"Bearer {api.key}", "Accept": "text/event-stream"}
        async with (
            asyncio.timeout(samples * interval * 3 + 60),
            httpx.AsyncClient(timeout=30.0) as http,
        ):
            latencies = await _follow(http, url, headers, dsn)
    if not latencies:
        raise RuntimeError("no progress events were received")
    return {
        "samples": len(latencies),
        "requested": samples,
        "interval_ms": interval * 1000,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }
