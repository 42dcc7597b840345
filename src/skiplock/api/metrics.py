"""Prometheus metrics of the status API (one registry per app).

Besides the API's own request metrics, ``/metrics`` exports what flow control is
doing (migration 0011), read from the database at scrape time (at most once per
``flow_metrics_seconds``): per limit pattern, never per key (a pattern such as
``user:*`` may match 100,000 users), and per queue.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from skiplock.queue.flow import LimitSummary, QueueFlow

__all__ = ["ApiMetrics", "FlowGauges"]

log = structlog.get_logger("skiplock.api")


class ApiMetrics:
    """Request counts and latencies by route, SSE subscribers, hub health."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "skiplock_api_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "skiplock_api_request_duration_seconds",
            "Time to answer an HTTP request (streams: until they end).",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
        )
        self.sse_subscribers = Gauge(
            "skiplock_api_sse_subscribers", "Open Server-Sent Event streams.", registry=registry
        )
        self.sse_dropped = Counter(
            "skiplock_api_sse_dropped_total",
            "Streams ended because the client did not keep up.",
            registry=registry,
        )
        self.hub_connected = Gauge(
            "skiplock_api_listener_connected",
            "1 when the event hub's LISTEN connection is up.",
            registry=registry,
        )

        self.flow = FlowGauges(registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


class FlowGauges:
    """Flow-control gauges, set from one reading of the database (see :meth:`set`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.keys_in_use = Gauge(
            "skiplock_limit_keys",
            "Keys in use under a limit (carried by a due queued or a running job, or with "
            "starts in the rate window), by limit pattern.",
            ["pattern"],
            registry=registry,
        )
        self.keys_at_limit = Gauge(
            "skiplock_limit_keys_at_limit",
            "Keys of a limit pattern with no room left: their queued jobs wait.",
            ["pattern"],
            registry=registry,
        )
        self.running = Gauge(
            "skiplock_limit_running_jobs",
            "Running jobs carrying a key of the limit pattern (summed over its keys).",
            ["pattern"],
            registry=registry,
        )
        self.throttled = Gauge(
            "skiplock_limit_throttled_jobs",
            "Due queued jobs waiting on a key of the limit pattern at its limit (summed over "
            "its keys).",
            ["pattern"],
            registry=registry,
        )
        self.queue_paused = Gauge(
            "skiplock_queue_paused",
            "1 when the queue is paused (queues with jobs or a switch set).",
            ["queue"],
            registry=registry,
        )
        self.queue_throttled = Gauge(
            "skiplock_queue_throttled_jobs",
            "Due queued jobs of the queue carrying a key at its limit.",
            ["queue"],
            registry=registry,
        )
        self.up = Gauge(
            "skiplock_api_flow_metrics_up",
            "1 when the last reading of the flow-control gauges from the database succeeded.",
            registry=registry,
        )
        self.read_at: float | None = None
        self.lock = anyio.Lock()

    def stale(self, max_age: float) -> bool:
        """Whether the gauges are older than ``max_age`` seconds (or were never read)."""
        return self.read_at is None or time.monotonic() - self.read_at >= max_age

    def set(self, limits: Sequence[LimitSummary], queues: Sequence[QueueFlow]) -> None:
        """Replace every flow gauge by this reading (a removed limit or queue disappears)."""
        for gauge in (
            self.keys_in_use,
            self.keys_at_limit,
            self.running,
            self.throttled,
            self.queue_paused,
            self.queue_throttled,
        ):
            gauge.clear()
        for limit in limits:
            self.keys_in_use.labels(limit.pattern).set(limit.keys)
            self.keys_at_limit.labels(limit.pattern).set(limit.keys_at_limit)
            self.running.labels(limit.pattern).set(limit.running)
            self.throttled.labels(limit.pattern).set(limit.throttled)
        for queue in queues:
            self.queue_paused.labels(queue.queue).set(1 if queue.paused else 0)
            self.queue_throttled.labels(queue.queue).set(queue.throttled)
        self.up.set(1)
        self.read_at = time.monotonic()

    def failed(self, exc: BaseException) -> None:
        """The reading failed: the gauges keep their last values, ``up`` says so."""
        self.up.set(0)
        self.read_at = time.monotonic()  # retried after max_age, not on every scrape
        log.warning("flow_metrics_unavailable", error=repr(exc))
