"""OpenTelemetry trace context from enqueue to execution (optional: ``skiplock[otel]``).

With ``opentelemetry-api`` installed, a job enqueued while a span is current
carries that span's W3C trace context in its ``meta`` under the reserved key
``"_trace"`` (``{"traceparent": "00-…", "tracestate": "…"}``), and the worker
runs its handler inside a CONSUMER span ``skiplock.run <task>`` that continues
that trace. Without the package, or without a current span, both functions do
nothing and cost one cached lookup.

The context is always written in the W3C Trace Context format, whatever
propagator the application configured, so any worker (in any process, any
version) can read it back. A ``meta`` that already holds ``"_trace"`` is left
as it is: the caller chose the context (say, when re-enqueueing a job on
behalf of the original request).

:func:`job_span` attributes: ``messaging.system=skiplock``,
``messaging.operation.type=process``, ``messaging.destination.name`` (the
queue), ``messaging.message.id`` (the job id) and ``skiplock.job.id``,
``skiplock.task``, ``skiplock.attempt``, ``skiplock.tenant``, ``skiplock.queue``.
An exception leaving the block is recorded on the span, which gets an ERROR
status; a cancellation (a ``BaseException`` such as ``CancelledError``) is
noted as an ``skiplock.interrupted`` event and is not an error by itself. The
worker then states the attempt's outcome with :meth:`JobSpan.set_outcome`
(``skiplock.outcome``; ``failed`` and ``retry`` are errors).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACE_META_KEY",
    "JobSpan",
    "TracedJob",
    "inject_trace_context",
    "job_span",
    "record_exception",
    "tracing_available",
    "use_tracer_provider",
]

TRACE_META_KEY = "_trace"
"""The ``meta`` key holding a job's W3C trace context (reserved for skiplock)."""

_CARRIER_KEYS = ("traceparent", "tracestate")
_ERROR_OUTCOMES = frozenset({"failed", "retry"})


class TracedJob(Protocol):
    """What :func:`job_span` reads from a job (a :class:`skiplock.Job` has all of it)."""

    @property
    def id(self) -> Any:
        """The job id."""

    @property
    def task(self) -> str:
        """The task name."""

    @property
    def attempt(self) -> int:
        """The attempt number (1 for the first run)."""

    @property
    def tenant(self) -> str:
        """The job's tenant."""

    @property
    def queue(self) -> str:
        """The job's queue."""

    @property
    def meta(self) -> Mapping[str, Any]:
        """The job's labels, possibly holding ``"_trace"``."""


@dataclass(frozen=True)
class _Otel:
    """The parts of opentelemetry-api skiplock uses, imported once."""

    tracer: Tracer
    propagator: TraceContextTextMapPropagator
    get_current_span: Any
    span_kind_consumer: Any
    status: Any
    status_error: Any


_provider: TracerProvider | None = None


@functools.cache
def _otel() -> _Otel | None:
    """opentelemetry-api's pieces, or None when it is not installed (checked once)."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    from skiplock import __version__

    return _Otel(
        tracer=trace.get_tracer("skiplock", __version__, tracer_provider=_provider),
        propagator=TraceContextTextMapPropagator(),
        get_current_span=trace.get_current_span,
        span_kind_consumer=trace.SpanKind.CONSUMER,
        status=trace.Status,
        status_error=trace.StatusCode.ERROR,
    )


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` rather than OpenTelemetry's global one (None: the global again).

    For tests, and for applications that keep their provider out of the global.
    """
    global _provider
    _provider = provider
    _otel.cache_clear()


def tracing_available() -> bool:
    """Whether opentelemetry-api is importable (the answer is cached)."""
    return _otel() is not None


