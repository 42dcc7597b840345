"""The dashboard: a keyless HTML page with local assets, driven live in a real browser."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from skiplock import Client, JobState, Worker
from tests.helpers import wait_for, wait_for_state
from tests.integration.api.support import Keys, LiveApi, RenderControl, create_job

URL_RE = re.compile(r"https?://", re.IGNORECASE)
ASSET_RE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


async def _page(api: LiveApi) -> httpx.Response:
    response = await api.http.get("/dashboard", follow_redirects=True)
    assert response.status_code == 200, response.text
    return response


async def test_dashboard_is_html_that_references_only_local_assets(shared_api: LiveApi) -> None:
    """No key needed; the markup names only /dashboard/static assets and no other host."""
    response = await _page(shared_api)
    assert response.headers["content-type"].startswith("text/html")
    assert response.url.path == "/dashboard/"
    html = response.text
    assert "<table" in html
    assert not URL_RE.search(html), "the page must not load anything from another host"
    assets = ASSET_RE.findall(html)
    assert sorted(assets) == ["/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js"]
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp


async def test_dashboard_without_a_slash_redirects_keeping_the_page(shared_api: LiveApi) -> None:
    """/dashboard redirects to /dashboard/ (browsers carry the #key fragment along)."""
    response = await shared_api.http.get("/dashboard")
    assert response.status_code in (307, 308)
    assert urlsplit(response.headers["location"]).path == "/dashboard/"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("dashboard.js", "javascript"), ("dashboard.css", "text/css")],
)
async def test_dashboard_assets_are_served_and_stay_local(
    shared_api: LiveApi, name: str, media_type: str
) -> None:
    """Each asset is served with its type and calls nothing but this origin."""
    response = await shared_api.http.get(f"/dashboard/static/{name}")
    assert response.status_code == 200
    assert media_type in response.headers["content-type"]
    assert response.text.strip()
    assert not URL_RE.search(response.text)


async def test_dashboard_script_uses_bearer_keys_and_streams(shared_api: LiveApi) -> None:
    """The script sends the key as a bearer token and reads the job event streams."""
    script = (await shared_api.http.get("/dashboard/static/dashboard.js")).text
    assert '"Bearer "' in script
    for path in ("/v1/stats", "/v1/jobs", "/events", "getReader", "sessionStorage"):
        assert path in script


async def test_missing_dashboard_asset_is_404(shared_api: LiveApi) -> None:
    """An unknown asset is a 404, not the page."""
    response = await shared_api.http.get("/dashboard/static/nope.js")
    assert response.status_code == 404


# -- the browser --------------------------------------------------------------


def _chromium() -> str:
    found = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    found = found or shutil.which("chromium")
    if found is None:
        pytest.skip("Debian chromium is not installed: apt-get install chromium")
    return found


class Cdp:
    """A minimal Chrome DevTools Protocol client over a hand-rolled WebSocket (RFC 6455)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_id = 0

    @classmethod
    async def connect(cls, ws_url: str) -> Cdp:
        parts = urlsplit(ws_url)
        assert parts.hostname is not None
        assert parts.port is not None
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"101", head
        return cls(reader, writer)

    async def _send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x81, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def _receive(self) -> str:
        message = b""
        while True:
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(size)
            if first & 0x0F in (0x1, 0x0):
                message += payload
                if first & 0x80:
                    return message.decode()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        await self._send(orjson.dumps({"id": ident, "method": method, "params": params}).decode())
        while True:
            reply = orjson.loads(await self._receive())
            if reply.get("id") == ident:
                assert "error" not in reply, reply
                result = reply["result"]
                assert isinstance(result, dict)
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def browser(binary: str, url: str) -> AsyncIterator[Cdp]:
    """Headless chromium showing ``url``; yields a DevTools session on its page."""
    with tempfile.TemporaryDirectory() as profile:
        process = await asyncio.create_subprocess_exec(
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            url,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            port = None
            async with asyncio.timeout(30):
                while port is None:
                    line = (await process.stderr.readline()).decode()
                    assert line, "chromium exited before DevTools listened"
                    if match := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                        port = int(match.group(1))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                targets = await wait_for(
                    lambda: http.get("/json/list"),
                    lambda r: any(t.get("type") == "page" for t in r.json()),
                    what="chromium's page target",
                )
            page = next(t for t in targets.json() if t.get("type") == "page")
            cdp = await Cdp.connect(page["webSocketDebuggerUrl"])
            try:
                yield cdp
            finally:
                await cdp.close()
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def _bar_width(cdp: Cdp, job_id: uuid.UUID) -> float | None:
    width = await cdp.evaluate(
        f"(() => {{ const f = document.querySelector('#job-{job_id} .fill');"
        " return f ? f.style.width : null; })()"
    )
    return float(width.rstrip("%")) if width else None


async def test_browser_shows_live_progress_and_cancels(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """In headless chromium the bar grows with the job's progress, and Cancel cancels it."""
    binary = _chromium()
    job_id = uuid.UUID(await create_job(api, keys.a_write))
    await control.wait_started(job_id)
    await wait_for_state(client, job_id, JobState.RUNNING)
    control.step(job_id, 10.0)

    async with browser(binary, f"{api.url}/dashboard#key={keys.a_write}") as cdp:

        async def width() -> float | None:
            return await _bar_width(cdp, job_id)

        await wait_for(width, lambda w: w == 10.0, timeout=20, what="the bar at 10%")
        control.step(job_id, 65.0)
        # Faster than the 3 s list refresh: the event stream moves it.
        await wait_for(width, lambda w: w == 65.0, timeout=2.5, what="the bar at 65%")

        await cdp.evaluate(f"document.querySelector('#job-{job_id} .cancel').click()")
        job = await wait_for_state(client, job_id, JobState.CANCELLED, timeout=20)
        assert job.state is JobState.CANCELLED

        async def state() -> Any:
            return await cdp.evaluate(
                f"document.querySelector('#job-{job_id}')?.dataset.state ?? null"
            )

        await wait_for(state, lambda s: s == "cancelled", timeout=10, what="the row cancelled")
