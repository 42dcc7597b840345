"""A worker serves probes and metrics, beats its probe file and enforces retention."""

from __future__ import annotations

from pathlib import Path

import anyio
import orjson
from prometheus_client.parser import text_string_to_metric_families

from skiplock import Client, JobContext, JobState, TaskRegistry, Worker
from skiplock.worker.retention import RetentionPolicy
from tests.helpers import wait_for, wait_for_state
from tests.worker_helpers import fast_settings, running

tasks = TaskRegistry()


@tasks.task()
async def echo(ctx: JobContext, n: int) -> int:
    """Return n."""
    return n


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of GET path on 127.0.0.1:port."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: w\r\n\r\n".encode())
        data = b""
        with anyio.fail_after(10):
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def sample(body: bytes, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus exposition."""
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def test_worker_serves_probes_metrics_probe_file_and_retention(
    db_dsn: str, client: Client, tmp_path: Path
) -> None:
    """Probes answer, metrics count a job, the probe file exists, and an old job is purged."""
    old = await client.enqueue("echo", {"n": 0})
    await client.pool.execute(
        "UPDATE skiplock.jobs SET state = 'succeeded', attempt = 1,"
        " started_at = now() - interval '3 days', finished_at = now() - interval '2 days'"
        " WHERE id = $1",
        old.id,
    )
    probe_file = tmp_path / "live"
    settings = fast_settings(
        probe_host="127.0.0.1",
        probe_port=0,
        probe_file=str(probe_file),
        probe_file_interval=0.1,
        retention=RetentionPolicy(interval=0.1, batch_pause=0),
    )
    worker = Worker(tasks, db_dsn, settings)
    async with running(worker):
        port = worker.probe_port
        assert port is not None
        assert (await http_get(port, "/livez"))[0] == 200
        status, body = await http_get(port, "/readyz")
        assert status == 200, body
        assert orjson.loads(body)["details"]["schema_checked"] is True
        assert probe_file.exists()

        job = await client.enqueue("echo", {"n": 7})
        await wait_for_state(client, job.id, JobState.SUCCEEDED)
        await wait_for(
            lambda: client.get(old.id), lambda j: j is None, timeout=30, what="old job purged"
        )

        async def metrics() -> bytes:
            return (await http_get(port, "/metrics"))[1]

        body = await wait_for(
            metrics,
            lambda b: (
                sample(b, "skiplock_worker_jobs_finished_total", task="echo", outcome="succeeded")
                == 1.0
            ),
            what="the job counted",
        )
        assert sample(body, "skiplock_worker_jobs_started_total", task="echo") == 1.0
        assert sample(body, "skiplock_worker_purged_jobs_total") == 1.0
        assert sample(body, "skiplock_worker_jobs_in_flight") == 0.0

        worker.stop()
        ready, details = worker.health.readiness()
        assert not ready  # draining: not ready for new work
        assert details["reasons"] == ["stopping"]
    assert not probe_file.exists()
