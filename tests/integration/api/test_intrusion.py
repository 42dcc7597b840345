"""Intrusion: another tenant probing, credentials going bad mid-stream, bodies that never end.

The basic cross-tenant 404s of every job route are in ``test_api_tenancy.py``;
here the probes carry what a prober would reuse (a victim's ETag, event id,
cursor, a long-poll), and the whole answer — status, every header but
``Date``, and the body — must equal the one a random missing id gets.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import httpx
import orjson
import pytest

from skiplock import ALL_TENANTS, Client, JobState, Worker
from skiplock.api import create_api_key
from skiplock.queue import Store
from skiplock.queue.client import decode_cursor
from tests.helpers import wait_for, wait_for_state
from tests.integration.api.conftest import StartApi
from tests.integration.api.support import (
    PROBLEM_JSON,
    Keys,
    LiveApi,
    RenderControl,
    assert_problem,
    bearer,
    count_jobs,
    create_job,
    render_body,
)

# -- another tenant probing ---------------------------------------------------


def _assert_indistinguishable(
    on_theirs: httpx.Response, on_missing: httpx.Response, theirs: str, missing: str
) -> None:
    """The two answers are byte-identical once the probed ids are swapped (Date aside)."""
    assert_problem(on_theirs, 404, "job-not-found")
    assert on_theirs.content == on_missing.content.replace(missing.encode(), theirs.encode())

    def headers(response: httpx.Response) -> list[tuple[str, str]]:
        return sorted((k, v) for k, v in response.headers.multi_items() if k != "date")

    assert headers(on_theirs) == headers(on_missing)


async def _probe(
    api: LiveApi, keys: Keys, method: str, path: str, victim: dict[str, Any], **kwargs: Any
) -> None:
    """B sends the same probe to A's job and to a random id; the answers must match."""
    missing = str(uuid.uuid4())
    b = bearer(keys.b_write)
    headers = {**b, **kwargs.pop("headers", {})}
    on_theirs = await api.http.request(
        method, path.format(id=victim["id"]), headers=headers, **kwargs
    )
    on_missing = await api.http.request(method, path.format(id=missing), headers=headers, **kwargs)
    _assert_indistinguishable(on_theirs, on_missing, victim["id"], missing)


async def _victim(api: LiveApi, keys: Keys) -> dict[str, Any]:
    """A's job as A reads it, with its ETag."""
    job_id = await create_job(api, keys.a_write, meta={"secret": "a's"})
    read = await api.http.get(f"/v1/jobs/{job_id}", headers=bearer(keys.a_read))
    doc = read.json()
    assert isinstance(doc, dict)
    doc["etag"] = read.headers["etag"]
    return doc


PROBES = {
    "long-poll": ("GET", "/v1/jobs/{id}", {"params": {"wait": "2"}}),
    "long-poll-with-its-etag": ("GET", "/v1/jobs/{id}", {"params": {"wait": "2"}, "etag": True}),
    "conditional-read-with-its-etag": ("GET", "/v1/jobs/{id}", {"etag": True}),
    "events-resumed-at-its-event-id": ("GET", "/v1/jobs/{id}/events", {"last_event": True}),
    "share-with-ttl": ("POST", "/v1/jobs/{id}/share", {"params": {"ttl": "60"}}),
    "cancel-with-a-body": ("POST", "/v1/jobs/{id}/cancel", {"json": {"reason": "x"}}),
    "retry-with-a-body": ("POST", "/v1/jobs/{id}/retry", {"json": {"force": True}}),
}


