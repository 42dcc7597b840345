"""What the status API tests share: a live server, a worker, a scripted task, an SSE reader.

The app is served by a real uvicorn server on 127.0.0.1 (streams and
long-polls need real HTTP), the worker runs in-process, and the ``render``
task does exactly what the test tells it through :class:`RenderControl`, so
a test decides when a job reports progress and when it ends.

Servers and workers run in their own asyncio tasks, without anyio cancel
scopes spanning a fixture's ``yield``, so fixtures may start them in one task
and stop them in another.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import httpx
import orjson
import uvicorn
from starlette.applications import Starlette

from skiplock import Fail, JobContext, TaskRegistry, Worker, WorkerSettings
from skiplock.api import ApiSettings, EventHub, ExposedTask, create_api_key, create_app
from skiplock.queue import Store
from tests.helpers import wait_until

TENANT_A = "acme"
TENANT_B = "globex"
SHARE_SECRET = "share-secret-for-the-api-tests-0123456789"
MAX_BODY = 4096
PROBLEM_JSON = "application/problem+json"

# The arguments a ``render`` job accepts over HTTP.
RENDER_ARGS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "video_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "frames": {"type": "integer", "minimum": 1, "maximum": 10_000},
    },
    "required": ["video_id"],
    "additionalProperties": False,
}


def api_settings(dsn: str, **overrides: Any) -> ApiSettings:
    """Settings for a test app on ``dsn``: ``render`` exposed, sharing on, no key cache."""
    values: dict[str, Any] = {
        "database_url": dsn,
        "exposed_tasks": {"render": ExposedTask(args_schema=RENDER_ARGS)},
        "share_secret": SHARE_SECRET,
        "key_cache_seconds": 0.0,
        "max_body_bytes": MAX_BODY,
    }
    values.update(overrides)
    return ApiSettings(**values)


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {secret}"}


def render_body(video_id: str = "v1", **extra: Any) -> dict[str, Any]:
    """A valid ``POST /v1/jobs`` body."""
    return {"task": "render", "args": {"video_id": video_id}, **extra}


# The routes that name one job, as (method, path template with {id}).
JOB_ROUTES = [
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/events"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("POST", "/v1/jobs/{id}/retry"),
    ("POST", "/v1/jobs/{id}/share"),
]


async def create_job(api: LiveApi, secret: str, video_id: str = "v1", **extra: Any) -> str:
    """Create a ``render`` job over HTTP with the key ``secret``; its id."""
    response = await api.http.post(
        "/v1/jobs", json=render_body(video_id, **extra), headers=bearer(secret)
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert isinstance(job_id, str)
    return job_id


# -- the scripted task --------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Report ``percent`` (and a message)."""

    percent: float
    message: str | None = None


@dataclass(frozen=True)
class Finish:
    """Return ``result``: the job succeeds."""

    result: Any


@dataclass(frozen=True)
class Crash:
    """Raise ``Fail(message)``: the job fails at once."""

    message: str


Command = Step | Finish | Crash


class RenderControl:
    """Drives running ``render`` jobs: each command is carried out by the job's handler."""

    def __init__(self) -> None:
        self._scripts: dict[uuid.UUID, asyncio.Queue[Command]] = {}
        self.started: set[uuid.UUID] = set()

    def script(self, job_id: uuid.UUID) -> asyncio.Queue[Command]:
        """The commands waiting for ``job_id``'s handler."""
        return self._scripts.setdefault(job_id, asyncio.Queue())

    def step(self, job_id: uuid.UUID, percent: float, message: str | None = None) -> None:
        """Make the job report progress."""
        self.script(job_id).put_nowait(Step(percent, message))

    def finish(self, job_id: uuid.UUID, result: Any) -> None:
        """Make the job succeed with ``result``."""
        self.script(job_id).put_nowait(Finish(result))

    def fail(self, job_id: uuid.UUID, message: str) -> None:
        """Make the job fail for good."""
        self.script(job_id).put_nowait(Crash(message))

    async def wait_started(self, job_id: uuid.UUID, within: float = 10.0) -> None:
        """Wait until a worker runs the job's handler."""
        await wait_until(
            lambda: job_id in self.started, within=within, what=f"job {job_id} to start"
        )


def render_tasks(control: RenderControl) -> TaskRegistry:
    """A registry with the ``render`` task, driven by ``control``."""
    tasks = TaskRegistry()

    @tasks.task()
    async def render(ctx: JobContext, *, video_id: str, frames: int = 1) -> Any:
        script = control.script(ctx.id)
        control.started.add(ctx.id)
        while True:
            command = await script.get()
            if isinstance(command, Step):
                ctx.progress(command.percent, command.message)
            elif isinstance(command, Finish):
                return command.result
            else:
                raise Fail(command.message)

    return tasks


WORKER_SETTINGS = WorkerSettings(
    queues=("default",),
    concurrency=8,
    lease=3.0,
    heartbeat=0.5,
    poll=0.2,
    rescue=1.0,
    shutdown_grace=0.2,
    progress_interval=0.01,
)


