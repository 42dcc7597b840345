"""Worker probes over real sockets: ProbeServer, ProbeFile and the WorkerHealth checks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson
import pytest

from skiplock.worker.metrics import WorkerMetrics
from skiplock.worker.probes import ProbeFile, ProbeServer, WorkerHealth
from tests.helpers import wait_until

HOST = "127.0.0.1"


class Switch:
    """A check whose answer the test sets, counting how often it is asked."""

    def __init__(self, ok: bool = True, **details: Any) -> None:
        self.ok = ok
        self.details: dict[str, Any] = details
        self.calls = 0

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        self.calls += 1
        return self.ok, dict(self.details)


class Response:
    """A parsed HTTP response (or ``status`` 0 when the server closed without one)."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1]) if raw else 0
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> Any:
        """The body as JSON."""
        return orjson.loads(self.body)


async def read_all(stream: anyio.abc.SocketStream, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with anyio.fail_after(timeout):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data


async def exchange(port: int, raw: bytes) -> Response:
    """Send ``raw`` on a fresh connection and read the answer to the end."""
    async with await anyio.connect_tcp(HOST, port) as stream:
        await stream.send(raw)
        return Response(await read_all(stream))


async def get(port: int, path: str, method: str = "GET") -> Response:
    """One well-formed request."""
    return await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())


@asynccontextmanager
async def serving(server: ProbeServer) -> AsyncIterator[int]:
    """Run ``server`` on a free port for the block; yields the port."""
    async with anyio.create_task_group() as tg:
        port: int = await tg.start(server.serve, HOST, 0)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def test_port_zero_reports_the_bound_port() -> None:
    """serve() on port 0 reports the port it bound, also as the `port` attribute."""
    server = ProbeServer(Switch(), Switch())
    async with serving(server) as port:
        assert port != 0
        assert server.port == port
        assert (await get(port, "/livez")).status == 200


async def test_a_port_in_use_fails_at_start() -> None:
    """Binding a port another listener holds raises OSError from tg.start."""
    async with serving(ProbeServer(Switch(), Switch())) as port:
        with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="in use")):
            async with anyio.create_task_group() as tg:
                await tg.start(ProbeServer(Switch(), Switch()).serve, HOST, port)


async def test_livez_and_readyz_follow_their_checks() -> None:
    """Each path answers 200 or 503 by its own check, with the details as JSON."""
    live, ready = Switch(True, loops="fine"), Switch(False, reasons=["schema not checked yet"])
    async with serving(ProbeServer(live, ready)) as port:
        livez, readyz = await get(port, "/livez"), await get(port, "/readyz")
        assert livez.status == 200
        assert livez.headers["content-type"] == "application/json"
        assert livez.json() == {"status": "ok", "details": {"loops": "fine"}}
        assert readyz.status == 503
        assert readyz.json() == {
            "status": "unavailable",
            "details": {"reasons": ["schema not checked yet"]},
        }

        live.ok, ready.ok = False, True
        assert (await get(port, "/livez")).status == 503
        assert (await get(port, "/readyz")).status == 200


async def test_a_check_that_raises_answers_503_and_the_server_carries_on() -> None:
    """A check raising is a failing probe (with the error), not a dead server."""

    def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("boom")

    async with serving(ProbeServer(broken, Switch())) as port:
        answer = await get(port, "/livez")
        assert answer.status == 503
        assert "boom" in answer.json()["details"]["error"]
        assert (await get(port, "/readyz")).status == 200


async def test_details_that_are_not_json_are_printed_as_text() -> None:
    """Details holding non-JSON values (paths, sets) still give a JSON body."""
    check = Switch(True, path=Path("run") / "live")
    async with serving(ProbeServer(check, check)) as port:
        assert (await get(port, "/livez")).json()["details"] == {"path": "run/live"}