@pytest.mark.parametrize("probe", PROBES.values(), ids=PROBES.keys())
async def test_probe_of_another_tenants_job_answers_exactly_like_a_missing_one(
    shared_api: LiveApi, tenant_keys: Keys, client_on_shared: Client, probe: Any
) -> None:
    """B reusing A's ETag, event id or a long-poll gets the missing-id answer; A's job is intact."""
    method, path, options = probe
    victim = await _victim(shared_api, tenant_keys)
    kwargs: dict[str, Any] = {k: v for k, v in options.items() if k in ("params", "json")}
    if options.get("etag"):
        kwargs["headers"] = {"If-None-Match": victim["etag"]}
    if options.get("last_event"):
        updated = datetime.fromisoformat(victim["updated_at"])
        kwargs["headers"] = {"Last-Event-ID": str(int(updated.timestamp() * 1_000_000))}
    await _probe(shared_api, tenant_keys, method, path, victim, **kwargs)
    job = await client_on_shared.get(victim["id"], tenant=ALL_TENANTS)
    assert job is not None
    assert (job.state.value, job.cancel_requested, job.meta) == ("queued", False, {"secret": "a's"})
    assert job.tenant == tenant_keys.tenant_a


async def _page(api: LiveApi, secret: str, **params: str) -> dict[str, Any]:
    response = await api.http.get("/v1/jobs", params=params, headers=bearer(secret))
    assert response.status_code == 200, response.text
    page = response.json()
    assert isinstance(page, dict)
    return page


async def test_another_tenants_cursor_shows_only_your_own_jobs(
    shared_api: LiveApi, tenant_keys: Keys
) -> None:
    """B paging with A's cursor gets B's page, the same as with a forged cursor at that spot."""
    b_old = await create_job(shared_api, tenant_keys.b_write, "b-old")
    a_jobs = [await create_job(shared_api, tenant_keys.a_write, f"a{i}") for i in range(3)]
    await create_job(shared_api, tenant_keys.b_write, "b-new")
    a_page = await _page(shared_api, tenant_keys.a_read, limit="1")
    assert [j["id"] for j in a_page["jobs"]] == [a_jobs[-1]]
    cursor = a_page["next_cursor"]
    assert isinstance(cursor, str)
    created, _ = decode_cursor(cursor)
    # The same position with an id that is nobody's: a cursor is a place, not a permission.
    forged = base64.urlsafe_b64encode(orjson.dumps([created.isoformat(), str(uuid.uuid4())]))
    with_a_cursor = await _page(shared_api, tenant_keys.b_write, cursor=cursor)
    with_forged = await _page(shared_api, tenant_keys.b_write, cursor=forged.decode().rstrip("="))
    assert [j["id"] for j in with_a_cursor["jobs"]] == [b_old]
    assert with_a_cursor == with_forged


# -- credentials that go bad while a stream is open ---------------------------


async def _new_key(dsn: str, tenant: str, expires_at: datetime | None = None) -> tuple[str, Any]:
    """A read key of ``tenant`` (its secret and stored record)."""
    conn = await asyncpg.connect(dsn)
    try:
        made = await create_api_key(
            Store(), conn, tenant=tenant, scopes=["read"], name="stream", expires_at=expires_at
        )
    finally:
        await conn.close()
    return made.secret, made.key


