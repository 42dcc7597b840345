"""A small status dashboard: one HTML page plus a script and a stylesheet.

``GET /dashboard`` holds no data, so it needs no key; the script reads an API
key from the URL fragment (``/dashboard#key=skl_…``, never sent to the server)
or asks for one, keeps it in ``sessionStorage``, and calls the JSON API with
``Authorization: Bearer``. Assets are served from ``/dashboard/static``.

The "Flow control" section (limits with their usage, keys at their limit,
paused and fair queues, and buttons to set or remove a limit and to pause or
resume a queue) calls the ``/v1/admin`` routes: with a key lacking the
``admin`` scope it only says so.

Everything lives under one :class:`~starlette.routing.Mount`, so the page
stays out of the JSON API's route table (and its OpenAPI document); the page
itself is at ``/dashboard/`` and ``/dashboard`` redirects there, keeping the
fragment.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "dashboard", "dashboard_mount"]

STATIC_DIR = Path(__file__).parent / "static"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>skiplock dashboard</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<script src="/dashboard/static/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>skiplock</h1>
  <span id="status" role="status"></span>
  <button type="button" id="forget">Change key</button>
</header>
<main>
  <p id="error" class="error" role="alert" hidden></p>
  <section>
    <h2>Queues</h2>
    <table id="counts">
      <thead><tr><th>Queue</th><th class="num">Queued</th><th class="num">Running</th>
        <th class="num">Succeeded</th><th class="num">Failed</th><th class="num">Cancelled</th>
      </tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section id="flow">
    <h2>Flow control</h2>
    <p id="flow-note" class="note" hidden></p>
    <div id="flow-body" hidden>
      <h3>Limits</h3>
      <table id="limits">
        <thead><tr><th>Pattern</th><th class="num">Max running</th><th>Max starts</th>
          <th class="num">Keys in use</th><th class="num">At limit</th>
          <th class="num">Running</th><th class="num">Throttled</th><th></th></tr></thead>
        <tbody></tbody>
      </table>
      <div id="limit-form" class="form">
        <input id="limit-pattern" placeholder="pattern (user:*)" aria-label="Pattern">
        <input id="limit-running" type="number" min="0" placeholder="max running"
          aria-label="Max running">
        <input id="limit-starts" type="number" min="0" placeholder="max starts"
          aria-label="Max starts">
        <input id="limit-per" type="number" min="0" step="any" placeholder="per seconds"
          aria-label="Per seconds">
        <button type="button" id="limit-set">Set limit</button>
      </div>
      <h3>Keys at their limit</h3>
      <table id="limit-keys">
        <thead><tr><th>Pattern</th><th>Key</th><th class="num">Running</th>
          <th class="num">Starts</th><th class="num">Waiting</th></tr></thead>
        <tbody></tbody>
      </table>
      <h3>Queues</h3>
      <table id="flow-queues">
        <thead><tr><th>Queue</th><th>State</th><th>Claim</th><th class="num">Queued</th>
          <th class="num">Running</th><th class="num">Throttled</th><th></th></tr></thead>
        <tbody></tbody>
      </table>
      <h3>Schedules</h3>
      <table id="schedules">
        <thead><tr><th>Schedule</th><th>When</th><th>Task</th><th>State</th>
          <th>Last tick</th><th>Next tick</th><th></th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
  </section>
  <section>
    <h2>Recent jobs</h2>
    <table id="jobs">
      <thead><tr><th>Job</th><th>Task</th><th>State</th><th>Progress</th>
        <th>Error</th><th></th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
</body>
</html>
"""

# Only this origin's script and style; the API is called on the same origin.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


async def dashboard(request: Request) -> Response:
    """The dashboard page (static markup: the script fetches the data)."""
    return HTMLResponse(_PAGE, headers=_HEADERS)


def dashboard_mount() -> Mount:
    """``/dashboard/`` (the page) and ``/dashboard/static`` (its script and stylesheet)."""
    return Mount(
        "/dashboard",
        routes=[
            Route("/", dashboard, methods=["GET"], name="page"),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        name="dashboard",
    )
