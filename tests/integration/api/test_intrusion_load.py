"""Hostile load on a real ``skiplock api`` process: silent SSE clients and slow bodies.

The API runs as its own process (``python -m skiplock api``), so its memory
can be read from ``/proc``. Against it: 150 readers following one job, 5
readers and 50 clients that never read a byte following another job whose
events are 96 KiB each, 20 clients trickling a body a byte at a time, 20 that
stop half-way through their body, and 20 that stop half-way through their
headers. The readers must see every step of both jobs in order, other requests
must be served, and the process must not hold what the silent clients do not
read: unbounded, their 100 steps of 96 KiB would be 480 MiB. A second test
ends a job with an 8 MiB result under 60 streams: events leave it out.

Each test logs the process's memory (``api_memory…``: run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest
import structlog
from anyio.abc import Process

from skiplock import Client, JobState, Worker
from tests.helpers import wait_for, wait_for_state, wait_until
from tests.integration.api.support import (
    RENDER_ARGS,
    Keys,
    RenderControl,
    bearer,
    render_body,
    sse,
)
from tests.worker_helpers import PROJECT_ROOT

log = structlog.get_logger("tests.intrusion_load")

READERS = 150  # on the small job
BIG_READERS = 5  # on the big job
SILENT = 50  # on the big job, never reading
SLOW_BODIES = 20  # each of: trickling, stopped mid-body, stopped mid-headers
PAD = 96 * 1024  # bytes of meta in each event of the big job
STEPS = 100
# What the process may grow by under all of it; holding the silent clients'
# unread events would take 480 MiB.
GROWTH_BOUND_MIB = 200


# -- the API process ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert isinstance(port, int)
        return port


@dataclass
class ApiProcess:
    """A ``python -m skiplock api`` child and where it listens."""

    process: Process
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    def memory_kib(self, field_name: str = "VmRSS") -> int:
        """A memory figure of the process from /proc (VmRSS now, VmHWM the peak), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field_name:
                return int(value.split()[0])
        raise AssertionError(f"no {field_name} in /proc/{self.process.pid}/status")


@contextlib.asynccontextmanager
async def api_process(dsn: str, log_dir: Path, **env: str) -> AsyncIterator[ApiProcess]:
    """Start the API on a free port with ``SKIPLOCK_*`` ``env``; stop it after the block."""
    port = _free_port()
    log_path = log_dir / "api.log"
    command = [sys.executable, "-m", "skiplock", "--log-format", "json", "api", "--port", str(port)]
    with log_path.open("ab") as out:
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            env={**os.environ, "SKIPLOCK_DATABASE_URL": dsn, **env},
        )
    api = ApiProcess(process, port, log_path)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:

            async def ready() -> int:
                if process.returncode is not None:
                    raise AssertionError(f"the API exited: {log_path.read_text()[-2000:]}")
                try:
                    return (await http.get("/readyz")).status_code
                except httpx.TransportError:
                    return 0

            await wait_for(ready, lambda status: status == 200, timeout=30, what="the API")
        yield api
    finally:
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(15):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- clients ----------------------------------------------------------------------


@dataclass
class Follower:
    """One reading client: the progress of every event it got, and the last state."""

    progress: list[float] = field(default_factory=list)
    state: str | None = None
    final: dict[str, object] | None = None
    ended_early: bool = False

    @property
    def latest(self) -> float:
        return self.progress[-1] if self.progress else -1.0


async def _follow(http: httpx.AsyncClient, secret: str, job_id: str, follower: Follower) -> None:
    async with sse(http, f"/v1/jobs/{job_id}/events", headers=bearer(secret)) as stream:
        assert stream.response.status_code == 200
        while (event := await stream.next(within=120)) is not None:
            doc = event.json()
            follower.progress.append(-1.0 if doc["progress"] is None else float(doc["progress"]))
            follower.state = doc["state"]
            follower.final = doc
        follower.ended_early = follower.state != "succeeded"


@contextlib.contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