class _Kinds:
    """What a raw event stream sends, one item at a time: an event name, or "ping"."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, within: float = 10.0) -> str | None:
        """The next event name or "ping" (a comment), or None once the stream ended."""
        with anyio.fail_after(within):
            async for line in self._lines:
                if line.startswith(":"):
                    return "ping"
                if line.startswith("event:"):
                    return line.partition(":")[2].strip()
        return None

    async def until(self, kind: str, *, times: int = 1, within: float = 10.0) -> None:
        """Read on until ``kind`` was seen ``times`` times; fail if the stream ends first."""
        for _ in range(times):
            while (seen := await self.next(within)) != kind:
                assert seen is not None, f"the stream ended before {kind!r}"


@asynccontextmanager
async def _events(api: LiveApi, job_id: str, secret: str) -> AsyncIterator[_Kinds]:
    async with api.http.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers=bearer(secret)
    ) as response:
        assert response.status_code == 200
        yield _Kinds(response)


async def test_open_stream_ends_when_its_key_is_revoked(
    start_api_with: StartApi, keys: Keys, db_dsn: str
) -> None:
    """A stream outlives checks of its valid key, then ends with `expired` once it is revoked."""
    api = await start_api_with(sse_keepalive_seconds=0.2)
    job_id = await create_job(api, keys.a_write)
    secret, key = await _new_key(db_dsn, keys.tenant_a)
    async with _events(api, job_id, secret) as stream:
        assert await stream.next() == "job"
        await stream.until("ping", times=2)  # a ping a second: the key was re-checked 5+ times
        conn = await asyncpg.connect(db_dsn)
        try:
            assert await Store().revoke_api_key(conn, key.id) is not None
        finally:
            await conn.close()
        await stream.until("expired")
        assert await stream.next() is None
    assert_problem(
        await api.http.get(f"/v1/jobs/{job_id}", headers=bearer(secret)), 401, "unauthorized"
    )


async def test_open_stream_ends_when_its_key_expires(
    start_api_with: StartApi, keys: Keys, db_dsn: str
) -> None:
    """A stream opened with a key that expires soon ends with `expired` at the key's expiry."""
    api = await start_api_with(sse_keepalive_seconds=30.0)  # expiry alone must end it
    job_id = await create_job(api, keys.a_write)
    expires = datetime.now(UTC) + timedelta(seconds=2)
    secret, _ = await _new_key(db_dsn, keys.tenant_a, expires_at=expires)
    async with _events(api, job_id, secret) as stream:
        assert await stream.next() == "job"
        await stream.until("expired", within=20)
        assert await stream.next() is None
    assert datetime.now(UTC) >= expires  # it did not end early
    assert_problem(
        await api.http.get(f"/v1/jobs/{job_id}", headers=bearer(secret)), 401, "unauthorized"
    )


# -- bodies that never finish ---------------------------------------------------

BODY_TIMEOUT = 1.0


def _head(port: int, secret: str, length: int) -> bytes:
    return (
        "POST /v1/jobs HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {secret}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def _response(reader: asyncio.StreamReader, within: float = 15.0) -> tuple[int, Any, bytes]:
    """Status, headers (lower-cased) and body of one HTTP/1.1 response with a Content-Length."""
    with anyio.fail_after(within):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines if line)
        )
        body = await reader.readexactly(int(headers["content-length"]))
        rest = await reader.read()  # the server closes the connection after a 408
    assert rest == b""
    return int(status_line.split()[1]), headers, body


def _assert_body_timeout(status: int, headers: Any, body: bytes) -> None:
    assert status == 408
    assert headers["content-type"].split(";")[0] == PROBLEM_JSON
    problem = orjson.loads(body)
    assert (problem["status"], problem["code"]) == (408, "body-timeout")


@pytest.mark.parametrize("send", ["stop-mid-body", "trickle"])
async def test_body_that_never_finishes_is_408_and_blocks_nobody(
    start_api_with: StartApi, keys: Keys, db_dsn: str, send: str
) -> None:
    """A body that stops half-way, or trickles, gets 408 and writes nothing; others are served."""
    api = await start_api_with(body_timeout_seconds=BODY_TIMEOUT)
    body = orjson.dumps(render_body("slow", meta={"pad": "x" * 400}))
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)

    async def trickle() -> None:
        for i in range(20, len(body)):  # one byte per 50 ms: 20 s for the whole body
            writer.write(body[i : i + 1])
            await writer.drain()
            await anyio.sleep(0.05)

    try:
        writer.write(_head(api.server.port, keys.a_write, len(body)) + body[:20])
        await writer.drain()
        async with anyio.create_task_group() as tg:
            if send == "trickle":
                tg.start_soon(trickle)
            healthy = await create_job(api, keys.a_write, "healthy")
            status, headers, answer = await _response(reader)
            tg.cancel_scope.cancel()
    finally:
        writer.close()
    _assert_body_timeout(status, headers, answer)
    assert await count_jobs(db_dsn, keys) == 1
    read = await api.http.get(f"/v1/jobs/{healthy}", headers=bearer(keys.a_read))
    assert read.json()["state"] == "queued"


