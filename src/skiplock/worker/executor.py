"""The executor: one task per claimed job, running the handler as named steps.

:meth:`Executor.start` starts a plain asyncio task per job (an anyio task
group and cancel scope per job cost more than the rest of a no-op job's
Python path). The task:

1. builds the :class:`JobContext` and looks up the handler (a job of an
   unknown task is released without counting an attempt, a bounded number of
   times: :meth:`Outcomes.unknown_task`);
2. calls it (:meth:`Executor._call_handler`) — ``async def`` on the loop,
   ``def`` in a thread bounded by a capacity limiter — with the task's
   timeout as a timer; a cancel request, lost lease or shutdown cancels the
   call (again and again, should the handler swallow it);
3. judges what happened (:meth:`Executor._judge`) into an outcome built by
   :class:`~skiplock.worker.outcomes.Outcomes`;
4. hands it to the completer (nothing when the lease was lost).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import anyio

from skiplock.queue.store import Completion
from skiplock.tracing import job_span, record_exception
from skiplock.worker.completer import Completer
from skiplock.worker.context import JobContext
from skiplock.worker.errors import Cancelled, Fail, Retry, Snooze
from skiplock.worker.leases import Lease, LeaseTable
from skiplock.worker.outcomes import Outcomes, exc_message
from skiplock.worker.progress import ProgressFlusher
from skiplock.worker.registry import Task, TaskRegistry
from skiplock.worker.shared import Shared

__all__ = ["Executor"]


class Executor:
    """Runs claimed jobs' handlers and turns their ends into outcomes."""

    def __init__(
        self,
        shared: Shared,
        registry: TaskRegistry,
        table: LeaseTable,
        completer: Completer,
        progress: ProgressFlusher,
        outcomes: Outcomes,
    ) -> None:
        self._shared = shared
        self._registry = registry
        self._table = table
        self._completer = completer
        self._progress = progress
        self._outcomes = outcomes
        self._concurrency = shared.settings.concurrency
        self._thread_limiter = anyio.CapacityLimiter(self._concurrency)
        self._stopping = False

    def start(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> None:
        """Hold ``lease`` in the table and start its job's task, or queue it for a
        handler slot (a prefetched job)."""
        table = self._table
        table.hold(lease)
        if self._stopping:  # claimed as the worker stops: released without running
            table.cancel(lease, "shutdown")
            self._spawn(lease, loop)
        elif len(table.tasks) < self._concurrency:
            self._spawn(lease, loop)
        else:
            table.waiting.append(lease)

    def _spawn(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> None:
        # Plain asyncio tasks: an anyio task group and cancel scope per job
        # cost several times the whole rest of the job's Python path.
        task = loop.create_task(self._execute(lease))
        lease.task = task
        self._table.tasks.add(task)
        task.add_done_callback(partial(self._done, lease))

    def release(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> None:
        """Hold ``lease`` and give its job back without running it (its queue was
        paused after the claim began): queued again, the attempt not counted."""
        self._table.hold(lease)
        self._table.cancel(lease, "paused")
        self._spawn(lease, loop)

    def release_waiting(self, queues: set[str]) -> int:
        """Give back the jobs of ``queues`` waiting for a handler slot (their queue
        was paused); returns how many."""
        table = self._table
        loop = self._shared.loop
        if loop is None or not table.waiting:
            return 0
        kept = [lease for lease in table.waiting if lease.job.queue not in queues]
        given = [lease for lease in table.waiting if lease.job.queue in queues]
        table.waiting.clear()
        table.waiting.extend(kept)
        for lease in given:
            table.cancel(lease, "paused")
            self._spawn(lease, loop)
        return len(given)

    def stop(self) -> None:
        """The worker stops: jobs waiting for a handler slot are released without
        running (and so are any claimed from now on)."""
        self._stopping = True
        loop = self._shared.loop
        waiting = self._table.waiting
        while waiting and loop is not None:
            lease = waiting.popleft()
            self._table.cancel(lease, "shutdown")
            self._spawn(lease, loop)

    def drop_waiting(self) -> None:
        """The worker is killed: jobs waiting for a slot are left to the rescuers."""
        self._stopping = True
        table = self._table
        while table.waiting:
            table.waiting.popleft()
            table.handler_ended()

    def _done(self, lease: Lease, task: asyncio.Task[None]) -> None:
        table = self._table
        table.tasks.discard(task)
        if not lease.begun:  # cancelled (killed) before its first step
            table.handler_ended()
            self._completer.forget(lease)
        elif table.waiting and len(table.tasks) < self._concurrency:
            loop = self._shared.loop
            if loop is not None:
                self._spawn(table.waiting.popleft(), loop)
        if not task.cancelled() and task.exception() is not None:
            # A bug in the worker itself, not in a handler (those become outcomes).
            self._shared.log.error("executor_crashed", error=repr(task.exception()))

    async def _execute(self, lease: Lease) -> None:
        shared = self._shared
        lease.begun = True
        ctx = JobContext(lease.job, report=partial(self._progress.report, lease), log=shared.log)
        lease.ctx = ctx
        task = lease.job.task
        shared.metrics.started(task)
        outcome = "abandoned"  # lease lost, or cancelled from outside: nothing written
        started = time.monotonic()
        try:
            if shared.tracing:
                with job_span(lease.job) as span:
                    completion = await self._run(lease, ctx)
                    span.set_outcome(
                        None if completion is None else completion.outcome,
                        None if completion is None else completion.error_json,
                    )
            else:
                completion = await self._run(lease, ctx)
            if completion is not None:
                outcome = completion.outcome
        except BaseException:
            # Cancelled from outside (kill): write nothing, stop heartbeating; the
            # rescuer takes the job.
            self._completer.forget(lease)
            raise
        finally:
            elapsed = time.monotonic() - started
            shared.metrics.finished(task, outcome, elapsed)
            self._table.handler_ended(elapsed)
        if completion is None:
            self._completer.forget(lease)
        else:
            self._completer.submit(lease, completion)

    async def _run(self, lease: Lease, ctx: JobContext) -> Completion | None:
        """Steps 1–3: look up, call, judge. None: write nothing (lease lost)."""
        job = lease.job
        task = self._registry.get(job.task)
        if task is None:
            completion = self._outcomes.unknown_task(lease)
            ctx.log.error(
                "job_task_unknown", outcome=completion.outcome, retry_in=completion.delay_seconds
            )
            return completion
        if self._shared.debug:  # per-job lines are debug: at thousands of jobs/s they would cost
            ctx.log.debug("job_started")
        started = time.monotonic()
        result: Any = None
        error: BaseException | None = None
        if lease.cancel_reason is None:  # else stopped before it started: skip the call
            result, error = await self._call_handler(lease, task, ctx)
        elapsed = round(time.monotonic() - started, 4)
        return self._judge(lease, task, ctx, result, error, elapsed)

    async def _call_handler(
        self, lease: Lease, task: Task, ctx: JobContext
    ) -> tuple[Any, BaseException | None]:
        """Step 2: the handler call, stoppable by a timeout timer and the lease table."""
        result: Any = None
        error: BaseException | None = None
        timer = None
        timeout = _timeout(lease, task)
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, self._table.time_out, lease)
        lease.executing = True
        stopped: asyncio.CancelledError | None = None
        try:
            if task.is_async:
                result = await task.fn(ctx, **lease.job.args)
            else:
                result = await anyio.to_thread.run_sync(
                    partial(task.fn, ctx, **lease.job.args),
                    limiter=self._thread_limiter,
                    abandon_on_cancel=True,
                )
        except (Exception, Cancelled) as exc:
            error = exc
            if self._shared.tracing:
                record_exception(exc)  # the traceback on the job's span
        except asyncio.CancelledError as exc:
            stopped = exc
        finally:
            lease.executing = False  # no more cancels from here on
            if timer is not None:
                timer.cancel()
        current = asyncio.current_task()
        if current is not None:
            for _ in range(lease.cancels):
                current.uncancel()  # ours, consumed here: the outcome says why
            if stopped is not None and current.cancelling():
                raise stopped  # the worker is being killed: write nothing
        if stopped is not None and not lease.cancels:
            error = stopped  # the handler raised it itself: an ordinary failure
        return result, error

    def _judge(
        self,
        lease: Lease,
        task: Task,
        ctx: JobContext,
        result: Any,
        error: BaseException | None,
        elapsed: float,
    ) -> Completion | None:
        """Step 3: why the call ended, as an outcome (None: the lease is lost)."""
        outcomes = self._outcomes
        job = lease.job
        reason = lease.cancel_reason
        if reason == "lease_lost":
            ctx.log.warning("job_abandoned", reason="lease_lost", seconds=elapsed)
            return None
        if reason == "shutdown" or reason == "paused":
            ctx.log.info("job_released", reason=reason, seconds=elapsed)
            return outcomes.completion(lease, "release")
        if reason == "cancel_requested":
            ctx.log.info("job_cancelled", seconds=elapsed)
            return outcomes.completion(lease, "cancelled")
        if lease.timed_out:
            whose = "job" if job.timeout_seconds is not None else "task"
            message = (
                f"attempt {job.attempt} exceeded the {whose} timeout of {_timeout(lease, task)} s"
            )
            ctx.log.warning("job_timed_out", seconds=elapsed)
            return outcomes.failure(lease, None, "TimeoutError", message, retryable=True, task=task)
        if isinstance(error, Fail):
            ctx.log.warning("job_failed", error=exc_message(error), seconds=elapsed)
            return outcomes.failure(
                lease, error, type(error).__name__, exc_message(error), retryable=False, task=task
            )
        if isinstance(error, Retry):
            ctx.log.info("job_retry_requested", delay=error.delay, seconds=elapsed)
            return outcomes.failure(
                lease, None, "Retry", error.reason, retryable=True, task=task, delay=error.delay
            )
        if isinstance(error, Snooze):  # raised before any timeout (checked above)
            ctx.log.info("job_snoozed", delay=error.delay, seconds=elapsed)
            return outcomes.snooze(lease, error.delay)
        if error is not None:
            ctx.log.warning("job_errored", error=exc_message(error), seconds=elapsed)
            return outcomes.failure(
                lease, error, type(error).__name__, exc_message(error), retryable=True, task=task
            )
        completion = outcomes.success(lease, task, result)
        if self._shared.debug and completion.outcome == "succeeded":
            ctx.log.debug("job_succeeded", seconds=elapsed)
        return completion


def _timeout(lease: Lease, task: Task) -> float | None:
    """Seconds one attempt may run: the job's own ``timeout`` (set at enqueue), else the
    task's."""
    own = lease.job.timeout_seconds
    return own if own is not None else task.timeout
