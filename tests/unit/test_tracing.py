"""skiplock.tracing: W3C trace context into job meta and back out as the job's span."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, TraceState

from skiplock import JobSpec, tracing
from skiplock.tracing import TRACE_META_KEY, inject_trace_context, job_span


@dataclass
class FakeJob:
    """The attributes job_span reads, as a skiplock.Job has them."""

    meta: dict[str, Any] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    task: str = "render"
    attempt: int = 2
    tenant: str = "acme"
    queue: str = "video"


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """opentelemetry cannot be imported (as without the otel extra)."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    tracing._otel.cache_clear()
    try:
        yield
    finally:
        monkeypatch.undo()
        tracing._otel.cache_clear()


def _producer_tracer() -> trace.Tracer:
    """The tracer of the 'application' that enqueues (skiplock's provider, another scope)."""
    assert tracing._provider is not None
    return tracing._provider.get_tracer("app")


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    matching = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(matching) == 1, [s.name for s in exporter.get_finished_spans()]
    return matching[0]


def test_inject_without_a_current_span_returns_meta_itself(
    spans: InMemorySpanExporter,
) -> None:
    """No span is current: the very same dict comes back, untouched."""
    meta = {"model": "x1"}
    assert inject_trace_context(meta) is meta
    assert meta == {"model": "x1"}


def test_inject_adds_the_current_spans_w3c_context(spans: InMemorySpanExporter) -> None:
    """traceparent names the current span; tracestate is carried; the input is not mutated."""
    meta = {"model": "x1"}
    with _producer_tracer().start_as_current_span("enqueue") as span:
        ctx = span.get_span_context()
        # a span carrying trace state, as from an upstream vendor
        stated = trace.NonRecordingSpan(
            trace.SpanContext(
                ctx.trace_id,
                ctx.span_id,
                is_remote=False,
                trace_flags=ctx.trace_flags,
                trace_state=TraceState([("vendor", "v1")]),
            )
        )
        with trace.use_span(stated):
            traced = inject_trace_context(meta)
    assert meta == {"model": "x1"}
    assert traced["model"] == "x1"
    carrier = traced[TRACE_META_KEY]
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert carrier["traceparent"] == expected
    assert carrier["tracestate"] == "vendor=v1"
    assert orjson.loads(orjson.dumps(traced)) == traced  # storable as JSON meta


def test_inject_keeps_a_context_the_caller_chose(spans: InMemorySpanExporter) -> None:
    """A meta that already holds _trace is returned as it is."""
    chosen = {"model": "x1", TRACE_META_KEY: {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16}}
    with _producer_tracer().start_as_current_span("enqueue"):
        assert inject_trace_context(chosen) is chosen


def test_job_span_continues_the_enqueuers_trace(spans: InMemorySpanExporter) -> None:
    """inject → job meta → job_span: one trace, the job span a CONSUMER child of the enqueuer."""
    with _producer_tracer().start_as_current_span("enqueue") as producer:
        meta = inject_trace_context({"model": "x1"})
    job = FakeJob(meta=orjson.loads(orjson.dumps(meta)))  # as read back from the database
    with job_span(job), _producer_tracer().start_as_current_span("inside the handler"):
        pass

    run = _only(spans, "skiplock.run render")
    produced = producer.get_span_context()
    assert run.context is not None
    assert run.context.trace_id == produced.trace_id
    assert run.parent is not None
    assert run.parent.span_id == produced.span_id
    assert run.parent.is_remote
    assert run.kind is SpanKind.CONSUMER
    assert dict(run.attributes or {}) == {
        "messaging.system": "skiplock",
        "messaging.operation.type": "process",
        "messaging.destination.name": "video",
        "messaging.message.id": str(job.id),
        "skiplock.job.id": str(job.id),
        "skiplock.task": "render",
        "skiplock.attempt": 2,
        "skiplock.tenant": "acme",
        "skiplock.queue": "video",
    }
    assert run.status.status_code is StatusCode.UNSET
    child = _only(spans, "inside the handler")
    assert child.parent is not None
    assert child.parent.span_id == run.context.span_id


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "00-not-a-dict",
        {"traceparent": 42},
        {"traceparent": "garbage"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},  # the invalid all-zero ids
        {"tracestate": "vendor=v1"},
    ],
)
def test_job_span_without_a_usable_context_starts_a_new_trace(
    spans: InMemorySpanExporter, stored: Any
) -> None:
    """Missing or malformed _trace: the job span is a root span, and nothing fails."""
    meta = {} if stored is None else {TRACE_META_KEY: stored}
    with job_span(FakeJob(meta=meta)):
        pass
    run = _only(spans, "skiplock.run render")
    assert run.parent is None
    assert run.context is not None
    assert run.context.is_valid


