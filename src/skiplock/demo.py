"""`skiplock demo`: a worker, the status API and its dashboard, and sample jobs.

Everything runs in one process and one event loop: a throwaway PostgreSQL
(unless ``SKIPLOCK_DATABASE_URL`` names a database), a worker running
:data:`demo_tasks`, and the status API served by uvicorn. The demo makes an
admin API key for the tenant ``demo``, enqueues jobs that report progress (one
fails once and is retried, one gets cancelled), prints the dashboard's URL
(with the key in its fragment, which never reaches the server) and ready-to-
paste ``curl`` lines, and follows the jobs on the terminal.

It serves until SIGINT (Ctrl-C) or SIGTERM, or ``exit_after`` seconds: then
the server stops, the worker drains, the key is revoked and the throwaway
PostgreSQL is stopped and its directory removed. A second signal skips the
waiting, never the cleanup.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import secrets
import shlex
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import anyio
import asyncpg
import orjson
import uvicorn

from skiplock.api import ApiSettings, ExposedTask, create_api_key, create_app
from skiplock.queue import Client, Job, JobState, Store, migrate
from skiplock.worker import JobContext, RetryPolicy, TaskRegistry, Worker, WorkerSettings

__all__ = [
    "DEMO_TENANT",
    "DemoResult",
    "LiveTable",
    "demo_log_level",
    "demo_tasks",
    "live_display",
    "render_table",
    "run_demo",
]

DEMO_TENANT = "demo"
"""The tenant of the demo's jobs and of its API key."""

demo_tasks = TaskRegistry()


@demo_tasks.task(timeout=600)
async def render_video(ctx: JobContext, *, title: str, frames: int = 40) -> dict[str, Any]:
    """Pretend to render: report progress with a message and an ETA per frame."""
    step = 0.1
    for frame in range(1, frames + 1):
        await anyio.sleep(step)
        left = timedelta(seconds=(frames - frame) * step)
        await ctx.progress(100 * frame / frames, message=f"frame {frame}/{frames}", eta=left)
    return {"title": title, "frames": frames, "url": f"https://cdn.example/{ctx.id}.mp4"}


@demo_tasks.task(retry=RetryPolicy(base=2.0, jitter=0))
async def flaky_upload(ctx: JobContext, *, name: str) -> str:
    """Fails half-way through its first attempt, succeeds on the second."""
    for percent in range(0, 101, 10):
        await ctx.progress(percent, message="uploading")
        if ctx.attempt == 1 and percent == 50:
            raise ConnectionError("upstream reset the connection (demo failure)")
        await anyio.sleep(0.2)
    return f"uploaded {name}"


@demo_tasks.task()
async def long_report(ctx: JobContext, *, pages: int) -> int:
    """Runs long enough to be cancelled by the demo."""
    for page in range(pages):
        await ctx.progress(100 * page / pages, message=f"page {page}")
        await anyio.sleep(0.1)
    return pages


# What POST /v1/jobs may create in the demo (the curl line makes one).
_EXPOSED = {
    "render_video": ExposedTask(
        args_schema={
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 200},
                "frames": {"type": "integer", "minimum": 1, "maximum": 10_000},
            },
            "required": ["title"],
            "additionalProperties": False,
        },
        description="Pretends to render a video, reporting progress per frame.",
    )
}

_SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("render_video", {"title": "intro", "frames": 300}),
    ("render_video", {"title": "outro", "frames": 120}),
    ("flaky_upload", {"name": "intro.mp4"}),
    ("long_report", {"pages": 600}),
]
_CANCEL_AT = 15.0  # percent of long_report at which the demo cancels it


@dataclass
class DemoResult:
    """How the demo ended: the sample jobs as last seen, and whether it was forced."""

    jobs: list[Job] = field(default_factory=list)
    forced: bool = False


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the demo handles SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def _database(dsn: str | None, echo: Callable[[str], None]) -> AsyncIterator[str]:
    if dsn:
        echo("using the database of SKIPLOCK_DATABASE_URL (migrated if needed)")
        yield dsn
        return
    from skiplock.testing import ThrowawayPostgres  # imported only when needed

    server = ThrowawayPostgres(fast=True)
    echo("starting a throwaway PostgreSQL (no SKIPLOCK_DATABASE_URL set)…")
    try:
        # Not cancellable: a signal meanwhile lands once it has started, and the
        # finally below stops it.
        await anyio.to_thread.run_sync(server.start)
        echo(f"PostgreSQL {server.major} at {server.dsn} (data in {server.directory})")
        yield server.dsn
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.stop)
        echo("throwaway PostgreSQL stopped and removed")


def _listen(host: str, port: int, echo: Callable[[str], None]) -> socket.socket:
    """A bound socket on ``host:port``, or on a free port when ``port`` is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        if port == 0 or exc.errno != errno.EADDRINUSE:
            sock.close()
            raise
        sock.bind((host, 0))
        echo(f"port {port} is taken; using {sock.getsockname()[1]} instead")
    sock.set_inheritable(True)
    return sock


def _base_url(host: str, port: int) -> str:
    """The URL to print: a wildcard address is reached on the loopback one."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


