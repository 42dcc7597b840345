"""Real processes for the fault suite: workers (optionally supervised), the status API, probes.

Every process connects with an ``application_name`` that starts with
``skiplock-`` (``skiplock-worker-<name>``, ``skiplock-api``), so faults can aim
at skiplock's own connections by name; the handlers' record of what ran uses
``faults-side`` and the test's probes ``faults-test``, which faults spare.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import httpx
from anyio.abc import Process

from skiplock import JobSpec
from skiplock.api.auth import create_api_key
from skiplock.queue import Store
from skiplock.queue.listener import TRANSIENT_DB_ERRORS
from tests.helpers import wait_for
from tests.worker_helpers import PROJECT_ROOT, WorkerProcess, start_worker_process

T = TypeVar("T")

APP = "tests.apps.faulty:tasks"
TEST_APPLICATION_NAME = "faults-test"
# Time for a child interpreter to import skiplock and start listening.
STARTUP = 30.0
# Worker timings for the fault tests: a 2 s lease, so expiry is part of every test.
FAST: dict[str, float | str] = {
    "lease": 2.0,
    "heartbeat": 0.5,
    "rescue": 0.3,
    "poll": 0.2,
    "concurrency": 4,
}


def with_application_name(dsn: str, name: str) -> str:
    """``dsn`` with ``application_name=name`` in its query."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "application_name"]
    query.append(("application_name", name))
    return urlunsplit(parts._replace(query=urlencode(query)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


def log_records(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON log records a process wrote to ``path`` (only ``event``'s, when given)."""
    records: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (event is None or record.get("event") == event):
            records.append(record)
    return records


def work_specs(
    count: int, *, priority: int = 0, queue: str = "default", **args: Any
) -> list[JobSpec]:
    """``count`` jobs of the ``work`` task with ``args`` (five attempts each)."""
    return [
        JobSpec(task="work", args=args, max_attempts=5, priority=priority, queue=queue)
        for _ in range(count)
    ]


class Db:
    """The test's own connection for probes; reconnects through restarts and kills.

    Calls take turns (one connection runs one statement at a time); a test that
    needs statements in parallel uses a second ``Db``.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = with_application_name(dsn, TEST_APPLICATION_NAME)
        self._conn: asyncpg.Connection[Any] | None = None
        self._turn = asyncio.Lock()

    async def run(self, call: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
        """``call(connection)``, retried on a fresh connection while the database is down.

        Only for calls that may be repeated: a statement whose connection dies
        may have committed before the retry.
        """
        deadline = time.monotonic() + 60
        async with self._turn:
            while True:
                try:
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await asyncpg.connect(self.dsn, timeout=5)
                    with anyio.fail_after(30):
                        return await call(self._conn)
                except TRANSIENT_DB_ERRORS:
                    if self._conn is not None:
                        self._conn.terminate()
                        self._conn = None
                    if time.monotonic() > deadline:
                        raise
                    await anyio.sleep(0.1)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """One value."""
        return await self.run(lambda c: c.fetchval(query, *args))

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """All rows."""
        return await self.run(lambda c: c.fetch(query, *args))

    async def now(self) -> Any:
        """The database's clock (a timezone-aware datetime)."""
        return await self.fetchval("SELECT clock_timestamp()")

    async def enqueue(self, specs: list[JobSpec]) -> list[uuid.UUID]:
        """Insert ``specs`` in chunks of 1000 (one transaction each); their ids."""
        store = Store()
        ids: list[uuid.UUID] = []
        for start in range(0, len(specs), 1000):
            chunk = specs[start : start + 1000]

            async def insert(c: asyncpg.Connection[Any], chunk: list[JobSpec] = chunk) -> None:
                async with c.transaction():
                    await store.enqueue_many(c, chunk)

            await self.run(insert)
            ids += [s.id for s in chunk]
        return ids

    async def ended(self, job_ids: list[uuid.UUID]) -> int:
        """How many of ``job_ids`` reached a terminal state."""
        return int(
            await self.fetchval(
                "SELECT count(DISTINCT job_id) FROM public.job_events WHERE kind = 'end'"
                " AND state IN ('succeeded', 'failed', 'cancelled') AND job_id = ANY($1::uuid[])",
                job_ids,
            )
        )

    async def ended_in_all(self) -> int:
        """How many jobs in the database reached a terminal state (cheap: no id list)."""
        return int(
            await self.fetchval(
                "SELECT count(DISTINCT job_id) FROM public.job_events WHERE kind = 'end'"
                " AND state IN ('succeeded', 'failed', 'cancelled')"
            )
        )

    async def wait_ended(
        self, job_ids: list[uuid.UUID], *, within: float, count: int | None = None
    ) -> None:
        """Wait until ``count`` (default: all) of ``job_ids`` reached a terminal state."""
        wanted = len(job_ids) if count is None else count

        async def ended() -> int:
            await anyio.sleep(0.1)  # a big list is a real query: ask ten times a second
            return await self.ended(job_ids)

        await wait_for(ended, lambda n: n >= wanted, timeout=within, what=f"{wanted} jobs to end")

    async def holding(self, worker: str, count: int) -> list[uuid.UUID]:
        """Wait until ``worker`` holds ``count`` running jobs whose handlers started; their ids."""

        async def started() -> list[uuid.UUID]:
            running = await self.running_on(worker)
            return running if await self.runs_started_on(worker, running) >= count else []

        return await wait_for(
            started, lambda held: len(held) >= count, timeout=STARTUP, what=f"{worker} to hold jobs"
        )

    async def running_on(self, worker: str) -> list[uuid.UUID]:
        """Jobs running under ``worker``'s lease right now."""
        rows = await self.fetch(
            "SELECT id FROM skiplock.jobs WHERE state = 'running' AND worker_id = $1", worker
        )
        return [r["id"] for r in rows]

    async def runs_started_on(self, worker: str, job_ids: list[uuid.UUID]) -> int:
        """How many handler runs of ``job_ids`` have started on ``worker``, finished or not."""
        return int(
            await self.fetchval(
                "SELECT count(*) FROM public.executions WHERE worker_id = $1"
                " AND job_id = ANY($2::uuid[])",
                worker,
                job_ids,
            )
        )

    async def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None


def log_count(worker: WorkerProcess, event: str) -> int:
    """How many times ``worker`` has logged ``event``."""
    return worker.log_events().count(event)


async def still_works(
    db: Db, worker: WorkerProcess, others: list[WorkerProcess], *, queue: str = "default"
) -> uuid.UUID:
    """SIGTERM ``others``, then check ``worker`` completes a fresh job: it outlived the fault."""
    for other in others:
        other.send_signal(signal.SIGTERM)
        await other.wait_exit(within=STARTUP)
    (job,) = await db.enqueue(work_specs(1, ms=10, queue=queue))
    await db.wait_ended([job], within=STARTUP)
    owner = await db.fetchval(
        "SELECT worker_id FROM public.executions WHERE job_id = $1 AND finished IS NOT NULL", job
    )
    assert owner == worker.name, f"a fresh job ran on {owner}, not on {worker.name}"
    return job


@dataclass
class Supervised:
    """A worker a supervisor restarts whenever its process exits."""

    name: str
    current: WorkerProcess
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


@dataclass
class ApiProcess:
    """``python -m skiplock api`` on a free port, with a read-write key of tenant ``default``."""

    process: Process
    port: int
    log_path: Path
    secret: str

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {self.secret}"}


class Fleet:
    """Starts worker and API processes on one database; :meth:`close` ends them all."""

    def __init__(self, dsn: str, log_dir: Path) -> None:
        self.dsn = dsn
        self.log_dir = log_dir
        self.app = APP  # the workers' TaskRegistry (module:attribute)
        self._supervisors: list[asyncio.Task[None]] = []
        self._workers: list[WorkerProcess] = []
        self._apis: list[ApiProcess] = []
        self._supervised: list[Supervised] = []
        self._closing = False

    async def start(self, name: str, **options: float | str) -> WorkerProcess:
        """Start ``skiplock worker --app <app>`` as ``name`` (FAST timings); the app is
        :attr:`app`, ``tests.apps.faulty:tasks`` unless the test sets another."""
        return await self.start_via(self.dsn, name, **options)

    async def start_via(self, dsn: str, name: str, **options: float | str) -> WorkerProcess:
        """Like :meth:`start`, connecting to ``dsn`` (a proxy, say) instead of the fleet's."""
        worker_dsn = with_application_name(dsn, f"skiplock-worker-{name}")
        worker = await start_worker_process(
            name, worker_dsn, self.log_dir, app=self.app, **{**FAST, **options}
        )
        self._workers.append(worker)
        return worker

    async def start_supervised(self, name: str, **options: float | str) -> Supervised:
        """Start a worker and restart its process whenever it exits, until :meth:`close`."""
        supervised = Supervised(name, await self.start(name, **options))
        self._supervised.append(supervised)

        async def supervise() -> None:
            while True:
                code = await supervised.current.process.wait()
                if self._closing:
                    return
                supervised.exits.append(code)
                supervised.restarts += 1
                supervised.current = await self.start(name, **options)

        # a plain task, not a task group: fixtures start and stop fleets in different tasks
        self._supervisors.append(asyncio.create_task(supervise()))
        return supervised

    async def start_api(self, *, exposed_attempts: int = 5) -> ApiProcess:
        """Start the status API as a process, with ``work`` exposed; wait until it is ready."""
        conn = await asyncpg.connect(self.dsn)
        try:
            made = await create_api_key(
                Store(), conn, tenant="default", scopes=["read", "write"], name="faults"
            )
        finally:
            await conn.close()
        port = free_port()
        log_path = self.log_dir / f"api-{port}.log"
        exposed = {"work": {"max_attempts": exposed_attempts}}
        env = {
            **os.environ,
            "SKIPLOCK_DATABASE_URL": with_application_name(self.dsn, "skiplock-api"),
            "SKIPLOCK_EXPOSED_TASKS": json.dumps(exposed),
            "SKIPLOCK_KEY_CACHE_SECONDS": "30",
        }
        command = [sys.executable, "-m", "skiplock", "--log-format", "json"]
        command += ["api", "--port", str(port)]
        with log_path.open("ab") as log:  # the child keeps its own descriptor
            process = await anyio.open_process(
                command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        api = ApiProcess(process, port, log_path, made.secret)
        self._apis.append(api)
        await self.wait_api_ready(api, within=STARTUP)
        return api

    async def wait_api_ready(self, api: ApiProcess, *, within: float) -> float:
        """Wait until ``/readyz`` answers 200 with the listener up; the seconds it took."""
        began = time.monotonic()

        async def ready() -> bool:
            if api.process.returncode is not None:
                raise AssertionError(f"the API exited with {api.process.returncode}")
            try:
                async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:
                    response = await http.get("/readyz")
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and response.json()["checks"] == {
                "database": "ok",
                "listener": "ok",
            }

        await wait_for(ready, bool, timeout=within, what="the API to be ready")
        return time.monotonic() - began

    @property
    def processes(self) -> dict[str, int]:
        """Name → pid of every live worker and API process."""
        live = {w.name: w.process.pid for w in self._workers if w.process.returncode is None}
        live.update(
            {
                f"api{i or ''}": a.process.pid
                for i, a in enumerate(self._apis)
                if a.process.returncode is None
            }
        )
        return live

    async def close(self, *, show_logs: bool = False) -> None:
        """Kill every process still running (continuing stopped ones); maybe print their logs."""
        self._closing = True
        for task in self._supervisors:
            task.cancel()
        for process in [w.process for w in self._workers] + [a.process for a in self._apis]:
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                with anyio.move_on_after(10):
                    await process.wait()
        if not show_logs:
            return
        for worker in self._workers:
            sys.stderr.write(f"--- worker {worker.name} log (tail) ---\n")
            sys.stderr.write("\n".join(worker.log_text().splitlines()[-40:]) + "\n")
        for api in self._apis:
            text = api.log_path.read_text(errors="replace")
            sys.stderr.write(f"--- api {api.port} log (tail) ---\n")
            sys.stderr.write("\n".join(text.splitlines()[-40:]) + "\n")


@dataclass
class ApiLoad:
    """Keeps requests going to an API process and sorts the answers.

    Reads ``GET /v1/jobs/{id}`` of random ``read_ids``; every ``create_every``-th
    request creates a ``work`` job with an Idempotency-Key, retried while the
    API answers 503, so each creation yields exactly one job (in ``created``).
    Anything but a 2xx or a clean 503 (problem+json with a ``code``) goes to
    ``bad``; a request that gets no answer at all goes to ``unanswered``.
    """

    api: ApiProcess
    read_ids: list[uuid.UUID]
    create_every: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    created: list[uuid.UUID] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Requests answered so far."""
        return sum(self.statuses.values())

    @property
    def unavailable(self) -> int:
        """Requests answered 503."""
        return self.statuses[503]

    async def run(self, stop: anyio.Event) -> None:
        """Send requests, about 50 a second, until ``stop`` is set."""
        async with httpx.AsyncClient(
            base_url=self.api.url, headers=self.api.headers, timeout=30
        ) as http:
            sent = 0
            while not stop.is_set():
                sent += 1
                if self.create_every and sent % self.create_every == 0:
                    await self._create(http)
                elif self.read_ids:
                    await self._send(http, "GET", f"/v1/jobs/{random.choice(self.read_ids)}")
                await anyio.sleep(0.02)

    async def _send(self, http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> int:
        try:
            response = await http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            self.unanswered.append(f"{method} {path}: {exc!r}")
            return 0
        self.statuses[response.status_code] += 1
        if response.status_code == 503:
            problem = response.json() if "problem+json" in response.headers["content-type"] else {}
            if not problem.get("code"):
                self.bad.append(f"503 without a problem document: {response.text[:200]}")
        elif not 200 <= response.status_code < 300:
            self.bad.append(f"{method} {path}: {response.status_code} {response.text[:300]}")
        elif method == "POST":
            self.created.append(uuid.UUID(response.json()["id"]))
        return response.status_code

    async def _create(self, http: httpx.AsyncClient) -> None:
        key = uuid.uuid4().hex
        body = {"task": "work", "args": {"ms": 20}}
        for _ in range(100):
            status = await self._send(
                http, "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}
            )
            if status not in (0, 503):  # unanswered: it may exist; the same key tells
                return
            await anyio.sleep(0.1)
        self.bad.append(f"creation {key} still refused after 100 tries")