def test_an_exception_leaving_the_block_is_recorded_and_an_error(
    spans: InMemorySpanExporter,
) -> None:
    """The exception propagates unchanged, recorded on the span with an ERROR status."""
    with pytest.raises(ConnectionError, match="reset"), job_span(FakeJob()):
        raise ConnectionError("upstream reset")
    run = _only(spans, "skiplock.run render")
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "ConnectionError: upstream reset"
    (event,) = run.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "ConnectionError"


async def test_a_cancellation_is_noted_but_not_an_error(spans: InMemorySpanExporter) -> None:
    """A cancelled handler's span gets an interrupted event and no ERROR status."""
    with anyio.CancelScope() as scope, job_span(FakeJob()):
        scope.cancel()
        await anyio.sleep(10)
    assert scope.cancelled_caught
    run = _only(spans, "skiplock.run render")
    assert run.status.status_code is StatusCode.UNSET
    assert [e.name for e in run.events] == ["skiplock.interrupted"]


@pytest.mark.parametrize(
    ("outcome", "error", "status", "description"),
    [
        ("succeeded", None, StatusCode.UNSET, None),
        ("cancelled", None, StatusCode.UNSET, None),
        (
            "failed",
            orjson.dumps({"type": "Fail", "message": "bad input", "attempt": 2}).decode(),
            StatusCode.ERROR,
            "Fail: bad input",
        ),
        ("retry", "not json", StatusCode.ERROR, None),
        (None, None, StatusCode.UNSET, None),
    ],
)
def test_set_outcome_records_how_the_attempt_ended(
    spans: InMemorySpanExporter,
    outcome: str | None,
    error: str | None,
    status: StatusCode,
    description: str | None,
) -> None:
    """skiplock.outcome is set; failed and retry are errors described by the error entry."""
    with job_span(FakeJob()) as span:
        assert span.recording
        span.set_outcome(outcome, error)
    run = _only(spans, "skiplock.run render")
    assert dict(run.attributes or {})["skiplock.outcome"] == (outcome or "abandoned")
    assert run.status.status_code is status
    assert run.status.description == description


def test_record_exception_lands_on_the_current_job_span(spans: InMemorySpanExporter) -> None:
    """An exception the worker catches inside the block is still recorded on the job's span."""
    with job_span(FakeJob()):
        try:
            raise ValueError("caught by the worker")
        except ValueError as exc:
            tracing.record_exception(exc)
    run = _only(spans, "skiplock.run render")
    assert [dict(e.attributes or {})["exception.message"] for e in run.events] == [
        "caught by the worker"
    ]


# -- without opentelemetry --------------------------------------------------------


def test_without_otel_everything_is_a_no_op(no_otel: None) -> None:
    """opentelemetry not importable: meta is returned as is, job_span yields a no-op."""
    assert not tracing.tracing_available()
    meta = {"model": "x1"}
    assert inject_trace_context(meta) is meta
    with job_span(FakeJob(meta=meta)) as span:
        assert not span.recording
        span.set_outcome("failed", '{"type": "Fail", "message": "x"}')
        span.record_exception(ValueError("x"))
        tracing.record_exception(ValueError("x"))
    with pytest.raises(KeyError), job_span(FakeJob()):
        raise KeyError("passes through unchanged")


def test_without_otel_the_import_is_tried_once(no_otel: None) -> None:
    """The failed import is cached: later calls do not try again."""
    for _ in range(5):
        inject_trace_context({})
        with job_span(FakeJob()):
            pass
    info = tracing._otel.cache_info()
    assert info.misses == 1
    assert info.hits >= 9


def test_without_otel_an_active_span_is_ignored(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with a span current elsewhere, absent opentelemetry means no _trace key."""
    with _producer_tracer().start_as_current_span("enqueue"):
        monkeypatch.setattr(tracing, "_otel", lambda: None)
        meta: dict[str, Any] = {}
        assert inject_trace_context(meta) is meta
    assert [s.name for s in spans.get_finished_spans()] == ["enqueue"]


def test_a_spec_carries_the_trace_outside_its_fingerprint(spans: InMemorySpanExporter) -> None:
    """A spec made in a span stores the context in meta; the request's fingerprint is the
    same as without it (the same request sent from another span is the same request)."""
    plain = JobSpec("t", meta={"model": "x1"})
    with _producer_tracer().start_as_current_span("enqueue"):
        traced = JobSpec("t", meta={"model": "x1"})
    assert TRACE_META_KEY in traced.meta
    assert orjson.loads(traced.meta_json) == traced.meta
    assert plain.meta == {"model": "x1"}
    assert plain.meta_json == '{"model":"x1"}'
    assert traced.fingerprint == plain.fingerprint