def tracing_active() -> bool:
    """Whether spans would be recorded: OpenTelemetry is installed and a tracer provider is set.

    With only opentelemetry-api and no SDK provider every span is a no-op; the
    worker then skips them (a few microseconds per job at thousands of jobs/s).
    """
    if _otel() is None:
        return False
    if _provider is not None:
        return True
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def inject_trace_context(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` plus the current span's W3C trace context under ``"_trace"``.

    Returns ``meta`` itself (not a copy) when OpenTelemetry is absent, no valid
    span is current, or ``meta`` already has ``"_trace"``; otherwise a new dict.
    """
    otel = _otel()
    if otel is None or TRACE_META_KEY in meta:
        return meta
    if not otel.get_current_span().get_span_context().is_valid:
        return meta
    carrier: dict[str, str] = {}
    otel.propagator.inject(carrier)
    if "traceparent" not in carrier:
        return meta
    return {**meta, TRACE_META_KEY: carrier}


def _parent_context(otel: _Otel, meta: Mapping[str, Any]) -> Context | None:
    """The context stored in ``meta``, or None (a new trace) when absent or malformed."""
    stored = meta.get(TRACE_META_KEY) if isinstance(meta, Mapping) else None
    if not isinstance(stored, Mapping):
        return None
    carrier = {k: v for k in _CARRIER_KEYS if isinstance(v := stored.get(k), str)}
    if "traceparent" not in carrier:
        return None
    context = otel.propagator.extract(carrier)
    if not otel.get_current_span(context).get_span_context().is_valid:
        return None
    return context


class JobSpan:
    """The span of one attempt (a no-op when OpenTelemetry is absent)."""

    __slots__ = ("_otel", "_span")

    def __init__(self, otel: _Otel | None = None, span: Span | None = None) -> None:
        self._otel = otel
        self._span = span

    @property
    def recording(self) -> bool:
        """Whether anything is being recorded (an SDK is configured and sampled the span)."""
        return self._span is not None and self._span.is_recording()

    def set_outcome(self, outcome: str | None, error_json: str | None = None) -> None:
        """Record how the attempt ended: ``succeeded``, ``failed``, ``retry``, ``cancelled``,
        ``release``, ``snooze``, or None (lease lost: nothing written). ``failed`` and
        ``retry`` set an ERROR status described by ``error_json`` (the attempt's error entry,
        ``type`` and ``message``), if given."""
        if self._otel is None or self._span is None:
            return
        self._span.set_attribute("skiplock.outcome", outcome or "abandoned")
        if outcome in _ERROR_OUTCOMES:
            self._span.set_status(self._otel.status(self._otel.status_error, _describe(error_json)))

    def record_exception(self, exc: BaseException) -> None:
        """Record ``exc`` as an exception event on this span."""
        if self._span is not None:
            self._span.record_exception(exc)


def _describe(error_json: str | None) -> str | None:
    if not error_json:
        return None
    try:
        error = orjson.loads(error_json)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(error, dict):
        return None
    kind, message = error.get("type"), error.get("message")
    return f"{kind}: {message}" if kind else None


_NOOP = JobSpan()


@contextlib.contextmanager
def job_span(job: TracedJob) -> Iterator[JobSpan]:
    """Run the block inside a CONSUMER span ``skiplock.run <task>`` continuing the job's trace.

    The span is current inside the block, so spans the handler starts are its
    children. Without OpenTelemetry this yields a no-op :class:`JobSpan`.
    """
    otel = _otel()
    if otel is None:
        yield _NOOP
        return
    job_id = str(job.id)
    attributes: dict[str, str | int] = {
        "messaging.system": "skiplock",
        "messaging.operation.type": "process",
        "messaging.destination.name": job.queue,
        "messaging.message.id": job_id,
        "skiplock.job.id": job_id,
        "skiplock.task": job.task,
        "skiplock.attempt": job.attempt,
        "skiplock.tenant": job.tenant,
        "skiplock.queue": job.queue,
    }
    with otel.tracer.start_as_current_span(
        f"skiplock.run {job.task}",
        context=_parent_context(otel, job.meta),
        kind=otel.span_kind_consumer,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        handle = JobSpan(otel, span)
        try:
            yield handle
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(otel.status(otel.status_error, f"{type(exc).__name__}: {exc}"))
            raise
        except BaseException as exc:
            span.add_event("skiplock.interrupted", {"exception.type": type(exc).__name__})
            raise


def record_exception(exc: BaseException) -> None:
    """Record ``exc`` on the current span, if OpenTelemetry is present and one is recording.

    For code inside :func:`job_span` that catches a handler's exception rather
    than letting it leave the block.
    """
    otel = _otel()
    if otel is None:
        return
    span = otel.get_current_span()
    if span.is_recording():
        span.record_exception(exc)
