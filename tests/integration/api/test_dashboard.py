"""The dashboard: a keyless HTML page with local assets, driven live in a real browser."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from skiplock import Client, JobState, Worker
from skiplock.api import create_api_key
from skiplock.queue import Store
from skiplock.queue.schedules import ScheduleDefinition
from skiplock.worker.scheduler import Scheduler
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


async def test_dashboard_has_a_flow_control_section(shared_api: LiveApi) -> None:
    """The page holds the flow-control tables and the limit form; the script reads the admin
    routes, wires the buttons, and says when the key is not an admin key."""
    html = (await _page(shared_api)).text
    for needed in (
        "<h2>Flow control</h2>",
        'id="limits"',
        'id="limit-keys"',
        'id="flow-queues"',
        'id="schedules"',
        'id="limit-set"',
        'id="flow-note"',
    ):
        assert needed in html
    script = (await shared_api.http.get("/dashboard/static/dashboard.js")).text
    for needed in (
        'api("/v1/admin/limits")',
        'api("/v1/admin/queues")',
        'api("/v1/admin/schedules")',
        '"/v1/admin/schedules/" + encodeURIComponent(name) + "/" + action',
        '"/v1/admin/limits/" + encodeURIComponent(pattern)',
        'method: "PUT"',
        'method: "DELETE"',
        '"/v1/admin/queues/" + encodeURIComponent(queue) + "/" + action',
        "err.status === 403",
        "admin scope",
    ):
        assert needed in script


async def test_missing_dashboard_asset_is_404(shared_api: LiveApi) -> None:
    """An unknown asset is a 404, not the page."""
    response = await shared_api.http.get("/dashboard/static/nope.js")
    assert response.status_code == 404


# -- the browser --------------------------------------------------------------
#
# Debian's chromium, headless, driven over the Chrome DevTools Protocol (CDP)
# with the `websockets` client. `.ci/run` installs chromium when it runs as
# root; elsewhere the test skips and says so.

# Run before the page's own script: counts the page's fetches, and can hold the
# polled GETs (list and stats) forever, so that whatever changes on the page
# afterwards was pushed over the job's event stream.
HOLD_POLLS = """
(() => {
  const realFetch = window.fetch.bind(window);
  const probe = { holdPolls: false, held: 0, streams: 0 };
  window.__skiplockTest = probe;
  window.fetch = (input, init = {}) => {
    const url = typeof input === "string" ? input : input.url;
    if (url.includes("/events")) probe.streams += 1;
    const polled = (init.method || "GET") === "GET" && !url.includes("/events");
    if (polled && probe.holdPolls) {
      probe.held += 1;
      return new Promise(() => {});
    }
    return realFetch(input, init);
  };
})();
"""


def _chromium() -> str:
    """The chromium binary (SKIPLOCK_CHROMIUM, else Debian's), or skip the test."""
    configured = os.environ.get("SKIPLOCK_CHROMIUM")
    found = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None or not os.access(found, os.X_OK):
        pytest.skip(
            "no chromium: `apt-get install chromium` (.ci/run does it when run as root),"
            " or point SKIPLOCK_CHROMIUM at a Chromium binary"
        )
    return found


class Cdp:
    """A minimal Chrome DevTools Protocol session on one page target.

    Calls are sequential: :meth:`call` sends one command and reads messages
    until its reply, dropping the events that arrive meanwhile (the test reads
    the page's state by evaluating expressions, never from events).
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send ``method`` and return its result; a protocol error fails the test."""
        self.next_id += 1
        ident = self.next_id
        message = {"id": ident, "method": method, "params": params}
        await self.ws.send(orjson.dumps(message).decode())  # a text frame: CDP drops binary ones
        async with asyncio.timeout(30):
            while True:
                reply = orjson.loads(await self.ws.recv())
                if reply.get("id") == ident:
                    break
        assert "error" not in reply, reply
        result = reply["result"]
        assert isinstance(result, dict)
        return result

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression evaluated in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def click(self, selector: str) -> None:
        """Click the centre of the element ``selector`` with real mouse events (scrolled
        into view first: events outside the viewport reach nothing)."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()});"
            " if (!e || e.offsetParent === null) return null;"
            " e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        assert box is not None, f"{selector} is not on the page, or not visible"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left",
                clickCount=0 if kind == "mouseMoved" else 1,
            )


@asynccontextmanager
async def browser(binary: str) -> AsyncIterator[Cdp]:
    """Headless chromium on about:blank; yields a DevTools session on its page."""
    with tempfile.TemporaryDirectory() as profile:
        log_path = Path(profile) / "chromium.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                binary,
                "--headless",
                "--no-sandbox",  # as root, and in containers
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                f"--user-data-dir={profile}/data",
                "--remote-debugging-port=0",
                "about:blank",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its helpers go with it
            )
        try:
            active = Path(profile) / "data" / "DevToolsActivePort"

            async def port() -> int | None:
                if process.returncode is not None:
                    raise AssertionError(f"chromium exited: {log_path.read_text()[-2000:]}")
                lines = active.read_text().splitlines() if active.exists() else []
                return int(lines[0]) if lines and lines[0].isdigit() else None

            devtools = await wait_for(port, bool, timeout=60, what="chromium's DevTools port")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{devtools}") as http:
                targets = await wait_for(
                    lambda: http.get("/json/list"),
                    lambda r: any(t.get("type") == "page" for t in r.json()),
                    timeout=30,
                    what="chromium's page target",
                )
            page = next(t for t in targets.json() if t.get("type") == "page")
            async with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                yield Cdp(ws)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _bar_width(cdp: Cdp, job_id: uuid.UUID) -> float | None:
    width = await cdp.evaluate(
        f"(() => {{ const f = document.querySelector('#job-{job_id} .fill');"
        " return f ? f.style.width : null; })()"
    )
    return float(width.rstrip("%")) if width else None


async def test_browser_shows_pushed_progress_and_cancels(
    api: LiveApi, keys: Keys, control: RenderControl, worker: Worker, client: Client
) -> None:
    """In headless chromium the bar follows pushed progress, and its Cancel button cancels."""
    binary = _chromium()
    job_id = uuid.UUID(await create_job(api, keys.a_write))
    await control.wait_started(job_id)
    await wait_for_state(client, job_id, JobState.RUNNING)
    control.step(job_id, 10.0)

    async with browser(binary) as cdp:
        await cdp.call("Page.enable")
        await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=HOLD_POLLS)
        await cdp.call("Page.navigate", url=f"{api.url}/dashboard#key={keys.a_write}")

        async def width() -> float | None:
            return await _bar_width(cdp, job_id)

        async def probe(name: str) -> Any:
            return await cdp.evaluate(f"window.__skiplockTest && window.__skiplockTest.{name}")

        await wait_for(width, lambda w: w == 10.0, timeout=30, what="the bar at 10%")
        await wait_for(lambda: probe("streams"), bool, timeout=30, what="the job's event stream")
        # The key left the address bar (it stays in sessionStorage).
        assert "key=" not in await cdp.evaluate("location.href")

        # From here on the page's polls never answer: only the stream can move the bar.
        await cdp.evaluate("window.__skiplockTest.holdPolls = true; window.__sameDocument = 1")
        control.step(job_id, 65.0, "frame 65")
        await wait_for(width, lambda w: w == 65.0, timeout=30, what="the bar at 65% (pushed)")
        text = await cdp.evaluate(f"document.querySelector('#job-{job_id} .pct').textContent")
        assert text == "65% frame 65"
        await wait_for(lambda: probe("held"), bool, timeout=30, what="a poll held back")
        assert await cdp.evaluate("window.__sameDocument") == 1, "the page was reloaded"

        await cdp.click(f"#job-{job_id} .cancel")
        job = await wait_for_state(client, job_id, JobState.CANCELLED, timeout=30)
        assert job.cancel_requested

        async def row() -> Any:
            return await cdp.evaluate(
                f"(() => {{ const r = document.querySelector('#job-{job_id}');"
                " return r && {state: r.dataset.state,"
                " cancel: r.querySelector('.cancel').hidden,"
                " retry: r.querySelector('.retry').hidden}; })()"
            )

        shown = await wait_for(
            row, lambda r: r and r["state"] == "cancelled", timeout=30, what="the row cancelled"
        )
        assert shown == {"state": "cancelled", "cancel": True, "retry": False}
        assert await cdp.evaluate("window.__sameDocument") == 1


async def test_browser_flow_control_with_an_admin_key_and_without(
    api: LiveApi, keys: Keys, client: Client
) -> None:
    """With an admin key the Flow control section lists the limits with their usage and
    the queues, and its buttons resume a queue, remove a limit and set one; with a write
    key it says an admin key is needed."""
    binary = _chromium()
    conn = await asyncpg.connect(api.settings.require_database_url())
    try:
        admin = await create_api_key(Store(), conn, tenant="ops", scopes=["admin"], name="ops")
    finally:
        await conn.close()
    await client.set_limit("user:*", max_running=1)
    await client.pause("media")
    for _ in range(3):
        job = await client.enqueue("t", {})
        await client.pool.execute(
            "UPDATE skiplock.jobs SET limit_keys = '{user:1}' WHERE id = $1", job.id
        )
    claimed = await client.store.claim_jobs(client.pool, ["default"], 10, 30.0, "w1")
    assert len(claimed) == 1
    await Scheduler(
        client.pool,
        client.store,
        [ScheduleDefinition(name="nightly", task="cleanup", cron="0 3 * * *")],
        poll=1,
    ).declare()

    async with browser(binary) as cdp:
        await cdp.call("Page.enable")
        await cdp.call("Page.navigate", url=f"{api.url}/dashboard#key={admin.secret}")

        async def limit_row() -> Any:
            return await cdp.evaluate(
                "(() => { const r = document.querySelector('#limits tr[data-pattern]');"
                " return r && {pattern: r.dataset.pattern,"
                " at: r.querySelector('.at').textContent,"
                " throttled: r.querySelector('.throttled').textContent}; })()"
            )

        shown = await wait_for(limit_row, bool, timeout=30, what="the limit's row")
        assert shown == {"pattern": "user:*", "at": "1", "throttled": "2"}
        keys_text = await cdp.evaluate("document.querySelector('#limit-keys tbody').textContent")
        assert "user:1" in keys_text

        async def shown_on_page(expression: str, what: str) -> None:
            await wait_for(lambda: cdp.evaluate(expression), bool, timeout=30, what=what)

        # Each action re-renders its table: wait for the page too before the next click
        # (the rows below a changed table move).
        await cdp.click('#flow-queues tr[data-queue="media"] .resume')
        await wait_for(client.queues, lambda qs: not qs[0].paused, timeout=30, what="resumed")
        await shown_on_page(
            "document.querySelector('#flow-queues tr[data-queue=\"media\"] .pause') !== null",
            "the Pause button",
        )

        await cdp.click('#limits tr[data-pattern="user:*"] .remove')
        await wait_for(client.limits, lambda ls: ls == [], timeout=30, what="limit removed")
        await shown_on_page(
            "document.querySelector('#limits tr[data-pattern]') === null", "no limit row"
        )

        await cdp.evaluate(
            "document.getElementById('limit-pattern').value = 'provider:x';"
            " document.getElementById('limit-starts').value = '5';"
            " document.getElementById('limit-per').value = '60'"
        )
        await cdp.click("#limit-set")
        made = await wait_for(client.limits, bool, timeout=30, what="limit set")
        assert [(x.pattern, x.max_running, x.max_starts, x.per_seconds) for x in made] == [
            ("provider:x", None, 5, 60.0)
        ]

        # Schedules: the row is shown; Pause pauses it, Run now enqueues its job.
        await shown_on_page(
            "document.querySelector('#schedules tr[data-schedule=\"nightly\"]') !== null",
            "the schedule's row",
        )
        await cdp.click('#schedules tr[data-schedule="nightly"] .pause')
        await wait_for(client.schedules, lambda ss: ss[0].paused, timeout=30, what="paused")
        await shown_on_page(
            "document.querySelector('#schedules tr[data-schedule=\"nightly\"] .resume') !== null",
            "the schedule's Resume button",
        )
        await cdp.click('#schedules tr[data-schedule="nightly"] .trigger')
        await wait_for(
            lambda: client.pool.fetchval(
                "SELECT count(*) FROM skiplock.jobs WHERE meta->>'trigger' = 'manual'"
            ),
            lambda n: n == 1,
            timeout=30,
            what="the schedule's job enqueued by hand",
        )

        await cdp.evaluate("sessionStorage.clear()")
        await cdp.call("Page.navigate", url=f"{api.url}/dashboard#key={keys.a_write}")

        async def note() -> Any:
            return await cdp.evaluate(
                "(() => { const n = document.getElementById('flow-note');"
                " return n && !n.hidden ? n.textContent : null; })()"
            )

        text = await wait_for(note, bool, timeout=30, what="the admin note")
        assert "admin scope" in text
        assert await cdp.evaluate("document.getElementById('flow-body').hidden") is True