_TABLE_HEADER = f"  {'task':<13} {'state':<10} {'try':<3} {'progress':<29} {'eta':>7}  detail"


def _remaining(job: Job, now: datetime) -> str:
    """Time left by the job's ETA, as 45s, 3m05s or 1h02m; '-' when there is none."""
    if job.state is not JobState.RUNNING or job.eta is None:
        return "-"
    seconds = math.ceil((job.eta - now).total_seconds())
    if seconds <= 0:
        return "due"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _line(job: Job, now: datetime) -> str:
    pct = 0.0 if job.progress is None else job.progress
    bar = "#" * int(pct // 5)
    detail = job.progress_message or ""
    if job.state is JobState.SUCCEEDED:
        detail = f"result={job.result!r}"
    elif job.state is JobState.FAILED and job.error is not None:
        detail = f"{job.error.type}: {job.error.message}"
    elif job.errors:
        last = job.errors[-1]
        detail += f" (attempt {last.attempt} failed: {last.type})"
    return (
        f"  {job.task:<13} {job.state.value:<10} {job.attempt:<3} [{bar:<20}] {pct:5.1f}%"
        f" {_remaining(job, now):>7}  {detail}"
    )


def render_table(jobs: Sequence[Job], now: datetime) -> list[str]:
    """The demo's table of ``jobs`` at ``now``: a header, then one line per job.

    Each line shows the task, state, attempt, a progress bar with the percentage,
    the time left by the job's ETA (running jobs that report one) and the latest
    message, result or error.
    """
    return [_TABLE_HEADER, *(_line(job, now) for job in jobs)]


def live_display(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to redraw the table in place: ``stream`` is a terminal that understands ANSI."""
    env = os.environ if environ is None else environ
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return tty and env.get("TERM", "") != "dumb" and "NO_COLOR" not in env


def demo_log_level(live: bool) -> str:
    """The demo's log level unless the user chose one: its own lines are the show, so only
    warnings and errors; only errors while the table is redrawn in place, since any other
    line printed on the terminal would land inside the table (a retried job's warning
    shows in the table anyway)."""
    return "error" if live else "warning"


class LiveTable:
    """Shows successive frames of a table through ``echo`` (which adds a newline).

    ``in_place`` (a terminal): each frame replaces the previous one (ANSI cursor
    up and erase below), lines cut to ``width`` so that none wraps; a note is
    printed above the table, which is then drawn again below it. Otherwise
    (a pipe, a log file): each changed frame is appended, followed by a blank
    line, and notes are plain lines.
    """

    def __init__(self, echo: Callable[[str], None], *, in_place: bool, width: int = 200) -> None:
        self._echo = echo
        self._in_place = in_place
        self._width = max(width, 20)
        self._shown: list[str] = []

    def _up(self) -> str:
        """Move to the first line of the frame on screen and erase it and what follows."""
        return f"\x1b[{len(self._shown)}A\x1b[J" if self._shown else ""

    def frame(self, lines: Sequence[str]) -> None:
        """Show ``lines`` if they differ from the frame on screen."""
        if not self._in_place:
            if list(lines) != self._shown:
                self._echo("\n".join(lines) + "\n")
                self._shown = list(lines)
            return
        cut = [line[: self._width] for line in lines]
        if cut != self._shown:
            self._echo(self._up() + "\n".join(cut))
            self._shown = cut

    def note(self, text: str) -> None:
        """Print ``text`` as a line of its own, keeping the table (in place) below it."""
        if not self._in_place or not self._shown:
            self._echo(text)
            return
        self._echo(self._up() + text + "\n" + "\n".join(self._shown))


def usage_lines(base: str, secret: str) -> list[str]:
    """What the demo prints so a browser and curl can reach it."""
    auth = shlex.quote(f"Authorization: Bearer {secret}")
    body = orjson.dumps({"task": "render_video", "args": {"title": "mine", "frames": 200}})
    return [
        f"dashboard: {base}/dashboard#key={secret}",
        "try the API (key for tenant 'demo', revoked when the demo stops):",
        f"  curl -H {auth} {shlex.quote(base + '/v1/jobs?limit=5')}",
        f"  curl -H {auth} -H 'Content-Type: application/json'"
        f" -d {shlex.quote(body.decode())} {base}/v1/jobs",
    ]


async def _watch_signals(
    stop: anyio.Event, force: anyio.CancelScope, result: DemoResult, echo: Callable[[str], None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not stop.is_set():
                echo(f"{signum.name}: stopping (send it again to stop at once)…")
                stop.set()
            else:
                echo(f"{signum.name}: stopping at once")
                result.forced = True
                force.cancel()


async def _follow(
    client: Client, jobs: Sequence[Job], result: DemoResult, table: LiveTable
) -> None:
    """Show the sample jobs every second; cancel long_report part-way."""
    cancel_sent = False
    while True:
        current = [
            j
            for j in [await client.get(job.id, tenant=DEMO_TENANT) for job in jobs]
            if j is not None
        ]
        result.jobs = current
        table.frame(render_table(current, datetime.now(UTC)))
        report = next((j for j in current if j.task == "long_report"), None)
        if not cancel_sent and report and report.progress and report.progress >= _CANCEL_AT:
            await client.cancel(report.id, tenant=DEMO_TENANT)
            table.note("  → cancel requested for long_report")
            cancel_sent = True
        if current and all(j.is_terminal for j in current):
            table.note(
                "all sample jobs finished: "
                + ", ".join(f"{j.task}={j.state.value}" for j in current)
                + "\nthe dashboard and the API stay up until Ctrl-C"
            )
            return
        await anyio.sleep(1.0)


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit:  # uvicorn exits when the app's lifespan fails
        raise RuntimeError("the status API did not start; see the log above") from None


async def _started(server: uvicorn.Server, finished: anyio.Event) -> None:
    with anyio.fail_after(60):
        while not server.started:
            if finished.is_set():
                raise RuntimeError("the status API stopped while starting")
            await anyio.sleep(0.05)


async def _revoke(url: str, schema: str, key_id: Any) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(10):
        conn = await asyncpg.connect(url)
        try:
            await Store(schema).revoke_api_key(conn, key_id)
        finally:
            await conn.close()


async def _run(
    dsn: str | None,
    echo: Callable[[str], None],
    *,
    host: str,
    port: int,
    exit_after: float | None,
    schema: str,
    stop: anyio.Event,
    result: DemoResult,
    live: bool,
) -> None:
    async with _database(dsn, echo) as url:
        await migrate(url, schema=schema)
        conn = await asyncpg.connect(url)
        try:
            made = await create_api_key(
                Store(schema), conn, tenant=DEMO_TENANT, scopes=["admin"], name="skiplock demo"
            )
        finally:
            await conn.close()
        try:
            await _serve_demo(
                url, echo, made.secret, host, port, exit_after, schema, stop, result, live
            )
        finally:
            await _revoke(url, schema, made.key.id)


async def _serve_demo(
    url: str,
    echo: Callable[[str], None],
    secret: str,
    host: str,
    port: int,
    exit_after: float | None,
    schema: str,
    stop: anyio.Event,
    result: DemoResult,
    live: bool,
) -> None:
    settings = ApiSettings(
        database_url=url,
        SKIPLOCK_SCHEMA=schema,
        exposed_tasks=_EXPOSED,
        share_secret=secrets.token_urlsafe(32),
    )
    sock = _listen(host, port, echo)
    config = uvicorn.Config(
        create_app(settings),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    server = _EmbeddedServer(config)
    worker = Worker(
        demo_tasks,
        url,
        WorkerSettings(
            concurrency=4, poll=0.5, lease=10, rescue=2, shutdown_grace=2, schema=schema
        ),
    )
    served = anyio.Event()

    async def serve() -> None:
        try:
            await _serve(server, sock)
        finally:
            served.set()
            sock.close()

    async with await Client.connect(url, schema=schema) as client, anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        tg.start_soon(serve)
        try:
            with anyio.fail_after(60):
                await worker.wait_started()
            await _started(server, served)
            base = _base_url(host, sock.getsockname()[1])
            echo("\n".join(usage_lines(base, secret)))
            jobs = [await client.enqueue(t, a, tenant=DEMO_TENANT) for t, a in _SAMPLES]
            echo(f"enqueued {len(jobs)} sample jobs; long_report will be cancelled part-way")
            echo("Ctrl-C (SIGINT) or SIGTERM stops the demo and cleans everything up\n")
            following = anyio.CancelScope()

            table = LiveTable(echo, in_place=live, width=shutil.get_terminal_size().columns - 1)

            async def follow() -> None:
                with following:
                    await _follow(client, jobs, result, table)

            tg.start_soon(follow)
            with anyio.move_on_after(math.inf if exit_after is None else exit_after):
                await stop.wait()
            following.cancel()
            result.jobs = [
                j for j in [await client.get(job.id, tenant=DEMO_TENANT) for job in jobs] if j
            ]
        finally:
            echo("stopping the API server and the worker…")
            server.should_exit = True
            worker.stop()


async def run_demo(
    dsn: str | None,
    echo: Callable[[str], None],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    exit_after: float | None = None,
    schema: str = "skiplock",
    handle_signals: bool = True,
    live: bool = False,
) -> DemoResult:
    """Run the demo until SIGINT/SIGTERM (with ``handle_signals``) or ``exit_after`` seconds.

    ``live``: redraw the jobs' table in place (a terminal, see :func:`live_display`)
    instead of appending it every second. ``dsn`` None starts a throwaway
    PostgreSQL. ``port`` 0 picks a free port; a taken port falls back to a free
    one. Everything it started is stopped and everything it made on disk is
    removed before it returns, on every path.
    """
    stop = anyio.Event()
    result = DemoResult()
    with anyio.CancelScope() as force:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_watch_signals, stop, force, result, echo)
            try:
                await _run(
                    dsn,
                    echo,
                    host=host,
                    port=port,
                    exit_after=exit_after,
                    schema=schema,
                    stop=stop,
                    result=result,
                    live=live,
                )
            finally:
                tg.cancel_scope.cancel()
    echo("demo stopped" + (" (forced)" if result.forced else ""))
    return result
