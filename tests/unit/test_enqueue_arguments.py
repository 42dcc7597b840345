"""What enqueue_many sends: one value for a column the batch shares, arrays otherwise."""

from __future__ import annotations

import dataclasses
import difflib
from datetime import UTC, datetime, timedelta

import pytest

from skiplock import Job, JobSpec, JobState, sql
from skiplock.queue.models import request_fingerprints
from skiplock.queue.store import Store, _enqueue_arguments, _queued_job, _without_conflict_clause

_SHARED = ("queue", "task", "args", "priority", "max_attempts", "tenant", "meta", "fingerprint")
_NULLABLE = (
    "run_at",
    "delay",
    "idempotency_key",
    "expires_at",
    "timeout",
    "limit_keys",
    "fair_key",
    "unique_key",
)


def _named(specs: list[JobSpec]) -> dict[str, object]:
    arguments = _enqueue_arguments(specs, request_fingerprints(specs))
    assert len(arguments) == 25  # $1 … $25 of enqueue_many.sql
    named: dict[str, object] = {"id": arguments[0]}
    for i, name in enumerate(_SHARED):
        named[name] = arguments[1 + 2 * i]
        named[name + " (shared)"] = arguments[2 + 2 * i]
    for i, name in enumerate(_NULLABLE):
        named[name] = arguments[17 + i]
    return named


def test_an_alike_batch_sends_each_shared_value_once() -> None:
    """1,000 jobs alike but for their ids: one id array, every other column one value."""
    specs = [JobSpec("noop", max_attempts=1) for _ in range(1000)]
    named = _named(specs)
    assert named["id"] == [s.id for s in specs]
    shared = {name: named[name + " (shared)"] for name in _SHARED}
    assert shared == {
        "queue": "default",
        "task": "noop",
        "args": "{}",
        "priority": 0,
        "max_attempts": 1,
        "tenant": "default",
        "meta": "{}",
        "fingerprint": specs[0].fingerprint,
    }
    for name in _SHARED + _NULLABLE:
        assert named[name] == [], name


def test_a_mixed_batch_sends_what_varies_per_job() -> None:
    """Only the columns that differ between jobs go as arrays."""
    when = datetime(2030, 1, 1, tzinfo=UTC)
    specs = [
        JobSpec("a", args={"i": 1}, run_at=when, idempotency_key="k1"),
        JobSpec("a", args={"i": 2}, idempotency_key="k2", timeout=5),
    ]
    named = _named(specs)
    assert named["args"] == ['{"i":1}', '{"i":2}']
    assert named["args (shared)"] is None
    assert named["fingerprint"] == [s.fingerprint for s in specs]
    assert named["task"] == []
    assert named["task (shared)"] == "a"
    assert named["run_at"] == [when, None]
    assert named["idempotency_key"] == ["k1", "k2"]
    assert named["timeout"] == [None, 5.0]
    assert named["delay"] == []
    assert named["expires_at"] == []
    assert named["limit_keys"] == named["fair_key"] == named["unique_key"] == []


def test_flow_control_columns_are_sent_per_job_only_when_some_job_has_them() -> None:
    """Limit keys go as JSON text per job, fairness and unique keys as text per job."""
    specs = [
        JobSpec("a", limit_keys=["user:1", "gpu"], fairness_key="f", unique_key="u"),
        JobSpec("a"),
    ]
    named = _named(specs)
    assert named["limit_keys"] == ['["user:1","gpu"]', None]
    assert named["fair_key"] == ["f", None]
    assert named["unique_key"] == ["u", None]


def test_a_queued_job_is_the_job_as_stored() -> None:
    """The job enqueue_many builds from a spec equals one built field by field."""
    expires = datetime.now(UTC) + timedelta(days=1)
    spec = JobSpec(
        "t",
        args={"a": [1, 2]},
        queue="q",
        priority=4,
        max_attempts=5,
        tenant="acme",
        idempotency_key="k",
        meta={"m": "x"},
        expires_at=expires,
        timeout=3,
        delay=5,
        limit_keys=["user:1"],
        fairness_key="f",
        unique_key="u",
    )
    run_at = datetime(2030, 1, 1, tzinfo=UTC)
    created = datetime(2029, 12, 31, tzinfo=UTC)
    built = _queued_job(spec, spec.fingerprint, run_at, created)
    expected = Job(
        id=spec.id,
        queue="q",
        task="t",
        args={"a": [1, 2]},
        state=JobState.QUEUED,
        priority=4,
        run_at=run_at,
        attempt=0,
        max_attempts=5,
        lease_token=None,
        lease_expires_at=None,
        worker_id=None,
        progress=None,
        progress_message=None,
        eta=None,
        result=None,
        errors=(),
        tenant="acme",
        idempotency_key="k",
        meta={"m": "x"},
        cancel_requested=False,
        created_at=created,
        updated_at=created,
        started_at=None,
        finished_at=None,
        expires_at=expires,
        timeout_seconds=3.0,
        request_fingerprint=spec.fingerprint,
        limit_keys=("user:1",),
        fair_key="f",
        unique_key="u",
    )
    assert built == expected
    # every slot is set (a missing one raises AttributeError here)
    assert dataclasses.astuple(built) == dataclasses.astuple(expected)
    assert built.args is not spec.args  # decoded from the JSON text, the caller's object untouched
    stored = _queued_job(spec, spec.fingerprint, run_at, created, (("user:1", "tenant:acme"), "g"))
    assert stored == dataclasses.replace(
        expected, limit_keys=("user:1", "tenant:acme"), fair_key="g"
    )


@pytest.mark.parametrize(
    ("name", "attribute"),
    [("enqueue_many", "_enqueue_strict"), ("enqueue_one", "_enqueue_one_strict")],
)
def test_the_strict_enqueue_is_the_query_without_its_conflict_line(
    name: str, attribute: str
) -> None:
    """The plain insert is the shipped query less one line, and nothing else."""
    shipped = sql.query(name)
    strict = getattr(Store(), attribute)
    assert "ON CONFLICT DO NOTHING\n" in shipped
    assert "ON CONFLICT" not in strict.replace("'ON CONFLICT DO NOTHING'", "")  # comments
    removed = [
        line for line in difflib.ndiff(shipped.splitlines(), strict.splitlines()) if line[0] != " "
    ]
    assert [line.replace(" ", "") for line in removed] == ["-ONCONFLICTDONOTHING"]
    with pytest.raises(ValueError, match="must hold one line"):
        _without_conflict_clause("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING")
