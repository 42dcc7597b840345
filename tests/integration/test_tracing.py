"""One trace from enqueue to execution, through PostgreSQL, with OpenTelemetry.

JobSpec puts the enqueuer's trace context into the job's meta; the worker runs
the handler inside the job's span, which continues that trace.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from skiplock import Client, Fail, JobContext, JobState, TaskRegistry, Worker, tracing
from skiplock.tracing import TRACE_META_KEY
from tests.helpers import wait_for, wait_for_state
from tests.worker_helpers import fast_settings, running


def _app_provider() -> TracerProvider:
    """The provider the spans fixture gave skiplock (the application shares it)."""
    provider = tracing._provider
    assert isinstance(provider, TracerProvider)
    return provider


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _tasks(provider: TracerProvider) -> TaskRegistry:
    tasks = TaskRegistry()
    tracer = provider.get_tracer("app")

    @tasks.task()
    async def traced(ctx: JobContext, *, n: int) -> int:
        with tracer.start_as_current_span("handler work"):
            return n * 2

    @tasks.task()
    async def broken(ctx: JobContext) -> None:
        raise Fail("the input is bad")

    return tasks


async def test_enqueue_and_execution_share_one_trace(
    db_dsn: str, client: Client, spans: InMemorySpanExporter
) -> None:
    """The job's span continues the enqueuer's trace, and the handler's spans nest in it."""
    provider = _app_provider()
    with provider.get_tracer("app").start_as_current_span("POST /render") as request:
        job = await client.enqueue("traced", {"n": 21}, meta={"model": "x1"})
    assert job.meta["model"] == "x1"
    assert "traceparent" in job.meta[TRACE_META_KEY]

    async with running(Worker(_tasks(provider), db_dsn, fast_settings())):
        done = await wait_for_state(client, job.id, JobState.SUCCEEDED, timeout=30)
    assert done.result == 42

    async def run_spans() -> list[ReadableSpan]:
        return _named(spans, "skiplock.run traced")

    (run,) = await wait_for(run_spans, lambda s: len(s) == 1, what="the job's span")
    trace_id = request.get_span_context().trace_id
    assert run.context is not None
    assert run.context.trace_id == trace_id
    assert run.parent is not None
    assert run.parent.span_id == request.get_span_context().span_id
    assert run.kind is SpanKind.CONSUMER
    attributes = dict(run.attributes or {})
    assert attributes["skiplock.job.id"] == str(job.id)
    assert attributes["skiplock.attempt"] == 1
    assert attributes["skiplock.outcome"] == "succeeded"
    (work,) = _named(spans, "handler work")
    assert work.parent is not None
    assert work.parent.span_id == run.context.span_id
    assert {s.context.trace_id for s in (run, work) if s.context is not None} == {trace_id}


async def test_a_failed_job_span_is_an_error_with_the_exception(
    db_dsn: str, client: Client, spans: InMemorySpanExporter
) -> None:
    """A handler that fails leaves an ERROR span carrying the exception, in the same trace."""
    provider = _app_provider()
    with provider.get_tracer("app").start_as_current_span("POST /broken") as request:
        job = await client.enqueue("broken", max_attempts=1)

    async with running(Worker(_tasks(provider), db_dsn, fast_settings())):
        await wait_for_state(client, job.id, JobState.FAILED, timeout=30)

    async def run_spans() -> list[ReadableSpan]:
        return _named(spans, "skiplock.run broken")

    (run,) = await wait_for(run_spans, lambda s: len(s) == 1, what="the job's span")
    assert run.context is not None
    assert run.context.trace_id == request.get_span_context().trace_id
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "Fail: the input is bad"
    assert dict(run.attributes or {})["skiplock.outcome"] == "failed"
    types = [dict(e.attributes or {}).get("exception.type") for e in run.events]
    assert types == [f"{Fail.__module__}.{Fail.__qualname__}"]
