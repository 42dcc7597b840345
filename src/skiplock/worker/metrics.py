"""Prometheus metrics of one worker (its own registry, exposed on the probe port).

The worker's hot path calls the methods of :class:`WorkerMetrics`; each one
looks its label child up in a dict (no string formatting, no registry lookup)
and bumps a counter, a gauge or a histogram.

Every name starts with ``skiplock_worker_``:

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``jobs_started_total`` | counter | task | handlers started |
| ``jobs_finished_total`` | counter | task, outcome | attempts ended (outcomes below) |
| ``job_duration_seconds`` | histogram | task | handler run time, 1 ms to 1 h |
| ``jobs_in_flight`` | gauge | | handlers running now |
| ``claim_duration_seconds`` | histogram | | latency of the claim statement |
| ``claimed_jobs_total`` | counter | | jobs claimed |
| ``lease_losses_total`` | counter | write | fenced writes that found the lease gone |
| ``notifications_missed_total`` | counter | | polled jobs due before the previous claim |
| ``listener_reconnects_total`` | counter | | LISTEN connection back after a loss |
| ``completion_batch_size`` | histogram | | outcomes per ``complete_jobs`` statement |
| ``db_errors_total`` | counter | operation | database errors, by loop |
| ``purged_jobs_total`` | counter | | jobs deleted by the retention loop |
| ``info`` | gauge | worker_id, version | always 1 |
| ``last_heartbeat_timestamp_seconds`` | gauge | | Unix time of the last good heartbeat pass |

- ``outcome``: ``succeeded``, ``failed``, ``retried``, ``cancelled``,
  ``released`` (shutdown, unknown task), ``snoozed`` (the handler raised
  ``Snooze``), ``abandoned`` (lease lost or worker killed: nothing written);
- ``write``: ``completion``, ``progress``, ``heartbeat``;
- ``operation``: ``claim``, ``complete``, ``progress``, ``heartbeat``,
  ``rescue``, ``listen``, ``presence``, ``retention``.

A missed notification is a claim woken by the poll timer rather than a NOTIFY
that still found jobs: work no notification announced. A worker that does not
listen (``listen_url="none"``) counts none.

Task names come from the database, so their number is capped
(:data:`MAX_TASK_LABELS`): tasks seen after the cap are counted under
``task="__other__"``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator, Mapping
from importlib import metadata
from itertools import accumulate
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "DB_OPERATIONS",
    "JOB_OUTCOMES",
    "LEASE_WRITES",
    "MAX_TASK_LABELS",
    "OTHER_TASK",
    "WorkerMetrics",
]

MAX_TASK_LABELS: Final = 500
"""Distinct ``task`` label values kept before the rest are counted as :data:`OTHER_TASK`."""
OTHER_TASK: Final = "__other__"

JOB_OUTCOMES: Final = (
    "succeeded",
    "failed",
    "retried",
    "cancelled",
    "released",
    "snoozed",
    "abandoned",
)
"""``outcome`` label values of ``skiplock_worker_jobs_finished_total``."""
# Store.Completion outcomes are accepted too, under their metric names.
_OUTCOME_ALIASES: Final[Mapping[str, str]] = {
    **{o: o for o in JOB_OUTCOMES},
    "retry": "retried",
    "release": "released",
    "snooze": "snoozed",
}
LEASE_WRITES: Final = ("completion", "progress", "heartbeat")
"""``write`` label values of ``skiplock_worker_lease_losses_total``."""
DB_OPERATIONS: Final = (
    "claim",
    "complete",
    "progress",
    "heartbeat",
    "rescue",
    "listen",
    "presence",
    "retention",
)
"""``operation`` label values of ``skiplock_worker_db_errors_total``."""

# 1 ms to 1 h.
JOB_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
CLAIM_DURATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def _skiplock_version() -> str:
    try:
        return metadata.version("skiplock")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class _JobCollector(Collector):
    """Per-job counters kept as plain ints on the event loop, exported at scrape time."""

    def __init__(self) -> None:
        self.started: defaultdict[str, int] = defaultdict(int)
        self.finished: dict[tuple[str, str], int] = {}
        self.duration: dict[str, list[int]] = {}  # per bucket (le), then +Inf
        self.duration_sum: dict[str, float] = {}
        self.in_flight = 0

    def label(self, task: str) -> str:
        """``task``, or :data:`OTHER_TASK` once :data:`MAX_TASK_LABELS` tasks are known."""
        if len(self.started) < MAX_TASK_LABELS:
            self.started[task] += 0  # known from now on
            return task
        return OTHER_TASK

    def collect(self) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "skiplock_worker_jobs_started", "Handlers started, by task.", labels=["task"]
        )
        for task, n in list(self.started.items()):
            started.add_metric([task], n)
        yield started
        finished = CounterMetricFamily(
            "skiplock_worker_jobs_finished",
            "Attempts ended, by task and outcome (abandoned: lease lost, nothing written).",
            labels=["task", "outcome"],
        )
        for (task, outcome), n in list(self.finished.items()):
            finished.add_metric([task, outcome], n)
        yield finished
        duration = HistogramMetricFamily(
            "skiplock_worker_job_duration_seconds", "Handler run time, by task.", labels=["task"]
        )
        bounds = [*(str(b) for b in JOB_DURATION_BUCKETS), "+Inf"]
        for task, counts in list(self.duration.items()):
            cumulative = list(accumulate(counts))
            duration.add_metric(
                [task], list(zip(bounds, cumulative, strict=True)), self.duration_sum[task]
            )
        yield duration
        yield GaugeMetricFamily(
            "skiplock_worker_jobs_in_flight", "Handlers running now.", value=self.in_flight
        )


class WorkerMetrics:
    """One worker's Prometheus metrics, in a private :class:`CollectorRegistry`.

    Call :meth:`started` once per handler and :meth:`finished` exactly once
    after it (the in-flight gauge relies on the pair). Label values outside the
    documented sets raise :class:`ValueError`.
    """

    def __init__(self, worker_id: str, *, version: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Per-job metrics are plain counters read at scrape time (_JobCollector):
        # a prometheus_client child takes a lock per call, several per job.
        self._jobs = _JobCollector()
        r.register(self._jobs)
        self.claim_duration = Histogram(
            "skiplock_worker_claim_duration_seconds",
            "Latency of the claim statement.",
            registry=r,
            buckets=CLAIM_DURATION_BUCKETS,
        )
        self.claimed_jobs = Counter(
            "skiplock_worker_claimed_jobs_total", "Jobs claimed.", registry=r
        )
        self.lease_losses = Counter(
            "skiplock_worker_lease_losses_total",
            "Fenced writes that found the lease gone, by write.",
            ["write"],
            registry=r,
        )
        self.notifications_missed = Counter(
            "skiplock_worker_notifications_missed_total",
            "Jobs a claim woken by the poll timer found that were due before the previous claim "
            "(no notification announced them).",
            registry=r,
        )
        self.listener_reconnects = Counter(
            "skiplock_worker_listener_reconnects_total",
            "Times the LISTEN connection was re-established after a loss.",
            registry=r,
        )
        self.completion_batch_size = Histogram(
            "skiplock_worker_completion_batch_size",
            "Outcomes written per complete_jobs statement.",
            registry=r,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.db_errors = Counter(
            "skiplock_worker_db_errors_total",
            "Database errors, by operation.",
            ["operation"],
            registry=r,
        )
        self.purged_jobs = Counter(
            "skiplock_worker_purged_jobs_total",
            "Finished jobs deleted by this worker's retention loop.",
            registry=r,
        )
        self.info = Gauge(
            "skiplock_worker_info",
            "Always 1; labels name the worker and its skiplock version.",
            ["worker_id", "version"],
            registry=r,
        )
        self.info.labels(worker_id, version or _skiplock_version()).set(1)
        self.last_heartbeat = Gauge(
            "skiplock_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat pass that succeeded.",
            registry=r,
        )

        # Label children, made once and looked up by plain dict access afterwards.
        self._lease_lost = {w: self.lease_losses.labels(w) for w in LEASE_WRITES}
        self._db_error = {op: self.db_errors.labels(op) for op in DB_OPERATIONS}

    # -- the hot path -------------------------------------------------------

    def claimed(self, count: int, seconds: float, *, missed: int = 0) -> None:
        """One claim statement took ``seconds`` and returned ``count`` jobs.

        ``missed``: how many of them a claim woken by the poll timer found
        although they were due before the previous claim (a notification that
        never arrived); delayed and retried jobs that fell due since are not.
        """
        self.claim_duration.observe(seconds)
        if count:
            self.claimed_jobs.inc(count)
            if missed:
                self.notifications_missed.inc(missed)

    def started(self, task: str) -> None:
        """A handler of ``task`` starts."""
        jobs = self._jobs
        label = task if task in jobs.started else jobs.label(task)
        jobs.started[label] += 1
        jobs.in_flight += 1

    def finished(self, task: str, outcome: str, seconds: float | None) -> None:
        """The attempt started by :meth:`started` ended with ``outcome``.

        ``outcome`` is one of :data:`JOB_OUTCOMES` (``retry``, ``release`` and
        ``snooze``, the completion outcomes, are accepted as ``retried``,
        ``released`` and ``snoozed``);
        ``seconds`` is the handler's run time, or None when it never ran.
        """
        name = _OUTCOME_ALIASES.get(outcome)
        if name is None:
            raise ValueError(f"unknown job outcome {outcome!r}; expected one of {JOB_OUTCOMES}")
        jobs = self._jobs
        label = task if task in jobs.started else jobs.label(task)
        key = (label, name)
        jobs.finished[key] = jobs.finished.get(key, 0) + 1
        jobs.in_flight -= 1
        if seconds is not None:
            buckets = jobs.duration.get(label)
            if buckets is None:
                buckets = jobs.duration[label] = [0] * (len(JOB_DURATION_BUCKETS) + 1)
                jobs.duration_sum[label] = 0.0
            buckets[bisect_left(JOB_DURATION_BUCKETS, seconds)] += 1
            jobs.duration_sum[label] += seconds

    def completion_batch(self, size: int) -> None:
        """One ``complete_jobs`` statement wrote ``size`` outcomes."""
        self.completion_batch_size.observe(size)

    def lease_lost(self, write: str) -> None:
        """A fenced write (``completion``, ``progress`` or ``heartbeat``) found the lease gone."""
        child = self._lease_lost.get(write)
        if child is None:
            raise ValueError(f"unknown lease write {write!r}; expected one of {LEASE_WRITES}")
        child.inc()

    def listener_reconnected(self) -> None:
        """The LISTEN connection came back after a loss."""
        self.listener_reconnects.inc()

    def db_error(self, operation: str) -> None:
        """A database call of ``operation`` (one of :data:`DB_OPERATIONS`) failed."""
        child = self._db_error.get(operation)
        if child is None:
            raise ValueError(f"unknown operation {operation!r}; expected one of {DB_OPERATIONS}")
        child.inc()

    def heartbeat_ok(self) -> None:
        """A heartbeat pass succeeded (leases extended, or none to extend): stamp the time."""
        self.last_heartbeat.set(time.time())

    def purged(self, count: int) -> None:
        """The retention loop deleted ``count`` finished jobs (an ``on_deleted`` callback)."""
        self.purged_jobs.inc(count)

    # -- exposition ---------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format: (body, content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
