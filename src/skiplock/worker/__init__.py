"""Workers: task registry, job context, retry policy, and the runner."""

from skiplock._extras import require

require("worker")  # names the extra to install, before the imports that need it

from skiplock.worker.context import JobContext
from skiplock.worker.errors import Cancelled, Fail, Retry, Snooze
from skiplock.worker.presence import WorkerIdInUse
from skiplock.worker.registry import Task, TaskRegistry
from skiplock.worker.retry import RetryPolicy
from skiplock.worker.runner import Worker, WorkerSettings

__all__ = [
    "Cancelled",
    "Fail",
    "JobContext",
    "Retry",
    "RetryPolicy",
    "Snooze",
    "Task",
    "TaskRegistry",
    "Worker",
    "WorkerIdInUse",
    "WorkerSettings",
]
