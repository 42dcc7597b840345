"""Prometheus metrics of the status API (one registry per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ApiMetrics"]


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

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