class RunningWorker:
    """A worker running in its own task until :meth:`stop`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the worker and wait until it claims."""
        self._task = asyncio.create_task(self.worker.run())
        started = asyncio.create_task(self.worker.wait_started())
        try:
            done, _ = await asyncio.wait(
                {self._task, started}, timeout=10, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            started.cancel()
        if self._task in done:
            self._task.result()  # raises the worker's startup error
            raise RuntimeError("the worker stopped while starting")
        if not done:
            raise TimeoutError("the worker did not start within 10 s")

    async def stop(self) -> None:
        """Drain the worker, or kill it if it does not stop in time."""
        if self._task is None:
            return
        self.worker.stop()
        done, _ = await asyncio.wait({self._task}, timeout=10)
        if not done:
            self.worker.kill()
            await asyncio.wait({self._task}, timeout=5)
        if self._task.done() and not self._task.cancelled():
            self._task.result()


# -- the live server ----------------------------------------------------------


class LiveServer:
    """A uvicorn server for ``app`` on a free 127.0.0.1 port, in its own task.

    ``send_buffer`` fixes SO_SNDBUF of the listening socket (accepted sockets
    inherit it), so a client that stops reading backs up after a few events
    instead of after the megabytes Linux autotuning allows.
    """

    def __init__(self, app: Starlette, *, send_buffer: int | None = None) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.send_buffer = send_buffer
        self.port = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Serve, and return once the lifespan has started and the socket listens."""
        sockets = None
        if self.send_buffer is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            sock.bind(("127.0.0.1", 0))
            sockets = [sock]
        self._task = asyncio.create_task(self.server.serve(sockets=sockets))
        with anyio.fail_after(15):
            while not self.server.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("uvicorn stopped while starting (lifespan failed?)")
                await anyio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Shut down (open streams are closed) and wait for the server to finish."""
        if self._task is None:
            return
        self.server.should_exit = True
        done, _ = await asyncio.wait({self._task}, timeout=15)
        if not done:
            self.server.force_exit = True
            await asyncio.wait({self._task}, timeout=5)
        if self._task.done() and not self._task.cancelled():
            self._task.result()


@dataclass
class LiveApi:
    """A running app, its server, and an HTTP client pointed at it."""

    app: Starlette
    settings: ApiSettings
    server: LiveServer
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.server.url

    @property
    def hub(self) -> EventHub:
        """The app's event hub (the lifespan made it)."""
        hub = self.app.state.skiplock.hub
        assert isinstance(hub, EventHub)
        return hub

    async def close(self) -> None:
        """Close the client, then stop the server; fail if the lifespan had ended early."""
        alive = self.app.state.skiplock.hub is not None
        await self.http.aclose()
        await self.server.stop()
        assert alive, "the app's lifespan ended before the test did (did the event hub crash?)"


async def start_api(settings: ApiSettings, *, send_buffer: int | None = None) -> LiveApi:
    """Build the app from ``settings``, serve it, and wait until its hub listens."""
    app = create_app(settings)
    server = LiveServer(app, send_buffer=send_buffer)
    await server.start()
    http = httpx.AsyncClient(
        base_url=server.url,
        timeout=httpx.Timeout(20.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
    )
    api = LiveApi(app, settings, server, http)
    with anyio.fail_after(10):
        await api.hub.wait_connected()
    return api


# -- Server-Sent Events -----------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event."""

    event: str
    id: str | None
    data: str

    def json(self) -> dict[str, Any]:
        """The event's data as a JSON object."""
        value = orjson.loads(self.data)
        assert isinstance(value, dict)
        return value


@dataclass
class SseStream:
    """Reads events off a streaming response; comments (pings) are skipped."""

    response: httpx.Response
    ended: bool = False
    _lines: AsyncIterator[str] | None = field(default=None, repr=False)

    async def next(self, within: float = 10.0) -> SseEvent | None:
        """The next event, or None when the stream has ended; fails after ``within`` s."""
        with anyio.fail_after(within):
            return await self._next()

    async def rest(self, within: float = 10.0) -> list[SseEvent]:
        """Every event until the stream ends; fails unless it ends within ``within`` s."""
        events: list[SseEvent] = []
        with anyio.fail_after(within):
            while (event := await self._next()) is not None:
                events.append(event)
        return events

    async def _next(self) -> SseEvent | None:
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        name: str = "message"
        ident: str | None = None
        data: list[str] = []
        while True:
            try:
                line = await anext(self._lines)
            except StopAsyncIteration:
                self.ended = True
                return None
            if line == "":
                if data:
                    return SseEvent(name, ident, "\n".join(data))
                name, ident, data = "message", None, []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                ident = value


@asynccontextmanager
async def sse(
    http: httpx.AsyncClient, url: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[SseStream]:
    """Open ``GET url`` as an event stream (the block starts once headers arrived)."""
    async with http.stream("GET", url, headers=headers) as response:
        yield SseStream(response)


# -- the database ---------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """API keys: tenant A read+write and read-only, tenant B read+write."""

    tenant_a: str
    tenant_b: str
    a_write: str
    a_read: str
    b_write: str
    a_write_id: uuid.UUID


async def make_keys(dsn: str, tenant_a: str = TENANT_A, tenant_b: str = TENANT_B) -> Keys:
    """Create the keys of two tenants in ``dsn``'s database."""
    store = Store()
    conn = await asyncpg.connect(dsn)
    try:
        a_write = await create_api_key(
            store, conn, tenant=tenant_a, scopes=["read", "write"], name="a-rw"
        )
        a_read = await create_api_key(store, conn, tenant=tenant_a, scopes=["read"], name="a-r")
        b_write = await create_api_key(
            store, conn, tenant=tenant_b, scopes=["read", "write"], name="b-rw"
        )
    finally:
        await conn.close()
    return Keys(tenant_a, tenant_b, a_write.secret, a_read.secret, b_write.secret, a_write.key.id)


async def fetchval(dsn: str, query: str, *args: object) -> Any:
    """One value from a short-lived connection."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def count_jobs(dsn: str, keys: Keys) -> int:
    """How many job rows the two tenants of ``keys`` hold."""
    count = await fetchval(
        dsn,
        "SELECT count(*) FROM skiplock.jobs WHERE tenant = ANY($1::text[])",
        [keys.tenant_a, keys.tenant_b],
    )
    assert isinstance(count, int)
    return count


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 problem answer with ``status`` and ``code``; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"https://skiplock.dev/problems/{code}"
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    return body
