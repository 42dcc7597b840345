"""`skiplock demo` as a user runs it: a subprocess that prints how to reach it and cleans up."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import httpx
import pytest

from tests.helpers import wait_for, wait_until

pytestmark = pytest.mark.timeout(300)

# Generous: the machine is shared, and a throwaway PostgreSQL has to start first.
START_TIMEOUT = 120.0
EXIT_TIMEOUT = 60.0

DATA_DIR_RE = re.compile(r"^PostgreSQL \d+ at \S+ \(data in (?P<dir>.+)\)$")


@dataclass
class Demo:
    """A running ``skiplock demo`` and what it printed so far."""

    process: asyncio.subprocess.Process
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def output(self) -> str:
        """Everything printed so far, for failure messages."""
        return "\n".join(self.stdout) + "\n--- stderr ---\n" + "\n".join(self.stderr[-40:])

    def line(self, pattern: str) -> re.Match[str] | None:
        """The first stdout line matching ``pattern``."""
        for text in self.stdout:
            if match := re.search(pattern, text):
                return match
        return None

    async def wait_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Wait until a stdout line matches ``pattern``; fail if the demo exits first."""

        def seen() -> bool:
            if self.process.returncode is not None and self.line(pattern) is None:
                raise AssertionError(f"the demo exited first:\n{self.output()}")
            return self.line(pattern) is not None

        await wait_until(seen, within=timeout, what=f"a line matching {pattern!r}")
        match = self.line(pattern)
        assert match is not None
        return match

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """The exit code; fails (after killing it) unless the demo exits within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"the demo did not exit:\n{self.output()}") from None


async def _pump(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    while line := await stream.readline():
        into.append(line.decode(errors="replace").rstrip("\n"))


@asynccontextmanager
async def run_demo(*args: str, database_url: str | None = None) -> AsyncIterator[Demo]:
    """Start ``python -m skiplock demo ARGS``; it is killed if still running at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_")}
    env["PYTHONUNBUFFERED"] = "1"
    if database_url is not None:
        env["SKIPLOCK_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "skiplock",
        "demo",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    demo = Demo(process)
    pumps = [
        asyncio.create_task(_pump(process.stdout, demo.stdout)),
        asyncio.create_task(_pump(process.stderr, demo.stderr)),
    ]
    try:
        yield demo
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await asyncio.gather(*pumps, return_exceptions=True)


def curl_request(line: str) -> tuple[str, str, dict[str, str], str | None]:
    """(method, url, headers, body) of a printed ``curl`` line."""
    words = shlex.split(line)
    assert words[0] == "curl", line
    headers: dict[str, str] = {}
    body: str | None = None
    url: str | None = None
    rest = iter(words[1:])
    for word in rest:
        if word == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            body = next(rest)
        elif word.startswith("-"):
            raise AssertionError(f"unexpected curl option {word} in {line!r}")
        else:
            url = word
    assert url is not None, line
    return ("POST" if body is not None else "GET"), url, headers, body


async def _do_curl(http: httpx.AsyncClient, line: str) -> httpx.Response:
    method, url, headers, body = curl_request(line)
    return await http.request(method, url, headers=headers, content=body)


def _page_url(dashboard: str) -> str:
    """The dashboard URL without its #key fragment (browsers never send it)."""
    return urlunsplit(urlsplit(dashboard)._replace(fragment=""))


async def test_demo_serves_the_dashboard_and_api_and_cleans_up_on_sigint() -> None:
    """Throwaway PostgreSQL: the printed curl lines and dashboard work; SIGINT exits 0, clean."""
    async with run_demo("--port", "0") as demo:
        data_dir = anyio.Path((await demo.wait_line(DATA_DIR_RE.pattern))["dir"])
        assert await data_dir.is_dir()
        dashboard = (await demo.wait_line(r"^dashboard: (?P<url>\S+)$"))["url"]
        assert "#key=skl_" in dashboard
        await demo.wait_line(r"^enqueued 4 sample jobs")
        curls = [text.strip() for text in demo.stdout if text.strip().startswith("curl ")]
        assert len(curls) == 2, demo.output()

        async with httpx.AsyncClient(timeout=30) as http:
            listed = await _do_curl(http, curls[0])
            assert listed.status_code == 200, listed.text
            tasks = sorted(job["task"] for job in listed.json()["jobs"])
            assert tasks == ["flaky_upload", "long_report", "render_video", "render_video"]

            created = await _do_curl(http, curls[1])
            assert created.status_code == 201, created.text
            assert created.json()["task"] == "render_video"

            page = await http.get(_page_url(dashboard), follow_redirects=True)
            assert page.status_code == 200
            assert "text/html" in page.headers["content-type"]
            script = urlsplit(dashboard)._replace(
                path="/dashboard/static/dashboard.js", fragment=""
            )
            assert (await http.get(script.geturl())).status_code == 200

            # The samples do what the demo promises: one retried, one cancelled.
            _, url, headers, _ = curl_request(curls[0])

            async def samples() -> dict[str, Any]:
                response = await http.get(url, headers=headers)
                return {
                    j["task"]: j for j in response.json()["jobs"] if j["task"] != "render_video"
                }

            done = await wait_for(
                samples,
                lambda s: (
                    s["flaky_upload"]["state"] == "succeeded"
                    and s["long_report"]["state"] == "cancelled"
                ),
                timeout=90,
                what="flaky_upload retried to success and long_report cancelled",
            )
            assert done["flaky_upload"]["attempt"] == 2

        demo.process.send_signal(signal.SIGINT)
        code = await demo.wait_exit()
        assert code == 0, demo.output()
    assert not await data_dir.exists(), f"{data_dir} was left behind"
    assert "throwaway PostgreSQL stopped and removed" in demo.stdout


async def test_demo_cleans_up_on_sigterm() -> None:
    """SIGTERM stops the demo as Ctrl-C does: exit 0, the throwaway data directory removed."""
    async with run_demo("--port", "0") as demo:
        data_dir = anyio.Path((await demo.wait_line(DATA_DIR_RE.pattern))["dir"])
        await demo.wait_line(r"^enqueued 4 sample jobs")
        demo.process.send_signal(signal.SIGTERM)
        code = await demo.wait_exit()
        assert code == 0, demo.output()
    assert not await data_dir.exists(), f"{data_dir} was left behind"


async def test_demo_on_a_configured_database_exits_after_its_time(db_dsn: str) -> None:
    """With SKIPLOCK_DATABASE_URL it uses that database, falls back from a taken port,
    stops by itself after --exit-after, and revokes its key."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with run_demo("--port", str(port), "--exit-after", "6", database_url=db_dsn) as demo:
            fallback = await demo.wait_line(rf"^port {port} is taken; using (?P<port>\d+) instead$")
            dashboard = (await demo.wait_line(r"^dashboard: (?P<url>\S+)$"))["url"]
            assert urlsplit(dashboard).port == int(fallback["port"])
            code = await demo.wait_exit()
            assert code == 0, demo.output()
    assert demo.line("throwaway PostgreSQL") is None, "it must not start a server of its own"
    conn = await asyncpg.connect(db_dsn)
    try:
        jobs = await conn.fetchval("SELECT count(*) FROM skiplock.jobs WHERE tenant = 'demo'")
        keys = await conn.fetch("SELECT revoked_at FROM skiplock.api_keys WHERE tenant = 'demo'")
    finally:
        await conn.close()
    assert jobs == 4
    assert len(keys) == 1
    assert keys[0]["revoked_at"] is not None, "the demo key outlived the demo"


def _run_on_a_terminal(argv: list[str], env: dict[str, str], timeout: float) -> str:
    """Run ``argv`` with a pseudo-terminal as its stdout and stderr; everything it printed."""
    main, child = pty.openpty()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=child, stderr=child, env=env)
    os.close(child)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)
    return b"".join(chunks).decode("utf-8", "replace")


async def test_on_a_terminal_the_table_is_redrawn_in_place_with_no_log_line_inside(
    db_dsn: str,
) -> None:
    """On a terminal the demo redraws its table in place (cursor up, erase) with an ETA
    column, and no worker log line lands inside it: flaky_upload's failed first attempt
    used to print a warning between two frames, leaving a stale frame on the screen."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_")}
    env.update(SKIPLOCK_DATABASE_URL=db_dsn, TERM="xterm", COLUMNS="200", LINES="50")
    env.pop("NO_COLOR", None)
    argv = [sys.executable, "-m", "skiplock", "demo", "--port", "0", "--exit-after", "8"]
    screen = await anyio.to_thread.run_sync(lambda: _run_on_a_terminal(argv, env, 60))
    table = screen[screen.index("stops the demo") :]
    assert "\x1b[J" in table, "frames are not redrawn in place"
    assert " eta " in table
    assert "flaky_upload  succeeded  2" in table, table[-2000:]  # its retry happened meanwhile
    assert "job_errored" not in table
    assert "warning" not in table


def test_curl_lines_are_read_like_a_shell() -> None:
    """The helper that replays printed curl lines understands quoting, headers and bodies."""
    line = (
        "curl -H 'Authorization: Bearer k' -H 'Content-Type: application/json'"
        ' -d \'{"a": "b c"}\' http://127.0.0.1:1/v1/jobs'
    )
    assert curl_request(line) == (
        "POST",
        "http://127.0.0.1:1/v1/jobs",
        {"Authorization": "Bearer k", "Content-Type": "application/json"},
        '{"a": "b c"}',
    )
    assert curl_request(f"curl -H 'X: y' {shlex.quote('http://h/p?limit=5')}")[0:2] == (
        "GET",
        "http://h/p?limit=5",
    )