async def test_body_within_the_timeout_is_not_cut_short(
    start_api_with: StartApi, keys: Keys, db_dsn: str
) -> None:
    """A body sent in pieces that all arrive within the timeout creates the job."""
    api = await start_api_with(body_timeout_seconds=30.0)
    body = orjson.dumps(render_body("pieces"))
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    try:
        writer.write(_head(api.server.port, keys.a_write, len(body)))
        for start in range(0, len(body), 8):
            writer.write(body[start : start + 8])
            await writer.drain()
        with anyio.fail_after(15):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 201 ")
    assert await count_jobs(db_dsn, keys) == 1


async def test_stalled_bodies_hold_no_database_connection(
    start_api_with: StartApi, keys: Keys, client: Client
) -> None:
    """More stalled bodies than pool connections: every other request is still served."""
    api = await start_api_with(pool_max_size=2, body_timeout_seconds=60.0)
    body = orjson.dumps(render_body("stalled"))
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(10):
            _, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
            writer.write(_head(api.server.port, keys.a_write, len(body)) + body[:10])
            await writer.drain()
            writers.append(writer)
        ids = [await create_job(api, keys.a_write, f"ok{i}") for i in range(5)]
        listed = await _page(api, keys.a_read)
    finally:
        for writer in writers:
            writer.close()
    assert [j["id"] for j in listed["jobs"]] == list(reversed(ids))
    jobs = (await client.list(tenant=keys.tenant_a)).jobs
    assert {str(j.id) for j in jobs} == set(ids)


async def _metrics(api: LiveApi) -> str:
    return (await api.http.get("/metrics")).text


async def test_client_vanishing_mid_body_writes_nothing_and_is_no_server_error(
    start_api_with: StartApi, keys: Keys, db_dsn: str
) -> None:
    """A client closing its connection half-way through a body is a 400, not a 500."""
    api = await start_api_with()
    body = orjson.dumps(render_body("gone"))
    _, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    writer.write(_head(api.server.port, keys.a_write, len(body)) + body[:10])
    await writer.drain()
    writer.close()
    answered = 'skiplock_api_requests_total{method="POST",route="/v1/jobs",status="400"} 1.0'
    await wait_for(lambda: _metrics(api), lambda text: answered in text, what="the 400")
    assert 'status="500"' not in await _metrics(api)
    assert await count_jobs(db_dsn, keys) == 0


async def test_stream_to_a_client_that_stopped_reading_is_closed_quietly(
    start_api_with: StartApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """A silent client's stream is closed after the send timeout and counted as dropped."""
    pad = 64 * 1024
    api = await start_api_with(
        send_buffer=8 * 1024, sse_send_timeout_seconds=1.0, max_body_bytes=4 * pad
    )
    job_id = await create_job(api, keys.a_write, meta={"pad": "x" * pad})
    job_uuid = uuid.UUID(job_id)
    await control.wait_started(job_uuid)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", api.server.port))
        await loop.sock_sendall(
            sock,
            (
                f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {keys.a_read}\r\n\r\n"
            ).encode(),
        )
        await wait_for(
            lambda: _metrics(api),
            lambda text: "skiplock_api_sse_subscribers 1.0" in text,
            what="the silent stream to open",
        )
        dropped = "skiplock_api_sse_dropped_total 1.0"
        for step in range(1, 101):  # each event is 64 KiB: the buffers fill in a few
            control.step(job_uuid, step)
            await wait_for(
                lambda: client.get(job_uuid, tenant=ALL_TENANTS),
                lambda job: job is not None and job.progress == step,  # noqa: B023
                what=f"progress {step}",
            )
            if dropped in await _metrics(api):
                break
        await wait_for(
            lambda: _metrics(api),
            lambda text: "skiplock_api_sse_subscribers 0.0" in text,
            what="the silent stream to be closed",
        )
    finally:
        sock.close()
    text = await _metrics(api)
    assert dropped in text
    assert 'status="500"' not in text
    control.finish(job_uuid, "done")
    await wait_for_state(client, job_uuid, JobState.SUCCEEDED)