async def test_metrics_path_serves_the_exposition() -> None:
    """/metrics answers the WorkerMetrics exposition with its content type."""
    metrics = WorkerMetrics("probe-test")
    metrics.started("t")
    async with serving(ProbeServer(Switch(), Switch(), metrics)) as port:
        answer = await get(port, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"] == metrics.exposition()[1]
    assert b'skiplock_worker_info{version="' in answer.body
    assert b'skiplock_worker_jobs_started_total{task="t"} 1.0' in answer.body


async def test_metrics_path_is_404_without_metrics() -> None:
    """With no WorkerMetrics (--no-metrics) /metrics does not exist."""
    async with serving(ProbeServer(Switch(), Switch(), None)) as port:
        assert (await get(port, "/metrics")).status == 404


async def test_unknown_paths_are_404_and_query_strings_ignored() -> None:
    """Only the three paths exist; a query string does not change the path."""
    async with serving(ProbeServer(Switch(), Switch())) as port:
        assert (await get(port, "/")).status == 404
        assert (await get(port, "/livez/extra")).status == 404
        assert (await get(port, "/livez?verbose=1")).status == 200


async def test_head_answers_headers_without_a_body() -> None:
    """HEAD gets GET's status and Content-Length, and no body."""
    async with serving(ProbeServer(Switch(), Switch())) as port:
        full, head = await get(port, "/livez"), await get(port, "/livez", "HEAD")
    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["content-length"]) == len(full.body) > 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_are_405(method: str) -> None:
    """Anything but GET and HEAD is refused with an Allow header."""
    live = Switch()
    async with serving(ProbeServer(live, Switch())) as port:
        answer = await get(port, "/livez", method)
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"
    assert live.calls == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /livez\r\n\r\n",
        b"GET /livez SPDY/3\r\n\r\n",
        b"GET  HTTP/1.1\r\n\r\n",
    ],
)
async def test_malformed_requests_are_400(raw: bytes) -> None:
    """A request line that is not METHOD SP PATH SP HTTP/1.x is answered 400."""
    async with serving(ProbeServer(Switch(), Switch())) as port:
        assert (await exchange(port, raw)).status == 400


async def test_an_oversized_request_is_431_and_others_still_served() -> None:
    """A request head over max_request_bytes is refused; the next request is answered."""
    async with serving(ProbeServer(Switch(), Switch(), max_request_bytes=1024)) as port:
        big = b"GET /livez HTTP/1.1\r\nX-Filler: " + b"a" * 4096 + b"\r\n\r\n"
        assert (await exchange(port, big)).status == 431
        assert (await get(port, "/livez")).status == 200


async def test_a_slow_client_does_not_block_others_and_is_timed_out() -> None:
    """A client that never finishes its request holds nobody up and gets 408 after the timeout."""
    server = ProbeServer(Switch(), Switch(), read_timeout=0.5)
    async with serving(server) as port, await anyio.connect_tcp(HOST, port) as slow:
        await slow.send(b"GET /livez HTTP/1.1\r\nHost: pro")
        await wait_until(lambda: server.connections == 1, what="the slow connection accepted")
        for _ in range(3):
            assert (await get(port, "/readyz")).status == 200
        timed_out = Response(await read_all(slow))
        assert timed_out.status == 408


async def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    """At max_connections a new connection is closed unanswered; capacity comes back."""
    server = ProbeServer(Switch(), Switch(), read_timeout=30, max_connections=1)
    async with serving(server) as port:
        async with await anyio.connect_tcp(HOST, port) as holder:
            await holder.send(b"GET /livez HTTP/1.1\r\n")
            await wait_until(lambda: server.connections == 1, what="the first connection held")
            refused = await get(port, "/livez")
            assert refused.status == 0
        await wait_until(lambda: server.connections == 0, what="the held connection released")
        assert (await get(port, "/livez")).status == 200


async def test_many_concurrent_probes_are_all_answered() -> None:
    """Twenty clients at once all get their answer."""
    answers: list[int] = []

    async def one(port: int) -> None:
        answers.append((await get(port, "/livez")).status)

    async with serving(ProbeServer(Switch(), Switch())) as port, anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one, port)
    assert answers == [200] * 20


async def test_probe_server_on_worker_health() -> None:
    """Wired to WorkerHealth, /readyz turns 200 once the schema is checked and the db answers."""
    clock = [100.0]
    health = WorkerHealth(db_fresh_for=5.0, clock=lambda: clock[0])
    health.expect("heartbeat", within=10.0)
    async with serving(ProbeServer(health.liveness, health.readiness)) as port:
        assert (await get(port, "/livez")).status == 200
        not_ready = await get(port, "/readyz")
        assert not_ready.status == 503
        assert "schema not checked yet" in not_ready.json()["details"]["reasons"]
        health.schema_checked()
        health.db_ok()
        assert (await get(port, "/readyz")).status == 200


# -- WorkerHealth -------------------------------------------------------------


def test_liveness_fails_when_an_expected_loop_goes_silent() -> None:
    """A loop silent past its allowance makes the worker not live; a tick brings it back."""
    clock = [0.0]
    health = WorkerHealth(db_fresh_for=5.0, clock=lambda: clock[0])
    health.expect("heartbeat", within=3.0)
    health.expect("rescuer", within=20.0)
    clock[0] = 2.0
    assert health.liveness()[0]
    clock[0] = 4.0
    ok, details = health.liveness()
    assert not ok
    assert details["stale_loops"] == ["heartbeat"]
    assert details["loops_seconds_since_tick"] == {"heartbeat": 4.0, "rescuer": 4.0}
    health.alive("heartbeat")
    assert health.liveness()[0]


