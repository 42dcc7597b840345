"""Fan-out to many SSE subscribers: slow ones are dropped, never block others or grow memory."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from skiplock import Client, JobState, Worker
from tests.helpers import wait_for_state, wait_until
from tests.integration.api.conftest import StartApi
from tests.integration.api.support import (
    Keys,
    LiveApi,
    RenderControl,
    bearer,
    create_job,
    sse,
)

READERS = 150
STALLED = 50
BUFFER = 8
PAD = 8 * 1024  # bytes of meta in every event, so unread sockets fill up in a few steps
SEND_BUFFER = 8 * 1024  # the server's SO_SNDBUF (Linux doubles it)
MAX_STEPS = 150


@dataclass
class Reader:
    """What one reading client saw: every progress value, reconnects, the final document."""

    progress: list[float] = field(default_factory=list)
    reconnects: int = 0
    final: dict[str, object] | None = None

    @property
    def latest(self) -> float:
        return self.progress[-1] if self.progress else -1.0


async def _read_until_terminal(api: LiveApi, keys: Keys, job_id: str, reader: Reader) -> None:
    """Follow the job like an EventSource: on a dropped stream, reconnect with Last-Event-ID."""
    last_id: str | None = None
    while True:
        headers = bearer(keys.a_read)
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        async with sse(api.http, f"/v1/jobs/{job_id}/events", headers=headers) as stream:
            assert stream.response.status_code == 200
            while (event := await stream.next(within=60)) is not None:
                doc = event.json()
                progress = doc["progress"]
                reader.progress.append(-1.0 if progress is None else float(progress))
                last_id = event.id
                if doc["state"] == "succeeded":
                    reader.final = doc
                    return
        reader.reconnects += 1


@asynccontextmanager
async def _stalled_clients(api: LiveApi, keys: Keys, job_id: str) -> AsyncIterator[None]:
    """STALLED raw connections that send the GET for the stream and never read a byte."""
    writers: list[asyncio.StreamWriter] = []
    request = (
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{api.server.port}\r\n"
        f"Authorization: Bearer {keys.a_read}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    try:
        for _ in range(STALLED):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", api.server.port))
            _, writer = await asyncio.open_connection(sock=sock, limit=1024)
            transport = writer.transport
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()  # nothing leaves the kernel buffer
            writer.write(request)
            await writer.drain()
            writers.append(writer)
        yield
    finally:
        for writer in writers:
            writer.transport.abort()


async def test_slow_subscribers_are_dropped_and_never_hold_back_the_others(
    start_api_with: StartApi,
    keys: Keys,
    control: RenderControl,
    worker: Worker,
    client: Client,
) -> None:
    """200 subscribers, 50 never reading: the 150 readers see every step in order and the end."""
    api = await start_api_with(
        subscriber_buffer=BUFFER, max_body_bytes=4 * PAD, send_buffer=SEND_BUFFER
    )
    job_id = await create_job(api, keys.a_write, meta={"pad": "x" * PAD})
    job_uuid = uuid.UUID(job_id)
    await control.wait_started(job_uuid)
    await wait_for_state(client, job_uuid, JobState.RUNNING)
    hub = api.hub
    readers = [Reader() for _ in range(READERS)]
    deepest = 0

    def subscriptions() -> list[object]:
        return list(hub._subs.get(job_uuid, ()))

    def sample_depth() -> None:
        nonlocal deepest
        for sub in hub._subs.get(job_uuid, ()):
            deepest = max(deepest, sub._queue.qsize())

    async with _stalled_clients(api, keys, job_id), anyio.create_task_group() as tg:
        for reader in readers:
            tg.start_soon(_read_until_terminal, api, keys, job_id, reader)
        await wait_until(
            lambda: len(subscriptions()) == READERS + STALLED and all(r.progress for r in readers),
            within=30,
            what="every client to subscribe and the readers to get the current state",
        )
        steps = 0
        percent = 0.0
        while steps < MAX_STEPS:
            steps += 1
            percent = round(steps * 0.5, 1)
            control.step(job_uuid, percent)
            await wait_until(
                lambda p=percent: all(r.latest == p for r in readers),  # type: ignore[misc]
                within=15,
                what=f"every reader to see {percent}%",
            )
            sample_depth()
            if sum(sub.dropped for sub in hub._subs.get(job_uuid, ())) >= STALLED:
                break
        dropped_subscriptions = sum(sub.dropped for sub in hub._subs.get(job_uuid, ()))
        control.finish(job_uuid, {"steps": steps})

    for reader in readers:
        assert reader.final is not None
        assert reader.final["state"] == "succeeded"
        assert reader.final["result"] == {"steps": steps}
        # The current state first, then every step in order, then the end.
        assert reader.progress == [-1.0, *(round(i * 0.5, 1) for i in range(1, steps + 1)), 100.0]
        assert reader.reconnects == 0  # in step with the job: never too slow
    assert deepest <= BUFFER, f"a subscriber buffered {deepest} snapshots"
    assert dropped_subscriptions == STALLED, f"{dropped_subscriptions} dropped after {steps} steps"
    assert hub.stats.dropped == STALLED
