"""WorkerMetrics: every documented metric is exposed, and each method moves its metric."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from skiplock.worker.metrics import MAX_TASK_LABELS, OTHER_TASK, WorkerMetrics

METRIC_NAMES = (
    "skiplock_worker_jobs_started",
    "skiplock_worker_jobs_finished",
    "skiplock_worker_job_duration_seconds",
    "skiplock_worker_jobs_in_flight",
    "skiplock_worker_claim_duration_seconds",
    "skiplock_worker_claimed_jobs",
    "skiplock_worker_lease_losses",
    "skiplock_worker_notifications_missed",
    "skiplock_worker_listener_reconnects",
    "skiplock_worker_completion_batch_size",
    "skiplock_worker_db_errors",
    "skiplock_worker_purged_jobs",
    "skiplock_worker_info",
    "skiplock_worker_last_heartbeat_timestamp_seconds",
)


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    body, _ = metrics.exposition()
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the exposition does not hold it."""
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_exposition_holds_every_documented_metric() -> None:
    """A fresh instance exposes all metric families, in the Prometheus text format."""
    body, content_type = WorkerMetrics("w1").exposition()
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert set(METRIC_NAMES) <= families
    assert content_type.startswith("text/plain; version=")


def test_info_names_the_worker_and_version() -> None:
    """skiplock_worker_info{worker_id, version} is 1."""
    m = WorkerMetrics("host:1:abc", version="9.9")
    assert value(m, "skiplock_worker_info", worker_id="host:1:abc", version="9.9") == 1.0


def test_instances_do_not_share_a_registry() -> None:
    """Two workers in one process count separately."""
    a, b = WorkerMetrics("a"), WorkerMetrics("b")
    a.started("t")
    assert a.registry is not b.registry
    assert value(a, "skiplock_worker_jobs_started_total", task="t") == 1.0
    assert value(b, "skiplock_worker_jobs_started_total", task="t") is None


def test_claimed_counts_jobs_latency_and_missed_notifications() -> None:
    """Claims add jobs and latency; the missed notifications the claimer found add up."""
    m = WorkerMetrics("w")
    m.claimed(3, 0.002)
    m.claimed(0, 0.001)
    m.claimed(2, 0.004, missed=1)
    assert value(m, "skiplock_worker_claimed_jobs_total") == 5.0
    assert value(m, "skiplock_worker_claim_duration_seconds_count") == 3.0
    assert value(m, "skiplock_worker_claim_duration_seconds_sum") == pytest.approx(0.007)
    assert value(m, "skiplock_worker_notifications_missed_total") == 1.0


def test_started_and_finished_track_in_flight_outcomes_and_durations() -> None:
    """started/finished move the in-flight gauge, the outcome counters and the histogram."""
    m = WorkerMetrics("w")
    m.started("send")
    m.started("send")
    assert value(m, "skiplock_worker_jobs_in_flight") == 2.0
    m.finished("send", "succeeded", 0.5)
    m.finished("send", "abandoned", None)
    assert value(m, "skiplock_worker_jobs_in_flight") == 0.0
    assert value(m, "skiplock_worker_jobs_started_total", task="send") == 2.0
    finished = "skiplock_worker_jobs_finished_total"
    assert value(m, finished, task="send", outcome="succeeded") == 1.0
    assert value(m, finished, task="send", outcome="abandoned") == 1.0
    # seconds=None (the handler never ran to an end) observes nothing
    assert value(m, "skiplock_worker_job_duration_seconds_count", task="send") == 1.0
    assert value(m, "skiplock_worker_job_duration_seconds_bucket", task="send", le="0.5") == 1.0
    assert value(m, "skiplock_worker_job_duration_seconds_bucket", task="send", le="0.25") == 0.0


def test_duration_buckets_span_a_millisecond_to_an_hour() -> None:
    """The job duration histogram's finite buckets run from 1 ms to 1 h."""
    m = WorkerMetrics("w")
    m.started("t")
    m.finished("t", "succeeded", 0.0001)
    bounds = sorted(
        float(dict(labels)["le"])
        for (name, labels) in samples(m)
        if name == "skiplock_worker_job_duration_seconds_bucket"
    )
    assert bounds[0] == 0.001
    assert bounds[-2:] == [3600.0, float("inf")]