def test_readiness_needs_schema_fresh_database_and_not_stopping() -> None:
    """Ready only after the schema check, with a recent round trip, and until stopping."""
    clock = [0.0]
    health = WorkerHealth(db_fresh_for=5.0, clock=lambda: clock[0])
    assert health.readiness()[1]["reasons"] == [
        "schema not checked yet",
        "no successful database round trip in 5 s",
    ]
    health.schema_checked()
    health.db_ok()
    assert health.readiness() == (
        True,
        {
            "reasons": [],
            "schema_checked": True,
            "stopping": False,
            "db_ok_seconds_ago": 0.0,
            "last_db_error": None,
        },
    )
    clock[0] = 6.0
    health.db_failed(ConnectionRefusedError("db down"))
    ok, details = health.readiness()
    assert not ok
    assert details["reasons"] == ["no successful database round trip in 5 s"]
    assert "db down" in details["last_db_error"]
    health.db_ok()
    assert health.readiness()[0]
    health.stopping()
    assert health.readiness()[1]["reasons"] == ["stopping"]


def test_readiness_fails_while_not_live() -> None:
    """A stuck loop makes the worker unready as well as not live."""
    clock = [0.0]
    health = WorkerHealth(db_fresh_for=60.0, clock=lambda: clock[0])
    health.expect("heartbeat", within=1.0)
    health.schema_checked()
    clock[0] = 2.0
    health.db_ok()
    assert health.readiness()[1]["reasons"] == ["a worker loop is stuck"]


def test_bad_settings_are_refused() -> None:
    """Non-positive limits raise ValueError at construction."""
    with pytest.raises(ValueError, match="db_fresh_for"):
        WorkerHealth(db_fresh_for=0)
    with pytest.raises(ValueError, match="within"):
        WorkerHealth(db_fresh_for=1).expect("x", within=0)
    with pytest.raises(ValueError, match="max_connections"):
        ProbeServer(Switch(), Switch(), max_connections=0)
    with pytest.raises(ValueError, match="read_timeout"):
        ProbeServer(Switch(), Switch(), read_timeout=0)
    with pytest.raises(ValueError, match="interval"):
        ProbeFile("live", Switch(), interval=0)


# -- ProbeFile ----------------------------------------------------------------


def read_doc(path: Path) -> dict[str, Any] | None:
    """The probe file's JSON, or None while it does not exist."""
    try:
        doc: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return doc


async def test_probe_file_is_rewritten_while_live_and_removed_on_stop(tmp_path: Path) -> None:
    """The file exists once started, is rewritten each interval, and is gone after cancel."""
    path = tmp_path / "live"
    live = Switch(True, loops="fine")
    async with anyio.create_task_group() as tg:
        await tg.start(ProbeFile(path, live, interval=0.05).run)
        first = read_doc(path)
        assert first is not None
        assert first["pid"] == os.getpid()
        assert first["details"] == {"loops": "fine"}
        await wait_until(
            lambda: (doc := read_doc(path)) is not None and doc["time"] > first["time"],
            what="the probe file rewritten",
        )
        tg.cancel_scope.cancel()
    assert not path.exists()
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_probe_file_goes_stale_while_not_live(tmp_path: Path) -> None:
    """While liveness says no, the file is left as it was (so an exec probe fails)."""
    path = tmp_path / "live"
    live = Switch(True)
    async with anyio.create_task_group() as tg:
        await tg.start(ProbeFile(path, live, interval=0.05).run)
        live.ok = False
        asked = live.calls
        frozen = path.read_bytes()
        await wait_until(lambda: live.calls >= asked + 3, what="three more beats")
        assert path.read_bytes() == frozen
        live.ok = True
        await wait_until(lambda: path.read_bytes() != frozen, what="beats resumed")
        tg.cancel_scope.cancel()


async def test_probe_file_in_a_missing_directory_fails_at_start(tmp_path: Path) -> None:
    """A path whose directory does not exist raises at start, before anything runs."""
    path = tmp_path / "nope" / "live"
    with pytest.RaisesGroup(pytest.RaisesExc(FileNotFoundError, match="does not exist")):
        async with anyio.create_task_group() as tg:
            await tg.start(ProbeFile(path, Switch()).run)


def test_documented_exec_probe_accepts_a_fresh_file_and_refuses_a_missing_one(
    tmp_path: Path,
) -> None:
    """The exec probe from the docs passes on a just-written file and fails once it is gone."""
    path = tmp_path / "skiplock-live"
    probe = ProbeFile(path, Switch())
    command = f"test $(( $(date +%s) - $(stat -c %Y {path}) )) -lt 30"
    assert probe.beat()
    assert subprocess.run(["sh", "-c", command], check=False).returncode == 0
    probe.remove()
    assert (
        subprocess.run(["sh", "-c", command], check=False, stderr=subprocess.DEVNULL).returncode
        != 0
    )
