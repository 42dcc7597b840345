"""Outcomes: what an attempt's end writes — completions, failures, error JSON, retries.

Every builder returns a :class:`~skiplock.queue.store.Completion` for the
completer. A completion carries the handler's latest progress report, so the
final value always reaches the row. The retry decision lives in
:meth:`Outcomes.failure`: a retryable error with attempts left goes back to
``queued`` after the task's backoff (or the delay the handler asked for),
anything else ends ``failed``. A snooze (:meth:`Outcomes.snooze`) is no
failure: the job is queued again without counting the attempt.
"""

from __future__ import annotations

import traceback
import uuid
from datetime import UTC, datetime

from skiplock.queue.jsoncodec import dumps
from skiplock.queue.store import Completion, Outcome
from skiplock.worker.context import clean_text
from skiplock.worker.leases import Lease
from skiplock.worker.registry import Task

__all__ = [
    "MAX_UNKNOWN_TASK_RELEASES",
    "UNKNOWN_TASK_FIRST_DELAY",
    "UNKNOWN_TASK_MAX_DELAY",
    "Outcomes",
    "error_json",
    "exc_message",
    "utf8_size",
]

MAX_TRACEBACK_CHARS = 16_000
MAX_ERROR_MESSAGE_CHARS = 4_000
# A job of a task this worker lacks (a rolling deploy: an old worker meets a new
# task) is released without counting an attempt, held back 5, 10, 20 … 300 s,
# at most 20 times (about 75 minutes); then it fails with UnknownTask.
UNKNOWN_TASK_FIRST_DELAY = 5.0
UNKNOWN_TASK_MAX_DELAY = 300.0
MAX_UNKNOWN_TASK_RELEASES = 20


def utf8_size(text: str) -> int:
    """``text``'s size in UTF-8 bytes (no copy for ASCII, which CPython flags)."""
    return len(text) if text.isascii() else len(text.encode())


def exc_message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception cannot be printed."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def error_json(
    exc: BaseException | None,
    *,
    kind: str,
    message: str,
    attempt: int,
    worker: str,
    counted: bool = True,
) -> str:
    """One entry of a job's ``errors`` history, as JSON text PostgreSQL accepts.

    ``counted=False`` marks an attempt given back without counting (the entry
    then carries ``"counted": false``; counted entries omit the key).
    """
    tb = None
    if exc is not None:
        tb = clean_text("".join(traceback.format_exception(exc)))[-MAX_TRACEBACK_CHARS:]
    entry: dict[str, object] = {
        "type": clean_text(kind),
        "message": clean_text(message)[:MAX_ERROR_MESSAGE_CHARS],
        "traceback": tb,
        "attempt": attempt,
        "worker": worker,
        "at": datetime.now(UTC).isoformat(),
    }
    if not counted:
        entry["counted"] = False
    return dumps(entry, what="error")


class Outcomes:
    """Builds the completions of one worker's attempts."""

    def __init__(self, worker_id: str, max_result_bytes: int) -> None:
        self.worker_id = worker_id
        self.max_result_bytes = max_result_bytes

    def completion(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        result_json: str | None = None,
        error_json: str | None = None,
        delay: float | None = None,
    ) -> Completion:
        """The completion of ``lease`` with ``outcome``, carrying its latest progress."""
        report = lease.progress
        return Completion(
            job_id=lease.job.id,
            lease_token=lease.token,
            outcome=outcome,
            result_json=result_json,
            error_json=error_json,
            delay_seconds=delay,
            progress=None if report is None else report.percent,
            message=None if report is None else report.message,
            eta_seconds=None if report is None else report.eta_seconds,
        )

    def failure(
        self,
        lease: Lease,
        exc: BaseException | None,
        kind: str,
        message: str,
        *,
        retryable: bool,
        task: Task | None,
        delay: float | None = None,
    ) -> Completion:
        """A failed attempt: ``retry`` while retryable with attempts left, else ``failed``."""
        job = lease.job
        error = error_json(
            exc, kind=kind, message=message, attempt=job.attempt, worker=self.worker_id
        )
        if retryable and job.attempt < job.max_attempts:
            if delay is None:
                delay = task.retry.delay(job.attempt) if task is not None else 0.0
            return self.completion(lease, "retry", error_json=error, delay=delay)
        return self.completion(lease, "failed", error_json=error)

    def snooze(self, lease: Lease, delay: float) -> Completion:
        """The handler snoozed: queued again after ``delay``, the attempt given back,
        no error entry, progress kept, ``meta["_snoozed"]`` counted (by
        ``complete_jobs``)."""
        return self.completion(lease, "snooze", delay=delay)

    def unknown_task(self, lease: Lease) -> Completion:
        """No handler for the job's task here: release it uncounted, held back, or fail.

        During a rolling deploy an old worker meets a new task: the job goes
        back to ``queued`` with its attempt given back and ``run_at`` moved
        5, 10, 20 … 300 s ahead (so this worker does not spin on it), with an
        ``UnknownTask`` entry (``counted: false``) in its history. After
        :data:`MAX_UNKNOWN_TASK_RELEASES` such releases the task is taken to
        be unknown for good and the job fails with ``UnknownTask``.
        """
        job = lease.job
        released = sum(1 for e in job.errors if e.type == "UnknownTask" and not e.counted)
        message = f"no handler for task {job.task!r} is registered on worker {self.worker_id}"
        if released >= MAX_UNKNOWN_TASK_RELEASES:
            message += f"; released {released} times without finding a worker that knows the task"
            return self.failure(lease, None, "UnknownTask", message, retryable=False, task=None)
        error = error_json(
            None,
            kind="UnknownTask",
            message=message,
            attempt=job.attempt,
            worker=self.worker_id,
            counted=False,
        )
        delay = min(UNKNOWN_TASK_FIRST_DELAY * 2**released, UNKNOWN_TASK_MAX_DELAY)
        return self.completion(lease, "release", error_json=error, delay=delay)

    def failed_outright(
        self, job_id: uuid.UUID, token: uuid.UUID, attempt: int, kind: str, message: str
    ) -> Completion:
        """A ``failed`` outcome with no retry, result or progress: no handler can help."""
        error = error_json(None, kind=kind, message=message, attempt=attempt, worker=self.worker_id)
        return Completion(job_id=job_id, lease_token=token, outcome="failed", error_json=error)

    def success(self, lease: Lease, task: Task, result: object) -> Completion:
        """``succeeded`` with the result as JSON; ``failed`` when it cannot be stored."""
        if result is None:  # most handlers return nothing: no encoding, no size check
            return self.completion(lease, "succeeded", result_json="null")
        job = lease.job
        try:
            result_json = dumps(result, what=f"the result of task {job.task!r}")
        except ValueError as exc:
            if lease.ctx is not None:
                lease.ctx.log.error("job_result_invalid", error=str(exc))
            return self.failure(lease, None, "InvalidResult", str(exc), retryable=False, task=task)
        size = utf8_size(result_json)
        if size > self.max_result_bytes:
            message = (
                f"the result of task {job.task!r} is {size} bytes, over the "
                f"limit of {self.max_result_bytes}"
            )
            if lease.ctx is not None:
                lease.ctx.log.error("job_result_too_large", size=size)
            return self.failure(lease, None, "ResultTooLarge", message, retryable=False, task=task)
        return self.completion(lease, "succeeded", result_json=result_json)