async def _connect(port: int, opened: list[socket.socket], first: bytes) -> socket.socket:
    """A raw connection with a small receive window that has sent ``first`` and reads nothing."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opened.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, first)
    return sock


def _stream_request(port: int, job_id: str, keys: Keys) -> bytes:
    return (
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {keys.a_read}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


def _post_head(port: int, secret: str, length: int) -> bytes:
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def _trickle(sock: socket.socket, body: bytes) -> None:
    """Send ``body`` a byte every 0.2 s (the test ends long before it is through)."""
    loop = asyncio.get_running_loop()
    for i in range(len(body)):
        await loop.sock_sendall(sock, body[i : i + 1])
        await anyio.sleep(0.2)


async def _metric(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _event_name(line: str) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("event") if isinstance(record, dict) else None


# -- the test -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_silent_clients_and_slow_bodies_neither_block_readers_nor_grow_memory(
    db_dsn: str,
    keys: Keys,
    control: RenderControl,
    worker: Worker,
    client: Client,
    tmp_path: Path,
) -> None:
    """205 streams (50 silent) and 60 slow requests: readers see every step, memory stays low."""
    env = {
        "SKIPLOCK_EXPOSED_TASKS": json.dumps({"render": {"args_schema": RENDER_ARGS}}),
        "SKIPLOCK_MAX_BODY_BYTES": str(4 * PAD),
        "SKIPLOCK_SUBSCRIBER_BUFFER": "8",
        "SKIPLOCK_BODY_TIMEOUT_SECONDS": "600",  # the slow bodies stay for the whole test
    }
    async with (
        api_process(db_dsn, tmp_path, **env) as api,
        httpx.AsyncClient(
            base_url=api.url, timeout=60, limits=httpx.Limits(max_connections=None)
        ) as http,
    ):
        ids = {}
        for name, meta in (("small", {}), ("big", {"pad": "x" * PAD})):
            created = await http.post(
                "/v1/jobs", json=render_body(name, meta=meta), headers=bearer(keys.a_write)
            )
            assert created.status_code == 201, created.text
            ids[name] = created.json()["id"]
        for job_id in ids.values():
            await control.wait_started(uuid.UUID(job_id))
            await wait_for_state(client, uuid.UUID(job_id), JobState.RUNNING)
        warm = Follower()
        async with anyio.create_task_group() as tg:  # warm the stream path up once
            tg.start_soon(_follow, http, keys.a_read, ids["small"], warm)
            await wait_until(lambda: bool(warm.progress), within=30, what="a first event")
            tg.cancel_scope.cancel()
        baseline = api.memory_kib()

        small = [Follower() for _ in range(READERS)]
        big = [Follower() for _ in range(BIG_READERS)]
        port = api.port
        stream_request = _stream_request(port, ids["big"], keys)
        slow_body = render_body("slow", meta={"pad": "y" * 10_000})
        body = json.dumps(slow_body).encode()
        with _sockets() as opened:
            async with anyio.create_task_group() as tg:
                for follower in small:
                    tg.start_soon(_follow, http, keys.a_read, ids["small"], follower)
                for follower in big:
                    tg.start_soon(_follow, http, keys.a_read, ids["big"], follower)
                for _ in range(SILENT):
                    await _connect(port, opened, stream_request)
                for _ in range(SLOW_BODIES):
                    head = _post_head(port, keys.a_write, len(body))
                    tg.start_soon(_trickle, await _connect(port, opened, head), body)
                    await _connect(port, opened, head + body[: len(body) // 2])
                    await _connect(port, opened, head[: len(head) // 2])
                await wait_for(
                    lambda: _metric(http, "skiplock_api_sse_subscribers"),
                    lambda n: n == READERS + BIG_READERS + SILENT,
                    timeout=60,
                    what="every stream to be open",
                )
                await wait_until(
                    lambda: all(f.progress for f in small + big),
                    within=60,
                    what="every reader to get the current state",
                )
                # Other requests are served all along.
                for i in range(5):
                    made = await http.post(
                        "/v1/jobs", json=render_body(f"during-{i}"), headers=bearer(keys.a_write)
                    )
                    assert made.status_code == 201, made.text
                listed = await http.get("/v1/jobs", headers=bearer(keys.a_read))
                assert listed.status_code == 200
                for step in range(1, STEPS + 1):
                    percent = step * 0.5
                    for job_id in ids.values():
                        control.step(uuid.UUID(job_id), percent)
                    await wait_until(
                        lambda p=percent: all(f.latest == p for f in small + big),  # type: ignore[misc]
                        within=60,
                        what=f"every reader to see {percent}%",
                    )
                loaded = api.memory_kib()
                peak = api.memory_kib("VmHWM")
                dropped = await _metric(http, "skiplock_api_sse_dropped_total")
                for job_id in ids.values():
                    control.finish(uuid.UUID(job_id), {"steps": STEPS})
                await wait_until(
                    lambda: all(f.state == "succeeded" for f in small + big),
                    within=60,
                    what="every reader to see the end",
                )
                tg.cancel_scope.cancel()  # the trickling bodies
        after = api.memory_kib()
    # Nothing above was a server error: no failed request, and the hub dropped silent
    # subscribers rather than buffering for them.
    text = api.log_path.read_text()
    events = [_event_name(line) for line in text.splitlines()]
    assert "request_failed" not in events
    assert "Exception in ASGI application" not in text
    expected = [-1.0, *(step * 0.5 for step in range(1, STEPS + 1)), 100.0]
    for follower in small + big:
        assert follower.progress == expected
        assert (follower.state, follower.ended_early) == ("succeeded", False)
    growth_mib = (loaded - baseline) / 1024
    log.info(
        "api_memory",
        baseline_mib=round(baseline / 1024, 1),
        loaded_mib=round(loaded / 1024, 1),
        peak_mib=round(peak / 1024, 1),
        after_close_mib=round(after / 1024, 1),
        growth_mib=round(growth_mib, 1),
        silent_streams_dropped=dropped,
        hub_dropped=events.count("subscriber_dropped"),
    )
    assert growth_mib < GROWTH_BOUND_MIB, f"the API grew by {growth_mib:.0f} MiB"


RESULT_SIZE = 8 * 1024 * 1024
RESULT_READERS = 10
RESULT_SILENT = 50


@pytest.mark.slow
async def test_large_result_reaches_many_streams_without_a_copy_for_each(
    db_dsn: str,
    keys: Keys,
    control: RenderControl,
    worker: Worker,
    client: Client,
    tmp_path: Path,
) -> None:
    """An 8 MiB result, 60 streams (50 silent): events omit it, GET has it, memory stays low."""
    env = {"SKIPLOCK_EXPOSED_TASKS": json.dumps({"render": {"args_schema": RENDER_ARGS}})}
    async with (
        api_process(db_dsn, tmp_path, **env) as api,
        httpx.AsyncClient(
            base_url=api.url, timeout=60, limits=httpx.Limits(max_connections=None)
        ) as http,
    ):
        created = await http.post("/v1/jobs", json=render_body("r"), headers=bearer(keys.a_write))
        job_id = created.json()["id"]
        await control.wait_started(uuid.UUID(job_id))
        baseline = api.memory_kib()
        readers = [Follower() for _ in range(RESULT_READERS)]
        with _sockets() as opened:
            async with anyio.create_task_group() as tg:
                for follower in readers:
                    tg.start_soon(_follow, http, keys.a_read, job_id, follower)
                for _ in range(RESULT_SILENT):
                    await _connect(api.port, opened, _stream_request(api.port, job_id, keys))
                await wait_for(
                    lambda: _metric(http, "skiplock_api_sse_subscribers"),
                    lambda n: n == RESULT_READERS + RESULT_SILENT,
                    timeout=60,
                    what="every stream to be open",
                )
                control.finish(uuid.UUID(job_id), {"blob": "z" * RESULT_SIZE})
                await wait_until(
                    lambda: all(f.state == "succeeded" for f in readers),
                    within=60,
                    what="every reader to see the end",
                )
                loaded = api.memory_kib()
                peak = api.memory_kib("VmHWM")
        read = await http.get(f"/v1/jobs/{job_id}", headers=bearer(keys.a_read))
    assert read.json()["result"] == {"blob": "z" * RESULT_SIZE}
    for follower in readers:
        assert follower.final is not None
        assert (follower.final["result"], follower.final["result_omitted"]) == (None, True)
    growth_mib = (loaded - baseline) / 1024
    log.info(
        "api_memory_large_result",
        baseline_mib=round(baseline / 1024, 1),
        loaded_mib=round(loaded / 1024, 1),
        peak_mib=round(peak / 1024, 1),
    )
    # A copy per stream would be 60 × 8 MiB, several times over (document, JSON, event).
    assert growth_mib < GROWTH_BOUND_MIB, f"the API grew by {growth_mib:.0f} MiB"