@pytest.mark.parametrize(
    ("given", "counted"),
    [
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("retried", "retried"),
        ("retry", "retried"),
        ("cancelled", "cancelled"),
        ("released", "released"),
        ("release", "released"),
        ("snoozed", "snoozed"),
        ("snooze", "snoozed"),
        ("abandoned", "abandoned"),
    ],
)
def test_finished_accepts_every_outcome_and_the_completion_spellings(
    given: str, counted: str
) -> None:
    """Every documented outcome counts; the Completion outcomes retry/release/snooze map to
    theirs."""
    m = WorkerMetrics("w")
    m.started("t")
    m.finished("t", given, 0.01)
    assert value(m, "skiplock_worker_jobs_finished_total", task="t", outcome=counted) == 1.0


def test_unknown_label_values_are_refused_and_count_nothing() -> None:
    """An unknown outcome, lease write or operation raises ValueError and changes nothing."""
    m = WorkerMetrics("w")
    m.started("t")
    before = samples(m)
    with pytest.raises(ValueError, match="unknown job outcome 'exploded'"):
        m.finished("t", "exploded", 1.0)
    with pytest.raises(ValueError, match="unknown lease write 'dinner'"):
        m.lease_lost("dinner")
    with pytest.raises(ValueError, match="unknown operation 'vacuum'"):
        m.db_error("vacuum")
    assert samples(m) == before
    assert value(m, "skiplock_worker_jobs_in_flight") == 1.0


def test_lease_losses_reconnects_errors_batches_and_purges_count() -> None:
    """Each remaining hot-path method moves its own metric."""
    m = WorkerMetrics("w")
    m.lease_lost("completion")
    m.lease_lost("heartbeat")
    m.lease_lost("heartbeat")
    m.listener_reconnected()
    m.db_error("claim")
    m.completion_batch(7)
    m.completion_batch(1)
    m.purged(500)
    m.purged(12)
    assert value(m, "skiplock_worker_lease_losses_total", write="completion") == 1.0
    assert value(m, "skiplock_worker_lease_losses_total", write="heartbeat") == 2.0
    assert value(m, "skiplock_worker_lease_losses_total", write="progress") == 0.0
    assert value(m, "skiplock_worker_listener_reconnects_total") == 1.0
    assert value(m, "skiplock_worker_db_errors_total", operation="claim") == 1.0
    assert value(m, "skiplock_worker_db_errors_total", operation="complete") == 0.0
    assert value(m, "skiplock_worker_completion_batch_size_count") == 2.0
    assert value(m, "skiplock_worker_completion_batch_size_sum") == 8.0
    assert value(m, "skiplock_worker_purged_jobs_total") == 512.0


def test_heartbeat_ok_stamps_the_time() -> None:
    """heartbeat_ok sets the last-heartbeat gauge, 0 until then, to a Unix time."""
    m = WorkerMetrics("w")
    assert value(m, "skiplock_worker_last_heartbeat_timestamp_seconds") == 0.0
    m.heartbeat_ok()
    stamped = value(m, "skiplock_worker_last_heartbeat_timestamp_seconds")
    assert stamped is not None
    assert stamped > 1_600_000_000  # seconds since 1970, not a monotonic clock


def test_task_labels_are_capped() -> None:
    """Tasks beyond MAX_TASK_LABELS are counted under __other__, keeping the series bounded."""
    m = WorkerMetrics("w")
    for i in range(MAX_TASK_LABELS + 5):
        m.started(f"task{i}")
        m.finished(f"task{i}", "succeeded", 0.01)
    started = {
        dict(labels)["task"]: v
        for (name, labels), v in samples(m).items()
        if name == "skiplock_worker_jobs_started_total"
    }
    assert len(started) == MAX_TASK_LABELS + 1
    assert started[OTHER_TASK] == 5.0
    assert started["task0"] == 1.0
    other_finished = value(
        m, "skiplock_worker_jobs_finished_total", task=OTHER_TASK, outcome="succeeded"
    )
    assert other_finished == 5.0
    assert value(m, "skiplock_worker_job_duration_seconds_count", task=OTHER_TASK) == 5.0
    assert value(m, "skiplock_worker_jobs_in_flight") == 0.0
